//! Leases: this gateway spends only the slices of keys' caps that Postgres granted it
//! (`db::leases`, migration 0015), so several gateways on one database never jointly pass a
//! cap.
//!
//! A request reserves within what its key's lease holds here ([`crate::budget::KeyBudget`]).
//! When that is short, one request per key at a time asks Postgres for more ([`top_up`]):
//! the slice asked for doubles while the key stays busy and starts small again after a pause,
//! and Postgres shares what is left among the live gateways. Unused slices go back when the
//! key changes (a cap cut, a revocation), when another gateway is short of one, after the key
//! has been idle a while, and on shutdown. A heartbeat task keeps this gateway live and
//! reclaims the leases of gateways whose heartbeat has lapsed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use domain::Money;
use domain::services::Fit;
use tokio::sync::watch;
use uuid::Uuid;

use crate::auth::KeyEntry;
use crate::state::Gateway;

/// How leases are sized and kept.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Between heartbeats.
    pub heartbeat: Duration,
    /// A gateway silent this long is dead: its leases are reclaimed. Also how recent a
    /// heartbeat must be for a gateway to count in the share of a key's cap.
    pub lapse: Duration,
    /// The smallest slice asked for.
    pub min_slice: Money,
    /// A key's unused slice goes back after this long without a request.
    pub idle: Duration,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            heartbeat: Duration::from_secs(1),
            lapse: Duration::from_secs(10),
            min_slice: Money::from_nanos(50_000_000),
            idle: Duration::from_secs(60),
        }
    }
}

/// A slice asked for within this long of the last one is twice the last: a key that spends its
/// slice faster gets larger ones, and a slice stays within about twice what the key spends in
/// this long (which bounds what a crash can cost it).
const SLICE_BUSY: Duration = Duration::from_secs(5);

/// The slice to ask for, given what a request is short of (`need`) and the key's last grant:
/// twice the last when that was recent (within `busy`), else the smallest. Pure, for tests.
pub fn slice_to_ask(
    need: Money,
    min_slice: Money,
    last: Option<(Instant, Money)>,
    now: Instant,
    busy: Duration,
) -> Money {
    let grown = match last {
        Some((at, asked)) if now.saturating_duration_since(at) < busy => {
            asked.saturating_add(asked)
        }
        _ => Money::ZERO,
    };
    need.max(min_slice).max(grown)
}

/// One key's lease on this gateway, beside its budget: how it is sized (the lock makes one
/// request at a time ask Postgres for more), when it was last used, and whether it is due to
/// go back.
#[derive(Debug, Default)]
pub struct LeaseSlot {
    sizing: tokio::sync::Mutex<Option<(Instant, Money)>>,
    /// Milliseconds since the gateway started at the key's last reservation.
    last_used_ms: AtomicU64,
    /// Milliseconds since the gateway started when Postgres last said the key had nothing left
    /// for anyone (0: never); a request it cannot cover within [`EXHAUSTED_FOR`] is refused
    /// without asking again.
    exhausted_at_ms: AtomicU64,
    /// On the holders' list (see [`Leases`]).
    listed: AtomicBool,
    /// The key changed (a cap cut, a revocation), or another gateway wants its cap: what it
    /// holds goes back at the next sweep, busy or not, until that succeeds.
    due: AtomicBool,
    /// Nano-dollars taken from a changed key's lease to give back, which could not go back
    /// yet: unusable here until they do.
    held_back: std::sync::atomic::AtomicI64,
    /// A give-back sent whose answer never came: it may have gone back or not, so it is
    /// unusable here and is sent again under the same claim, before anything else goes back,
    /// until Postgres answers.
    in_doubt: std::sync::Mutex<Option<InDoubt>>,
}

/// A give-back sent without an answer.
#[derive(Debug, Clone, Copy)]
struct InDoubt {
    claim: Uuid,
    amount: Money,
    since: Instant,
}

/// How long a give-back in doubt is sent again. Postgres keeps a claim for a week (maintenance
/// deletes older ones), so a give-back sent again within a day is never applied twice. One
/// unanswered for longer is no longer sent: what of it did not go back stays held for this
/// gateway (the key stops that much early) until the gateway stops or is reclaimed.
const IN_DOUBT_FOR: Duration = Duration::from_secs(24 * 3600);

