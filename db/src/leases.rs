//! Leases of keys' caps held by gateways, and the gateways' heartbeats (migration 0015).
//!
//! Postgres keeps, for every key, `spent + Σ held <= cap`: a gateway spends only within what it
//! was granted here, so no number of gateways lets a key pass its cap.

use std::time::Duration;

use domain::Money;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Error, GenericClient};

/// Registers a gateway that starts now, on `host`.
pub async fn register(client: &impl GenericClient, id: Uuid, host: &str) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO gateways (id, host) VALUES ($1, $2)",
            &[&id, &host],
        )
        .await?;
    Ok(())
}

/// What a heartbeat learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Alive,
    /// Another gateway had reclaimed this one's leases (its heartbeat had lapsed): what they
    /// held was charged as spent. Spend it settles from them is counted against that charge.
    WasReclaimed,
}

/// Records that gateway `id` is alive (by the database's clock). A gateway forgotten after a
/// day of silence is registered again.
pub async fn heartbeat(client: &impl GenericClient, id: Uuid) -> Result<Heartbeat, Error> {
    // The row is locked before it is read, so a reclaim committing meanwhile is seen.
    let row = client
        .query_opt(
            "UPDATE gateways g SET heartbeat_at = now(), reclaimed_at = NULL
               FROM (SELECT id, reclaimed_at FROM gateways WHERE id = $1 FOR NO KEY UPDATE) old
              WHERE g.id = old.id
             RETURNING old.reclaimed_at IS NOT NULL",
            &[&id],
        )
        .await?;
    match row {
        Some(row) if row.get::<_, bool>(0) => Ok(Heartbeat::WasReclaimed),
        Some(_) => Ok(Heartbeat::Alive),
        None => {
            client
                .execute(
                    "INSERT INTO gateways (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                    &[&id],
                )
                .await?;
            Ok(Heartbeat::WasReclaimed)
        }
    }
}

/// What a grant handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub granted: Money,
    /// What is left of the key's cap after the grant, beyond every lease.
    pub left: Money,
    /// What other gateways' leases of the key hold (asked to give back when the grant was
    /// short of `need`).
    pub others_hold: Money,
    /// Why the key is closed (`revoked`, `expired`, ...) when a grant found nothing left
    /// because it was: the gateway may not have heard of the change yet.
    pub closed: Option<String>,
}

/// Grants gateway `gateway` up to `want` more of `key`'s cap, and at least `need` when that
/// much is left (see `lease_grant` in migration 0015). `live_within` is how recent a heartbeat
/// counts as live, for the share.
pub async fn grant(
    client: &impl GenericClient,
    key: Uuid,
    gateway: Uuid,
    need: Money,
    want: Money,
    live_within: Duration,
) -> Result<Grant, Error> {
    let live_ms = i64::try_from(live_within.as_millis()).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "SELECT granted, left_nanousd, others_hold_nanousd FROM lease_grant($1, $2, $3, $4, $5 * interval '1 millisecond')",
            &[&key, &gateway, &need.nanos(), &want.nanos(), &(live_ms as f64)],
        )
        .await?;
    let mut grant = Grant {
        granted: Money::from_nanos(row.get(0)),
        left: Money::from_nanos(row.get(1)),
        others_hold: Money::from_nanos(row.get(2)),
        closed: None,
    };
    // Nothing left for anyone: say so when it is because the key closed, read after the grant
    // (a revocation committed before it is seen). Only this rare path pays the round trip.
    if grant.granted == Money::ZERO && grant.left == Money::ZERO && grant.others_hold == Money::ZERO
    {
        grant.closed = client
            .query_opt("SELECT close_reason FROM api_keys WHERE id = $1", &[&key])
            .await?
            .and_then(|row| row.get(0));
    }
    Ok(grant)
}

/// Gives `amount` of `gateway`'s lease of `key` back, unspent, once for `claim` (see
/// `lease_give_back` in migrations 0015 and 0023; a ledger row it writes is dated `now`):
/// true when applied now, false when `claim` was applied before. A caller that did not hear
/// back sends the same claim again, so a give-back that committed is never applied twice.
pub async fn give_back(
    client: &impl GenericClient,
    key: Uuid,
    gateway: Uuid,
    amount: Money,
    now: OffsetDateTime,
    claim: Uuid,
) -> Result<bool, Error> {
    let row = client
        .query_one(
            "SELECT lease_give_back($1, $2, $3, $4, $5)",
            &[&key, &gateway, &amount.nanos(), &now, &claim],
        )
        .await?;
    Ok(row.get(0))
}

