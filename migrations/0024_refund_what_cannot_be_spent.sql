-- One rule for every refund: refund what can no longer be spent (ARCHITECTURE.md, "Money").
--
-- Until now a close (or a cap cut) refunded what was paid beyond the key's spend at once, and
-- spend that landed afterwards (a request in flight, a gateway's unflushed spend, a reclaim's
-- charge) was taken back from that refund by a trigger on `key_spends` (migrations 0006, 0008,
-- 0011, 0012), within a "refund room" kept beside what was paid. With leases (migration 0015)
-- Postgres knows what each key can still spend: what gateways' leases of it hold. So a refund
-- now keeps that back, and gives it when the leases come back unspent:
--
--   refundable = paid - max(cap while open (0 once closed), spent + what leases hold),
--                no more than the key carved from the month of the refund (net of its refunds
--                in it), and never below zero.
--
-- `key_refundable` is that rule, the only one. A close and a cut refund it (their own ledger
-- rows, from `db::keys`); a give-back, a gateway's clean stop and a reclaimed gateway's
-- give-back (which uncharges, now on a closed key too) refund what it has become, with a
-- `refund` row of their own (`key_late_refund`). Spend stays within the leases, so nothing is
-- ever taken back: the take-back trigger and `refund_room_nanousd` are gone. Spend past what
-- was paid (a charge above its reservation, or spend with no lease: an older gateway's, or a
-- gateway's that was forgotten) is charged to no one, as spend past the cap of a key that was
-- never refunded always was.
--
-- `key_carved_in_month` is what `db::keys` computed in Rust until now (and no longer does).
-- `keycap.fold_at`, which dated take-backs, is still set by the fold and the reclaim, and no
-- longer read.
--
-- Upgrading: run every process at this version. An older admin process still refunds a close
-- whole, and a key closed before this migration was refunded what its leases held: spend they
-- settle after the close is charged to no one (it was taken back before).

-- What `key` carved from the UTC month of `at`, net of its refunds in it: all it has paid when
-- its period starts in that month (provisioned or renewed then), else what raising its cap
-- carved in that month less what was refunded in it.
CREATE FUNCTION key_carved_in_month(key uuid, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH month AS (
        SELECT date_trunc('month', at AT TIME ZONE 'UTC') AS start
    )
    SELECT CASE
        WHEN a.period_start = month.start::date THEN s.paid_nanousd
        ELSE (SELECT (coalesce(sum(t.amount_nanousd) FILTER (WHERE t.kind = 'key_cap_changed'), 0)
                    - coalesce(sum(t.amount_nanousd) FILTER (WHERE t.kind = 'refund'), 0))::bigint
                FROM transactions t
               WHERE t.api_key_id = key
                 AND t.created_at >= month.start AT TIME ZONE 'UTC'
                 AND t.created_at < (month.start + interval '1 month') AT TIME ZONE 'UTC')
    END
    FROM api_keys a JOIN key_spends s ON s.api_key_id = a.id, month
    WHERE a.id = key
$$;

-- What may be refunded for `key` now (`at` names the month): what was paid for it in its period
-- beyond what it must keep paid (its spend, what gateways' leases of it hold, and while it is
-- open its cap), no more than it carved from `at`'s month. The caller holds the key's spend row.
CREATE FUNCTION key_refundable(key uuid, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN x.excess > 0
                THEN greatest(least(x.excess, key_carved_in_month(key, at)), 0)
                ELSE 0 END::bigint
      FROM (SELECT s.paid_nanousd
                   - greatest(CASE WHEN s.closed THEN 0 ELSE a.cap_nanousd END,
                              s.spent_nanousd
                                + (SELECT coalesce(sum(greatest(l.held_nanousd, 0)), 0)
                                     FROM key_leases l WHERE l.api_key_id = key)) AS excess
              FROM key_spends s JOIN api_keys a ON a.id = s.api_key_id
             WHERE s.api_key_id = key) x
$$;

-- Refunds what `key_refundable` allows, with a `refund` ledger row by the system giving
-- `reason`, dated `at` or, if later, at the key's last row (and judged by that date's month, so
-- an ended month's money never lands in the next). Returns the refund. The caller holds the
-- key's spend row.
CREATE FUNCTION key_late_refund(key uuid, at timestamptz, reason text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dated timestamptz;
    amount bigint;
    k record;
BEGIN
    SELECT greatest(at, max(t.created_at)) INTO dated FROM transactions t WHERE t.api_key_id = key;
    dated := coalesce(dated, at);
    amount := key_refundable(key, dated);
    IF coalesce(amount, 0) <= 0 THEN
        RETURN 0;
    END IF;
    SELECT a.org_id, a.membership_id, a.prefix INTO k FROM api_keys a WHERE a.id = key;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (k.org_id, 'refund', k.membership_id, key, amount,
            jsonb_build_object('prefix', k.prefix, 'reason', reason, 'via', 'system'),
            dated, '', '');
    RETURN amount;
END
$$;

DROP TRIGGER key_spends_late_spend ON key_spends;
DROP FUNCTION key_spends_take_back_refund();

-- As in migration 0011, without the refund room.
CREATE OR REPLACE FUNCTION transactions_keep_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IN ('key_provisioned', 'key_renewed') THEN
        UPDATE key_spends SET paid_nanousd = NEW.amount_nanousd
         WHERE api_key_id = NEW.api_key_id;
    ELSIF NEW.kind = 'key_cap_changed' THEN
        UPDATE key_spends SET paid_nanousd = paid_nanousd + NEW.amount_nanousd
         WHERE api_key_id = NEW.api_key_id;
    ELSE -- a refund
        UPDATE key_spends SET paid_nanousd = paid_nanousd - NEW.amount_nanousd
         WHERE api_key_id = NEW.api_key_id;
    END IF;
    RETURN NULL;
END
$$;

ALTER TABLE key_spends DROP COLUMN refund_room_nanousd;

-- As in migration 0021, on a closed key too: what the reclaim charged and was not spent leaves
-- the key's spend (the caller refunds what that frees).
CREATE OR REPLACE FUNCTION lease_uncharge(key uuid, gateway uuid, amount bigint, at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF amount <= 0 THEN
        RETURN;
    END IF;
    UPDATE key_spends SET spent_nanousd = spent_nanousd - amount WHERE api_key_id = key;
    PERFORM lease_ledger_row(key, gateway, -amount,
        'the gateway was alive after all: this much of what its lease held was not spent', at);
END
$$;

-- As in migration 0022, then refunds what the give-back freed.
CREATE OR REPLACE FUNCTION lease_give_back(key uuid, gateway uuid, amount bigint, at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lease record;
    from_held bigint;
    from_charge bigint;
    from_past bigint;
BEGIN
    PERFORM 1 FROM key_spends WHERE api_key_id = key FOR UPDATE;
    SELECT l.held_nanousd, l.reclaimed_nanousd, l.reclaimed_past_nanousd INTO lease
      FROM key_leases l WHERE l.api_key_id = key AND l.gateway_id = gateway;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    from_held := least(greatest(lease.held_nanousd, 0), amount);
    from_charge := least(lease.reclaimed_nanousd, amount - from_held);
    from_past := least(lease.reclaimed_past_nanousd, amount - from_held - from_charge);
    UPDATE key_leases
       SET held_nanousd = held_nanousd - from_held,
           reclaimed_nanousd = reclaimed_nanousd - from_charge,
           reclaimed_past_nanousd = reclaimed_past_nanousd - from_past
     WHERE api_key_id = key AND gateway_id = gateway;
    PERFORM lease_uncharge(key, gateway, from_charge, at);
    PERFORM key_late_refund(key, at, 'unspent when its lease came back');
END
$$;

-- As in migration 0022, then refunds what each key's lease held. Its ledger rows are written
-- key by key in org order (each org's first row takes that org's ledger lock), so two gateways
-- stopping at once take the orgs' locks in one order.
CREATE OR REPLACE FUNCTION gateway_stop(gateway uuid, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    leased uuid[];
    charges bigint[];
BEGIN
    -- The spend rows, locked in key order, and the leases read with them, in one statement.
    SELECT coalesce(array_agg(x.api_key_id ORDER BY x.org_id, x.api_key_id), '{}'),
           coalesce(array_agg(x.reclaimed ORDER BY x.org_id, x.api_key_id), '{}')
      INTO leased, charges
      FROM (SELECT s.api_key_id, a.org_id, l.reclaimed_nanousd AS reclaimed
              FROM key_spends s
              JOIN key_leases l ON l.api_key_id = s.api_key_id
              JOIN api_keys a ON a.id = s.api_key_id
             WHERE l.gateway_id = gateway
             ORDER BY s.api_key_id
               FOR UPDATE OF s) x;
    DELETE FROM gateways WHERE id = gateway;
    FOR i IN 1 .. cardinality(leased) LOOP
        PERFORM lease_uncharge(leased[i], gateway, charges[i], at);
        PERFORM key_late_refund(leased[i], at, 'unspent when its lease came back');
    END LOOP;
END
$$;