/// How long a key Postgres had nothing left for is refused without asking again.
const EXHAUSTED_FOR: Duration = Duration::from_secs(1);

fn ms_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl LeaseSlot {
    /// Notes a reservation now.
    pub fn touch(&self, started: Instant) {
        self.last_used_ms
            .store(ms_since(started), Ordering::Relaxed);
    }

    fn idle_for(&self, started: Instant) -> Duration {
        let then = self.last_used_ms.load(Ordering::Relaxed);
        Duration::from_millis(ms_since(started).saturating_sub(then))
    }

    fn exhausted_recently(&self, started: Instant) -> bool {
        let at = self.exhausted_at_ms.load(Ordering::Relaxed);
        at != 0 && ms_since(started).saturating_sub(at) < EXHAUSTED_FOR.as_millis() as u64
    }

    fn in_doubt(&self) -> Option<InDoubt> {
        *self
            .in_doubt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_in_doubt(&self, doubt: Option<InDoubt>) {
        *self
            .in_doubt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = doubt;
    }

    /// Something taken from the lease waits here to go back (held back, or in doubt): the key
    /// must stay on the holders' list so that a sweep sends it.
    fn parked(&self) -> bool {
        self.held_back.load(Ordering::Acquire) != 0 || self.in_doubt().is_some()
    }

    /// The key changed: forget that it was exhausted, and give back what it holds.
    pub fn changed(&self) {
        self.exhausted_at_ms.store(0, Ordering::Relaxed);
        self.due.store(true, Ordering::Relaxed);
    }
}

/// This gateway's side of the leases.
pub struct Leases {
    /// This gateway's id in `gateways`, new at every start.
    pub id: Uuid,
    pub config: LeaseConfig,
    /// Keys whose lease may hold something unused here: the sweep gives it back once they are
    /// idle (or changed). A key leaves the list when it holds nothing and has been idle, and
    /// goes back on it when a grant or a settlement adds something to it.
    holders: Arc<DashMap<Uuid, Arc<KeyEntry>>>,
    /// Since when the heartbeat has succeeded without a break (`None` while it fails): only a
    /// gateway live for the lapse reclaims others.
    live_since: std::sync::Mutex<Option<Instant>>,
}

impl Leases {
    pub fn new(config: LeaseConfig) -> Leases {
        Leases {
            id: Uuid::new_v4(),
            config,
            holders: Arc::default(),
            live_since: std::sync::Mutex::new(None),
        }
    }

    /// Lists `key` as holding part of a lease, unless it is listed.
    pub fn list(&self, key: &Arc<KeyEntry>) {
        list_in(&self.holders, key);
    }

    fn unlist(&self, key: &KeyEntry) {
        // Removed before the flag is cleared: a `list` in between finds the flag still set and
        // does nothing, and the next one lists the key again.
        self.holders.remove(&key.id);
        key.lease.listed.store(false, Ordering::Release);
    }

    fn live_since(&self) -> Option<Instant> {
        *self
            .live_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_live_since(&self, since: Option<Instant>) {
        *self
            .live_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }
}

fn list_in(holders: &DashMap<Uuid, Arc<KeyEntry>>, key: &Arc<KeyEntry>) {
    if !key.lease.listed.swap(true, Ordering::AcqRel) {
        holders.insert(key.id, Arc::clone(key));
    }
}

/// Why a reservation could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum LeaseShort {
    #[error(
        "the key's lease on this gateway does not cover the request and keycap cannot reach \
         its database for more: retry in a moment"
    )]
    Unreachable,
    #[error(
        "other gateways hold the part of this key's cap the request needs and have been asked \
         to give back what they do not use: retry in a moment"
    )]
    HeldElsewhere,
    /// The key closed (revoked when `revoked`, else expired) before this gateway heard of it.
    #[error("the key is closed")]
    Closed { revoked: bool },
}

/// Reserves what `decide` allows for a request of `key`: within what its lease holds here when
/// that covers the request as asked, else after asking Postgres for more ([`top_up`]), with
/// whatever the lease holds then. While Postgres cannot be reached, only what the lease holds
/// is used; a request it does not cover is refused as unavailable, not as over budget, and so
/// is one whose cap other gateways hold.
pub async fn reserve(
    gateway: &Gateway,
    key: &Arc<KeyEntry>,
    decide: impl Fn(Money) -> Fit,
) -> Result<Fit, LeaseShort> {
    key.lease.touch(gateway.started);
    let fit = key.budget.reserve(as_requested(&decide));
    if matches!(fit, Fit::AsRequested { .. }) {
        return Ok(fit);
    }
    if key.lease.exhausted_recently(gateway.started) {
        return Ok(key.budget.reserve(decide));
    }
    top_up(gateway, key, &decide).await
}

