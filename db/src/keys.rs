//! Sub-keys (`api_keys`): provisioning from a member's budget, listing, changing caps and
//! revoking.

use deadpool_postgres::GenericClient;
use domain::budget::change_cap;
use domain::services::Service;
use domain::{ApiKeyToken, CapChange, Email, LedgerKind, Money, MonthWindow};
use futures_util::TryStreamExt;
use serde_json::json;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::orgs::Org;
use crate::transactions::{self, NewEntry};
use crate::{Actor, Error, Pool, master_keys, members};

/// A sub-key as stored (its token is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub membership_id: Uuid,
    pub member_email: String,
    pub master_key_id: Uuid,
    pub service: String,
    pub name: String,
    pub prefix: String,
    pub cap: Money,
    pub spent: Money,
    pub model_scope: Vec<String>,
    pub renew_monthly: bool,
    pub period_start: Date,
    pub paused_reason: Option<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
    pub close_reason: Option<String>,
    /// When a gateway-visible column last changed (not spend).
    pub changed_at: OffsetDateTime,
    /// Requests per minute (a burst of N, then one every 60/N s); `None` for no limit.
    pub rate_limit_rpm: Option<i32>,
}

impl ApiKey {
    /// What the key may still spend.
    pub fn remaining(&self) -> Money {
        self.cap.saturating_sub(self.spent).at_least_zero()
    }

    /// How far the key's spend has passed its cap, if it has: the upstream billed more than
    /// the gateway reserved (a pricing bug to fix), or spend reached a cap cut since.
    pub fn over_cap(&self) -> Option<Money> {
        let over = self.spent.saturating_sub(self.cap);
        (over > Money::ZERO).then_some(over)
    }

    /// The key's status as people read it: `revoked`, `expired` (closed, or past its expiry
    /// but not closed yet by maintenance), `paused` or `active`, in the order the gateway
    /// checks them.
    pub fn status(&self, now: OffsetDateTime) -> &'static str {
        match (self.close_reason.as_deref(), &self.paused_reason) {
            (Some("revoked"), _) => "revoked",
            (Some(_), _) => "expired",
            (None, _) if self.expires_at.is_some_and(|at| at <= now) => "expired",
            (None, Some(_)) => "paused",
            (None, None) => "active",
        }
    }

    /// When it was revoked, if it was.
    pub fn revoked_at(&self) -> Option<OffsetDateTime> {
        self.closed_at
            .filter(|_| self.close_reason.as_deref() == Some("revoked"))
    }
}

/// A sub-key to provision.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub member: Email,
    pub service: Service,
    pub name: String,
    pub cap: Money,
    pub expires_at: Option<OffsetDateTime>,
    pub model_scope: Vec<String>,
    pub renew_monthly: bool,
    /// Requests per minute (1 to 1,000,000: a burst of N, then one every 60/N s); `None` for
    /// no limit.
    pub rate_limit_rpm: Option<i32>,
}

/// The query for keys with their spend and member, followed by `$tail` (string literals, or
/// macros that expand to one, such as a condition shared with another query).
macro_rules! select_keys {
    ($($tail:tt)+) => {
        concat!(
            "SELECT k.id, k.org_id, k.membership_id, u.email, k.master_key_id, k.service, k.name, k.prefix,
                    k.cap_nanousd, s.spent_nanousd, k.model_scope, k.renew_monthly, k.period_start,
                    k.paused_reason, k.expires_at, k.created_at, k.closed_at, k.close_reason, k.changed_at,
                    k.rate_limit_rpm
             FROM api_keys k
             JOIN key_spends s ON s.api_key_id = k.id
             JOIN memberships m ON m.id = k.membership_id
             JOIN users u ON u.id = m.user_id ",
            $($tail)+
        )
    };
}

fn from_row(row: &tokio_postgres::Row) -> ApiKey {
    from_row_at(row, 0)
}

