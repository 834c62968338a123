-- Spend goes to a journal first, and reaches `key_spends` when the journal is folded.
--
-- The gateway flushes every key's new spend once a second. Adding it to each key's
-- `key_spends` row cost the database ~2 µs per key: with 100,000 keys and ~26,000 of them
-- spending each second, 45-57 ms a second, on a core the gateway shares with its load
-- (benches/README.md). Appending the same deltas as one row of two arrays costs ~1.5 ms, and
-- folding a minute of such rows into `key_spends` ~350 ms: about six times less work.
--
-- So a flush appends one row here (under its claim in `spend_flushes`, in the same statement,
-- so a retried flush adds nothing twice), and `fold_spend_journal()` moves every committed row
-- into `key_spends` and deletes it, in one statement. A key's spend is `key_spends` plus its
-- unfolded deltas; whoever reads it for money or display folds first:
--   - the gateway, before it serves (so a restarted gateway starts from every flushed cent),
--     then every rollup interval (default a minute) and after its last flush;
--   - revoking, expiring, renewing and removing keys, just before their transaction (the
--     refund is `cap - spent`; spend flushed in between on a key that closes is late spend,
--     taken back below; on a renewed key it counts in the new period);
--   - listings of keys (CLI, admin pages and API);
--   - a gateway reloading a key whose period was renewed (it takes the new period's spend).
-- A gateway loading a key it has not cached does not fold: the key's deltas can only come
-- from a gateway that had it cached, this one before a restart (folded at start) or another
-- running beside it, whose spend it never sees anyway.
--
-- Folds take a transaction-scoped advisory lock first, so they run one at a time. (Without
-- it a second fold would still wait: it sees the first's journal rows, which the first has
-- locked by deleting them, until the first commits. The lock makes that plain rather than a
-- consequence of row locks; a test of concurrent folds passes either way.) Each fold runs in
-- a transaction of its own: inside a longer one it would keep that lock, and the
-- org's ledger lock if it fires a take-back, to the end of it. Spend folded onto a closed key
-- still fires the late-spend take-back of migration 0008 (on the fold, not on the flush), so
-- a take-back reaches the ledger up to a fold interval after the spend was flushed.
--
-- Upgrading: expand only. A gateway of an older version keeps updating `key_spends` itself;
-- an older admin app or CLI reading while a new gateway runs sees spend up to a fold interval
-- late, as a reader that does not fold would.

CREATE TABLE spend_journal (
    -- The flush's claim in `spend_flushes` (no foreign key: claims are forgotten after a
    -- week, a row here never is until it is folded).
    flush_id      uuid PRIMARY KEY,
    api_key_ids   uuid[] NOT NULL,
    costs_nanousd bigint[] NOT NULL,
    CHECK (cardinality(api_key_ids) = cardinality(costs_nanousd))
);

-- Folds every committed journal row into `key_spends`. Returns how many keys' spend it added,
-- and the spend of keys that have no spend row (keys the database no longer has), which is
-- recorded nowhere: the caller reports it.
CREATE FUNCTION fold_spend_journal(OUT n_keys bigint, OUT unmatched_keys bigint,
                                   OUT unmatched_nanousd bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- 0x6b65796361707370 is 'keycapsp' in ASCII: one lock for every fold.
    PERFORM pg_advisory_xact_lock(7738725002449548144);
    WITH taken AS (
        DELETE FROM spend_journal RETURNING api_key_ids, costs_nanousd
    ), deltas AS (
        SELECT d.api_key_id, sum(d.cost)::bigint AS cost
        FROM taken, unnest(taken.api_key_ids, taken.costs_nanousd) AS d(api_key_id, cost)
        GROUP BY d.api_key_id
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