/// Reclaims the leases of gateways whose heartbeat is older than `lapse` (see `reclaim_leases`
/// in migration 0021), dating the ledger rows `now`, after a fold of the spend journal in a
/// transaction of its own. Returns how many leases were charged.
pub async fn reclaim(
    client: &impl GenericClient,
    lapse: Duration,
    now: OffsetDateTime,
) -> Result<i64, Error> {
    let lapse_ms = i64::try_from(lapse.as_millis()).unwrap_or(i64::MAX);
    let anyone_dead = client
        .query_one(
            // As `reclaim_leases` chooses: a gateway reclaimed before is reclaimed again while
            // a lease of its holds something (one granted to it since, say).
            "SELECT EXISTS (SELECT 1 FROM gateways g
                             WHERE g.heartbeat_at < now() - $1 * interval '1 millisecond'
                               AND (g.reclaimed_at IS NULL
                                    OR EXISTS (SELECT 1 FROM key_leases l
                                                WHERE l.gateway_id = g.id
                                                  AND l.held_nanousd > 0)))",
            &[&(lapse_ms as f64)],
        )
        .await?
        .get::<_, bool>(0);
    if !anyone_dead {
        return Ok(0);
    }
    crate::usage::fold(client).await?;
    let row = client
        .query_one(
            "SELECT reclaim_leases($1 * interval '1 millisecond', $2)",
            &[&(lapse_ms as f64), &now],
        )
        .await?;
    Ok(row.get(0))
}

/// A gateway that stops cleanly, after its last flush: the journal is folded (its spend leaves
/// its leases), then its leases, holding only what it did not spend, are given back whole, and
/// what that frees refunded (see `gateway_stop` in migration 0024). The statement writes ledger
/// rows of several orgs; one that deadlocks with another writer of them is tried again, as a
/// stop that fails leaves its leases to a reclaim, which charges them.
pub async fn stop(client: &impl GenericClient, id: Uuid, now: OffsetDateTime) -> Result<(), Error> {
    crate::usage::fold(client).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client
            .execute("SELECT gateway_stop($1, $2)", &[&id, &now])
            .await
        {
            Ok(_) => return Ok(()),
            Err(err)
                if attempts < 3
                    && err.code()
                        == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
            {
                continue;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// What the leases of `key` hold, over every gateway.
pub async fn held(client: &impl GenericClient, key: Uuid) -> Result<Money, Error> {
    let row = client
        .query_one(
            "SELECT coalesce(sum(held_nanousd), 0)::bigint FROM key_leases WHERE api_key_id = $1",
            &[&key],
        )
        .await?;
    Ok(Money::from_nanos(row.get(0)))
}

/// What [`take_requests`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    /// Requests taken from the current minute's limit.
    pub granted: u32,
    /// Until the minute ends, when what was taken lapses.
    pub ends_in: Duration,
}

/// Takes up to `want` of `key`'s `rpm` requests in the current minute of the database's clock
/// (see `rate_take` in migration 0016).
pub async fn take_requests(
    client: &impl GenericClient,
    key: Uuid,
    rpm: u32,
    want: u32,
    live_within: Duration,
) -> Result<Requests, Error> {
    let live_ms = i64::try_from(live_within.as_millis()).unwrap_or(i64::MAX);
    let rpm = i32::try_from(rpm).unwrap_or(i32::MAX);
    let want = i32::try_from(want).unwrap_or(i32::MAX);
    let row = client
        .query_one(
            "SELECT granted, ends_in_ms FROM rate_take($1, $2, $3, $4 * interval '1 millisecond')",
            &[&key, &rpm, &want, &(live_ms as f64)],
        )
        .await?;
    Ok(Requests {
        granted: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
        ends_in: Duration::from_millis(u64::try_from(row.get::<_, i64>(1)).unwrap_or(0)),
    })
}
