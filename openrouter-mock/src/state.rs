//! The mock's shared state: request counters, the last inference request,
//! created keys, spend, and served generations.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::HeaderMap;
use serde_json::Value;
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::config::MockConfig;
use crate::generation::GenerationRecord;
use crate::keys::KeyRecord;
use crate::usage::UsageCounters;

/// Served generations kept for `GET /generation`; older ones are forgotten
/// so that long benchmarks do not grow the mock without bound.
const MAX_GENERATIONS: usize = 100_000;

/// A handle on the mock's state, shared by its handlers and its tests.
/// Cloning it is cheap and clones see the same state.
#[derive(Debug, Clone)]
pub struct MockState {
    inner: Arc<Inner>,
}

/// An inference request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request path, e.g. `/api/v1/chat/completions`.
    pub path: String,
    /// The `Authorization` header value, verbatim (`"Bearer sk-or-v1-…"`).
    pub authorization: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The parsed JSON body, or `Value::Null` when it was not JSON.
    pub body: Value,
}

#[derive(Debug)]
struct Inner {
    config: MockConfig,
    n_inference_requests: AtomicU64,
    n_unauthorized: AtomicU64,
    ledger: Mutex<Ledger>,
}

/// Everything that changes while the mock runs, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) last_request: Option<RecordedRequest>,
    pub(crate) master_usage: UsageCounters,
    pub(crate) total_usage_nanousd: u64,
    /// Created keys, oldest first.
    pub(crate) keys: Vec<KeyRecord>,
    generations: HashMap<String, GenerationRecord>,
    generation_order: VecDeque<String>,
}

impl MockState {
    /// Inference requests received on `/chat/completions` and
    /// `/completions`, including refused ones.
    pub fn n_inference_requests(&self) -> u64 {
        self.inner.n_inference_requests.load(Ordering::SeqCst)
    }

    /// The most recent inference request received, refused or not.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.ledger().last_request.clone()
    }

    /// Requests refused with 401 (missing, unknown, disabled or expired key).
    pub fn n_unauthorized(&self) -> u64 {
        self.inner.n_unauthorized.load(Ordering::SeqCst)
    }

    /// Everything charged so far, over all keys, in nano-dollars.
    pub fn total_usage_nanousd(&self) -> u64 {
        self.ledger().total_usage_nanousd
    }

    /// Generations settled (finished, failed or abandoned by the client) and still kept for
    /// `GET /generation`.
    pub fn n_generations(&self) -> usize {
        self.ledger().generations.len()
    }

    /// The configuration the mock runs with.
    pub fn config(&self) -> &MockConfig {
        &self.inner.config
    }

    /// Fresh state: no requests, no keys, no spend.
    pub(crate) fn new(config: MockConfig) -> Self {
        MockState {
            inner: Arc::new(Inner {
                config,
                n_inference_requests: AtomicU64::new(0),
                n_unauthorized: AtomicU64::new(0),
                ledger: Mutex::new(Ledger::default()),
            }),
        }
    }

    /// The ledger, locked. A panic while it was held cannot leave it
    /// half-updated in a way that matters to a mock, so poison is ignored.
    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an inference request and keeps it as the last one.
    pub(crate) fn record_inference_request(&self, request: RecordedRequest) {
        self.inner
            .n_inference_requests
            .fetch_add(1, Ordering::SeqCst);
        self.ledger().last_request = Some(request);
    }

    /// Counts a request refused with 401.
    pub(crate) fn count_unauthorized(&self) {
        self.inner.n_unauthorized.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the created key is disabled, and when it expires.
    pub(crate) fn key_state(&self, hash: &str) -> Option<(bool, Option<OffsetDateTime>)> {
        let ledger = self.ledger();
        let key = ledger.keys.iter().find(|key| key.hash == hash)?;
        Some((key.disabled, key.expires_at))
    }

    /// Charges a finished (or abandoned) generation to its caller and keeps
    /// it for `GET /generation`.
    pub(crate) fn settle(&self, caller: &Caller, record: GenerationRecord) {
        let cost_nanousd = record.cost.total_nanousd;
        let now = OffsetDateTime::now_utc();
        let mut ledger = self.ledger();
        ledger.total_usage_nanousd = ledger.total_usage_nanousd.saturating_add(cost_nanousd);
        match caller {
            Caller::Master | Caller::Management => ledger.master_usage.add(cost_nanousd, now),
            Caller::Created { hash } => {
                if let Some(key) = ledger.keys.iter_mut().find(|key| &key.hash == hash) {
                    key.usage.add(cost_nanousd, now);
                }
            }
        }
        if ledger.generation_order.len() >= MAX_GENERATIONS
            && let Some(oldest) = ledger.generation_order.pop_front()
        {
            ledger.generations.remove(&oldest);
        }
        ledger.generation_order.push_back(record.id.clone());
        ledger.generations.insert(record.id.clone(), record);
    }

    /// A served generation, ready or not.
    pub(crate) fn generation(&self, id: &str) -> Option<GenerationRecord> {
        self.ledger().generations.get(id).cloned()
    }
}
