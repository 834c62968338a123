//! Spend flushed by the gateway: per-key spend, appended to the spend journal every flush and
//! folded into the keys' rows later ([`fold`]), and per-minute usage rollups, written less
//! often; each flush is one statement, applied at most once per flush id.

use domain::{LedgerKind, Money};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::transactions::NewEntry;
use crate::{Actor, Error, Pool};

/// Settled usage of one key in one minute, of requests naming one model, since the rollups
/// were last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub api_key_id: Uuid,
    /// The minute the requests settled in (truncated to the minute by the database).
    pub minute: OffsetDateTime,
    /// The model the requests named.
    pub model: String,
    pub n_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanousd: i64,
}

/// Spend to add, at most one entry per key, kept as the two arrays the flush statement takes:
/// a flush of many keys makes no other copy, and a cleared one keeps its memory for the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendDeltas {
    api_key_ids: Vec<Uuid>,
    costs_nanousd: Vec<i64>,
    /// The gateway whose leases the spend was settled within (migration 0015): the fold moves
    /// it out of them. `None` for spend outside any lease.
    gateway_id: Option<Uuid>,
}

impl SpendDeltas {
    /// An empty list of spend settled within `gateway_id`'s leases.
    pub fn of_gateway(gateway_id: Uuid) -> SpendDeltas {
        SpendDeltas {
            gateway_id: Some(gateway_id),
            ..SpendDeltas::default()
        }
    }

    /// Adds `cost_nanousd` for a key not in the list yet.
    pub fn push(&mut self, api_key_id: Uuid, cost_nanousd: i64) {
        self.api_key_ids.push(api_key_id);
        self.costs_nanousd.push(cost_nanousd);
    }

    pub fn len(&self) -> usize {
        self.api_key_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.api_key_ids.is_empty()
    }

    /// Empties the list, keeping its memory.
    pub fn clear(&mut self) {
        self.api_key_ids.clear();
        self.costs_nanousd.clear();
    }

    /// `(key id, cost)` pairs, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, i64)> + '_ {
        self.api_key_ids
            .iter()
            .copied()
            .zip(self.costs_nanousd.iter().copied())
    }

    /// The sum of the costs.
    pub fn total_nanousd(&self) -> i64 {
        self.costs_nanousd.iter().sum()
    }
}

// The flush claims its id first; the journal row and the two usage upserts join the claim, so
// they change nothing when the id was claimed before (a retry of a flush that committed). A
// data-modifying CTE runs whether or not the rest of the statement reads it, so all four
// commit together. Empty arrays make any write a no-op. The rollups are per key and minute;
// `usage_by_model` per key, UTC month and model (migration 0013).
const FLUSH: &str = "WITH claim AS (
        INSERT INTO spend_flushes (id) VALUES ($9) ON CONFLICT (id) DO NOTHING RETURNING id
    ), spend AS (
        INSERT INTO spend_journal (flush_id, api_key_ids, costs_nanousd, gateway_id)
        SELECT id, $1::uuid[], $2::bigint[], $11::uuid FROM claim WHERE cardinality($1::uuid[]) > 0
    ), rollups AS (
        INSERT INTO usage_rollups AS u (api_key_id, minute, n_requests, prompt_tokens, completion_tokens, cost_nanousd)
        SELECT api_key_id, date_trunc('minute', minute), sum(n_requests), sum(prompt_tokens), sum(completion_tokens), sum(cost_nanousd)
        FROM unnest($3::uuid[], $4::timestamptz[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
            AS d(api_key_id, minute, n_requests, prompt_tokens, completion_tokens, cost_nanousd), claim
        GROUP BY api_key_id, date_trunc('minute', minute)
        ON CONFLICT (api_key_id, minute) DO UPDATE SET
            n_requests = u.n_requests + EXCLUDED.n_requests,
            prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
            cost_nanousd = u.cost_nanousd + EXCLUDED.cost_nanousd
    ), by_model AS (
        INSERT INTO usage_by_model AS u (api_key_id, month, model, n_requests, prompt_tokens, completion_tokens, cost_nanousd)
        SELECT api_key_id, date_trunc('month', minute AT TIME ZONE 'UTC')::date, model,
               sum(n_requests), sum(prompt_tokens), sum(completion_tokens), sum(cost_nanousd)
        FROM unnest($3::uuid[], $4::timestamptz[], $10::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[])
            AS d(api_key_id, minute, model, n_requests, prompt_tokens, completion_tokens, cost_nanousd), claim
        GROUP BY 1, 2, 3
        ON CONFLICT (api_key_id, month, model) DO UPDATE SET
            n_requests = u.n_requests + EXCLUDED.n_requests,
            prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
            cost_nanousd = u.cost_nanousd + EXCLUDED.cost_nanousd
    )
    SELECT count(*) FROM claim";

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// The deltas were written: the spend to the journal (see [`fold`]), the rollups to their
    /// rows.
    Applied,
    /// A flush with this id had committed before (a retry after a lost reply): nothing was
    /// added again.
    AlreadyApplied,
}

/// Writes `spend` to the spend journal and adds `rollups` to the per-minute rollups,
/// atomically, in one statement, unless a flush with the same `id` committed before: retrying
/// a flush whose reply was lost, with its id and deltas unchanged, never adds them twice. Each
/// key appears at most once in `spend`. The spend reaches the keys' rows when the journal is
/// next folded ([`fold`]).
pub async fn flush(
    pool: &Pool,
    id: Uuid,
    spend: &SpendDeltas,
    rollups: &[UsageDelta],
) -> Result<Flushed, Error> {
    if spend.is_empty() && rollups.is_empty() {
        return Ok(Flushed::Applied);
    }
    let ids: Vec<Uuid> = rollups.iter().map(|d| d.api_key_id).collect();
    let minutes: Vec<OffsetDateTime> = rollups.iter().map(|d| d.minute).collect();
    let n_requests: Vec<i64> = rollups.iter().map(|d| d.n_requests).collect();
    let prompt: Vec<i64> = rollups.iter().map(|d| d.prompt_tokens).collect();
    let completion: Vec<i64> = rollups.iter().map(|d| d.completion_tokens).collect();
    let cost: Vec<i64> = rollups.iter().map(|d| d.cost_nanousd).collect();
    let models: Vec<&str> = rollups.iter().map(|d| d.model.as_str()).collect();
    let client = pool.get().await?;
    let row = client
        .query_one(
            FLUSH,
            &[
                &spend.api_key_ids,
                &spend.costs_nanousd,
                &ids,
                &minutes,
                &n_requests,
                &prompt,
                &completion,
                &cost,
                &id,
                &models,
                &spend.gateway_id,
            ],
        )
        .await?;
    Ok(match row.get::<_, i64>(0) {
        0 => Flushed::AlreadyApplied,
        _ => Flushed::Applied,
    })
}

/// What a fold did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    /// Keys whose spend rows got spend.
    pub n_keys: i64,
    /// Spend for keys that have no spend row (every key gets one when it is made, so this
    /// means keys the database no longer has): it is recorded nowhere. [`fold`] logs it.
    pub unmatched_keys: i64,
    pub unmatched_nanousd: i64,
}