/// `decide`, refusing whatever does not fit as asked.
fn as_requested(decide: &impl Fn(Money) -> Fit) -> impl Fn(Money) -> Fit + '_ {
    move |remaining| match decide(remaining) {
        fit @ Fit::AsRequested { .. } => fit,
        _ => Fit::Refuse {
            need_at_least: Money::ZERO,
        },
    }
}

/// Asks Postgres for more of `key`'s cap until its lease here covers the request as asked, or
/// Postgres has no more for it, then reserves, all under the key's lease lock (so a give-back
/// cannot take the grant from the request that asked for it). A grant short of the request
/// asks the other gateways holding some to give back what they do not use, and is tried again
/// a few times; if they still hold it, and what is held here does not cover even a lowered
/// request, says so.
async fn top_up(
    gateway: &Gateway,
    key: &Arc<KeyEntry>,
    decide: &impl Fn(Money) -> Fit,
) -> Result<Fit, LeaseShort> {
    let mut last = key.lease.sizing.lock().await;
    let config = &gateway.leases.config;
    // What the request needs as asked: its decision when nothing limits it.
    let need = match decide(Money::from_nanos(i64::MAX)) {
        Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => reserve,
        Fit::Refuse { need_at_least } => need_at_least,
    };
    let within_lease = |short: Option<LeaseShort>| match (key.budget.reserve(decide), short) {
        (Fit::Refuse { .. }, Some(short)) => Err(short),
        (fit, _) => Ok(fit),
    };
    let mut others_hold = false;
    for wait_ms in [0, 20, 60, 150] {
        if wait_ms > 0 {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        }
        // Another request may have topped up while this one waited for the lock.
        let fit = key.budget.reserve(as_requested(decide));
        if matches!(fit, Fit::AsRequested { .. }) {
            return Ok(fit);
        }
        let short = need.saturating_sub(key.budget.remaining());
        let now = Instant::now();
        let ask = slice_to_ask(short, config.min_slice, *last, now, SLICE_BUSY);
        let (pool, entry, me, live, holders) = (
            gateway.pool.clone(),
            Arc::clone(key),
            gateway.leases.id,
            config.lapse,
            Arc::clone(&gateway.leases.holders),
        );
        // The grant is added to the lease (and the key listed) in the task that asks for it,
        // so it is not lost if the request is dropped meanwhile.
        let asked = gateway
            .control
            .spawn(async move {
                let client = pool.get().await?;
                let grant = db::leases::grant(&client, entry.id, me, short, ask, live).await?;
                if grant.granted > Money::ZERO {
                    entry.budget.grow(grant.granted);
                    list_in(&holders, &entry);
                }
                Ok::<_, db::Error>(grant)
            })
            .await;
        let Ok(Ok(grant)) = asked else {
            return within_lease(Some(LeaseShort::Unreachable));
        };
        gateway.metrics.lease_grants_total.inc();
        if grant.granted > Money::ZERO {
            *last = Some((now, ask));
        }
        if grant.granted >= short {
            return within_lease(None);
        }
        if let Some(reason) = &grant.closed {
            return Err(LeaseShort::Closed {
                revoked: reason == "revoked",
            });
        }
        others_hold = grant.others_hold > Money::ZERO;
        if !others_hold {
            // Nothing left for anyone: refuse without asking for a moment.
            key.lease
                .exhausted_at_ms
                .store(ms_since(gateway.started), Ordering::Relaxed);
            return within_lease(None);
        }
    }
    within_lease(others_hold.then_some(LeaseShort::HeldElsewhere))
}