/// A key from the columns of [`select_keys!`] starting at column `at`.
fn from_row_at(row: &tokio_postgres::Row, at: usize) -> ApiKey {
    ApiKey {
        id: row.get(at),
        org_id: row.get(1 + at),
        membership_id: row.get(2 + at),
        member_email: row.get(3 + at),
        master_key_id: row.get(4 + at),
        service: row.get(5 + at),
        name: row.get(6 + at),
        prefix: row.get(7 + at),
        cap: Money::from_nanos(row.get(8 + at)),
        spent: Money::from_nanos(row.get(9 + at)),
        model_scope: row.get(10 + at),
        renew_monthly: row.get(11 + at),
        period_start: row.get(12 + at),
        paused_reason: row.get(13 + at),
        expires_at: row.get(14 + at),
        created_at: row.get(15 + at),
        closed_at: row.get(16 + at),
        close_reason: row.get(17 + at),
        changed_at: row.get(18 + at),
        rate_limit_rpm: row.get(19 + at),
    }
}

/// Provisions a sub-key: carves its cap from the member's budget for the month of `now`, in one
/// transaction with its ledger row. Returns the key and its token, which is never stored.
pub async fn create(
    pool: &Pool,
    org: &Org,
    new: &NewKey,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<(ApiKey, ApiKeyToken), Error> {
    let name = new.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "key name must be 1 to 200 characters".into(),
        ));
    }
    if new.expires_at.is_some_and(|at| at <= now) {
        return Err(Error::Invalid("expiry must be in the future".into()));
    }
    let model_scope: Vec<String> = new
        .model_scope
        .iter()
        .map(|m| m.trim().to_string())
        .collect();
    if new
        .rate_limit_rpm
        .is_some_and(|rpm| !(1..=1_000_000).contains(&rpm))
    {
        return Err(Error::Invalid(
            "a rate limit must be 1 to 1000000 requests per minute".into(),
        ));
    }
    if model_scope.iter().any(|m| m.is_empty() || m.len() > 200) {
        return Err(Error::Invalid(
            "model names in the scope must be 1 to 200 characters".into(),
        ));
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let membership = members::find_for_update(&tx, org, &new.member).await?;
    let master = master_keys::active_for(&tx, org.id, new.service)
        .await?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "org {:?} has no active {} master key: add one first (keycap vault add)",
                org.name, new.service
            ))
        })?;
    let window = MonthWindow::containing(now);
    members::monthly_budget(&tx, &membership, window)
        .await?
        .check_carve(new.cap)?;

    let token = ApiKeyToken::generate();
    let id = Uuid::new_v4();
    let hash = token.hash().to_vec();
    let prefix = token.display_prefix();
    tx.execute(
        "INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash, prefix,
                               cap_nanousd, model_scope, renew_monthly, period_start, expires_at, created_by, created_at,
                               rate_limit_rpm)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        &[
            &id,
            &org.id,
            &membership.id,
            &master.id,
            &new.service.as_str(),
            &name,
            &hash,
            &prefix,
            &new.cap.nanos(),
            &model_scope,
            &new.renew_monthly,
            &window.first_day(),
            &new.expires_at,
            &actor.user_id(),
            &now,
            &new.rate_limit_rpm,
        ],
    )
    .await?;
    let mut entry = NewEntry::new(org.id, LedgerKind::KeyProvisioned, actor, now);
    entry.membership_id = Some(membership.id);
    entry.api_key_id = Some(id);
    entry.master_key_id = Some(master.id);
    entry.amount = new.cap;
    entry.detail = json!({
        "name": name,
        "prefix": prefix,
        "service": new.service.as_str(),
        "expires_at": new.expires_at.map(|at| at.unix_timestamp()),
        "model_scope": model_scope,
        "renew_monthly": new.renew_monthly,
        "rate_limit_rpm": new.rate_limit_rpm,
    });
    transactions::append(&tx, &entry).await?;
    let row = tx
        .query_one(select_keys!("WHERE k.id = $1"), &[&id])
        .await?;
    tx.commit().await?;
    Ok((from_row(&row), token))
}

