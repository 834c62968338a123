-- Leases: several gateways on one database, each spending only a slice of a key's cap that
-- Postgres handed it (ARCHITECTURE.md, "Leases").
--
-- For each key, Postgres keeps `spent + Σ held <= cap`, where `spent` is `key_spends` (folded)
-- and `held` is what each gateway's lease holds: granted, less what it gave back, less its
-- spend that a fold has moved into `spent`. A gateway's flushed spend waits in the journal
-- inside its lease until the fold moves it, so the sum never counts it twice or misses it.
-- `held` is exact, never clamped: a charge above its reservation (a pricing bug) can take a
-- lease below zero, and the gateway pays it back from its next grants, as its own counter
-- does.
--
-- A gateway heartbeats. When one's heartbeat lapses, a live one reclaims its leases
-- (`reclaim_leases`): what they still hold is charged to the keys as spent, with a
-- `lease_reclaimed` ledger row, because the dead gateway may have spent it without flushing.
-- The charge is kept on the lease (`reclaimed_nanousd`): if that gateway was alive after all
-- (cut off from the database, or paused) and flushes spend later, the fold counts that spend
-- against the charge instead of charging it twice.
--
-- Lock order, so grants, give-backs, reclaims and folds never deadlock with each other or with
-- revocations, cap changes and renewals: the keys' `key_spends` rows first (several in key
-- order), then their `key_leases` rows, then the org's ledger.
--
-- Upgrading: expand only. An older gateway takes no lease and writes journal rows without a
-- gateway; its spend is folded as before. Run every gateway of one database at this version or
-- none (an older one enforces the whole cap on its own).

CREATE TABLE gateways (
    id            uuid PRIMARY KEY,
    host          text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    -- The database's clock, so that gateways' clocks need not agree.
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    -- Set when a live gateway reclaimed this one's leases; cleared by its next heartbeat.
    reclaimed_at  timestamptz
);

CREATE TABLE key_leases (
    api_key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    gateway_id        uuid NOT NULL REFERENCES gateways (id) ON DELETE CASCADE,
    held_nanousd      bigint NOT NULL DEFAULT 0,
    -- Charged as spent when the lease was reclaimed, not yet matched by spend its gateway
    -- flushed since.
    reclaimed_nanousd bigint NOT NULL DEFAULT 0 CHECK (reclaimed_nanousd >= 0),
    PRIMARY KEY (api_key_id, gateway_id)
);
CREATE INDEX key_leases_gateway_id_idx ON key_leases (gateway_id);

-- The gateway whose lease the spend came from; NULL from a gateway older than leases.
ALTER TABLE spend_journal ADD COLUMN gateway_id uuid;

