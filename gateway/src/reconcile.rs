//! Reconciliation: a request that ended without a reported cost (the client hung up, the
//! stream was cut) but that the upstream named (`X-Generation-Id`) is not charged its
//! reservation at once. Its reservation stays held against the key's cap while the upstream
//! is asked, in the background and under the master key, what it billed
//! ([`ServiceAdapter::cost_lookup_path`]): after `openrouter.reconcile_delay_ms`, then twice as
//! long each time, `openrouter.reconcile_attempts` times in all. The answer becomes the charge,
//! the key gets the rest of its reservation back, and a `usage_reconciled` ledger row records
//! both. When the upstream never says, the reservation is charged, as before.
//!
//! Each request waiting is held in one map, and is settled by whoever takes it out, under the
//! map's lock: its own task when it is done (or, should the task panic, the task's guard), or
//! [`Reconciler::drain`] at shutdown, which charges the reservation before the last flush and
//! closes the map, so a request ending after it is settled at once. So nothing is settled
//! twice, and nothing held is lost while the process lives. A hard kill loses a waiting
//! request's charge, as it loses spend not yet flushed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::Money;
use domain::services::openrouter::Quote;
use domain::services::{ChargeBasis, ServiceAdapter};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::auth::KeyEntry;
use crate::flusher::Settled;
use crate::state::{Charge, Gateway};

/// The most questions in flight to the upstream at once, over all waiting requests: a burst
/// of hang-ups does not become a burst of requests under the master key.
const MAX_ASKING: usize = 16;

/// The largest answer read: a generation's stats are a few KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A request waiting for the upstream to say what it billed.
pub struct Pending {
    pub key: Arc<KeyEntry>,
    pub quote: Quote,
    pub reservation: Money,
    /// The model asked for, for the log line of a charge above the reservation.
    pub model: String,
    /// The upstream's name for the request (a generation id).
    pub upstream_id: String,
    /// Where to ask, under the master key.
    pub lookup_path: String,
    /// The master key's header value (sensitive: never printed).
    pub credential: http::HeaderValue,
    /// When the request ended: its usage counts in that minute.
    pub ended_at: OffsetDateTime,
}

/// The requests waiting, and what asks for them.
pub struct Reconciler {
    waiting: Mutex<Waiting>,
    next: AtomicU64,
    client: reqwest::Client,
    asking: Semaphore,
}

#[derive(Default)]
struct Waiting {
    requests: HashMap<u64, Pending>,
    /// Set by [`Reconciler::drain`]: nothing waits any more.
    closed: bool,
}

impl Reconciler {
    /// A reconciler whose questions time out after 10 s and follow no redirect.
    pub fn new() -> Result<Reconciler, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            // Only ever to the upstream itself: no proxy from the environment sees the key.
            .no_proxy()
            .build()
            .map_err(|err| format!("cannot build the HTTP client for reconciliation: {err}"))?;
        Ok(Reconciler {
            waiting: Mutex::new(Waiting::default()),
            next: AtomicU64::new(0),
            client,
            asking: Semaphore::new(MAX_ASKING),
        })
    }

    /// Holds `pending` (its reservation stays committed) and starts asking for it; after
    /// shutdown began, charges its reservation at once.
    pub fn start(&self, gateway: &Arc<Gateway>, pending: Pending) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = lock(&self.waiting);
            if waiting.closed {
                drop(waiting);
                return settle(gateway, &pending, None);
            }
            waiting.requests.insert(id, pending);
            gateway.metrics.reconciliations_pending.inc();
        }
        let guard = Guard {
            gateway: Arc::clone(gateway),
            id,
        };
        gateway.control.spawn(ask(guard));
    }

    /// Takes request `id` out, unless it was taken already, and settles it with `billed` (or
    /// its reservation) under the lock, so that shutdown's last flush sees the charge.
    /// Returns what it took, for the ledger row.
    fn finish(&self, gateway: &Gateway, id: u64, billed: Option<Money>) -> Option<Pending> {
        let mut waiting = lock(&self.waiting);
        let pending = waiting.requests.remove(&id)?;
        gateway.metrics.reconciliations_pending.dec();
        settle(gateway, &pending, billed);
        Some(pending)
    }

    /// At shutdown: charges every request still waiting its reservation (before the last
    /// flush), as the upstream will not be asked any more, and settles any that end later at
    /// once.
    pub fn drain(&self, gateway: &Gateway) {
        let mut waiting = lock(&self.waiting);
        waiting.closed = true;
        for (_, pending) in waiting.requests.drain() {
            gateway.metrics.reconciliations_pending.dec();
            tracing::info!(
                key.id = %pending.key.id,
                generation = %pending.upstream_id,
                charge = %pending.reservation,
                "shutting down before the upstream said what it billed: charged the reservation"
            );
            settle(gateway, &pending, None);
        }
    }

    /// What asking about request `id` needs, while it waits.
    fn question(&self, id: u64) -> Option<Question> {
        let waiting = lock(&self.waiting);
        let pending = waiting.requests.get(&id)?;
        Some(Question {
            path: pending.lookup_path.clone(),
            credential: pending.credential.clone(),
            quote: pending.quote.clone(),
            upstream_id: pending.upstream_id.clone(),
        })
    }
}

