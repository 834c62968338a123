-- The `lease_reclaimed` ledger row written in one place, `lease_ledger_row`, called by
-- `reclaim_leases` (a charge) and by `lease_uncharge` (a give-back), which migration 0015 had
-- each write out in full. The rows, their amounts and their dates are as before. (`OR
-- REPLACE` throughout: a database that ran an unreleased 0015 may hold these already.)

-- The `lease_reclaimed` ledger row of `amount` charged to (or, negative, given back to) `key`
-- for `gateway`'s lease, dated `at` (the caller's clock), never before the key's last row.
CREATE OR REPLACE FUNCTION lease_ledger_row(key uuid, gateway uuid, amount bigint, reason text,
                                 at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k record;
    dated timestamptz;
BEGIN
    SELECT a.org_id, a.membership_id, a.prefix INTO k FROM api_keys a WHERE a.id = key;
    SELECT greatest(at, max(t.created_at)) INTO dated FROM transactions t WHERE t.api_key_id = key;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (k.org_id, 'lease_reclaimed', k.membership_id, key, amount,
            jsonb_build_object('prefix', k.prefix, 'gateway', gateway::text,
                               'reason', reason, 'via', 'system'),
            coalesce(dated, at), '', '');
END
$$;

-- Gives `amount` of what a reclaim charged to `key` for `gateway`'s lease back to the key's
-- spend (it was not spent), with its ledger row, when the key is open. The caller holds the
-- key's spend row.
CREATE OR REPLACE FUNCTION lease_uncharge(key uuid, gateway uuid, amount bigint, at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF amount <= 0 OR (SELECT closed FROM key_spends WHERE api_key_id = key) THEN
        RETURN;
    END IF;
    UPDATE key_spends SET spent_nanousd = spent_nanousd - amount WHERE api_key_id = key;
    PERFORM lease_ledger_row(key, gateway, -amount,
        'the gateway was alive after all: this much of what its lease held was not spent', at);
END
$$;

-- Reclaims the leases of every gateway whose heartbeat is older than `lapse`: what each lease
-- still holds is charged to its key as spent, with a `lease_reclaimed` ledger row dated `at`
-- (the caller's clock; never before the key's last row), because the dead gateway may have
-- spent it without flushing. The caller folds the journal first, in a transaction of its own,
-- so that what the dead gateway flushed has left its leases. Every key's spend row is locked,
-- in key order, before any lease or ledger row is touched (see the lock order above); a lease
-- granted meanwhile for another key waits for the next reclaim (a gateway reclaimed before is
-- reclaimed again while its leases hold something). Gives up, to be tried again, when a lock
-- is not had within two seconds. Returns how many leases it charged. Gateways reclaimed a day
-- ago and silent since are forgotten, and so are rate-limit minutes (migration 0016) that
-- ended two minutes ago.
CREATE OR REPLACE FUNCTION reclaim_leases(lapse interval, at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dead uuid[];
    locked uuid[];
    lease record;
    charged bigint;
    n bigint := 0;
BEGIN
    PERFORM set_config('lock_timeout', '2s', true);
    DELETE FROM gateways WHERE reclaimed_at < now() - interval '1 day'
                          AND heartbeat_at < now() - interval '1 day';
    DELETE FROM rate_windows WHERE window_start < date_trunc('minute', now()) - interval '1 minute';
    -- NO KEY UPDATE: a grant's foreign-key check on the gateway's row is not blocked by it.
    SELECT coalesce(array_agg(g.id ORDER BY g.id), '{}') INTO dead
      FROM (SELECT g.id FROM gateways g
             WHERE g.heartbeat_at < now() - lapse
               AND (g.reclaimed_at IS NULL
                    OR EXISTS (SELECT 1 FROM key_leases l
                                WHERE l.gateway_id = g.id AND l.held_nanousd > 0))
             ORDER BY g.id FOR NO KEY UPDATE SKIP LOCKED) g;
    IF cardinality(dead) = 0 THEN
        RETURN 0;
    END IF;
    -- A take-back fired by a charge on a closed key is dated like a fold's (migration 0012).
    PERFORM set_config('keycap.fold_at',
                       to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), true);
    SELECT coalesce(array_agg(s.api_key_id ORDER BY s.api_key_id), '{}') INTO locked
      FROM (SELECT s.api_key_id FROM key_spends s
             WHERE s.api_key_id IN (SELECT l.api_key_id FROM key_leases l
                                     WHERE l.gateway_id = ANY (dead))
             ORDER BY s.api_key_id FOR UPDATE) s;
    FOR lease IN SELECT l.api_key_id, l.gateway_id FROM key_leases l
                  WHERE l.gateway_id = ANY (dead) AND l.api_key_id = ANY (locked)
                  ORDER BY l.api_key_id, l.gateway_id LOOP
        -- Read and charged in one statement, from the row as it is now.
        UPDATE key_leases l
           SET reclaimed_nanousd = l.reclaimed_nanousd + greatest(l.held_nanousd, 0),
               held_nanousd = least(l.held_nanousd, 0)
          FROM (SELECT greatest(o.held_nanousd, 0) AS held FROM key_leases o
                 WHERE o.api_key_id = lease.api_key_id AND o.gateway_id = lease.gateway_id) old
         WHERE l.api_key_id = lease.api_key_id AND l.gateway_id = lease.gateway_id
        RETURNING old.held INTO charged;
        CONTINUE WHEN coalesce(charged, 0) <= 0;
        UPDATE key_spends SET spent_nanousd = spent_nanousd + charged
         WHERE api_key_id = lease.api_key_id;
        PERFORM lease_ledger_row(lease.api_key_id, lease.gateway_id, charged,
            'the gateway stopped heartbeating: what its lease held is counted as spent', at);
        n := n + 1;
    END LOOP;
    PERFORM set_config('keycap.fold_at', '', true);
    UPDATE gateways SET reclaimed_at = now() WHERE id = ANY (dead);
    RETURN n;
END
$$;
