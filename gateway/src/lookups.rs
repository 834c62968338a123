//! Looking up tokens the key cache does not know, so that a flood of made-up tokens cannot make
//! the database the bottleneck: lookups run on a small pool of their own (so the flusher, the
//! leases and the key sync keep theirs); concurrent lookups of one token are one lookup; the
//! tokens waiting are looked up together, up to [`MAX_BATCH`] in one query, so a made-up token
//! costs the database an index probe rather than a query of its own; and at most
//! `gateway.max_lookups_in_flight` tokens are looked up at once: past that a lookup is refused at
//! once (503), without waiting. Unknown tokens are remembered as unknown (10 s), and forgotten by
//! a sweep of their own ([`sweep`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::state::LookupError;

/// What one lookup found: the key's row, or nothing; an error as text (it is shared by every
/// request that waited for it).
type Found = Result<Option<db::keys::ApiKey>, LookupError>;

/// The most tokens one query looks up.
pub const MAX_BATCH: usize = 1024;

/// The lookups in flight.
pub struct Lookups {
    /// One cell per token being looked up: the first request asks for it, the others wait for
    /// its answer.
    in_flight: DashMap<[u8; 32], Arc<OnceCell<Found>>>,
    /// One permit per token being looked up (waiting for a query, or in one).
    permits: Arc<Semaphore>,
    queue: Arc<Queue>,
    counts: Arc<Counts>,
}

/// The tokens waiting for a query, and the queries that take them: at most one per connection
/// of the pool, each taking what waits when it starts, until nothing does.
struct Queue {
    pool: db::Pool,
    max_queries: usize,
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    tokens: VecDeque<Wanted>,
    queries: usize,
}

/// A token to look up, who waits for the answer, and its place among the lookups in flight
/// (held until it is answered, whatever happens to the request that asked).
struct Wanted {
    hash: [u8; 32],
    answer: oneshot::Sender<Found>,
    // Counted out before its permit is given back (fields drop in this order), so the count
    // never passes the cap.
    _running: Running,
    _permit: OwnedSemaphorePermit,
}

/// How many tokens are looked up now, the most that ever were at once, and how many queries
/// ran in all.
#[derive(Default)]
struct Counts {
    running: AtomicI64,
    peak: AtomicI64,
    queries: AtomicI64,
}

/// Counts one token being looked up while it lives.
struct Running(Arc<Counts>);

impl Running {
    fn start(counts: &Arc<Counts>) -> Running {
        let running = counts.running.fetch_add(1, Ordering::AcqRel) + 1;
        let peak = counts
            .peak
            .fetch_max(running, Ordering::AcqRel)
            .max(running);
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
    /// Lookups on `pool` (as many queries at once as it has connections), at most
    /// `max_in_flight` tokens at once.
    pub fn new(pool: db::Pool, max_in_flight: usize) -> Lookups {
        let max_queries = pool.status().max_size.max(1);
        Lookups {
            in_flight: DashMap::new(),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            queue: Arc::new(Queue {
                pool,
                max_queries,
                state: Mutex::default(),
            }),
            counts: Arc::default(),
        }
    }

    /// The most tokens looked up at once since the start.
    pub fn peak(&self) -> i64 {
        self.counts.peak.load(Ordering::Relaxed)
    }

    /// How many queries ran since the start.
    pub fn queries(&self) -> i64 {
        self.counts.queries.load(Ordering::Relaxed)
    }

    /// Finds the key whose token hashes to `hash` in Postgres, sharing the lookup with every
    /// concurrent lookup of the same hash, and the query with the other tokens waiting. The
    /// query starts after this call (so it sees every key committed before), on `control` (the
    /// runtime that owns the database connections); `remember` is called once with what it
    /// found, before any other lookup of the hash can start (the caller keeps it in the key
    /// cache).
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
                let (answer, answered) = oneshot::channel();
                let wanted = Wanted {
                    hash,
                    answer,
                    _running: Running::start(&self.counts),
                    _permit: permit,
                };
                if self.queue.push(wanted) {
                    let task = QueryTask {
                        queue: Arc::clone(&self.queue),
                        ended: false,
                    };
                    control.spawn(take_waiting(task, Arc::clone(&self.counts)));
                }
                let found = answered.await.unwrap_or_else(|_| {
                    Err(LookupError::Database("the lookup was dropped".into()))
                });
                if let Ok(found) = &found {
                    remember(found);
                }
                found
            })
            .await
            .clone()
    }
}

impl Queue {
    /// Adds a token; true when a new query task should start for it.
    fn push(&self, wanted: Wanted) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tokens.push_back(wanted);
        let start = state.queries < self.max_queries;
        if start {
            state.queries += 1;
        }
        start
    }
}

/// A query task's place in [`Waiting::queries`], given back when it ends, however it ends.
struct QueryTask {
    queue: Arc<Queue>,
    ended: bool,
}

impl QueryTask {
    /// The tokens waiting, up to [`MAX_BATCH`]; none when none wait, and then this task ends
    /// (decided under the lock that [`Queue::push`] takes, so no token is left waiting with no
    /// task to take it).
    fn take(&mut self) -> Vec<Wanted> {
        let mut state = self
            .queue
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.tokens.is_empty() {
            state.queries -= 1;
            self.ended = true;
            return Vec::new();
        }
        let n = state.tokens.len().min(MAX_BATCH);
        state.tokens.drain(..n).collect()
    }
}

impl Drop for QueryTask {
    /// A task dropped before it ended (a panic, or a runtime shutting down, perhaps before it
    /// ever ran) gives its place back. When it was the last task, the tokens waiting are
    /// answered with an error rather than left waiting for a task that may never come; another
    /// task still running takes them.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let waiting = {
            let mut state = self
                .queue
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.queries -= 1;
            if state.queries == 0 {
                std::mem::take(&mut state.tokens)
            } else {
                VecDeque::new()
            }
        };
        drop(waiting);
    }
}

/// How long one query of waiting tokens may take, its connection included; past that its
/// tokens are answered with an error (503).
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the database runs one statement on a lookup connection before it cuts it off
/// (`db::connect_with_statement_timeout`): within [`QUERY_TIMEOUT`], so a query the gateway
/// gave up on is not still running when that connection's next query comes.
pub const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One query task: looks up what waits, in one query, until nothing waits.
async fn take_waiting(mut task: QueryTask, counts: Arc<Counts>) {
    loop {
        let batch = task.take();
        if batch.is_empty() {
            return;
        }
        counts.queries.fetch_add(1, Ordering::AcqRel);
        // One hash once, though two requests may wait for it (a request that gave up, and one
        // that asked again after it).
        let hashes: Vec<[u8; 32]> = batch
            .iter()
            .map(|wanted| wanted.hash)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let found = tokio::time::timeout(QUERY_TIMEOUT, async {
            let client = task.queue.pool.get().await?;
            db::keys::find_by_token_hashes(&client, &hashes).await
        })
        .await;
        match found {
            Ok(Ok(rows)) => {
                let rows: HashMap<[u8; 32], db::keys::ApiKey> = rows.into_iter().collect();
                for wanted in batch {
                    let _ = wanted.answer.send(Ok(rows.get(&wanted.hash).cloned()));
                }
            }
            failed => {
                let err = LookupError::Database(match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "looking the key up took too long".into(),
                });
                for wanted in batch {
                    let _ = wanted.answer.send(Err(err.clone()));
                }
            }
        }
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
