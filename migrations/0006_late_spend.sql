-- Revoking or expiring a key refunds `cap - spent` as Postgres knows it at that moment. The
-- gateway may still settle spend for the key afterwards: spend settled but not yet flushed, and
-- requests that were in flight when the key closed. When that spend reaches a closed key, this
-- trigger takes it back from the refund (never more than was refunded) with a negative
-- `refund` ledger row in the same statement, so a member never keeps a refund of money the key
-- went on to spend.
--
-- The function is VOLATILE, so under READ COMMITTED its query sees a refund committed by a
-- revoke that finished while the flush waited for the key's row lock. As an AFTER ROW trigger it
-- runs once the flush's UPDATE has locked all its rows, so it takes the org's ledger lock only
-- after every key-row lock (the order a revoke takes them in too). The row is dated by the
-- clock, not by the flush statement's start, so it never precedes the refund it corrects.

CREATE FUNCTION api_keys_take_back_refund() RETURNS trigger LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    refunded bigint;
    late bigint := NEW.spent_nanousd - OLD.spent_nanousd;
BEGIN
    SELECT coalesce(sum(amount_nanousd), 0) INTO refunded
      FROM transactions WHERE api_key_id = NEW.id AND kind = 'refund';
    IF refunded > 0 THEN
        INSERT INTO transactions
            (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
             prev_hash, hash)
        VALUES (NEW.org_id, 'refund', NEW.membership_id, NEW.id, -least(late, refunded),
                jsonb_build_object('prefix', NEW.prefix, 'reason', 'spent after close',
                                   'spent_after_close_nanousd', late, 'via', 'system'),
                clock_timestamp(), '', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_late_spend AFTER UPDATE OF spent_nanousd ON api_keys
    FOR EACH ROW WHEN (NEW.closed_at IS NOT NULL AND NEW.spent_nanousd > OLD.spent_nanousd)
    EXECUTE FUNCTION api_keys_take_back_refund();
