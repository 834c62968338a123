//! The flusher: settled usage accumulates in each key's own cache entry ([`Unflushed`]), and
//! the [`Outbox`] lists the keys that have some. Every flush interval, and once more on
//! shutdown, the flusher takes what the listed keys hold and writes it to Postgres in one
//! statement. Spend goes out every flush, since the cap, a restart and the admin pages read it,
//! as one row of the spend journal; the journal is folded into the keys' spend rows every
//! rollup interval and after the last flush (readers that need it exact fold first; see
//! migrations/0009_spend_journal.sql). Per-minute rollups, which only the admin app's charts
//! and totals read, are held for the rollup interval from when their key was listed, and go
//! out with the flush after that: spread over the flushes, not every key's at once, which was
//! a spike of work each minute with many keys. With many keys active, updating every active
//! key's rows every second was most of the database's work. A failed flush keeps what it
//! took and retries it unchanged under the same id before anything new, so nothing settled is
//! lost while the process lives, and a flush whose reply was lost after it committed is not
//! applied twice (see `db::usage::flush`).
//!
//! Recording a request touches the key's entry, which the request has just used, and takes a
//! lock only when the key is not listed yet: no message, no allocation, no shared map per
//! request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use db::usage::{Flushed, SpendDeltas, UsageDelta};
use domain::Money;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::auth::KeyEntry;
use crate::metrics::Metrics;

/// The usage of one settled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanousd: i64,
}

/// How often the two kinds of writes happen.
#[derive(Debug, Clone, Copy)]
pub struct Intervals {
    pub flush: Duration,
    pub rollup: Duration,
}

/// One key's usage of one model in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MinuteUsage {
    /// Minutes since the Unix epoch.
    minute: i64,
    /// The model the requests named.
    model: Arc<str>,
    n_requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_nanousd: i64,
}

/// What one key has settled that the flusher has not taken yet.
#[derive(Debug, Default)]
pub struct Unflushed {
    spend: AtomicI64,
    rollups: Mutex<Rollups>,
    /// Whether the key is on the outbox's spend list (then it is not listed again).
    on_spend_list: AtomicBool,
    on_rollup_list: AtomicBool,
}

/// A key's usage by minute and model since its rollups were last taken. The latest minute and
/// model are kept inline, so recording a request touches no memory beyond the key's entry; a
/// minute that ends, or a request naming another model, moves it to `earlier` (a minute or two
/// between rollup writes, times the models the key used).
#[derive(Debug, Default)]
struct Rollups {
    latest: Option<MinuteUsage>,
    earlier: Vec<MinuteUsage>,
}

/// The keys holding unflushed usage, in two lists: one taken whole every flush (spend), and
/// one of keys with rollups, in the order they were listed and with when, each taken once it
/// has waited the rollup interval.
#[derive(Default)]
pub struct Outbox {
    spend: Mutex<Listed>,
    rollups: Mutex<VecDeque<(Instant, Arc<KeyEntry>)>>,
}

#[derive(Default)]
struct Listed {
    keys: Vec<Arc<KeyEntry>>,
    /// When the first key went on the list.
    since: Option<Instant>,
}

impl Unflushed {
    /// The spend settled and not taken by the flusher yet.
    pub fn spend(&self) -> Money {
        Money::from_nanos(self.spend.load(Ordering::SeqCst))
    }
}