/// The sub-keys of an org, or of one member, newest first, with their spend as flushed (it
/// folds the spend journal first: call it outside a transaction, see `usage::fold`).
pub async fn list(
    client: &impl GenericClient,
    org: &Org,
    member: Option<&Email>,
) -> Result<Vec<ApiKey>, Error> {
    crate::usage::fold(client).await?;
    let rows = match member {
        Some(email) => {
            client
                .query(
                    select_keys!(
                        "WHERE k.org_id = $1 AND u.email = $2 ORDER BY k.created_at DESC, k.id"
                    ),
                    &[&org.id, &email.as_str()],
                )
                .await?
        }
        None => {
            client
                .query(
                    select_keys!("WHERE k.org_id = $1 ORDER BY k.created_at DESC, k.id"),
                    &[&org.id],
                )
                .await?
        }
    };
    Ok(rows.iter().map(from_row).collect())
}

/// Whether [`find`] locks the key it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// Its `api_keys` row and its spend row, `FOR NO KEY UPDATE` (see migration 0008 for why
    /// not `FOR UPDATE`).
    Yes,
    No,
}

/// Finds one key of an org by its id or by its display prefix.
async fn find(
    client: &impl GenericClient,
    org: &Org,
    id_or_prefix: &str,
    lock: Lock,
) -> Result<ApiKey, Error> {
    const BY_ID: [&str; 2] = [
        select_keys!("WHERE k.org_id = $1 AND k.id = $2 FOR NO KEY UPDATE OF k, s"),
        select_keys!("WHERE k.org_id = $1 AND k.id = $2"),
    ];
    const BY_PREFIX: [&str; 2] = [
        select_keys!("WHERE k.org_id = $1 AND k.prefix = $2 FOR NO KEY UPDATE OF k, s"),
        select_keys!("WHERE k.org_id = $1 AND k.prefix = $2"),
    ];
    let which = usize::from(lock == Lock::No);
    let needle = id_or_prefix.trim();
    let rows = match Uuid::parse_str(needle) {
        Ok(id) => client.query(BY_ID[which], &[&org.id, &id]).await?,
        Err(_) => {
            if needle.len() < 4 {
                return Err(Error::Invalid(format!(
                    "key {needle:?} is too short: give the key id or its display prefix (kc_…)"
                )));
            }
            client.query(BY_PREFIX[which], &[&org.id, &needle]).await?
        }
    };
    match rows.as_slice() {
        [row] => Ok(from_row(row)),
        [] => Err(Error::not_found(format!(
            "key {needle:?} in org {:?}",
            org.name
        ))),
        _ => Err(Error::Conflict(format!(
            "prefix {needle:?} matches {} keys: use the key id",
            rows.len()
        ))),
    }
}

/// The result of revoking a key.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub key: ApiKey,
    pub refund: Money,
}

