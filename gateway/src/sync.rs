//! Keeping the cache true: reload what `NOTIFY keycap_changes` names within a second, reload
//! every cached key on an interval as a safety net, refresh prices, and sweep expired negative
//! cache entries.

use std::sync::Arc;
use std::time::Duration;

use db::notify::Change;
use tokio::sync::watch;

use crate::auth::{KeyEntry, Reloaded};
use crate::state::Gateway;

/// Listens for changes until shutdown, reconnecting (and refreshing everything) when the
/// connection drops.
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
                loop {
                    tokio::select! {
                        change = changes.recv() => match change {
                            Some(change) => {
                                // With what else has arrived: renewals in one batch share a fold.
                                let mut batch = vec![change];
                                while batch.len() < MAX_BATCH
                                    && let Ok(more) = changes.try_recv()
                                {
                                    batch.push(more);
                                }
                                apply(&gateway, batch).await
                            }
                            None => break,
                        },
                        _ = shutdown.changed() => return,
                    }
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

/// Applies announced changes: cached keys are read again in one query, master keys one by one;
/// renewed keys are applied after one fold of the spend journal for all of them (see
/// `KeyEntry::reload`). A month boundary announces every renewed key at once: one query per
/// batch, not one per key, keeps a revocation behind them from waiting long.
async fn apply(gateway: &Gateway, changes: Vec<Change>) {
    let mut cached = Vec::new();
    for change in changes {
        match change {
            Change::ApiKey(id) if gateway.keys.by_id(id).is_some() => cached.push(id),
            // Not cached: a lookup may be reading it right now (see `Gateway::key_for`).
            Change::ApiKey(id) => {
                gateway
                    .changed_uncached
                    .insert(id, std::time::Instant::now());
            }
            Change::MasterKey(id) => reload_master_key(gateway, id).await,
        }
    }
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
    let reload = |entry: Arc<KeyEntry>, key: db::keys::ApiKey| {
        if entry.reload(&key) == Reloaded::NeedsFold {
            renewed.push(entry.id);
        }
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
    for id in masters {
        reload_master_key(gateway, id).await;
    }
    // Not advanced past a renewal that could not be applied: the next pass reads it again.
    if renewals_applied {
        *lock(&gateway.refreshed_at) = Some(now);
    }
    gateway.keys.sweep_unknown();
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
        // Not held: a lookup may be reading it right now (see `Gateway::master_key`).
        gateway
            .changed_uncached
            .insert(id, std::time::Instant::now());
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
