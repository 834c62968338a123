-- A reclaim's charge stays with the key period it was made in (ARCHITECTURE.md, "Leases").
--
-- A reclaim charges what a silent gateway's lease holds to its key's spend (migration 0015).
-- If the gateway was alive after all, spend it flushes later is counted against that charge,
-- and what it gives back unspent is uncharged. Until now a renewal forgot the charge
-- (`reclaimed_nanousd = 0`). Spend the gateway then flushed from the reclaimed slice counted a
-- second time, in the new period, and came out of a lease that held nothing for it (taking it
-- below zero), so another gateway could be granted the whole new cap beside it: the new
-- period's spend could pass its cap by up to the slice.
--
-- Now a renewal moves the charge to `reclaimed_past_nanousd`. Spend the gateway flushes later
-- is counted against it first (the ended period paid for it), not in the new period; what it
-- gives back unspent beyond its lease and any charge of the new period leaves it, and is not
-- taken off the new period's spend (an ended period's budget does not come back).
--
-- Also, `gateway_stop` locks the spend rows of every key its gateway leases before deleting the
-- gateway (whose cascade deletes the leases), keeping migration 0015's lock order; it locked
-- only those with a charge to give back.
--
-- Upgrading: expand only (a column with a default; functions replaced in place). An older
-- process that renews still zeroes the charge, as before.

ALTER TABLE key_leases
    ADD COLUMN reclaimed_past_nanousd bigint NOT NULL DEFAULT 0
        CHECK (reclaimed_past_nanousd >= 0);

-- As in migration 0015, with a charge of an ended period counted first.
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
    -- The spend rows first (see the lock order of migration 0015), in one order.
    PERFORM 1 FROM key_spends WHERE api_key_id = ANY (v_keys) ORDER BY api_key_id FOR UPDATE;
    WITH d AS (
        SELECT * FROM unnest(v_keys, v_gateways, v_costs) AS d(api_key_id, gateway_id, cost)
        WHERE gateway_id IS NOT NULL
    ), charged AS (
        SELECT d.api_key_id, d.gateway_id, d.cost,
               least(l.reclaimed_past_nanousd, greatest(d.cost, 0)) AS past,
               l.reclaimed_nanousd
        FROM d JOIN key_leases l USING (api_key_id, gateway_id)
    ), old AS (
        SELECT c.api_key_id, c.gateway_id, c.cost, c.past,
               least(c.reclaimed_nanousd, greatest(c.cost, 0) - c.past) AS absorbed
        FROM charged c
    ), moved AS (
        UPDATE key_leases l
           SET reclaimed_past_nanousd = l.reclaimed_past_nanousd - old.past,
               reclaimed_nanousd = l.reclaimed_nanousd - old.absorbed,
               held_nanousd = l.held_nanousd - (old.cost - old.past - old.absorbed)
          FROM old
         WHERE l.api_key_id = old.api_key_id AND l.gateway_id = old.gateway_id
        RETURNING old.api_key_id, old.past + old.absorbed AS absorbed
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

-- As in migration 0015: past what the lease holds, a give-back is part of what a reclaim
-- charged for it, this period's first (given back to the key's spend by `lease_uncharge`), then
-- an ended period's (forgotten: that period's spend stays as it was).
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
END
$$;

-- As in migration 0015, with every leased key's spend row locked first.
CREATE OR REPLACE FUNCTION gateway_stop(gateway uuid, at timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lease record;
BEGIN
    PERFORM 1 FROM key_spends
     WHERE api_key_id IN (SELECT l.api_key_id FROM key_leases l WHERE l.gateway_id = gateway)
     ORDER BY api_key_id FOR UPDATE;
    FOR lease IN SELECT l.api_key_id, l.reclaimed_nanousd FROM key_leases l
                  WHERE l.gateway_id = gateway AND l.reclaimed_nanousd > 0
                  ORDER BY l.api_key_id LOOP
        PERFORM lease_uncharge(lease.api_key_id, gateway, lease.reclaimed_nanousd, at);
    END LOOP;
    DELETE FROM gateways WHERE id = gateway;
END
$$;