/// Gives back what `key`'s lease holds here unused; the caller holds the key's lease lock.
/// Nothing is lost when Postgres cannot be reached: the slice stays here, usable, unless the
/// key changed (a cap cut, a revocation), when it is held back, unusable, until it goes back at
/// a later sweep. A give-back sent without an answer is in doubt (see [`LeaseSlot`]): it is
/// sent again under its claim first, and nothing new goes back until it is answered.
async fn give_back_locked(gateway: &Gateway, key: &Arc<KeyEntry>) {
    if let Some(doubt) = key.lease.in_doubt() {
        if doubt.since.elapsed() >= IN_DOUBT_FOR {
            key.lease.set_in_doubt(None);
            tracing::warn!(
                key.id = %key.id, amount = %doubt.amount,
                "a lease give-back unanswered for a day is no longer sent: what of it did not \
                 go back stays held for this gateway until it stops or is reclaimed"
            );
        } else if let Err(failed) = send_give_back(gateway, key, doubt.amount, doubt.claim).await {
            failed.warn(key, doubt.amount);
            if key.lease.due.load(Ordering::Relaxed) {
                let unused = key.budget.take_unused();
                key.lease
                    .held_back
                    .fetch_add(unused.nanos(), Ordering::AcqRel);
            }
            gateway.leases.list(key);
            return;
        } else {
            key.lease.set_in_doubt(None);
        }
    }
    let due = key.lease.due.load(Ordering::Relaxed);
    let amount = key.budget.take_unused().saturating_add(Money::from_nanos(
        key.lease.held_back.swap(0, Ordering::AcqRel),
    ));
    if amount <= Money::ZERO {
        key.lease.due.store(false, Ordering::Relaxed);
        return;
    }
    let claim = Uuid::new_v4();
    match send_give_back(gateway, key, amount, claim).await {
        Ok(()) => key.lease.due.store(false, Ordering::Relaxed),
        Err(failed @ GiveBackFailed::NotSent(_)) => {
            if due {
                key.lease
                    .held_back
                    .fetch_add(amount.nanos(), Ordering::AcqRel);
                gateway.leases.list(key);
            } else {
                key.budget.kept(amount);
            }
            failed.warn(key, amount);
        }
        Err(failed @ GiveBackFailed::InDoubt(_)) => {
            key.lease.set_in_doubt(Some(InDoubt {
                claim,
                amount,
                since: Instant::now(),
            }));
            gateway.leases.list(key);
            failed.warn(key, amount);
        }
    }
}

/// Why a give-back has no answer.
enum GiveBackFailed {
    /// No connection to send it on: it did not go back.
    NotSent(String),
    /// Sent, and no answer that it applied: it may have gone back. Any failure once a
    /// connection was had counts (a refusal by the server too, although that rolled back): a
    /// slice in doubt is only unusable for a while, a slice taken as kept when it went back
    /// could pass the cap.
    InDoubt(String),
}

impl GiveBackFailed {
    fn warn(&self, key: &KeyEntry, amount: Money) {
        match self {
            GiveBackFailed::NotSent(error) => tracing::warn!(
                error = %error, key.id = %key.id,
                "cannot give an unused lease back; will retry"
            ),
            GiveBackFailed::InDoubt(error) => tracing::warn!(
                error = %error, key.id = %key.id, amount = %amount,
                "a lease give-back got no answer: it is unusable here and will be sent again \
                 under the same claim, so it goes back once"
            ),
        }
    }
}

/// Sends one give-back of `amount` under `claim`, on the control runtime.
async fn send_give_back(
    gateway: &Gateway,
    key: &KeyEntry,
    amount: Money,
    claim: Uuid,
) -> Result<(), GiveBackFailed> {
    let (pool, id, me) = (gateway.pool.clone(), key.id, gateway.leases.id);
    let sent = gateway
        .control
        .spawn(async move {
            let client = pool
                .get()
                .await
                .map_err(|err| GiveBackFailed::NotSent(db::Error::from(err).to_string()))?;
            db::leases::give_back(
                &client,
                id,
                me,
                amount,
                time::OffsetDateTime::now_utc(),
                claim,
            )
            .await
            .map_err(|err| GiveBackFailed::InDoubt(err.to_string()))
        })
        .await;
    match sent {
        Ok(Ok(_)) => {
            gateway.metrics.lease_give_backs_total.inc();
            Ok(())
        }
        Ok(Err(failed)) => Err(failed),
        Err(err) => Err(GiveBackFailed::InDoubt(err.to_string())),
    }
}

/// Gives back what `key`'s lease holds here unused, after a top-up in progress for it.
pub async fn give_back(gateway: &Gateway, key: &Arc<KeyEntry>) {
    let _sizing = key.lease.sizing.lock().await;
    give_back_locked(gateway, key).await;
}

