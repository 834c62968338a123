//! Looking up tokens the key cache does not know, so that a flood of made-up tokens cannot make
//! the database the bottleneck: lookups run on a small pool of their own (so the flusher, the
//! leases and the key sync keep theirs), concurrent lookups of one token are merged into one
//! query, and at most `gateway.max_lookups_in_flight` run at once; past that a lookup is refused
//! at once (503), without waiting. Unknown tokens are remembered as unknown (10 s), and
//! forgotten by a sweep of their own ([`sweep`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use tokio::sync::{OnceCell, Semaphore, watch};

use crate::state::LookupError;

/// What one query found: the key's row, or nothing; an error as text (it is shared by every
/// request that waited for it).
type Found = Result<Option<db::keys::ApiKey>, LookupError>;

/// The lookups in flight.
pub struct Lookups {
    pool: db::Pool,
    /// One cell per token being looked up: the first request runs the query, the others wait
    /// for its answer.
    in_flight: DashMap<[u8; 32], Arc<OnceCell<Found>>>,
    permits: Arc<Semaphore>,
    counts: Arc<Counts>,
}

/// How many queries run now, the most that ever ran at once, and how many ran in all.
#[derive(Default)]
struct Counts {
    running: AtomicI64,
    peak: AtomicI64,
    total: AtomicI64,
}

/// Counts one query running while it lives (in the task that runs the query, so a request
/// dropped meanwhile changes nothing).
struct Running(Arc<Counts>);

impl Running {
    fn start(counts: &Arc<Counts>) -> Running {
        let running = counts.running.fetch_add(1, Ordering::AcqRel) + 1;
        let peak = counts
            .peak
            .fetch_max(running, Ordering::AcqRel)
            .max(running);
        counts.total.fetch_add(1, Ordering::AcqRel);
        crate::metrics::Metrics::global().key_lookups_peak.set(peak);
        Running(Arc::clone(counts))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lookups {
    /// Lookups on `pool`, at most `max_in_flight` queries at once.
    pub fn new(pool: db::Pool, max_in_flight: usize) -> Lookups {
        Lookups {
            pool,
            in_flight: DashMap::new(),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            counts: Arc::default(),
        }
    }

    /// The most queries that ran at once since the start.
    pub fn peak(&self) -> i64 {
        self.counts.peak.load(Ordering::Relaxed)
    }

    /// How many queries ran since the start.
    pub fn queries(&self) -> i64 {
        self.counts.total.load(Ordering::Relaxed)
    }

    /// Finds the key whose token hashes to `hash` in Postgres, sharing the query with every
    /// concurrent lookup of the same hash. The query runs on `control` (the runtime that owns
    /// the database connections), holding its permit there; `remember` is called once with
    /// what it found, before any other lookup of the hash can start a query (the caller keeps
    /// it in the key cache).
    pub async fn find(
        &self,
        hash: [u8; 32],
        control: &tokio::runtime::Handle,
        remember: impl FnOnce(&Option<db::keys::ApiKey>),
    ) -> Found {
        // Whatever happens to this request, the hash leaves the lookups in flight once it has
        // an answer, or once no request waits for one.
        let forget = Forget {
            in_flight: &self.in_flight,
            hash,
            cell: Arc::clone(
                self.in_flight
                    .entry(hash)
                    .or_insert_with(|| Arc::new(OnceCell::new()))
                    .value(),
            ),
        };
        forget
            .cell
            .get_or_init(|| async {
                let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                    return Err(LookupError::Busy);
                };
                let (pool, counts) = (self.pool.clone(), Arc::clone(&self.counts));
                let found = control
                    .spawn(async move {
                        let _permit = permit;
                        let _running = Running::start(&counts);
                        let client = pool.get().await?;
                        db::keys::find_by_token_hash(&client, &hash).await
                    })
                    .await;
                match found {
                    Ok(Ok(found)) => {
                        remember(&found);
                        Ok(found)
                    }
                    Ok(Err(err)) => Err(LookupError::Database(err.to_string())),
                    Err(err) => Err(LookupError::Database(err.to_string())),
                }
            })
            .await
            .clone()
    }
}

/// Removes a hash's cell from the lookups in flight when dropped, if it is still that cell and
/// it has its answer or no one else holds it.
struct Forget<'a> {
    in_flight: &'a DashMap<[u8; 32], Arc<OnceCell<Found>>>,
    hash: [u8; 32],
    cell: Arc<OnceCell<Found>>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        // Two references when no other request waits: the map's and this one.
        self.in_flight.remove_if(&self.hash, |_, current| {
            Arc::ptr_eq(current, &self.cell)
                && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
        });
    }
}

/// Sweeps expired negative cache entries every `interval` until shutdown, so a flood of
/// made-up tokens does not grow the cache for longer than their time to live.
pub async fn sweep(
    gateway: Arc<crate::state::Gateway>,
    interval: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval.max(std::time::Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => gateway.keys.sweep_unknown(),
            _ = shutdown.changed() => return,
        }
    }
}
