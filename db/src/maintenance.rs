//! Time-driven changes: closing expired keys (with their refunds), renewing monthly keys at
//! the month boundary, and forgetting expired sessions and old flush and give-back claims. `keycap up` and
//! `keycap admin` run [`run_due`] periodically; every step is idempotent.

use domain::budget::{Renewal, renew};
use domain::{LedgerKind, Money, MonthWindow};
use serde_json::json;
use time::OffsetDateTime;

use crate::keys::{close, key_from_row, select_keys};
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool, members};

/// What one maintenance pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub expired: usize,
    pub renewed: usize,
    pub paused: usize,
    /// Due keys left for a later pass: their member's membership was locked by another change.
    pub renewals_deferred: usize,
    pub sessions_deleted: u64,
    pub flush_claims_deleted: u64,
    pub give_back_claims_deleted: u64,
}

/// Closes every key whose expiry has passed and renews monthly keys that are due.
pub async fn run_due(pool: &Pool, now: OffsetDateTime) -> Result<Report, Error> {
    let expired = expire_due(pool, now).await?;
    let (renewed, paused, renewals_deferred) = renew_due(pool, now).await?;
    let client = pool.get().await?;
    let sessions_deleted = client
        .execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])
        .await?;
    // A gateway retries a failed flush under its claim only while it lives; a week is far
    // beyond any retry (see migrations/0007_flush_claims.sql).
    let flush_claims_deleted = client
        .execute(
            "DELETE FROM spend_flushes WHERE flushed_at < $1::timestamptz - interval '7 days'",
            &[&now],
        )
        .await?;
    // Likewise a give-back's claim (see migrations/0023_give_back_claims.sql).
    let give_back_claims_deleted = client
        .execute(
            "DELETE FROM lease_give_backs WHERE given_at < $1::timestamptz - interval '7 days'",
            &[&now],
        )
        .await?;
    Ok(Report {
        expired,
        renewed,
        paused,
        renewals_deferred,
        sessions_deleted,
        flush_claims_deleted,
        give_back_claims_deleted,
    })
}

/// Open keys whose expiry is at or before `$1`, on `api_keys k`.
macro_rules! expiry_due {
    () => {
        "k.closed_at IS NULL AND k.expires_at <= $1"
    };
}

/// Open monthly keys whose period started before `$1`, on `api_keys k`.
macro_rules! renewal_due {
    () => {
        "k.renew_monthly AND k.closed_at IS NULL AND k.period_start < $1"
    };
}

