-- One clock for money: every ledger row is dated by the `now` of the change that writes it
-- (`db::transactions::NewEntry::at`), the instant its budget window is taken from, never by the
-- database's clock. The one row the database writes on its own, a take-back of a refund when a
-- fold moves spend past what a key paid (migration 0011), follows the same rule: it is dated by
-- the `now` of whoever folds, passed as `fold_spend_journal(folded_at)`.
--
-- A take-back is never dated before the key's last ledger row (its refund), so with clocks that
-- disagree a little it still follows the refund it corrects, as migration 0006 promised.
--
-- Upgrading: expand only. An older process calls `fold_spend_journal()` with no time: its
-- take-backs are dated by the database's clock, as before.

CREATE FUNCTION fold_spend_journal(folded_at timestamptz, OUT n_keys bigint, OUT unmatched_keys bigint,
                                   OUT unmatched_nanousd bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- Read by the take-back trigger below, for the rest of this transaction only. In UTC, in
    -- one fixed format, so no session's DateStyle or TimeZone can change what is read back.
    PERFORM set_config('keycap.fold_at',
                       to_char(folded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), true);
    SELECT f.n_keys, f.unmatched_keys, f.unmatched_nanousd
      INTO n_keys, unmatched_keys, unmatched_nanousd
      FROM fold_spend_journal() f;
    PERFORM set_config('keycap.fold_at', '', true);
END
$$;

CREATE OR REPLACE FUNCTION key_spends_take_back_refund() RETURNS trigger LANGUAGE plpgsql
VOLATILE AS $$
DECLARE
    late bigint := NEW.spent_nanousd - greatest(OLD.spent_nanousd, NEW.paid_nanousd);
    dated timestamptz := coalesce(
        nullif(current_setting('keycap.fold_at', true), '')::timestamp AT TIME ZONE 'UTC',
        clock_timestamp());
    key record;
BEGIN
    SELECT org_id, membership_id, prefix INTO key FROM api_keys WHERE id = NEW.api_key_id;
    SELECT greatest(dated, max(t.created_at)) INTO dated
      FROM transactions t WHERE t.api_key_id = NEW.api_key_id;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (key.org_id, 'refund', key.membership_id, NEW.api_key_id,
            -least(late, NEW.refund_room_nanousd),
            jsonb_build_object('prefix', key.prefix,
                               'reason', CASE WHEN NEW.closed THEN 'spent after close'
                                              ELSE 'spent past a cut cap' END,
                               'spent_past_paid_nanousd', late, 'via', 'system'),
            dated, '', '');
    RETURN NULL;
END
$$;
