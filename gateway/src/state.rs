//! `Gateway`: the state every request shares.

use std::sync::Arc;

use dashmap::DashMap;
use domain::Money;
use domain::services::openrouter::OpenRouter;
use domain::services::{ChargeBasis, ServiceAdapter};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::auth::{Cached, KeyCache, KeyEntry};
use crate::config::{GatewayConfig, Upstream};
use crate::flusher::{Outbox, Settled};
use crate::metrics::Metrics;
use crate::prices::PriceList;

/// A decrypted master key, held only in memory.
pub struct MasterKey {
    pub org_id: Uuid,
    pub revoked: bool,
    /// The upstream credential header's value (`Bearer <key>`), built once and marked
    /// sensitive, so a request only clones a reference to it; `None` when the key cannot be a
    /// header value. Its bytes are wiped when the last request holding it is done.
    credential: Option<http::HeaderValue>,
}

impl MasterKey {
    /// The value of the upstream credential header, or `None` when the key cannot be one.
    pub fn credential(&self) -> Option<&http::HeaderValue> {
        self.credential.as_ref()
    }
}

/// A sensitive header value over `text`, whose bytes are wiped once the value and every clone
/// of it are dropped.
fn sensitive_header_value(text: String) -> Option<http::HeaderValue> {
    let wiped_on_drop = bytes::Bytes::from_owner(zeroize::Zeroizing::new(text.into_bytes()));
    let mut value = http::HeaderValue::from_maybe_shared(wiped_on_drop).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("org_id", &self.org_id)
            .field("revoked", &self.revoked)
            .finish_non_exhaustive()
    }
}

/// Why a lookup could not be answered. Never carries secret material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("keycap cannot reach its database: {0}")]
    Database(String),
    #[error(
        "the gateway is looking up too many unknown keys at once (gateway.max_lookups_in_flight): \
         retry in a moment"
    )]
    Busy,
    #[error("master key {0} cannot be opened with the configured encryption key")]
    Vault(Uuid),
}

/// Everything the proxy shares between requests.
pub struct Gateway {
    pub config: GatewayConfig,
    pub upstream: Upstream,
    pub adapter: OpenRouter,
    pub pool: db::Pool,
    pub keyring: vault::Keyring,
    pub keys: KeyCache,
    /// Lookups of tokens the cache does not know, on a pool of their own.
    pub lookups: crate::lookups::Lookups,
    pub masters: DashMap<Uuid, Arc<MasterKey>>,
    pub prices: PriceList,
    /// Request body bytes in flight, over all requests (`gateway.max_inflight_body_bytes`).
    pub bodies: crate::body::BodyBudget,
    /// Which key made which generation, for `GET /api/v1/generation`.
    pub generations: crate::generations::GenerationLog,
    /// Keys with settled usage not yet flushed (the flusher takes it).
    pub outbox: Arc<Outbox>,
    /// Requests ended without a reported cost, waiting for the upstream to say what it billed.
    pub reconciler: crate::reconcile::Reconciler,
    /// The runtime that owns the database connections and background tasks.
    pub control: tokio::runtime::Handle,
    pub metrics: &'static Metrics,
    /// Keys and master keys named by a NOTIFY while not cached, with when: a lookup in flight
    /// for one of them may have read the row before the change, so it reads it again (see
    /// `key_for` and `master_key`).
    pub changed_uncached: DashMap<Uuid, std::time::Instant>,
    /// The database clock at the last refresh of changed keys (see `sync`).
    pub refreshed_at: std::sync::Mutex<Option<time::OffsetDateTime>>,
    /// When this gateway started: nothing was cached before.
    pub started: std::time::Instant,
    /// This gateway's id and the keys it holds leases of.
    pub leases: crate::lease::Leases,
}

impl Gateway {
    /// Shared state; token lookups run on `lookup_pool`, everything else on `pool`.
    pub fn new(
        config: GatewayConfig,
        pool: db::Pool,
        lookup_pool: db::Pool,
        keyring: vault::Keyring,
        control: tokio::runtime::Handle,
    ) -> Result<Gateway, String> {
        let upstream = Upstream::parse(&config.upstream_base_url)?;
        let adapter = OpenRouter::new(config.openrouter.clone());
        let keys = KeyCache::new(config.negative_cache_ttl);
        let bodies = crate::body::BodyBudget::new(config.max_inflight_body_bytes);
        let leases = crate::lease::Leases::new(config.lease.clone());
        let lookups = crate::lookups::Lookups::new(lookup_pool, config.max_lookups_in_flight);
        Ok(Gateway {
            leases,
            lookups,
            config,
            bodies,
            generations: Default::default(),
            upstream,
            adapter,
            pool,
            keyring,
            keys,
            masters: DashMap::new(),
            prices: PriceList::default(),
            outbox: Arc::new(Outbox::default()),
            reconciler: crate::reconcile::Reconciler::new()?,
            control,
            metrics: Metrics::global(),
            changed_uncached: DashMap::new(),
            refreshed_at: std::sync::Mutex::new(None),
            started: std::time::Instant::now(),
        })
    }

