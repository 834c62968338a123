-- Spend that lands on an open key past its cap is taken back from the key's refunds, as spend
-- that lands after a key closed already is (migrations 0006, 0008).
--
-- Cutting a key's cap (`keycap key set-cap`, `db::keys::set_cap`) refunds the difference at
-- once, against the spend folded so far. A request the gateway admitted under the old cap can
-- still settle afterwards and take the key's spend past its new cap: without a take-back the
-- member would keep both the refund and what the request spent.
--
-- The trigger's WHEN clause runs for every row of every fold, so it must stay cheap: it needs
-- the key's cap beside its spend. `key_spends` gets a copy of `api_keys.cap_nanousd`, kept by
-- triggers, as `closed` is.
--
-- What is taken back is never more than the key's refunds so far (its cuts, its close, less
-- earlier take-backs), so a key is never charged more than it was given back; spend past the
-- cap of a key that was never refunded anything is not taken from anywhere, as before.
--
-- Upgrading: expand only. Keys are inserted, and caps changed, by code whose rows the triggers
-- below complete; nothing writes `key_spends.cap_nanousd` but them.

-- Keys inserted, or caps changed, while this runs would miss the copy.
LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE key_spends ADD COLUMN cap_nanousd bigint;
UPDATE key_spends s SET cap_nanousd = k.cap_nanousd FROM api_keys k WHERE k.id = s.api_key_id;
ALTER TABLE key_spends ALTER COLUMN cap_nanousd SET NOT NULL;

CREATE OR REPLACE FUNCTION api_keys_add_spend_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO key_spends (api_key_id, closed, cap_nanousd)
    VALUES (NEW.id, NEW.closed_at IS NOT NULL, NEW.cap_nanousd);
    RETURN NULL;
END
$$;

CREATE FUNCTION api_keys_mirror_cap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE key_spends SET cap_nanousd = NEW.cap_nanousd WHERE api_key_id = NEW.id;
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_cap_mirror AFTER UPDATE OF cap_nanousd ON api_keys
    FOR EACH ROW WHEN (OLD.cap_nanousd IS DISTINCT FROM NEW.cap_nanousd)
    EXECUTE FUNCTION api_keys_mirror_cap();

-- As in migration 0008, and for an open key the spend past its cap.
CREATE OR REPLACE FUNCTION key_spends_take_back_refund() RETURNS trigger LANGUAGE plpgsql
VOLATILE AS $$
DECLARE
    refunded bigint;
    late bigint;
    key record;
BEGIN
    IF NEW.closed THEN
        late := NEW.spent_nanousd - OLD.spent_nanousd;
    ELSE
        late := NEW.spent_nanousd - greatest(OLD.spent_nanousd, NEW.cap_nanousd);
    END IF;
    SELECT coalesce(sum(amount_nanousd), 0) INTO refunded
      FROM transactions WHERE api_key_id = NEW.api_key_id AND kind = 'refund';
    IF refunded > 0 THEN
        SELECT org_id, membership_id, prefix INTO key FROM api_keys WHERE id = NEW.api_key_id;
        INSERT INTO transactions
            (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
             prev_hash, hash)
        VALUES (key.org_id, 'refund', key.membership_id, NEW.api_key_id, -least(late, refunded),
                CASE WHEN NEW.closed THEN
                    jsonb_build_object('prefix', key.prefix, 'reason', 'spent after close',
                                       'spent_after_close_nanousd', late, 'via', 'system')
                ELSE
                    jsonb_build_object('prefix', key.prefix, 'reason', 'spent past its cap',
                                       'spent_past_cap_nanousd', late, 'via', 'system')
                END,
                clock_timestamp(), '', '');
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER key_spends_late_spend ON key_spends;
CREATE TRIGGER key_spends_late_spend AFTER UPDATE OF spent_nanousd ON key_spends
    FOR EACH ROW
    WHEN ((NEW.closed OR NEW.spent_nanousd > NEW.cap_nanousd)
          AND NEW.spent_nanousd > OLD.spent_nanousd)
    EXECUTE FUNCTION key_spends_take_back_refund();