/// Closes keys whose expiry is at or before `now`, refunding their unspent caps.
pub async fn expire_due(pool: &Pool, now: OffsetDateTime) -> Result<usize, Error> {
    let mut client = pool.get().await?;
    let due = client
        .query_one(
            concat!(
                "SELECT EXISTS (SELECT 1 FROM api_keys k WHERE ",
                expiry_due!(),
                ")"
            ),
            &[&now],
        )
        .await?;
    if !due.get::<_, bool>(0) {
        return Ok(0);
    }
    // The refunds depend on what was spent: fold first (before the transaction; see `usage::fold`).
    crate::usage::fold(&client).await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            select_keys!(
                "WHERE ",
                expiry_due!(),
                " ORDER BY k.expires_at FOR NO KEY UPDATE OF k, s SKIP LOCKED"
            ),
            &[&now],
        )
        .await?;
    for row in &rows {
        let key = key_from_row(row);
        close(
            &tx,
            &key,
            "expired",
            LedgerKind::KeyExpired,
            Actor::System,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

const LOCK_MEMBERSHIPS: &str = "SELECT id, monthly_budget_nanousd FROM memberships
    WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE SKIP LOCKED";

/// Renews monthly keys carved in an earlier month: spend resets and the cap is carved again
/// from the new month, or the key is paused (with a reason) when the budget cannot cover it.
/// A paused key is tried again on every pass, so raising the budget un-pauses it.
/// Returns how many keys it renewed, paused, and deferred to a later pass.
pub async fn renew_due(pool: &Pool, now: OffsetDateTime) -> Result<(usize, usize, usize), Error> {
    let window = MonthWindow::containing(now);
    let mut client = pool.get().await?;
    let due = client
        .query_one(
            concat!(
                "SELECT EXISTS (SELECT 1 FROM api_keys k WHERE ",
                renewal_due!(),
                ")"
            ),
            &[&window.first_day()],
        )
        .await?;
    if !due.get::<_, bool>(0) {
        return Ok((0, 0, 0));
    }
    // Spend flushed so far belongs to the period that ends here: fold first (before the
    // transaction; see `usage::fold`). Spend flushed after the fold counts in the new period.
    crate::usage::fold(&client).await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            select_keys!(
                "WHERE ",
                renewal_due!(),
                " ORDER BY k.created_at FOR NO KEY UPDATE OF k, s SKIP LOCKED"
            ),
            &[&window.first_day()],
        )
        .await?;
    // Lock every membership involved, in id order, before the first ledger row: the ledger's
    // per-org lock is taken after the membership lock everywhere else (carving, budget
    // changes), and taking them in the other order here could deadlock with those. Others lock
    // a membership before its keys (a cap change, removing a member), so waiting here for one,
    // while holding its keys, could deadlock with them: a membership locked elsewhere is
    // skipped, and its keys wait for the next pass.
    let mut membership_ids: Vec<uuid::Uuid> = rows
        .iter()
        .map(|row| key_from_row(row).membership_id)
        .collect();
    membership_ids.sort();
    membership_ids.dedup();
    // Each locked membership's monthly budget.
    let locked: std::collections::HashMap<uuid::Uuid, Money> = tx
        .query(LOCK_MEMBERSHIPS, &[&membership_ids])
        .await?
        .iter()
        .map(|row| (row.get(0), Money::from_nanos(row.get(1))))
        .collect();
    let (mut renewed, mut paused, mut deferred) = (0, 0, 0);
    for row in &rows {
        let key = key_from_row(row);
        let Some(&budget) = locked.get(&key.membership_id) else {
            deferred += 1;
            continue;
        };
        // Counts this pass's own renewals of the member's other keys too.
        let month = members::month_of(&tx, key.membership_id, budget, window).await?;
        let mut entry = NewEntry::new(key.org_id, LedgerKind::KeyRenewed, Actor::System, now);
        entry.membership_id = Some(key.membership_id);
        entry.api_key_id = Some(key.id);
        match renew(key.cap, &month) {
            Renewal::Renew { carve } => {
                tx.execute(
                    "UPDATE api_keys SET period_start = $2, paused_reason = NULL WHERE id = $1",
                    &[&key.id, &window.first_day()],
                )
                .await?;
                tx.execute(
                    "UPDATE key_spends SET spent_nanousd = 0 WHERE api_key_id = $1",
                    &[&key.id],
                )
                .await?;
                // What a reclaim charged to the ended period stays there: spend that gateway
                // flushes later is counted against it, not in the new period, and what it gives
                // back unspent is not taken off the new period's spend (migration 0022).
                tx.execute(
                    "UPDATE key_leases
                        SET reclaimed_past_nanousd = reclaimed_past_nanousd + reclaimed_nanousd,
                            reclaimed_nanousd = 0
                      WHERE api_key_id = $1 AND reclaimed_nanousd > 0",
                    &[&key.id],
                )
                .await?;
                entry.amount = carve;
                entry.detail =
                    json!({ "prefix": key.prefix, "previous_spent_nanousd": key.spent.nanos() });
                transactions::append(&tx, &entry).await?;
                renewed += 1;
            }
            Renewal::Pause { reason } => {
                if key.paused_reason.as_deref() != Some(reason.as_str()) {
                    tx.execute(
                        "UPDATE api_keys SET paused_reason = $2 WHERE id = $1",
                        &[&key.id, &reason],
                    )
                    .await?;
                    entry.kind = LedgerKind::KeyPaused;
                    entry.detail = json!({ "prefix": key.prefix, "reason": reason });
                    transactions::append(&tx, &entry).await?;
                }
                paused += 1;
            }
        }
    }
    tx.commit().await?;
    Ok((renewed, paused, deferred))
}
