-- A key's spend moves out of `api_keys` into a narrow table of its own, `key_spends`.
--
-- The gateway adds the spend of every key that spent to its row once a second. With many keys
-- active that update is most of the database's work: with 100,000 keys and 25,000 of them
-- updated in one statement it took ~150 ms on `api_keys` (rows of ~220 bytes, nine indexes,
-- triggers) and ~70 ms on a narrow table like this one (benches/README.md). Autovacuum, which
-- follows those updates, has a far smaller table to go through too.
--
-- `closed` mirrors `api_keys.closed_at IS NOT NULL` (a trigger keeps it), so that the
-- late-spend trigger below can keep its cheap WHEN clause. Rows are made by a trigger on every
-- insert into `api_keys`, so every key has exactly one.
--
-- Upgrading: this migration also drops `api_keys.spent_nanousd`, in the same step, against
-- the expand-then-contract rule of migrations/README.md: a gateway of an older version would
-- write spend to a column that no reader looks at any more. Stop older keycap processes (their
-- last flush writes their spend) before starting this version, which copies it over here.

-- Keys inserted, or spend flushed by an older process, while this runs would miss the copy.
LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE key_spends (
    api_key_id    uuid PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    spent_nanousd bigint NOT NULL DEFAULT 0 CHECK (spent_nanousd >= 0),
    closed        boolean NOT NULL DEFAULT false
) WITH (fillfactor = 50);

INSERT INTO key_spends (api_key_id, spent_nanousd, closed)
SELECT id, spent_nanousd, closed_at IS NOT NULL FROM api_keys;

CREATE FUNCTION api_keys_add_spend_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_spends (api_key_id, closed) VALUES (NEW.id, NEW.closed_at IS NOT NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_spend_row AFTER INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_add_spend_row();

CREATE FUNCTION api_keys_mirror_closed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE key_spends SET closed = NEW.closed_at IS NOT NULL WHERE api_key_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_closed_mirror AFTER UPDATE OF closed_at ON api_keys
    FOR EACH ROW WHEN (OLD.closed_at IS DISTINCT FROM NEW.closed_at)
    EXECUTE FUNCTION api_keys_mirror_closed();

-- The late-spend take-back of migration 0006, now on `key_spends`. The same reasoning holds:
-- the function is VOLATILE, so it sees a refund committed by a revoke the flush waited for; as
-- an AFTER ROW trigger it takes the org's ledger lock only after the flush has locked all its
-- spend rows (a revoke locks the key's spend row, with its `api_keys` row, before the ledger).
-- Code that locks a key to close or renew it takes `FOR NO KEY UPDATE OF k, s`, not
-- `FOR UPDATE`: a flush, holding spend rows, ends with foreign-key checks (of its rollup rows
-- and of take-back ledger rows) that take KEY SHARE on the keys' `api_keys` rows, which
-- `FOR UPDATE` would block, a deadlock.
DROP TRIGGER api_keys_late_spend ON api_keys;
DROP FUNCTION api_keys_take_back_refund();

CREATE FUNCTION key_spends_take_back_refund() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    refunded bigint;
    late bigint := NEW.spent_nanousd - OLD.spent_nanousd;
    key record;
BEGIN
    SELECT coalesce(sum(amount_nanousd), 0) INTO refunded
      FROM transactions WHERE api_key_id = NEW.api_key_id AND kind = 'refund';
    IF refunded > 0 THEN
        SELECT org_id, membership_id, prefix INTO key FROM api_keys WHERE id = NEW.api_key_id;
        INSERT INTO transactions
            (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
             prev_hash, hash)
        VALUES (key.org_id, 'refund', key.membership_id, NEW.api_key_id, -least(late, refunded),
                jsonb_build_object('prefix', key.prefix, 'reason', 'spent after close',
                                   'spent_after_close_nanousd', late, 'via', 'system'),
                clock_timestamp(), '', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER key_spends_late_spend AFTER UPDATE OF spent_nanousd ON key_spends
    FOR EACH ROW WHEN (NEW.closed AND NEW.spent_nanousd > OLD.spent_nanousd)
    EXECUTE FUNCTION key_spends_take_back_refund();

ALTER TABLE api_keys DROP COLUMN spent_nanousd;
-- The free room migration 0004 left on each page was for the spend updates, gone from here.
ALTER TABLE api_keys SET (fillfactor = 100);
