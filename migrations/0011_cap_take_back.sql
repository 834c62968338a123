-- Spend that lands on an open key past a cut of its cap is taken back from what the cut
-- refunded, as spend that lands after a key closed already is (migrations 0006, 0008).
--
-- Cutting a key's cap (`keycap key set-cap`, `db::keys::set_cap`) refunds the difference at
-- once, against the spend folded so far. A request the gateway admitted under the old cap can
-- still settle afterwards and take the key's spend past its new cap: without a take-back the
-- member would keep both the refund and what the request spent.
--
-- Each key's spend row now says what may still be taken back, and above which spend:
--   - `refund_room_nanousd`: refunded to the member and not taken back or carved again. A
--     refund adds to it (a cut's, or the close's), a take-back (a negative refund) takes from
--     it, a raise of the cap takes from it (its carve pays for that band again), and a renewal
--     empties it (a new period, carved whole).
--   - `refunded_above_nanousd`: on an open key, spend above this is in a band a cut refunded
--     (the cap after the cut, or after a raise that carved part of the band again). Spend up
--     to it is paid for by what the key carved. On a closed key all late spend counts, as
--     before.
-- A trigger on the ledger keeps both, from the rows every version of keycap writes, so they
-- cannot disagree with the ledger. The take-back trigger's WHEN clause runs for every row of
-- every fold and reads only these columns, so it stays cheap and fires only with room left.
--
-- Spend past the cap of a key with no room (never refunded, or its refunds carved again) is
-- not taken from anywhere, as before: the gateway's reservations keep it to a reported cost
-- above the request's worst case.
--
-- Upgrading: expand only (two columns with defaults; triggers replaced in place).

-- Ledger rows written, or spend folded, while this runs would miss the backfill.
LOCK TABLE transactions, key_spends IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE key_spends
    ADD COLUMN refund_room_nanousd bigint NOT NULL DEFAULT 0 CHECK (refund_room_nanousd >= 0),
    ADD COLUMN refunded_above_nanousd bigint NOT NULL DEFAULT 0;

-- Until now only closing a key refunded, and take-backs are negative refunds: what is left of
-- a key's refunds is its room.
UPDATE key_spends s SET refund_room_nanousd = r.left_nanousd
  FROM (SELECT api_key_id, sum(amount_nanousd)::bigint AS left_nanousd
          FROM transactions WHERE kind = 'refund' AND api_key_id IS NOT NULL
         GROUP BY api_key_id) r
 WHERE r.api_key_id = s.api_key_id AND r.left_nanousd > 0;

CREATE FUNCTION transactions_keep_refund_room() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'refund' AND NEW.amount_nanousd > 0 THEN
        -- On an open key, a cut: the band it refunded starts at the new cap.
        UPDATE key_spends s
           SET refund_room_nanousd = s.refund_room_nanousd + NEW.amount_nanousd,
               refunded_above_nanousd = CASE WHEN s.closed THEN s.refunded_above_nanousd
                                             ELSE k.cap_nanousd END
          FROM api_keys k
         WHERE s.api_key_id = NEW.api_key_id AND k.id = NEW.api_key_id;
    ELSIF NEW.kind = 'refund' THEN
        UPDATE key_spends
           SET refund_room_nanousd = greatest(refund_room_nanousd + NEW.amount_nanousd, 0)
         WHERE api_key_id = NEW.api_key_id;
    ELSIF NEW.kind = 'key_cap_changed' AND NEW.amount_nanousd > 0 THEN
        UPDATE key_spends s
           SET refund_room_nanousd = greatest(s.refund_room_nanousd - NEW.amount_nanousd, 0),
               refunded_above_nanousd = k.cap_nanousd
          FROM api_keys k
         WHERE s.api_key_id = NEW.api_key_id AND k.id = NEW.api_key_id;
    ELSIF NEW.kind = 'key_renewed' THEN
        UPDATE key_spends SET refund_room_nanousd = 0 WHERE api_key_id = NEW.api_key_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER transactions_refund_room AFTER INSERT ON transactions
    FOR EACH ROW
    WHEN (NEW.api_key_id IS NOT NULL
          AND NEW.kind IN ('refund', 'key_cap_changed', 'key_renewed'))
    EXECUTE FUNCTION transactions_keep_refund_room();

-- As in migration 0008, limited by the room, and for an open key the spend past the band's
-- start. The take-back's own ledger row takes it from the room (the trigger above).
CREATE OR REPLACE FUNCTION key_spends_take_back_refund() RETURNS trigger LANGUAGE plpgsql
VOLATILE AS $$
DECLARE
    late bigint;
    key record;
BEGIN
    IF NEW.closed THEN
        late := NEW.spent_nanousd - OLD.spent_nanousd;
    ELSE
        late := NEW.spent_nanousd - greatest(OLD.spent_nanousd, NEW.refunded_above_nanousd);
    END IF;
    SELECT org_id, membership_id, prefix INTO key FROM api_keys WHERE id = NEW.api_key_id;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (key.org_id, 'refund', key.membership_id, NEW.api_key_id,
            -least(late, NEW.refund_room_nanousd),
            CASE WHEN NEW.closed THEN
                jsonb_build_object('prefix', key.prefix, 'reason', 'spent after close',
                                   'spent_after_close_nanousd', late, 'via', 'system')
            ELSE
                jsonb_build_object('prefix', key.prefix, 'reason', 'spent past a cut cap',
                                   'spent_past_cut_nanousd', late, 'via', 'system')
            END,
            clock_timestamp(), '', '');
    RETURN NULL;
END
$$;

DROP TRIGGER key_spends_late_spend ON key_spends;
CREATE TRIGGER key_spends_late_spend AFTER UPDATE OF spent_nanousd ON key_spends
    FOR EACH ROW
    WHEN (NEW.refund_room_nanousd > 0 AND NEW.spent_nanousd > OLD.spent_nanousd
          AND (NEW.closed OR NEW.spent_nanousd > NEW.refunded_above_nanousd))
    EXECUTE FUNCTION key_spends_take_back_refund();
