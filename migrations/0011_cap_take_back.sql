-- What the member has paid for each key, and what of its refunds may still be taken back, kept
-- beside its spend; and spend past what was paid is taken back from those refunds, on an open
-- key as on a closed one (migrations 0006, 0008).
--
-- Cutting a key's cap (`keycap key set-cap`, `db::keys::set_cap`) refunds at once, against the
-- spend folded so far. A request the gateway admitted under the old cap can still settle
-- afterwards and take the key's spend past its new cap: without a take-back the member would
-- keep both the refund and what the request spent. Raising the cap again should then carve only
-- what that spend has not paid for.
--
-- Two columns of `key_spends`, kept from the ledger rows every version of keycap writes (a
-- trigger below), so they cannot disagree with the ledger:
--   - `paid_nanousd`: what the member has paid for the key in its period: the carve of its
--     provision or renewal and of raises, less its refunds (a take-back is a negative refund,
--     so it adds). Normally the key's cap; after a close that refunded all it could, its spend
--     (a key from an earlier month keeps that month's carve paid).
--   - `refund_room_nanousd`: what may still be taken back: its refunds, less take-backs and
--     raises' carves, emptied by a renewal (a new period, carved whole). So spend past the cap
--     of a key that was never refunded anything is not charged to anyone, as before (the
--     gateway's reservations keep it to a reported cost above a request's worst case).
-- The take-back fires when spend grows past `paid` with room left, and takes the spend past
-- `paid`, no more than the room. A renewal empties the room: a request admitted before a cut
-- that settles after the key's renewal counts in the new period, and what it spent past the
-- new cap is charged to no one (as spend settling after a renewal always counted). Its WHEN clause runs for every row of every fold and reads
-- only this row's columns.
--
-- Upgrading: expand only (two columns with defaults, functions and triggers replaced in place).

-- Writers lock spend rows before they write the ledger: lock in that order, and take the
-- ALTER's own lock on `key_spends` at once rather than upgrading to it after `transactions`.
LOCK TABLE key_spends IN ACCESS EXCLUSIVE MODE;
LOCK TABLE transactions IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE key_spends
    ADD COLUMN paid_nanousd bigint NOT NULL DEFAULT 0,
    ADD COLUMN refund_room_nanousd bigint NOT NULL DEFAULT 0 CHECK (refund_room_nanousd >= 0);

-- A key's period starts at its last provision or renewal row; until now only closing a key
-- refunded, and take-backs are negative refunds. A key without ledger rows (inserted in SQL,
-- as the load harness does) counts its cap as paid.
UPDATE key_spends k SET paid_nanousd = a.cap_nanousd FROM api_keys a WHERE a.id = k.api_key_id;
WITH starts AS (
    SELECT api_key_id, max(seq) AS seq FROM transactions
     WHERE api_key_id IS NOT NULL AND kind IN ('key_provisioned', 'key_renewed')
     GROUP BY api_key_id
), period AS (
    SELECT t.api_key_id,
           sum(CASE WHEN t.kind IN ('key_provisioned', 'key_renewed', 'key_cap_changed')
                    THEN t.amount_nanousd
                    WHEN t.kind = 'refund' THEN -t.amount_nanousd
                    ELSE 0 END)::bigint AS paid,
           greatest(sum(CASE WHEN t.kind = 'refund' THEN t.amount_nanousd ELSE 0 END), 0)::bigint
               AS room
      FROM transactions t JOIN starts s ON s.api_key_id = t.api_key_id AND t.seq >= s.seq
     GROUP BY t.api_key_id
)
UPDATE key_spends k SET paid_nanousd = period.paid, refund_room_nanousd = period.room
  FROM period WHERE k.api_key_id = period.api_key_id;

-- Likewise for keys inserted from now on, until their provision row says what was paid.
CREATE OR REPLACE FUNCTION api_keys_add_spend_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_spends (api_key_id, closed, paid_nanousd)
    VALUES (NEW.id, NEW.closed_at IS NOT NULL, NEW.cap_nanousd);
    RETURN NULL;
END
$$;

CREATE FUNCTION transactions_keep_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IN ('key_provisioned', 'key_renewed') THEN
        UPDATE key_spends SET paid_nanousd = NEW.amount_nanousd, refund_room_nanousd = 0
         WHERE api_key_id = NEW.api_key_id;
    ELSIF NEW.kind = 'key_cap_changed' THEN
        UPDATE key_spends
           SET paid_nanousd = paid_nanousd + NEW.amount_nanousd,
               refund_room_nanousd = greatest(refund_room_nanousd - NEW.amount_nanousd, 0)
         WHERE api_key_id = NEW.api_key_id;
    ELSE -- a refund, or a take-back (negative)
        UPDATE key_spends
           SET paid_nanousd = paid_nanousd - NEW.amount_nanousd,
               refund_room_nanousd = greatest(refund_room_nanousd + NEW.amount_nanousd, 0)
         WHERE api_key_id = NEW.api_key_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER transactions_paid AFTER INSERT ON transactions
    FOR EACH ROW
    WHEN (NEW.api_key_id IS NOT NULL
          AND NEW.kind IN ('key_provisioned', 'key_renewed', 'key_cap_changed', 'refund'))
    EXECUTE FUNCTION transactions_keep_paid();

-- As in migration 0008, for the spend past what was paid (on a closed key that was refunded all
-- it could, all that lands after its close), no more than the room. The take-back's own ledger
-- row updates both columns through the trigger above. `spent_past_paid_nanousd` in its detail
-- is that spend; the row's amount is what was taken back.
CREATE OR REPLACE FUNCTION key_spends_take_back_refund() RETURNS trigger LANGUAGE plpgsql
VOLATILE AS $$
DECLARE
    late bigint := NEW.spent_nanousd - greatest(OLD.spent_nanousd, NEW.paid_nanousd);
    key record;
BEGIN
    SELECT org_id, membership_id, prefix INTO key FROM api_keys WHERE id = NEW.api_key_id;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (key.org_id, 'refund', key.membership_id, NEW.api_key_id,
            -least(late, NEW.refund_room_nanousd),
            jsonb_build_object('prefix', key.prefix,
                               'reason', CASE WHEN NEW.closed THEN 'spent after close'
                                              ELSE 'spent past a cut cap' END,
                               'spent_past_paid_nanousd', late, 'via', 'system'),
            clock_timestamp(), '', '');
    RETURN NULL;
END
$$;

DROP TRIGGER key_spends_late_spend ON key_spends;
CREATE TRIGGER key_spends_late_spend AFTER UPDATE OF spent_nanousd ON key_spends
    FOR EACH ROW
    WHEN (NEW.refund_room_nanousd > 0 AND NEW.spent_nanousd > OLD.spent_nanousd
          AND NEW.spent_nanousd > NEW.paid_nanousd)
    EXECUTE FUNCTION key_spends_take_back_refund();