impl Outbox {
    /// Adds one settled request, settled `at`, that named `model`, to `key`'s unflushed usage.
    pub fn record(&self, key: &Arc<KeyEntry>, usage: Settled, at: OffsetDateTime, model: &str) {
        let unflushed = &key.unflushed;
        if usage.cost_nanousd != 0 {
            // Add, then list: the flusher unlists, then takes (see `take_spend`), so an amount
            // is always either taken by the pass that unlisted the key or listed again.
            unflushed
                .spend
                .fetch_add(usage.cost_nanousd, Ordering::SeqCst);
            if !unflushed.on_spend_list.swap(true, Ordering::SeqCst) {
                list(&self.spend, key);
            }
        }
        let minute = at.unix_timestamp().div_euclid(60);
        {
            let mut rollups = lock(&unflushed.rollups);
            let Rollups { latest, earlier } = &mut *rollups;
            let same = |u: &MinuteUsage| u.minute == minute && *u.model == *model;
            let entry = match latest {
                Some(latest) if same(latest) => Some(latest),
                // Requests settling out of order on two threads, or a key alternating models,
                // find their entry among the earlier ones.
                _ => earlier.iter_mut().find(|u| same(u)),
            };
            match entry {
                Some(entry) => {
                    entry.n_requests += 1;
                    entry.prompt_tokens += usage.prompt_tokens;
                    entry.completion_tokens += usage.completion_tokens;
                    entry.cost_nanousd += usage.cost_nanousd;
                }
                None => {
                    let next = MinuteUsage {
                        minute,
                        model: Arc::from(model),
                        n_requests: 1,
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cost_nanousd: usage.cost_nanousd,
                    };
                    if let Some(ended) = latest.replace(next) {
                        earlier.push(ended);
                    }
                }
            }
        }
        if !unflushed.on_rollup_list.swap(true, Ordering::SeqCst) {
            lock(&self.rollups).push_back((Instant::now(), Arc::clone(key)));
        }
    }

    /// Takes every listed key's spend into `into` (empty), and returns when the oldest of it
    /// was listed. `spare` is an empty list to swap in: both keep their memory from flush to
    /// flush, so a flush of many keys does not fault in fresh pages every second.
    fn take_spend(
        &self,
        spare: &mut Vec<Arc<KeyEntry>>,
        into: &mut SpendDeltas,
    ) -> Option<Instant> {
        let since = swap_list(&self.spend, spare);
        for key in spare.iter() {
            key.unflushed.on_spend_list.store(false, Ordering::SeqCst);
            let cost = key.unflushed.spend.swap(0, Ordering::SeqCst);
            if cost != 0 {
                into.push(key.id, cost);
            }
        }
        spare.clear();
        since
    }

    /// Takes the rollups of the keys listed at instants `due` accepts, oldest first, stopping
    /// at the first it does not.
    fn take_rollups(
        &self,
        due: impl Fn(Instant) -> bool,
        spare: &mut Vec<Arc<KeyEntry>>,
    ) -> Vec<UsageDelta> {
        {
            let mut listed = lock(&self.rollups);
            while let Some((at, _)) = listed.front()
                && due(*at)
                && let Some((_, key)) = listed.pop_front()
            {
                spare.push(key);
            }
        }
        let mut deltas = Vec::with_capacity(spare.len());
        for key in spare.iter() {
            key.unflushed.on_rollup_list.store(false, Ordering::SeqCst);
            let Rollups { latest, earlier } = std::mem::take(&mut *lock(&key.unflushed.rollups));
            deltas.extend(earlier.into_iter().chain(latest).map(|usage| {
                UsageDelta {
                    api_key_id: key.id,
                    minute: OffsetDateTime::from_unix_timestamp(usage.minute * 60)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    model: usage.model.to_string(),
                    n_requests: usage.n_requests,
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cost_nanousd: usage.cost_nanousd,
                }
            }));
        }
        spare.clear();
        deltas
    }

    /// When the oldest spend not yet taken was listed.
    fn spend_since(&self) -> Option<Instant> {
        lock(&self.spend).since
    }
}

fn list(listed: &Mutex<Listed>, key: &Arc<KeyEntry>) {
    let mut listed = lock(listed);
    listed.since.get_or_insert_with(Instant::now);
    listed.keys.push(Arc::clone(key));
}

