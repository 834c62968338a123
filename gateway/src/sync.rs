//! Keeping the cache true: reload what `NOTIFY keycap_changes` names within a second, reload
//! every cached key on an interval as a safety net, refresh prices, and sweep expired negative
//! cache entries.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use db::notify::Change;
use tokio::sync::{mpsc, watch};

use crate::auth::{KeyEntry, Reloaded};
use crate::state::Gateway;

/// Listens for changes until shutdown, reconnecting (and refreshing everything) when the
/// connection drops. Renewals wait in a slower lane (see [`Lanes`]): everything else announced
/// is applied first, then one batch of renewals, and so on.
pub async fn listen_for_changes(
    gateway: Arc<Gateway>,
    database_url: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match db::notify::listen(&database_url).await {
            Ok(mut changes) => {
                // Anything that changed while we were not listening is picked up here.
                refresh_changed(&gateway).await;
                // Changes still in the lanes when the connection drops are applied by the
                // refresh after reconnecting, which reads every row changed since the previous
                // pass (with a margin).
                let mut lanes = Lanes::default();
                let mut connected = true;
                while connected {
                    // Wait for news only when no renewal is left to apply.
                    if lanes.renewals.is_empty() {
                        tokio::select! {
                            change = changes.recv() => match change {
                                Some(change) => lanes.route(change),
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    } else if *shutdown.borrow() {
                        return;
                    }
                    loop {
                        match changes.try_recv() {
                            Ok(change) => lanes.route(change),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                connected = false;
                                break;
                            }
                        }
                    }
                    for batch in std::mem::take(&mut lanes.others).chunks(MAX_BATCH) {
                        apply(&gateway, batch).await;
                    }
                    let n_renewals = lanes.renewals.len().min(MAX_BATCH);
                    let renewals: Vec<uuid::Uuid> = lanes.renewals.drain(..n_renewals).collect();
                    apply_renewals(&gateway, renewals).await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot listen for key changes; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The most changes applied together.
const MAX_BATCH: usize = 1024;

/// Announced changes, in two lanes. A renewal is announced as [`Change::Renewed`] immediately
/// followed by its [`Change::ApiKey`] (migration 0010): that second notice goes to the slower
/// lane. Postgres sends a notice repeated within one transaction once, so a marker can also be
/// followed by another key's notice (its own was sent earlier in the transaction, and has been
/// applied as any change): then it marks nothing.
#[derive(Debug, Default)]
struct Lanes {
    /// Changes to apply first, in the order announced.
    others: Vec<Change>,
    /// The key of the last notice, when that was a renewal marker.
    marked: Option<uuid::Uuid>,
    /// Renewed keys, in the order announced.
    renewals: VecDeque<uuid::Uuid>,
}

impl Lanes {
    fn route(&mut self, change: Change) {
        let marked = self.marked.take();
        match change {
            Change::Renewed(id) => self.marked = Some(id),
            Change::ApiKey(id) if marked == Some(id) => self.renewals.push_back(id),
            other => self.others.push(other),
        }
    }
}

/// Applies renewals announced for `ids`: the journal is folded once and the cached keys are
/// read again together (see `KeyEntry::reload_folded`).
async fn apply_renewals(gateway: &Gateway, ids: Vec<uuid::Uuid>) {
    // Keys that fail are applied by the periodic refresh.
    reload_renewed(gateway, cached_only(gateway, ids)).await;
}

/// The keys of `ids` that are cached; the others are noted (see [`note_uncached`]).
fn cached_only(gateway: &Gateway, ids: Vec<uuid::Uuid>) -> Vec<uuid::Uuid> {
    let (cached, uncached): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .partition(|&id| gateway.keys.by_id(id).is_some());
    for id in uncached {
        note_uncached(gateway, id);
    }
    cached
}

/// A change to a key or master key not held: a lookup may be reading it right now (see
/// `Gateway::key_for` and `Gateway::master_key`).
fn note_uncached(gateway: &Gateway, id: uuid::Uuid) {
    gateway
        .changed_uncached
        .insert(id, std::time::Instant::now());
}

/// Applies announced changes other than renewals: cached keys are read again in one query,
/// master keys one by one. A key read in a new period all the same (a change announced after a
/// renewal that is still waiting in its lane) is applied after one fold of the spend journal
/// (see `KeyEntry::reload`).
async fn apply(gateway: &Gateway, changes: &[Change]) {
    let mut keys = Vec::new();
    let mut wanted = Vec::new();
    for &change in changes {
        match change {
            Change::ApiKey(id) => keys.push(id),
            Change::MasterKey(id) => reload_master_key(gateway, id).await,
            // Routed by `Lanes`: its change follows.
            Change::Renewed(_) => {}
            Change::LeaseWanted { key, by } if by != gateway.leases.id => wanted.push(key),
            Change::LeaseWanted { .. } => {}
        }
    }
    // Another gateway is short of a key's cap: what this one does not use goes back.
    for id in wanted {
        if let Some(key) = gateway.keys.by_id(id) {
            crate::lease::give_back_wanted(gateway, &key).await;
        }
    }
    let mut cached = cached_only(gateway, keys);
    cached.sort_unstable();
    cached.dedup();
    if cached.is_empty() {
        return;
    }
    let mut renewed = Vec::new();
    let reloaded = async {
        let client = gateway.pool.get().await?;
        reload_keys(gateway, &client, &cached, |entry, key| {
            if entry.reload(key) == Reloaded::NeedsFold {
                renewed.push(entry.id);
            }
        })
        .await
    };
    // Keys that fail are applied by the periodic refresh.
    if let Err(err) = reloaded.await {
        tracing::warn!(error = %err, n_keys = cached.len(), "cannot reload changed keys");
    }
    reload_renewed(gateway, renewed).await;
    // A changed key (a cap cut, a revocation, a pause) gives back what its lease holds unused:
    // the next request asks again, under the new terms.
    crate::lease::give_back_changed(gateway, cached).await;
}

/// Reads the keys `ids` again, [`MAX_BATCH`] rows per query, and passes each that is cached,
/// with its row, to `on_row`. (The key cache never drops a key it holds, so a key cached when
/// its change was announced is still there.)
async fn reload_keys(
    gateway: &Gateway,
    client: &impl db::GenericClient,
    ids: &[uuid::Uuid],
    mut on_row: impl FnMut(&KeyEntry, &db::keys::ApiKey),
) -> Result<(), db::Error> {
    for batch in ids.chunks(MAX_BATCH) {
        for key in db::keys::find_by_ids(client, batch).await? {
            if let Some(entry) = gateway.keys.by_id(key.id) {
                on_row(&entry, &key);
            }
        }
    }
    Ok(())
}

/// How far back each refresh looks beyond its previous pass: a change is stamped when its
/// statement runs but becomes visible only when its transaction commits.
const COMMIT_MARGIN: Duration = Duration::from_secs(60);

/// Reloads the cached keys and master keys that changed since the previous pass (with a margin),
/// the safety net behind NOTIFY. It reads only what changed, however many keys are cached, and
/// builds only the cached keys whose row is newer than their entry, one row at a time.
pub async fn refresh_changed(gateway: &Gateway) {
    let client = match gateway.pool.get().await {
        Ok(client) => client,
        Err(err) => return tracing::warn!(error = %err, "cannot refresh keys"),
    };
    // Read before the query: the next pass looks back from here.
    let now = match db::keys::database_now(&client).await {
        Ok(now) => now,
        Err(err) => return tracing::warn!(error = %err, "cannot refresh keys"),
    };
    let since = match *lock(&gateway.refreshed_at) {
        Some(at) => at - COMMIT_MARGIN,
        // The first pass looks back from the gateway's start (in the database's clock), when
        // the cache was empty, not to the beginning of time: that would load every key.
        None => now - gateway.started.elapsed() - COMMIT_MARGIN,
    };
    // Only cached keys whose row is newer than their entry are worth loading.
    let stale_entry = |id, changed_at| {
        gateway
            .keys
            .by_id(id)
            .filter(|entry| entry.info().changed_at < changed_at)
    };
    let mut renewed = Vec::new();
    let mut changed = Vec::new();
    let reload = |entry: Arc<KeyEntry>, key: db::keys::ApiKey| {
        if entry.reload(&key) == Reloaded::NeedsFold {
            renewed.push(entry.id);
        }
        changed.push(entry.id);
    };
    if let Err(err) = db::keys::changed_since(&client, since, stale_entry, reload).await {
        return tracing::warn!(error = %err, "cannot refresh keys");
    }
    let masters = match db::keys::master_keys_changed_since(&client, since).await {
        Ok(masters) => masters,
        Err(err) => return tracing::warn!(error = %err, "cannot refresh master keys"),
    };
    drop(client);
    let renewals_applied = reload_renewed(gateway, renewed).await;
    crate::lease::give_back_changed(gateway, changed).await;
    for id in masters {
        reload_master_key(gateway, id).await;
    }
    // Not advanced past a renewal that could not be applied: the next pass reads it again.
    if renewals_applied {
        *lock(&gateway.refreshed_at) = Some(now);
    }
    gateway
        .changed_uncached
        .retain(|_, at| at.elapsed() < COMMIT_MARGIN);
    gateway
        .metrics
        .cache_keys
        .set(i64::try_from(gateway.keys.len()).unwrap_or(i64::MAX));
}

/// Folds the spend journal, then reads the keys `ids` again and applies each, a new period
/// included (see `KeyEntry::reload`). Returns whether they could be read.
async fn reload_renewed(gateway: &Gateway, ids: Vec<uuid::Uuid>) -> bool {
    if ids.is_empty() {
        return true;
    }
    let folded_then_read = async {
        let client = gateway.pool.get().await?;
        db::usage::fold(&client).await?;
        reload_keys(gateway, &client, &ids, |entry, key| {
            entry.reload_folded(key)
        })
        .await
    };
    match folded_then_read.await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, n_keys = ids.len(), "cannot reload renewed keys");
            false
        }
    }
}

/// Reloads a master key the gateway holds (one it never opened is left to be loaded on use).
/// On failure it is forgotten, so the next request loads it again or is refused: fail closed.
async fn reload_master_key(gateway: &Gateway, id: uuid::Uuid) {
    if !gateway.masters.contains_key(&id) {
        note_uncached(gateway, id);
        return;
    }
    match gateway.load_master_key(id).await {
        Ok(master) => {
            gateway.masters.insert(id, master);
        }
        Err(err) => {
            gateway.masters.remove(&id);
            tracing::warn!(error = %err, "cannot reload a changed master key");
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The periodic refresh.
pub async fn refresh_periodically(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(gateway.config.refresh_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => refresh_changed(&gateway).await,
            _ = shutdown.changed() => return,
        }
    }
}

/// Fetches prices now and on an interval; retries sooner while the list is still empty.
pub async fn refresh_prices(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(client) => client,
        Err(err) => return tracing::error!(error = %err, "cannot build the HTTP client for prices"),
    };
    loop {
        let wait = match gateway
            .prices
            .refresh(&client, &gateway.config.upstream_base_url)
            .await
        {
            Ok(n_models) => {
                tracing::info!(n_models, "loaded upstream prices");
                gateway.config.price_refresh_interval
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot load upstream prices");
                if gateway.prices.get().is_empty() {
                    Duration::from_secs(2)
                } else {
                    gateway.config.price_refresh_interval
                }
            }
        };
        gateway
            .metrics
            .cache_keys
            .set(i64::try_from(gateway.keys.len()).unwrap_or(i64::MAX));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_go_to_their_own_lane_and_everything_else_keeps_its_order() {
        let [a, b, c, m] = [1, 2, 3, 4].map(uuid::Uuid::from_u128);
        let mut lanes = Lanes::default();
        for change in [
            Change::Renewed(a),
            Change::ApiKey(a),
            Change::ApiKey(b),
            Change::Renewed(c),
            Change::ApiKey(c),
            Change::MasterKey(m),
            // A later change to a renewed key, announced without a renewal, is not one.
            Change::ApiKey(a),
            // A marker whose own notice was sent earlier in its transaction marks nothing:
            // neither the next notice nor a later change to that key.
            Change::Renewed(b),
            Change::ApiKey(c),
            Change::ApiKey(b),
        ] {
            lanes.route(change);
        }
        assert_eq!(
            lanes.others,
            [
                Change::ApiKey(b),
                Change::MasterKey(m),
                Change::ApiKey(a),
                Change::ApiKey(c),
                Change::ApiKey(b)
            ]
        );
        assert_eq!(Vec::from(lanes.renewals), [a, c]);
        assert_eq!(lanes.marked, None);
    }
}