/// Revokes a key and refunds its unspent cap to its member's current month, in one
/// transaction with the ledger rows. Only a cap carved in the current month is refunded: the
/// budget of a month that has ended does not come back.
pub async fn revoke(
    pool: &Pool,
    org: &Org,
    id_or_prefix: &str,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Revoked, Error> {
    let mut client = pool.get().await?;
    // The refund depends on what was spent: fold first (before the transaction; see `usage::fold`).
    crate::usage::fold(&client).await?;
    let tx = client.transaction().await?;
    let key = find(&tx, org, id_or_prefix, Lock::Yes).await?;
    if key.closed_at.is_some() {
        let reason = key.close_reason.as_deref().unwrap_or("closed");
        return Err(Error::Conflict(format!(
            "key {} is already {reason}",
            key.prefix
        )));
    }
    let refund = close(&tx, &key, "revoked", LedgerKind::KeyRevoked, actor, now).await?;
    let row = tx
        .query_one(select_keys!("WHERE k.id = $1"), &[&key.id])
        .await?;
    tx.commit().await?;
    Ok(Revoked {
        key: from_row(&row),
        refund,
    })
}

/// The result of changing a key's cap.
#[derive(Debug, Clone)]
pub struct CapChanged {
    pub key: ApiKey,
    /// The cap before the change.
    pub old_cap: Money,
    /// What the change carved from or refunded to the member's month, if anything.
    pub change: CapChange,
}

/// Sets an open key's cap, in one transaction with its ledger rows: a raise carves what is not
/// paid for yet from its member's budget this month (refused when it does not fit, like a new
/// key), a cut refunds what was paid above the new cap to this month, up to what the key carved
/// from it, and the cap can never go below what the key has spent (see
/// `domain::budget::change_cap`). A running gateway sees the new cap through NOTIFY.
pub async fn set_cap(
    pool: &Pool,
    org: &Org,
    id_or_prefix: &str,
    cap: Money,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<CapChanged, Error> {
    let mut client = pool.get().await?;
    // The floor is what the key has spent: fold first (before the transaction; see `usage::fold`).
    crate::usage::fold(&client).await?;
    let tx = client.transaction().await?;
    // Lock the membership before the key, as removing a member does: its budget is read below.
    let membership_id = find(&tx, org, id_or_prefix, Lock::No).await?.membership_id;
    let budget: i64 = tx
        .query_one(
            "SELECT monthly_budget_nanousd FROM memberships WHERE id = $1 FOR NO KEY UPDATE",
            &[&membership_id],
        )
        .await?
        .get(0);
    let key = find(&tx, org, id_or_prefix, Lock::Yes).await?;
    if key.closed_at.is_some() {
        let reason = key.close_reason.as_deref().unwrap_or("closed");
        return Err(Error::Conflict(format!(
            "key {} is {reason}: its cap cannot change",
            key.prefix
        )));
    }
    if domain::budget::is_expired(key.expires_at, now) {
        return Err(Error::Conflict(format!(
            "key {} has expired: its cap cannot change",
            key.prefix
        )));
    }
    if cap == key.cap {
        return Err(Error::Conflict(format!(
            "key {}'s cap is {cap} already",
            key.prefix
        )));
    }
    let window = MonthWindow::containing(now);
    let due_for_renewal = key.renew_monthly && key.period_start < window.first_day();
    // Gateways still serve a key that is due but not renewed yet, against its old period's
    // spend: a raise now would be carved from no month. A paused key is refused by gateways.
    if due_for_renewal && key.paused_reason.is_none() {
        return Err(Error::Conflict(format!(
            "key {} is due for its monthly renewal: change its cap once it is renewed (keycap \
             renews keys every 30 seconds while it runs)",
            key.prefix
        )));
    }
    let paid = paid_this_period(&tx, &key).await?;
    let month = members::month_of(&tx, membership_id, Money::from_nanos(budget), window).await?;
    let mut change = change_cap(key.cap, cap, key.spent, paid, due_for_renewal, &month)?;
    tx.execute(
        "UPDATE api_keys SET cap_nanousd = $2 WHERE id = $1",
        &[&key.id, &cap.nanos()],
    )
    .await?;
    if cap < key.cap && !due_for_renewal {
        let refund = refundable(&tx, &key, now).await?;
        if refund > Money::ZERO {
            change = CapChange::Refund(refund);
        }
    }
    let mut entry = NewEntry::new(key.org_id, LedgerKind::KeyCapChanged, actor, now);
    entry.membership_id = Some(key.membership_id);
    entry.api_key_id = Some(key.id);
    entry.amount = change.carved();
    entry.detail = json!({
        "prefix": key.prefix,
        "old_cap_nanousd": key.cap.nanos(),
        "cap_nanousd": cap.nanos(),
        "spent_nanousd": key.spent.nanos(),
    });
    transactions::append(&tx, &entry).await?;
    if let CapChange::Refund(refund) = change {
        let mut entry = NewEntry::new(key.org_id, LedgerKind::Refund, actor, now);
        entry.membership_id = Some(key.membership_id);
        entry.api_key_id = Some(key.id);
        entry.amount = refund;
        entry.detail = json!({ "prefix": key.prefix, "reason": "cap lowered" });
        transactions::append(&tx, &entry).await?;
    }
    let row = tx
        .query_one(select_keys!("WHERE k.id = $1"), &[&key.id])
        .await?;
    tx.commit().await?;
    Ok(CapChanged {
        key: from_row(&row),
        old_cap: key.cap,
        change,
    })
}

/// What the member has paid for a key in its period, by the ledger: the carves of its provision
/// or renewal and of raises, less its refunds (normally its cap). Kept in `key_spends` by a trigger on the ledger (migration 0011).
async fn paid_this_period(client: &impl GenericClient, key: &ApiKey) -> Result<Money, Error> {
    let row = client
        .query_one(
            "SELECT paid_nanousd FROM key_spends WHERE api_key_id = $1",
            &[&key.id],
        )
        .await?;
    Ok(Money::from_nanos(row.get(0)))
}

/// What may be refunded for a key whose spend row the caller holds, by the rule of every
/// refund (`key_refundable`, migration 0024): what was paid for it in its period beyond its
/// spend, what gateways' leases of it hold and, while it is open, its cap; no more than it
/// carved from `now`'s month.
async fn refundable(
    client: &impl GenericClient,
    key: &ApiKey,
    now: OffsetDateTime,
) -> Result<Money, Error> {
    let row = client
        .query_one("SELECT key_refundable($1, $2)", &[&key.id, &now])
        .await?;
    Ok(Money::from_nanos(row.get(0)))
}

/// Closes a locked, open key (revoked or expired) and writes its ledger rows. Returns the refund.
pub(crate) async fn close(
    client: &impl GenericClient,
    key: &ApiKey,
    reason: &str,
    kind: LedgerKind,
    actor: Actor,
    now: OffsetDateTime,
) -> Result<Money, Error> {
    client
        .execute(
            "UPDATE api_keys SET closed_at = $2, close_reason = $3 WHERE id = $1",
            &[&key.id, &now, &reason],
        )
        .await?;
    let refund = refundable(client, key, now).await?;
    let mut entry = NewEntry::new(key.org_id, kind, actor, now);
    entry.membership_id = Some(key.membership_id);
    entry.api_key_id = Some(key.id);
    entry.amount = key.spent;
    entry.detail = json!({ "prefix": key.prefix, "cap_nanousd": key.cap.nanos(), "spent_nanousd": key.spent.nanos() });
    transactions::append(client, &entry).await?;
    if refund > Money::ZERO {
        let mut entry = NewEntry::new(key.org_id, LedgerKind::Refund, actor, now);
        entry.membership_id = Some(key.membership_id);
        entry.api_key_id = Some(key.id);
        entry.amount = refund;
        entry.detail = json!({ "prefix": key.prefix, "reason": reason });
        transactions::append(client, &entry).await?;
    }
    Ok(refund)
}

pub(crate) use select_keys;
pub(crate) fn key_from_row(row: &tokio_postgres::Row) -> ApiKey {
    from_row(row)
}

const BY_HASH: &str = select_keys!("WHERE k.token_hash = $1");

/// The key whose token hashes to `hash`, if any (revoked and expired keys included, so the
/// gateway can say why it refuses them).
pub async fn find_by_token_hash(
    client: &impl GenericClient,
    hash: &[u8; 32],
) -> Result<Option<ApiKey>, Error> {
    let row = client.query_opt(BY_HASH, &[&hash.as_slice()]).await?;
    Ok(row.map(|row| from_row(&row)))
}

/// The keys whose tokens hash to any of `hashes`, in one query, each with its hash, in no
/// particular order (revoked and expired keys included, as [`find_by_token_hash`]).
pub async fn find_by_token_hashes(
    client: &impl GenericClient,
    hashes: &[[u8; 32]],
) -> Result<Vec<([u8; 32], ApiKey)>, Error> {
    let hashes: Vec<&[u8]> = hashes.iter().map(|hash| hash.as_slice()).collect();
    // Prepared once per connection: a flood of made-up tokens runs this often.
    let statement = client
        .prepare_cached(concat!(
            "SELECT w.hash, q.* FROM unnest($1::bytea[]) AS w(hash), LATERAL (",
            select_keys!("WHERE k.token_hash = w.hash"),
            ") q"
        ))
        .await?;
    let rows = client.query(&statement, &[&hashes]).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let hash: &[u8] = row.get(0);
        let Ok(hash) = <[u8; 32]>::try_from(hash) else {
            continue;
        };
        found.push((hash, from_row_at(row, 1)));
    }
    Ok(found)
}

/// One key by id.
pub async fn find_by_id(client: &impl GenericClient, id: Uuid) -> Result<Option<ApiKey>, Error> {
    let row = client
        .query_opt(select_keys!("WHERE k.id = $1"), &[&id])
        .await?;
    Ok(row.map(|row| from_row(&row)))
}

/// The keys with these ids that exist, in one query, in no particular order.
pub async fn find_by_ids(client: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<ApiKey>, Error> {
    let rows = client
        .query(select_keys!("WHERE k.id = ANY($1)"), &[&ids])
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// For the gateway's periodic refresh: for each key changed (in what a gateway caches) at or
/// after `since`, asks `wanted(id, changed_at)`, and passes what it returns with the key to
/// `apply`, one row at a time as they arrive, so that memory does not grow with the number of
/// changed keys; a key `wanted` returns `None` for is not built. The caller reads
/// [`database_now`] before calling, to pass as `since` next time.
pub async fn changed_since<T>(
    client: &impl GenericClient,
    since: OffsetDateTime,
    mut wanted: impl FnMut(Uuid, OffsetDateTime) -> Option<T>,
    mut apply: impl FnMut(T, ApiKey),
) -> Result<(), Error> {
    let rows = client
        .query_raw(select_keys!("WHERE k.changed_at >= $1"), [&since])
        .await?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await? {
        if let Some(wanted) = wanted(row.get("id"), row.get("changed_at")) {
            apply(wanted, from_row(&row));
        }
    }
    Ok(())
}

/// The database's clock, the one that stamps `changed_at`.
pub async fn database_now(client: &impl GenericClient) -> Result<OffsetDateTime, Error> {
    Ok(client
        .query_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0))
}

/// Master keys changed at or after `since`.
pub async fn master_keys_changed_since(
    client: &impl GenericClient,
    since: OffsetDateTime,
) -> Result<Vec<Uuid>, Error> {
    let rows = client
        .query(
            "SELECT id FROM master_keys WHERE changed_at >= $1",
            &[&since],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The open keys that use a master key, for the warning shown before revoking it (it folds
/// the spend journal first: call it outside a transaction, see `usage::fold`).
pub async fn open_using_master_key(
    client: &impl GenericClient,
    org: &Org,
    master_key_id: Uuid,
) -> Result<Vec<ApiKey>, Error> {
    crate::usage::fold(client).await?;
    let rows = client
        .query(
            select_keys!(
                "WHERE k.org_id = $1 AND k.master_key_id = $2 AND k.closed_at IS NULL
                 ORDER BY k.created_at DESC"
            ),
            &[&org.id, &master_key_id],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_gateways_order_of_checks() {
        let now = OffsetDateTime::now_utc();
        let past = Some(now - time::Duration::hours(1));
        let check = |close: Option<&str>, paused: Option<&str>, expires, expected: &str| {
            let key = ApiKey {
                id: Uuid::nil(),
                org_id: Uuid::nil(),
                membership_id: Uuid::nil(),
                member_email: String::new(),
                master_key_id: Uuid::nil(),
                service: "openrouter".into(),
                name: "k".into(),
                prefix: "kc_".into(),
                cap: Money::ZERO,
                spent: Money::ZERO,
                model_scope: Vec::new(),
                renew_monthly: false,
                period_start: now.date(),
                paused_reason: paused.map(str::to_string),
                expires_at: expires,
                created_at: now,
                closed_at: close.map(|_| now),
                close_reason: close.map(str::to_string),
                changed_at: now,
                rate_limit_rpm: None,
            };
            assert_eq!(
                key.status(now),
                expected,
                "{close:?} {paused:?} {expires:?}"
            );
        };
        check(None, None, None, "active");
        check(Some("revoked"), Some("budget"), past, "revoked");
        check(Some("expired"), None, None, "expired");
        check(None, Some("budget"), None, "paused");
        // Past its expiry but not yet closed by maintenance: expired, even when paused.
        check(None, Some("budget"), past, "expired");
        check(None, None, Some(now + time::Duration::hours(1)), "active");
    }
}