/// Moves the spend journal's committed rows into the keys' spend rows (migration 0009): call
/// it before reading spend that must be exact, outside any transaction. Inside one, the fold's
/// advisory lock and its spend rows would stay locked to the end of the transaction. Spend
/// flushed between the fold and a close is inside the lease it came from, which the close's
/// refund keeps back (migration 0024). The fold writes no ledger row, so it takes no clock:
/// `fold_spend_journal(folded_at)` of migration 0012 dated take-backs, which are gone.
pub async fn fold(client: &impl deadpool_postgres::GenericClient) -> Result<Folded, Error> {
    let row = client
        .query_one("SELECT * FROM fold_spend_journal()", &[])
        .await?;
    let folded = Folded {
        n_keys: row.get(0),
        unmatched_keys: row.get(1),
        unmatched_nanousd: row.get(2),
    };
    if folded.unmatched_keys > 0 {
        tracing::error!(
            n_keys = folded.unmatched_keys,
            lost_nanousd = folded.unmatched_nanousd,
            "flushed spend for keys the database does not have; it is recorded nowhere"
        );
    }
    Ok(folded)
}

/// A request that ended without a reported cost, charged what the upstream said afterwards it
/// billed instead of its reservation (`gateway/src/reconcile.rs`).
#[derive(Debug, Clone)]
pub struct Reconciled<'a> {
    pub org_id: Uuid,
    pub api_key_id: Uuid,
    /// The upstream's name for the request (a generation id).
    pub upstream_id: &'a str,
    pub reserved: Money,
    pub billed: Money,
    /// When the upstream answered: the gateway's clock.
    pub at: OffsetDateTime,
}

/// Appends the `usage_reconciled` ledger row of `row`: its amount is the reservation less what
/// was billed (the reservation itself was held, never charged). The charge itself reaches the key's spend with the
/// gateway's flushes, like any settled request.
pub async fn record_reconciled(
    client: &impl deadpool_postgres::GenericClient,
    row: &Reconciled<'_>,
) -> Result<(), Error> {
    let membership = client
        .query_opt(
            "SELECT membership_id FROM api_keys WHERE id = $1",
            &[&row.api_key_id],
        )
        .await?;
    let mut entry = NewEntry::new(
        row.org_id,
        LedgerKind::UsageReconciled,
        Actor::System,
        row.at,
    );
    entry.api_key_id = Some(row.api_key_id);
    entry.membership_id = membership.map(|r| r.get(0));
    entry.amount = row.reserved.saturating_sub(row.billed);
    entry.detail = serde_json::json!({
        "generation_id": row.upstream_id,
        "reserved_nanousd": row.reserved.nanos(),
        "billed_nanousd": row.billed.nanos(),
    });
    crate::transactions::append(client, &entry).await
}

/// Spend per UTC day in `[from, to)`, for an org or for one membership, in day order. Days
/// without spend are absent.
pub async fn daily_spend(
    client: &impl deadpool_postgres::GenericClient,
    org_id: Uuid,
    membership_id: Option<Uuid>,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<(time::Date, domain::Money)>, Error> {
    let rows = client
        .query(
            "SELECT (date_trunc('day', r.minute AT TIME ZONE 'UTC'))::date,
                    sum(r.cost_nanousd)::bigint
             FROM usage_rollups r JOIN api_keys k ON k.id = r.api_key_id
             WHERE k.org_id = $1 AND ($2::uuid IS NULL OR k.membership_id = $2)
               AND r.minute >= $3 AND r.minute < $4
             GROUP BY 1 ORDER BY 1",
            &[&org_id, &membership_id, &from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), domain::Money::from_nanos(row.get(1))))
        .collect())
}