-- Folds every committed journal row into `key_spends`, moving each gateway's spend out of its
-- lease (or against what a reclaim charged for it). Returns what `fold_spend_journal()` of
-- migration 0009 returned.
CREATE OR REPLACE FUNCTION fold_spend_journal(OUT n_keys bigint, OUT unmatched_keys bigint,
                                              OUT unmatched_nanousd bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_keys uuid[];
    v_gateways uuid[];
    v_costs bigint[];
    v_absorbed_keys uuid[];
    v_absorbed bigint[];
BEGIN
    -- 0x6b65796361707370 is 'keycapsp' in ASCII: one lock for every fold.
    PERFORM pg_advisory_xact_lock(7738725002449548144);
    WITH taken AS (
        DELETE FROM spend_journal RETURNING gateway_id, api_key_ids, costs_nanousd
    ), d AS (
        SELECT d.api_key_id, taken.gateway_id, sum(d.cost)::bigint AS cost
        FROM taken, unnest(taken.api_key_ids, taken.costs_nanousd) AS d(api_key_id, cost)
        GROUP BY 1, 2
    )
    SELECT coalesce(array_agg(api_key_id ORDER BY api_key_id, gateway_id), '{}'),
           coalesce(array_agg(gateway_id ORDER BY api_key_id, gateway_id), '{}'),
           coalesce(array_agg(cost ORDER BY api_key_id, gateway_id), '{}')
      INTO v_keys, v_gateways, v_costs FROM d;
    -- The spend rows first (see the lock order above), in one order.
    PERFORM 1 FROM key_spends WHERE api_key_id = ANY (v_keys) ORDER BY api_key_id FOR UPDATE;
    WITH d AS (
        SELECT * FROM unnest(v_keys, v_gateways, v_costs) AS d(api_key_id, gateway_id, cost)
        WHERE gateway_id IS NOT NULL
    ), old AS (
        SELECT d.api_key_id, d.gateway_id, d.cost,
               least(l.reclaimed_nanousd, greatest(d.cost, 0)) AS absorbed
        FROM d JOIN key_leases l USING (api_key_id, gateway_id)
    ), moved AS (
        UPDATE key_leases l
           SET reclaimed_nanousd = l.reclaimed_nanousd - old.absorbed,
               held_nanousd = l.held_nanousd - (old.cost - old.absorbed)
          FROM old
         WHERE l.api_key_id = old.api_key_id AND l.gateway_id = old.gateway_id
        RETURNING old.api_key_id, old.absorbed
    )
    SELECT coalesce(array_agg(api_key_id), '{}'), coalesce(array_agg(absorbed), '{}')
      INTO v_absorbed_keys, v_absorbed FROM moved WHERE absorbed > 0;
    WITH deltas AS (
        SELECT api_key_id, sum(cost)::bigint AS cost
        FROM (SELECT * FROM unnest(v_keys, v_costs) AS d(api_key_id, cost)
              UNION ALL
              SELECT k, -a FROM unnest(v_absorbed_keys, v_absorbed) AS x(k, a)) AS all_deltas
        GROUP BY api_key_id
    ), applied AS (
        UPDATE key_spends k SET spent_nanousd = k.spent_nanousd + deltas.cost
        FROM deltas WHERE k.api_key_id = deltas.api_key_id
        RETURNING deltas.cost
    )
    SELECT (SELECT count(*) FROM applied),
           (SELECT count(*) FROM deltas) - (SELECT count(*) FROM applied),
           (SELECT coalesce(sum(cost), 0) FROM deltas)::bigint
               - (SELECT coalesce(sum(cost), 0) FROM applied)::bigint
      INTO n_keys, unmatched_keys, unmatched_nanousd;
END
$$;

-- Hands `gateway` up to `want` more of `key`'s cap, and at least `need` when the key has that
-- much left, in one transaction that holds the key's spend row. What is left (cap − spent −
-- every lease) is shared: one grant takes at most its share among the live gateways (a
-- heartbeat within `live_within`), unless `need` is more. A grant short of `need` asks the
-- gateways holding leases of the key to give back what they do not use (NOTIFY
-- `lease_wanted:<key>/<gateway>`), and says how much they hold. A closed key is granted
-- nothing.
CREATE FUNCTION lease_grant(key uuid, gateway uuid, need bigint, want bigint,
                            live_within interval, OUT granted bigint, OUT left_nanousd bigint,
                            OUT others_hold_nanousd bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    spent bigint;
    is_closed boolean;
    cap bigint;
    held bigint;
    live bigint;
BEGIN
    SELECT s.spent_nanousd, s.closed INTO spent, is_closed
      FROM key_spends s WHERE s.api_key_id = key FOR UPDATE;
    IF NOT FOUND OR is_closed THEN
        granted := 0;
        left_nanousd := 0;
        others_hold_nanousd := 0;
        RETURN;
    END IF;
    SELECT a.cap_nanousd INTO cap FROM api_keys a WHERE a.id = key;
    SELECT coalesce(sum(l.held_nanousd), 0),
           coalesce(sum(l.held_nanousd) FILTER (WHERE l.gateway_id <> gateway), 0)
      INTO held, others_hold_nanousd FROM key_leases l WHERE l.api_key_id = key;
    left_nanousd := greatest(cap - spent - held, 0);
    SELECT greatest(count(*), 1) INTO live FROM gateways g
     WHERE g.reclaimed_at IS NULL AND g.heartbeat_at > now() - live_within;
    granted := least(left_nanousd, greatest(need, least(want, left_nanousd / live)));
    IF granted > 0 THEN
        INSERT INTO key_leases (api_key_id, gateway_id, held_nanousd)
        VALUES (key, gateway, granted)
        ON CONFLICT (api_key_id, gateway_id)
        DO UPDATE SET held_nanousd = key_leases.held_nanousd + EXCLUDED.held_nanousd;
    END IF;
    left_nanousd := left_nanousd - granted;
    IF granted < need AND others_hold_nanousd > 0 THEN
        PERFORM pg_notify('keycap_changes', 'lease_wanted:' || key::text || '/' || gateway::text);
    END IF;
END
$$;

-- Gives `amount` of `gateway`'s lease of `key` back, unspent: it leaves the lease. Past what
-- the lease holds, it is part of what a reclaim charged for the lease (the gateway was alive
-- after all): that much of the charge is given back to the key's spend, with a negative
-- `lease_reclaimed` ledger row dated `at`, on an open key. On a closed key the charge stays:
-- its refund was made at the close (and the charge may have been taken back from it).
CREATE FUNCTION lease_give_back(key uuid, gateway uuid, amount bigint, at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lease record;
    from_held bigint;
    from_charge bigint;
BEGIN
    PERFORM 1 FROM key_spends WHERE api_key_id = key FOR UPDATE;
    SELECT l.held_nanousd, l.reclaimed_nanousd INTO lease
      FROM key_leases l WHERE l.api_key_id = key AND l.gateway_id = gateway;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    from_held := least(greatest(lease.held_nanousd, 0), amount);
    from_charge := least(lease.reclaimed_nanousd, amount - from_held);
    UPDATE key_leases
       SET held_nanousd = held_nanousd - from_held,
           reclaimed_nanousd = reclaimed_nanousd - from_charge
     WHERE api_key_id = key AND gateway_id = gateway;
    PERFORM lease_uncharge(key, gateway, from_charge, at);
END
$$;

-- Gives `amount` of what a reclaim charged to `key` for `gateway`'s lease back to the key's
-- spend (it was not spent), with its ledger row, when the key is open. The caller holds the
-- key's spend row.
CREATE FUNCTION lease_uncharge(key uuid, gateway uuid, amount bigint, at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k record;
    dated timestamptz;
BEGIN
    IF amount <= 0 OR (SELECT closed FROM key_spends WHERE api_key_id = key) THEN
        RETURN;
    END IF;
    UPDATE key_spends SET spent_nanousd = spent_nanousd - amount WHERE api_key_id = key;
    SELECT a.org_id, a.membership_id, a.prefix INTO k FROM api_keys a WHERE a.id = key;
    SELECT greatest(at, max(t.created_at)) INTO dated FROM transactions t WHERE t.api_key_id = key;
    INSERT INTO transactions
        (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
         prev_hash, hash)
    VALUES (k.org_id, 'lease_reclaimed', k.membership_id, key, -amount,
            jsonb_build_object('prefix', k.prefix, 'gateway', gateway::text,
                               'reason', 'the gateway was alive after all: this much of what its lease held was not spent',
                               'via', 'system'),
            coalesce(dated, at), '', '');
END
$$;

-- A gateway that stops cleanly, after its last flush: the journal is folded first (by the
-- caller, in a transaction of its own), so its leases hold only what it did not spend; what a
-- reclaim charged for them and its spend did not use is given back; then it and its leases
-- are forgotten.
CREATE FUNCTION gateway_stop(gateway uuid, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lease record;
BEGIN
    PERFORM 1 FROM key_spends
     WHERE api_key_id IN (SELECT l.api_key_id FROM key_leases l
                           WHERE l.gateway_id = gateway AND l.reclaimed_nanousd > 0)
     ORDER BY api_key_id FOR UPDATE;
    FOR lease IN SELECT l.api_key_id, l.reclaimed_nanousd FROM key_leases l
                  WHERE l.gateway_id = gateway AND l.reclaimed_nanousd > 0
                  ORDER BY l.api_key_id LOOP
        PERFORM lease_uncharge(lease.api_key_id, gateway, lease.reclaimed_nanousd, at);
    END LOOP;
    DELETE FROM gateways WHERE id = gateway;
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
CREATE FUNCTION reclaim_leases(lapse interval, at timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    dead uuid[];
    locked uuid[];
    lease record;
    charged bigint;
    k record;
    dated timestamptz;
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
        SELECT a.org_id, a.membership_id, a.prefix INTO k
          FROM api_keys a WHERE a.id = lease.api_key_id;
        SELECT greatest(at, max(t.created_at)) INTO dated
          FROM transactions t WHERE t.api_key_id = lease.api_key_id;
        INSERT INTO transactions
            (org_id, kind, membership_id, api_key_id, amount_nanousd, detail, created_at,
             prev_hash, hash)
        VALUES (k.org_id, 'lease_reclaimed', k.membership_id, lease.api_key_id, charged,
                jsonb_build_object('prefix', k.prefix, 'gateway', lease.gateway_id::text,
                                   'reason', 'the gateway stopped heartbeating: what its lease held is counted as spent',
                                   'via', 'system'),
                coalesce(dated, at), '', '');
        n := n + 1;
    END LOOP;
    PERFORM set_config('keycap.fold_at', '', true);
    UPDATE gateways SET reclaimed_at = now() WHERE id = ANY (dead);
    RETURN n;
END
$$;
