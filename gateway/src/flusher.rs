//! The flusher: settled usage goes into a channel on the hot path; every interval, and once
//! more on shutdown, it is summed per key and minute and written to Postgres in one statement.
//! A failed flush keeps its deltas and tries again, so nothing settled is lost while the
//! process lives.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

#[derive(Default)]
struct Pending {
    deltas: HashMap<(Uuid, i64), db::usage::UsageDelta>,
    oldest: Option<Instant>,
}

impl Pending {
    fn add(&mut self, usage: SettledUsage) {
        let minute = usage.at.unix_timestamp().div_euclid(60);
        let delta = self
            .deltas
            .entry((usage.api_key_id, minute))
            .or_insert_with(|| db::usage::UsageDelta {
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
        self.oldest.get_or_insert_with(Instant::now);
    }
}

/// Runs until `shutdown` turns true and the inbox is drained, then flushes a last time.
pub async fn run(
    pool: db::Pool,
    mut inbox: mpsc::UnboundedReceiver<SettledUsage>,
    interval: Duration,
    metrics: &'static Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        while let Ok(usage) = inbox.try_recv() {
            pending.add(usage);
        }
        flush(&pool, &mut pending, metrics).await;
        if *shutdown.borrow() {
            // Requests that finished while flushing are in the inbox still.
            while let Ok(usage) = inbox.try_recv() {
                pending.add(usage);
            }
            flush(&pool, &mut pending, metrics).await;
            if !pending.deltas.is_empty() {
                tracing::error!(
                    n_keys = pending.deltas.len(),
                    "could not flush the last spend before shutdown"
                );
            }
            return;
        }
    }
}

async fn flush(pool: &db::Pool, pending: &mut Pending, metrics: &Metrics) {
    if pending.deltas.is_empty() {
        metrics.flush_lag_seconds.set(0.0);
        return;
    }
    if let Some(oldest) = pending.oldest {
        metrics
            .flush_lag_seconds
            .set(oldest.elapsed().as_secs_f64());
    }
    let deltas: Vec<db::usage::UsageDelta> = pending.deltas.values().cloned().collect();
    let started = Instant::now();
    match db::usage::flush(pool, &deltas).await {
        Ok(()) => {
            metrics
                .flush_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            pending.deltas.clear();
            pending.oldest = None;
        }
        Err(err) => {
            metrics.flush_errors_total.inc();
            tracing::warn!(error = %err, n_keys = deltas.len(), "flushing spend failed; will retry");
        }
    }
}
