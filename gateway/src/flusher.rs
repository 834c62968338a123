//! The flusher: settled usage goes into a channel on the hot path; every flush interval, and
//! once more on shutdown, it is summed and written to Postgres in one statement. Spend goes out
//! every flush, since the cap, a restart and the admin pages read it. Per-minute rollups, which
//! only the admin app's charts and totals read, are held longer (the rollup interval) and go
//! out with the flush after it: with many keys active, rewriting every key's rollup row every
//! second was most of the database's work. A failed flush keeps its deltas and tries again, so
//! nothing settled is lost while the process lives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use db::usage::{SpendDelta, UsageDelta};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;

/// One settled request.
#[derive(Debug, Clone)]
pub struct SettledUsage {
    pub api_key_id: Uuid,
    pub at: OffsetDateTime,
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

#[derive(Default)]
struct Pending {
    /// Spend per key since the last successful flush.
    spend: HashMap<Uuid, i64>,
    /// Usage per key and minute since the rollups were last written.
    rollups: HashMap<(Uuid, i64), UsageDelta>,
    /// When the oldest unflushed spend settled.
    oldest: Option<Instant>,
}

impl Pending {
    fn add(&mut self, usage: SettledUsage) {
        if usage.cost_nanousd != 0 {
            *self.spend.entry(usage.api_key_id).or_insert(0) += usage.cost_nanousd;
            self.oldest.get_or_insert_with(Instant::now);
        }
        let minute = usage.at.unix_timestamp().div_euclid(60);
        let delta = self
            .rollups
            .entry((usage.api_key_id, minute))
            .or_insert_with(|| UsageDelta {
                api_key_id: usage.api_key_id,
                minute: usage.at,
                n_requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_nanousd: 0,
            });
        delta.n_requests += 1;
        delta.prompt_tokens += usage.prompt_tokens;
        delta.completion_tokens += usage.completion_tokens;
        delta.cost_nanousd += usage.cost_nanousd;
    }

    fn is_empty(&self) -> bool {
        self.spend.is_empty() && self.rollups.is_empty()
    }
}

/// Runs until `shutdown` turns true and the inbox is drained, then flushes everything a last
/// time.
pub async fn run(
    pool: db::Pool,
    mut inbox: mpsc::UnboundedReceiver<SettledUsage>,
    intervals: Intervals,
    metrics: &'static Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut ticker = tokio::time::interval(intervals.flush);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rollups_written = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        while let Ok(usage) = inbox.try_recv() {
            pending.add(usage);
        }
        let woke = Instant::now();
        let stopping = *shutdown.borrow();
        // Ticks wake a little early or late: half a flush interval of slack keeps rollups on
        // the flush they are due with rather than the one after.
        let with_rollups = stopping
            || woke.duration_since(rollups_written) + intervals.flush / 2 >= intervals.rollup;
        if flush(&pool, &mut pending, with_rollups, metrics).await && with_rollups {
            rollups_written = woke;
        }
        if stopping {
            // Requests that finished while flushing are in the inbox still.
            while let Ok(usage) = inbox.try_recv() {
                pending.add(usage);
            }
            flush(&pool, &mut pending, true, metrics).await;
            if !pending.is_empty() {
                tracing::error!(
                    n_keys = pending.spend.len(),
                    "could not flush the last spend before shutdown"
                );
            }
            return;
        }
    }
}

/// Writes the pending spend, and the rollups too when `with_rollups`. Returns whether the
/// write succeeded (or there was nothing to write).
async fn flush(
    pool: &db::Pool,
    pending: &mut Pending,
    with_rollups: bool,
    metrics: &Metrics,
) -> bool {
    metrics.flush_lag_seconds.set(
        pending
            .oldest
            .map(|oldest| oldest.elapsed().as_secs_f64())
            .unwrap_or(0.0),
    );
    let rollups_due = with_rollups && !pending.rollups.is_empty();
    if pending.spend.is_empty() && !rollups_due {
        return true;
    }
    let spend: Vec<SpendDelta> = pending
        .spend
        .iter()
        .map(|(&api_key_id, &cost_nanousd)| SpendDelta {
            api_key_id,
            cost_nanousd,
        })
        .collect();
    let rollups: Vec<UsageDelta> = if with_rollups {
        pending.rollups.values().cloned().collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    match db::usage::flush(pool, &spend, &rollups).await {
        Ok(()) => {
            metrics
                .flush_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            pending.spend.clear();
            pending.oldest = None;
            if with_rollups {
                pending.rollups.clear();
            }
            true
        }
        Err(err) => {
            metrics.flush_errors_total.inc();
            tracing::warn!(error = %err, n_keys = spend.len(), "flushing spend failed; will retry");
            false
        }
    }
}