/// A copy of what one question needs, so that nothing is done under the map's lock.
struct Question {
    path: String,
    credential: http::HeaderValue,
    quote: Quote,
    upstream_id: String,
}

/// Settles its request with the reservation if the task ends (or panics) without settling it.
struct Guard {
    gateway: Arc<Gateway>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.gateway.reconciler.finish(&self.gateway, self.id, None);
    }
}

/// Asks the upstream for the request's cost until it says, or the attempts run out; then
/// settles it (unless shutdown took it first).
async fn ask(guard: Guard) {
    let gateway = &guard.gateway;
    let config = &gateway.config;
    let mut delay = config.reconcile_delay;
    let mut billed = None;
    for _ in 0..config.reconcile_attempts {
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
        let Some(question) = gateway.reconciler.question(guard.id) else {
            return;
        };
        let Some(answer) = fetch(gateway, &question.path, question.credential).await else {
            continue;
        };
        billed = gateway
            .adapter
            .looked_up_cost(&question.quote, &question.upstream_id, &answer);
        if billed.is_some() {
            break;
        }
    }
    let Some(pending) = gateway.reconciler.finish(gateway, guard.id, billed) else {
        return;
    };
    match billed {
        Some(billed) => record(gateway, &pending, billed).await,
        None => tracing::info!(
            key.id = %pending.key.id,
            generation = %pending.upstream_id,
            charge = %pending.reservation,
            "settled without a reported cost: the upstream never said what it billed, so the \
             reservation was charged"
        ),
    }
}

/// One question: the answer's bytes when the upstream answered 200 with at most
/// [`MAX_ANSWER_BYTES`].
async fn fetch(gateway: &Gateway, path: &str, credential: http::HeaderValue) -> Option<Vec<u8>> {
    let _permit = gateway.reconciler.asking.acquire().await.ok()?;
    let url = format!(
        "{}{path}",
        gateway.config.upstream_base_url.trim_end_matches('/')
    );
    let mut response = match gateway
        .reconciler
        .client
        .get(&url)
        .header(gateway.credential_header(), credential)
        .send()
        .await
    {
        Ok(response) => response,
        Err(err) => {
            // reqwest's error names the URL (a generation id), never a header.
            tracing::info!(error = %err, "cannot ask the upstream what it billed; will retry");
            return None;
        }
    };
    if !response.status().is_success() {
        // 404 until the generation's stats are ready.
        tracing::debug!(status = %response.status(), %path, "the upstream did not say yet");
        return None;
    }
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if answer.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(answer),
            // Too long, or cut: not an answer.
            _ => return None,
        }
    }
}

/// Charges `pending` what the upstream billed, or its reservation when it never said.
fn settle(gateway: &Gateway, pending: &Pending, billed: Option<Money>) {
    let charge = billed.unwrap_or(pending.reservation);
    let (basis, outcome) = match billed {
        Some(_) => (ChargeBasis::Reconciled, "billed"),
        None => (ChargeBasis::Reservation, "unknown"),
    };
    gateway.charge(
        &pending.key,
        Charge {
            reservation: pending.reservation,
            usage: Settled {
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_nanousd: charge.nanos(),
            },
            basis,
            at: pending.ended_at,
            model: &pending.model,
        },
    );
    let metrics = gateway.metrics;
    metrics
        .reconciliations_total
        .with_label_values(&[outcome])
        .inc();
    let returned = pending.reservation.saturating_sub(charge).at_least_zero();
    metrics
        .reconciled_nanousd_total
        .inc_by(u64::try_from(returned.nanos()).unwrap_or(0));
}

/// Writes the `usage_reconciled` ledger row, retrying while the database is unreachable (the
/// charge itself goes out with the flusher's spend, whatever happens here).
async fn record(gateway: &Gateway, pending: &Pending, billed: Money) {
    let row = db::usage::Reconciled {
        org_id: pending.key.org_id,
        api_key_id: pending.key.id,
        upstream_id: &pending.upstream_id,
        reserved: pending.reservation,
        billed,
        at: OffsetDateTime::now_utc(),
    };
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=5 {
        let written = match gateway.pool.get().await {
            Ok(client) => db::usage::record_reconciled(&client, &row).await,
            Err(err) => Err(err.into()),
        };
        match written {
            Ok(()) => return,
            Err(err) if attempt == 5 => tracing::error!(
                key.id = %pending.key.id,
                generation = %pending.upstream_id,
                reserved = %pending.reservation,
                %billed,
                error = %err,
                "cannot write the usage_reconciled ledger row; the charge itself stands"
            ),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