    /// The key whose token hashes to `hash`: from the cache, or loaded from Postgres once.
    pub async fn key_for(&self, hash: [u8; 32]) -> Result<Option<Arc<KeyEntry>>, LookupError> {
        match self.keys.get(&hash) {
            Cached::Known(entry) => return Ok(Some(entry)),
            Cached::Unknown => return Ok(None),
            Cached::Miss => {}
        }
        let remember = |found: &Option<db::keys::ApiKey>| match found {
            Some(key) => {
                self.keys.insert(hash, KeyEntry::from_row(key));
            }
            None => self.keys.insert_unknown(hash),
        };
        let loaded = self.lookups.find(hash, &self.control, remember).await?;
        match loaded {
            Some(key) => {
                let entry = self.keys.insert(hash, KeyEntry::from_row(&key));
                // A change announced while the row was being read: read it again.
                if self.changed_uncached.remove(&entry.id).is_some() {
                    let pool = self.pool.clone();
                    let id = entry.id;
                    let fresh = self
                        .control
                        .spawn(async move {
                            let client = pool.get().await?;
                            // Folded first, in case the change is a renewal (see
                            // `KeyEntry::reload`); this path is rare.
                            db::usage::fold(&client).await?;
                            db::keys::find_by_id(&client, id).await
                        })
                        .await;
                    match fresh {
                        Ok(Ok(Some(row))) => entry.reload_folded(&row),
                        _ => return Err(LookupError::Database("reloading a changed key".into())),
                    }
                }
                self.metrics
                    .cache_keys
                    .set(i64::try_from(self.keys.len()).unwrap_or(i64::MAX));
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    /// The master key `id`, decrypted once and then kept in memory.
    pub async fn master_key(&self, id: Uuid) -> Result<Arc<MasterKey>, LookupError> {
        if let Some(master) = self.masters.get(&id) {
            return Ok(Arc::clone(&master));
        }
        let mut master = self.load_master_key(id).await?;
        // A change announced while the row was being read (a revocation, say): read it again.
        if self.changed_uncached.remove(&id).is_some() {
            master = self.load_master_key(id).await?;
        }
        self.masters.insert(id, Arc::clone(&master));
        Ok(master)
    }

    /// Loads (or reloads) a master key from Postgres and opens it.
    pub async fn load_master_key(&self, id: Uuid) -> Result<Arc<MasterKey>, LookupError> {
        let pool = self.pool.clone();
        let row = self
            .control
            .spawn(async move {
                let client = pool.get().await?;
                db::master_keys::get_sealed(&client, id).await
            })
            .await
            .map_err(|err| LookupError::Database(err.to_string()))?
            .map_err(|err| LookupError::Database(err.to_string()))?;
        let secret: SecretString = self
            .keyring
            .open(row.key.org_id, id, &row.sealed)
            .map_err(|_| LookupError::Vault(id))?;
        let credential = sensitive_header_value(
            self.adapter
                .credential_header()
                .value_for(secret.expose_secret()),
        );
        Ok(Arc::new(MasterKey {
            org_id: row.key.org_id,
            revoked: row.key.revoked_at.is_some(),
            credential,
        }))
    }

    /// The name of the header that carries the master key upstream.
    pub fn credential_header(&self) -> &'static str {
        self.adapter.credential_header().name
    }

    /// Ends a request's reservation with its charge (`charge.usage.cost_nanousd`): the charge
    /// becomes the key's spend and goes to the flusher, the rest of the reservation is
    /// released, and the settlement is counted. A charge above the reservation is still made
    /// (the master key paid it), counted and logged at warn: a pricing bug to fix.
    pub fn charge(&self, key: &Arc<KeyEntry>, charge: Charge<'_>) {
        let amount = Money::from_nanos(charge.usage.cost_nanousd);
        key.budget.settle(charge.reservation, amount);
        // What the reservation did not spend is back in the lease: the sweep gives it back
        // once the key is idle.
        if amount < charge.reservation {
            self.leases.list(key);
        }
        self.metrics.count_settlement(charge.basis);
        self.metrics
            .spend_nanousd_total
            .inc_by(u64::try_from(amount.nanos()).unwrap_or(0));
        if amount > charge.reservation {
            self.metrics.reservation_exceeded_total.inc();
            tracing::warn!(
                key.id = %key.id,
                model = %charge.model,
                reserved = %charge.reservation,
                charge = %amount,
                "the upstream billed more than the gateway reserved: the request was \
                 underpriced, and its key may now be over its cap (a pricing bug to fix)"
            );
        }
        self.outbox
            .record(key, charge.usage, charge.at, charge.model);
    }
}

/// What ends one metered request's reservation (see [`Gateway::charge`]).
pub struct Charge<'a> {
    pub reservation: Money,
    /// Its tokens, and the amount charged.
    pub usage: Settled,
    pub basis: ChargeBasis,
    /// When the request ended: its usage counts in that minute.
    pub at: time::OffsetDateTime,
    /// The model asked for: its usage counts under it, and it names it in the log line of a
    /// charge above the reservation.
    pub model: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_header_value_is_sensitive_and_refuses_what_a_header_cannot_hold() {
        let value = sensitive_header_value("Bearer sk-or-v1-abc".to_string()).unwrap();
        assert_eq!(value.as_bytes(), b"Bearer sk-or-v1-abc");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("sk-or"));
        assert_eq!(value.clone(), value);
        assert!(sensitive_header_value("Bearer sk-or\nX-Injected: 1".to_string()).is_none());
    }
}