/// Another gateway is short of `key`'s cap: what this one does not use goes back now, unless a
/// request of the key is asking for more right now (then the key is marked, and the next sweep
/// gives back what it then holds unused). Never waits for a top-up, so the change listener
/// that calls it is not held up.
pub async fn give_back_wanted(gateway: &Gateway, key: &Arc<KeyEntry>) {
    match key.lease.sizing.try_lock() {
        Ok(_sizing) => give_back_locked(gateway, key).await,
        Err(_) => key.lease.due.store(true, Ordering::Relaxed),
    }
}

/// The cached keys among `ids` changed: each gives back what its lease holds unused, now or
/// at the next sweep (see [`give_back_wanted`]).
pub async fn give_back_changed(gateway: &Gateway, ids: impl IntoIterator<Item = Uuid>) {
    for id in ids {
        if let Some(key) = gateway.keys.by_id(id) {
            key.lease.changed();
            give_back_wanted(gateway, &key).await;
        }
    }
}

/// A pool of one connection, for a task that must not wait behind the shared pool; `None`
/// (said in the log, prefixed by `what`) when the URL is bad.
fn connection_of_its_own(database_url: &str, what: &str) -> Option<db::Pool> {
    db::connect(database_url, 1)
        .map_err(|err| tracing::error!(error = %err, "{what}: bad database URL"))
        .ok()
}

/// A ticker every `period`; a late tick is not made up for.
fn every(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Waits for the next tick: true, or false once `stop` turns true.
async fn next_tick(ticker: &mut tokio::time::Interval, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = ticker.tick() => true,
        _ = stop.changed() => false,
    }
}

/// Registers this gateway. Run before serving.
pub async fn register(gateway: &Gateway) -> Result<(), db::Error> {
    let client = gateway.pool.get().await?;
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    db::leases::register(&client, gateway.leases.id, &host).await
}

/// Heartbeats on a connection of its own (so a busy pool never delays it) until `stop` turns
/// true, which the server sends only after [`stop`] has given the leases back.
pub async fn heartbeat(
    gateway: Arc<Gateway>,
    database_url: String,
    mut stop: watch::Receiver<bool>,
) {
    let config = gateway.leases.config.clone();
    let Some(pool) = connection_of_its_own(&database_url, "cannot heartbeat") else {
        return;
    };
    let mut ticker = every(config.heartbeat);
    while next_tick(&mut ticker, &mut stop).await {
        let beat = async {
            let connection = pool.get().await?;
            db::leases::heartbeat(&connection, gateway.leases.id).await
        };
        match tokio::time::timeout(config.lapse / 2, beat).await {
            Ok(Ok(beat)) => {
                if gateway.leases.live_since().is_none() {
                    gateway.leases.set_live_since(Some(Instant::now()));
                }
                if beat == db::leases::Heartbeat::WasReclaimed {
                    tracing::warn!(
                        "this gateway's leases were reclaimed while it could not heartbeat: what \
                         they held was charged as spent; spend settled from them counts against \
                         that charge, and what is given back unspent is given back to the keys"
                    );
                }
            }
            failed => {
                gateway.leases.set_live_since(None);
                let error = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "no answer within half the lapse".to_string(),
                };
                tracing::warn!(error = %error, "cannot heartbeat; serving within the leases held");
            }
        }
    }
}

/// Every heartbeat interval until shutdown, on a connection of its own: once this gateway has
/// been live without a break for the lapse (so that after a database outage, when every
/// heartbeat is old, no gateway reclaims the others before they had the time to beat again),
/// reclaims the leases of gateways whose heartbeat has lapsed.
pub async fn reclaim(
    gateway: Arc<Gateway>,
    database_url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let config = gateway.leases.config.clone();
    let Some(pool) = connection_of_its_own(&database_url, "cannot reclaim leases") else {
        return;
    };
    let mut ticker = every(config.heartbeat);
    while next_tick(&mut ticker, &mut shutdown).await {
        if gateway
            .leases
            .live_since()
            .is_none_or(|since| since.elapsed() < config.lapse)
        {
            continue;
        }
        let reclaimed = async {
            let connection = pool.get().await?;
            db::leases::reclaim(&connection, config.lapse, time::OffsetDateTime::now_utc()).await
        };
        match reclaimed.await {
            Ok(0) => {}
            Ok(n) => {
                gateway
                    .metrics
                    .lease_reclaims_total
                    .inc_by(u64::try_from(n).unwrap_or(0));
                tracing::warn!(
                    n_leases = n,
                    "reclaimed the leases of gateways whose heartbeat lapsed"
                );
            }
            Err(err) => tracing::warn!(error = %err, "reclaiming leases failed; will retry"),
        }
    }
}