/// Swaps the list with `spare` (empty) and returns when it was started.
fn swap_list(listed: &Mutex<Listed>, spare: &mut Vec<Arc<KeyEntry>>) -> Option<Instant> {
    let mut listed = lock(listed);
    std::mem::swap(&mut listed.keys, spare);
    listed.since.take()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Deltas taken from the outbox, written (or retried) as one flush under one id.
struct Batch {
    /// The flush's claim in Postgres: a retry under the same id never applies it twice.
    id: Uuid,
    spend: SpendDeltas,
    rollups: Vec<UsageDelta>,
    /// When the oldest spend in it was listed.
    since: Option<Instant>,
}

/// Folds the spend journal into the keys' spend rows (`db::usage::fold`, which reports spend
/// for keys the database does not have).
pub async fn fold(pool: &db::Pool) -> Result<(), db::Error> {
    let client = pool.get().await?;
    db::usage::fold(&client).await.map(|_| ())
}

/// Runs until `shutdown` turns true, then flushes everything a last time, and returns whether
/// that left nothing unwritten. Stop it only after the proxy has stopped, so that no request
/// settles after the last flush. The spend is written as settled within `gateway_id`'s leases.
pub async fn run(
    pool: db::Pool,
    outbox: Arc<Outbox>,
    intervals: Intervals,
    metrics: &'static Metrics,
    gateway_id: Uuid,
    mut shutdown: watch::Receiver<bool>,
) -> bool {
    let mut flusher = Flusher {
        pool,
        outbox,
        metrics,
        gateway_id,
        failed: None,
        spare: Vec::new(),
        spare_spend: SpendDeltas::of_gateway(gateway_id),
    };
    let mut ticker = tokio::time::interval(intervals.flush);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut folded = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        let woke = Instant::now();
        let stopping = *shutdown.borrow();
        // Ticks wake a little early or late: half a flush interval of slack keeps a key's
        // rollups, and the fold, on the flush they are due with rather than the one after.
        let waited = |since: Instant| woke.duration_since(since) + intervals.flush / 2;
        let rollups_due = |listed: Instant| stopping || waited(listed) >= intervals.rollup;
        if flusher.flush(rollups_due).await && !stopping && waited(folded) >= intervals.rollup {
            folded = woke;
            flusher.fold().await;
        }
        if stopping {
            return flusher.last_flush().await;
        }
    }
}

struct Flusher {
    pool: db::Pool,
    outbox: Arc<Outbox>,
    metrics: &'static Metrics,
    /// The gateway whose leases the spend was settled within.
    gateway_id: Uuid,
    /// A batch whose write failed. It may have committed all the same (a lost reply), so it is
    /// retried as it is, under its id, before anything new goes out.
    failed: Option<Batch>,
    spare: Vec<Arc<KeyEntry>>,
    /// The spend list of the last batch written, emptied, for the next one.
    spare_spend: SpendDeltas,
}

impl Flusher {
    /// Retries a failed batch, then writes the pending spend, and the rollups of keys listed at
    /// instants `rollups_due` accepts. Returns whether everything was written (or there was
    /// nothing to write).
    async fn flush(&mut self, rollups_due: impl Fn(Instant) -> bool) -> bool {
        let oldest = [
            self.failed.as_ref().and_then(|batch| batch.since),
            self.outbox.spend_since(),
        ]
        .into_iter()
        .flatten()
        .min();
        self.metrics.flush_lag_seconds.set(
            oldest
                .map(|oldest| oldest.elapsed().as_secs_f64())
                .unwrap_or(0.0),
        );
        if let Some(batch) = self.failed.take()
            && let Err(batch) = self.write(batch).await
        {
            self.failed = Some(batch);
            return false;
        }
        let Some(batch) = self.take_batch(rollups_due) else {
            return true;
        };
        match self.write(batch).await {
            Ok(()) => true,
            Err(batch) => {
                self.failed = Some(batch);
                false
            }
        }
    }

    /// Takes what the outbox holds as a new batch; `None` when there is nothing to write.
    fn take_batch(&mut self, rollups_due: impl Fn(Instant) -> bool) -> Option<Batch> {
        let mut spend = std::mem::replace(
            &mut self.spare_spend,
            SpendDeltas::of_gateway(self.gateway_id),
        );
        let since = self.outbox.take_spend(&mut self.spare, &mut spend);
        let rollups = self.outbox.take_rollups(rollups_due, &mut self.spare);
        if spend.is_empty() && rollups.is_empty() {
            self.spare_spend = spend;
            return None;
        }
        Some(Batch {
            id: Uuid::new_v4(),
            spend,
            rollups,
            since,
        })
    }

