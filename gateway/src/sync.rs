//! Keeping the cache true: reload what `NOTIFY keycap_changes` names within a second, reload
//! every cached key on an interval as a safety net, refresh prices, and sweep expired negative
//! cache entries.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use db::notify::Change;
use tokio::sync::watch;

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
                refresh_all(&gateway).await;
                loop {
                    tokio::select! {
                        change = changes.recv() => match change {
                            Some(change) => apply(&gateway, change).await,
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

async fn apply(gateway: &Gateway, change: Change) {
    match change {
        Change::ApiKey(id) => {
            let Some(entry) = gateway.keys.by_id(id) else {
                return;
            };
            let client = match gateway.pool.get().await {
                Ok(client) => client,
                Err(err) => return tracing::warn!(error = %err, "cannot reload a changed key"),
            };
            match db::keys::find_by_id(&client, id).await {
                Ok(Some(key)) => entry.reload(&key),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, key.id = %id, "cannot reload a changed key")
                }
            }
        }
        Change::MasterKey(id) => {
            if !gateway.masters.contains_key(&id) {
                return;
            }
            match gateway.load_master_key(id).await {
                Ok(master) => {
                    gateway.masters.insert(id, master);
                }
                Err(err) => {
                    // Fail closed: forget it, so the next request loads it again or is refused.
                    gateway.masters.remove(&id);
                    tracing::warn!(error = %err, "cannot reload a changed master key");
                }
            }
        }
    }
}

/// Reloads every cached key and master key.
pub async fn refresh_all(gateway: &Gateway) {
    let client = match gateway.pool.get().await {
        Ok(client) => client,
        Err(err) => return tracing::warn!(error = %err, "cannot refresh keys"),
    };
    let open = match db::keys::list_open(&client).await {
        Ok(open) => open,
        Err(err) => return tracing::warn!(error = %err, "cannot refresh keys"),
    };
    let mut seen = HashSet::new();
    for key in &open {
        if let Some(entry) = gateway.keys.by_id(key.id) {
            entry.reload(key);
            seen.insert(key.id);
        }
    }
    // Cached keys that are no longer open were closed meanwhile: reload each.
    for entry in gateway.keys.entries() {
        if seen.contains(&entry.id) {
            continue;
        }
        if let Ok(Some(key)) = db::keys::find_by_id(&client, entry.id).await {
            entry.reload(&key);
        }
    }
    drop(client);
    let master_ids: Vec<uuid::Uuid> = gateway.masters.iter().map(|m| *m.key()).collect();
    for id in master_ids {
        match gateway.load_master_key(id).await {
            Ok(master) => {
                gateway.masters.insert(id, master);
            }
            Err(_) => {
                gateway.masters.remove(&id);
            }
        }
    }
    gateway.keys.sweep_unknown();
    gateway
        .metrics
        .cache_keys
        .set(i64::try_from(gateway.keys.len()).unwrap_or(i64::MAX));
}

/// The periodic full refresh.
pub async fn refresh_periodically(gateway: Arc<Gateway>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(gateway.config.refresh_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => refresh_all(&gateway).await,
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