/// Every heartbeat interval until shutdown, gives back what the leases of keys idle for
/// `idle` (or changed, or closed) hold unused, and unlists idle keys that hold nothing.
pub async fn sweep(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let config = gateway.leases.config.clone();
    let mut ticker = every(config.heartbeat);
    while next_tick(&mut ticker, &mut shutdown).await {
        let due: Vec<Arc<KeyEntry>> = gateway
            .leases
            .holders
            .iter()
            .filter(|entry| sweep_gives_back(entry, config.idle, gateway.started))
            .map(|entry| Arc::clone(entry.value()))
            .collect();
        for key in due {
            give_back(&gateway, &key).await;
            // Idle and holding nothing: a settlement that returns something lists it again.
            if key.budget.remaining() <= Money::ZERO
                && !key.lease.parked()
                && key.lease.idle_for(gateway.started) >= config.idle
            {
                gateway.leases.unlist(&key);
                // Something added or parked meanwhile lists the key again, or is seen here.
                if key.budget.remaining() > Money::ZERO || key.lease.parked() {
                    gateway.leases.list(&key);
                }
            }
        }
    }
}

/// Whether a sweep gives back what `key`'s lease holds unused: the key changed or is wanted
/// elsewhere, is idle, has a give-back in doubt, is closed (its refund waits for its leases, so
/// what its requests in flight did not spend goes back as soon as they settle), or the lease
/// holds more than the key's cap leaves (after a cut, what requests in flight did not spend
/// returns to the lease, and would stay spendable past the new cap until the key is idle).
fn sweep_gives_back(key: &KeyEntry, idle: Duration, started: Instant) -> bool {
    key.lease.due.load(Ordering::Relaxed)
        || key.lease.idle_for(started) >= idle
        || key.lease.in_doubt().is_some()
        || key.info().close_reason.is_some()
        || key.budget.remaining() > key.budget.left()
}

/// After the last flush: folds, then gives back every lease this gateway holds. When that
/// fails (the database is unreachable), a live gateway reclaims them once the heartbeat lapses.
pub async fn stop(gateway: &Gateway) {
    let stopped = async {
        let client = gateway.pool.get().await?;
        db::leases::stop(&client, gateway.leases.id, time::OffsetDateTime::now_utc()).await
    };
    if let Err(err) = stopped.await {
        tracing::error!(
            error = %err,
            "could not give this gateway's leases back; another gateway will reclaim them"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_gives_back_a_lease_past_what_a_cut_cap_leaves() {
        let started = Instant::now();
        let idle = Duration::from_secs(60);
        let key = KeyEntry::for_tests(Uuid::new_v4());
        key.budget.set_cap(Money::from_nanos(100));
        key.budget.grow(Money::from_nanos(50));
        key.lease.touch(started);
        assert!(!sweep_gives_back(&key, idle, started));
        key.budget.set_cap(Money::from_nanos(30));
        assert!(sweep_gives_back(&key, idle, started));
    }

    #[test]
    fn the_slice_doubles_while_the_key_is_busy_and_starts_small_again() {
        let (min, busy) = (Money::from_nanos(100), Duration::from_secs(5));
        let now = Instant::now();
        let ask = |need, last| slice_to_ask(Money::from_nanos(need), min, last, now, busy);
        assert_eq!(ask(10, None), Money::from_nanos(100));
        assert_eq!(ask(250, None), Money::from_nanos(250));
        let recent = Some((now, Money::from_nanos(400)));
        assert_eq!(ask(10, recent), Money::from_nanos(800));
        assert_eq!(ask(1_000, recent), Money::from_nanos(1_000));
        let long_ago = now
            .checked_sub(Duration::from_secs(6))
            .map(|at| (at, Money::from_nanos(400)));
        assert_eq!(ask(10, long_ago), Money::from_nanos(100));
    }
}
