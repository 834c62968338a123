//! Which key made which generation, so `GET /api/v1/generation?id=` is answered only for the
//! calling key's own: the upstream would answer any id of the master account.
//!
//! Ids are taken from the upstream's `X-Generation-Id` response header and kept in memory,
//! the newest [`GENERATIONS_KEPT`] over all keys. An id made before a restart, or pushed out
//! by newer ones, is answered as unknown (404): never another key's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// How many generation ids the gateway remembers, over all keys.
pub const GENERATIONS_KEPT: usize = 100_000;

/// The response header that names a generation.
pub const GENERATION_ID_HEADER: &str = "x-generation-id";

/// The longest generation id kept; a longer header is ignored.
const MAX_ID_BYTES: usize = 128;

/// Generation ids and the key that made each, oldest first out.
#[derive(Default)]
pub struct GenerationLog {
    inner: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    owners: HashMap<Arc<str>, Uuid>,
    order: VecDeque<Arc<str>>,
}

impl GenerationLog {
    /// Records that `key` made generation `id`.
    pub fn record(&self, id: &str, key: Uuid) {
        self.record_within(id, key, GENERATIONS_KEPT);
    }

    fn record_within(&self, id: &str, key: Uuid, kept: usize) {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return;
        }
        let mut log = match self.inner.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        let id: Arc<str> = Arc::from(id);
        if log.owners.insert(Arc::clone(&id), key).is_none() {
            log.order.push_back(id);
        }
        while log.order.len() > kept {
            if let Some(oldest) = log.order.pop_front() {
                log.owners.remove(&oldest);
            }
        }
    }

    /// True when `key` made generation `id` (as far as the log remembers).
    pub fn made_by(&self, id: &str, key: Uuid) -> bool {
        let log = match self.inner.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        log.owners.get(id) == Some(&key)
    }
}

/// The `id` parameter of a query string, percent-decoded; `None` when absent or empty.
pub fn id_in_query(query: Option<&str>) -> Option<String> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if name != "id" || value.is_empty() {
            return None;
        }
        let decoded = percent_decode(value)?;
        (!decoded.is_empty()).then_some(decoded)
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_sees_only_its_own_generations_and_old_ones_are_forgotten() {
        let (alice, bob) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let log = GenerationLog::default();
        log.record_within("gen-1", alice, 2);
        log.record_within("gen-2", bob, 2);
        assert!(log.made_by("gen-1", alice));
        assert!(!log.made_by("gen-1", bob));
        assert!(!log.made_by("gen-3", alice));
        log.record_within("gen-3", alice, 2);
        assert!(!log.made_by("gen-1", alice), "the oldest is forgotten");
        assert!(log.made_by("gen-2", bob) && log.made_by("gen-3", alice));
        log.record_within(&"x".repeat(MAX_ID_BYTES + 1), alice, 2);
        assert!(
            log.made_by("gen-2", bob),
            "an over-long id pushes nothing out"
        );
    }

    #[test]
    fn reads_the_id_from_the_query() {
        for (query, expected) in [
            (Some("id=gen-1"), Some("gen-1")),
            (Some("x=1&id=gen%2D1"), Some("gen-1")),
            (Some("id="), None),
            (Some("idx=gen-1"), None),
            (Some("id=%zz"), None),
            (None, None),
        ] {
            assert_eq!(id_in_query(query).as_deref(), expected, "{query:?}");
        }
    }
}