    /// On shutdown, after the proxy has stopped: one more try for a batch that failed, and,
    /// whether or not it goes through, a try for everything else settled since. What still
    /// cannot be written is logged with its amount. Returns whether everything was written.
    async fn last_flush(&mut self) -> bool {
        let mut left = Vec::new();
        if let Some(batch) = self.failed.take()
            && let Err(batch) = self.write(batch).await
        {
            left.push(batch);
        }
        if let Some(batch) = self.take_batch(|_| true)
            && let Err(batch) = self.write(batch).await
        {
            left.push(batch);
        }
        if left.is_empty() {
            self.fold().await;
            true
        } else {
            tracing::error!(
                n_keys = left.iter().map(|batch| batch.spend.len()).sum::<usize>(),
                lost_nanousd = left
                    .iter()
                    .map(|batch| batch.spend.total_nanousd())
                    .sum::<i64>(),
                "could not flush the last spend before shutdown"
            );
            false
        }
    }

    /// Folds the spend journal; a failure is retried at the next fold, nothing is lost.
    async fn fold(&self) {
        if let Err(err) = fold(&self.pool).await {
            self.metrics.flush_errors_total.inc();
            tracing::warn!(error = %err, "folding the spend journal failed; will retry");
        }
    }

    /// Writes one batch; gives it back when the write failed.
    async fn write(&mut self, mut batch: Batch) -> Result<(), Batch> {
        let started = Instant::now();
        match db::usage::flush(&self.pool, batch.id, &batch.spend, &batch.rollups).await {
            Ok(flushed) => {
                self.metrics
                    .flush_duration_seconds
                    .observe(started.elapsed().as_secs_f64());
                if flushed == Flushed::AlreadyApplied {
                    tracing::warn!(
                        flush.id = %batch.id,
                        "a retried flush had committed before its reply was lost; not applied again"
                    );
                }
                batch.spend.clear();
                self.spare_spend = batch.spend;
                Ok(())
            }
            Err(err) => {
                self.metrics.flush_errors_total.inc();
                tracing::warn!(error = %err, n_keys = batch.spend.len(), "flushing spend failed; will retry");
                Err(batch)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u128) -> Arc<KeyEntry> {
        Arc::new(KeyEntry::for_tests(uuid::Uuid::from_u128(id)))
    }

    fn at(minute: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(minute * 60 + 7).unwrap()
    }

    fn usage(cost: i64) -> Settled {
        Settled {
            prompt_tokens: 2,
            completion_tokens: 3,
            cost_nanousd: cost,
        }
    }

    #[test]
    fn sums_spend_per_key_and_lists_each_key_once() {
        let outbox = Outbox::default();
        let (a, b) = (key(1), key(2));
        outbox.record(&a, usage(10), at(5), "m");
        outbox.record(&a, usage(15), at(5), "m");
        outbox.record(&b, usage(0), at(5), "m");
        let mut spare = Vec::new();
        let mut spend = SpendDeltas::default();
        let since = outbox.take_spend(&mut spare, &mut spend);
        assert_eq!(spend.iter().collect::<Vec<_>>(), vec![(a.id, 25)]);
        assert!(since.is_some());
        // Taken: nothing left, and the key is listed again by its next request.
        spend.clear();
        outbox.take_spend(&mut spare, &mut spend);
        assert!(spend.is_empty());
        outbox.record(&a, usage(1), at(6), "m");
        outbox.take_spend(&mut spare, &mut spend);
        assert_eq!(spend.iter().collect::<Vec<_>>(), vec![(a.id, 1)]);
    }

    #[test]
    fn keeps_rollups_per_minute_until_taken() {
        let outbox = Outbox::default();
        let a = key(1);
        outbox.record(&a, usage(10), at(5), "m");
        outbox.record(&a, usage(0), at(5), "m");
        outbox.record(&a, usage(4), at(6), "m");
        let mut spare = Vec::new();
        // Taking spend leaves the rollups.
        outbox.take_spend(&mut spare, &mut SpendDeltas::default());
        let rollups = outbox.take_rollups(|_| true, &mut spare);
        assert_eq!(rollups.len(), 2);
        assert_eq!(
            rollups[0].minute,
            OffsetDateTime::from_unix_timestamp(300).unwrap()
        );
        assert_eq!(
            (
                rollups[0].n_requests,
                rollups[0].prompt_tokens,
                rollups[0].cost_nanousd
            ),
            (2, 4, 10)
        );
        assert_eq!((rollups[1].n_requests, rollups[1].cost_nanousd), (1, 4));
        assert!(outbox.take_rollups(|_| true, &mut spare).is_empty());
    }

    /// Each (minute, model) of a key has one rollup, however its requests alternate between
    /// models: the entries do not grow with the requests.
    #[test]
    fn keeps_one_rollup_per_minute_and_model() {
        let outbox = Outbox::default();
        let a = key(1);
        for _ in 0..50 {
            outbox.record(&a, usage(1), at(5), "x/one");
            outbox.record(&a, usage(2), at(5), "x/two");
        }
        outbox.record(&a, usage(4), at(6), "x/one");
        outbox.record(&a, usage(8), at(5), "x/two");
        let rollups = outbox.take_rollups(|_| true, &mut Vec::new());
        let mut seen: Vec<(i64, &str, i64, i64)> = rollups
            .iter()
            .map(|d| {
                (
                    d.minute.unix_timestamp() / 60,
                    d.model.as_str(),
                    d.n_requests,
                    d.cost_nanousd,
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (5, "x/one", 50, 50),
                (5, "x/two", 51, 108),
                (6, "x/one", 1, 4)
            ]
        );
    }

    /// Rollups are taken one key at a time in the order the keys were listed, each once it is
    /// due; a key taken is listed again by its next request, at the back.
    #[test]
    fn takes_rollups_of_the_keys_listed_longest_ago() {
        let outbox = Outbox::default();
        let (a, b) = (key(1), key(2));
        outbox.record(&a, usage(1), at(5), "m");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let between = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        outbox.record(&b, usage(2), at(5), "m");
        outbox.record(&a, usage(3), at(5), "m");
        let mut spare = Vec::new();
        let due = |listed: Instant| listed <= between;
        let taken = outbox.take_rollups(due, &mut spare);
        assert_eq!(
            taken
                .iter()
                .map(|d| (d.api_key_id, d.cost_nanousd))
                .collect::<Vec<_>>(),
            vec![(a.id, 4)]
        );
        assert!(outbox.take_rollups(due, &mut spare).is_empty());
        outbox.record(&a, usage(5), at(6), "m");
        let taken = outbox.take_rollups(|_| true, &mut spare);
        assert_eq!(
            taken
                .iter()
                .map(|d| (d.api_key_id, d.cost_nanousd))
                .collect::<Vec<_>>(),
            vec![(b.id, 2), (a.id, 5)]
        );
    }

    #[test]
    fn loses_nothing_recorded_while_taking() {
        let outbox = Arc::new(Outbox::default());
        let keys: Vec<_> = (0..8).map(key).collect();
        let recorders: Vec<_> = (0..4)
            .map(|thread| {
                let (outbox, keys) = (Arc::clone(&outbox), keys.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        outbox.record(&keys[(i + thread) % keys.len()], usage(1), at(1), "m");
                    }
                })
            })
            .collect();
        let mut total = 0;
        let mut spare = Vec::new();
        let mut spend = SpendDeltas::default();
        let mut take = |spend: &mut SpendDeltas| {
            spend.clear();
            outbox.take_spend(&mut spare, spend);
            spend.total_nanousd()
        };
        while recorders.iter().any(|r| !r.is_finished()) {
            total += take(&mut spend);
        }
        for recorder in recorders {
            recorder.join().unwrap();
        }
        total += take(&mut spend);
        assert_eq!(total, 4 * 20_000);
        let requests: i64 = outbox
            .take_rollups(|_| true, &mut spare)
            .iter()
            .map(|d| d.n_requests)
            .sum();
        assert_eq!(requests, 4 * 20_000);
    }
}
