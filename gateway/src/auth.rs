//! Finding the sub-key of a request: the bearer token, its SHA-256, and the in-memory key cache
//! in front of Postgres (with negative entries, so a flood of bad tokens never reaches it).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use crate::budget::KeyBudget;
use crate::flusher::Unflushed;
use crate::rate_limit::RateLimiter;

/// What the gateway knows of a key besides its budget; replaced whole on reload.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub name: String,
    pub prefix: String,
    pub master_key_id: Uuid,
    pub model_scope: Vec<String>,
    pub expires_at: Option<OffsetDateTime>,
    pub close_reason: Option<String>,
    pub paused_reason: Option<String>,
    pub period_start: Date,
    /// The row's `changed_at`: an older row never replaces a newer one.
    pub changed_at: OffsetDateTime,
    /// Requests per minute: a burst of this many, then one every 60 s / N; `None` for no limit.
    pub rate_limit_rpm: Option<u32>,
}

/// A cached key.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: Uuid,
    pub org_id: Uuid,
    info: RwLock<Arc<KeyInfo>>,
    pub budget: KeyBudget,
    pub rate: RateLimiter,
    /// Settled usage the flusher has not taken yet.
    pub unflushed: Unflushed,
    /// How this gateway's lease of the key is sized, and when it was last used.
    pub lease: crate::lease::LeaseSlot,
}

impl KeyEntry {
    /// An entry from a database row.
    pub fn from_row(key: &db::keys::ApiKey) -> KeyEntry {
        KeyEntry {
            id: key.id,
            org_id: key.org_id,
            info: RwLock::new(Arc::new(info_of(key))),
            budget: KeyBudget::new(key.cap, key.spent),
            rate: RateLimiter::default(),
            unflushed: Unflushed::default(),
            lease: Default::default(),
        }
    }

    /// An entry with no cap and no spend, for unit tests.
    #[cfg(test)]
    pub fn for_tests(id: Uuid) -> KeyEntry {
        KeyEntry {
            id,
            org_id: Uuid::nil(),
            info: RwLock::new(Arc::new(KeyInfo {
                name: "test".into(),
                prefix: "kc_test".into(),
                master_key_id: Uuid::nil(),
                model_scope: Vec::new(),
                expires_at: None,
                close_reason: None,
                paused_reason: None,
                period_start: Date::MIN,
                changed_at: OffsetDateTime::UNIX_EPOCH,
                rate_limit_rpm: None,
            })),
            budget: KeyBudget::new(domain::Money::ZERO, domain::Money::ZERO),
            rate: RateLimiter::default(),
            unflushed: Unflushed::default(),
            lease: Default::default(),
        }
    }

    /// A snapshot of the key's info (a reference count, not a copy).
    pub fn info(&self) -> Arc<KeyInfo> {
        match self.info.read() {
            Ok(info) => Arc::clone(&info),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Applies a reloaded row: new cap, scope, expiry, status. A row older than the one applied
    /// (two reloads racing) is ignored. A row that starts a new period is not applied (see
    /// [`Reloaded::NeedsFold`]).
    pub fn reload(&self, key: &db::keys::ApiKey) -> Reloaded {
        self.apply(key, false)
    }

    /// [`KeyEntry::reload`] for a row read after a fold of the spend journal: a new period is
    /// applied too, and resets spend to the row's plus what this gateway settled and has not
    /// flushed yet, which Postgres will add to the new period when it is flushed.
    pub fn reload_folded(&self, key: &db::keys::ApiKey) {
        let _ = self.apply(key, true);
    }

    fn apply(&self, key: &db::keys::ApiKey, folded: bool) -> Reloaded {
        let new_info = info_of(key);
        let mut info = match self.info.write() {
            Ok(info) => info,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The same version (a refresh reads recent rows again) or an older one: nothing to do.
        if new_info.changed_at <= info.changed_at {
            return Reloaded::Done;
        }
        if new_info.period_start != info.period_start {
            if !folded {
                return Reloaded::NeedsFold;
            }
            self.budget
                .reset_spent(key.spent.saturating_add(self.unflushed.spend()));
        }
        self.budget.set_cap(key.cap);
        *info = Arc::new(new_info);
        Reloaded::Done
    }
}

/// What [`KeyEntry::reload`] did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reloaded {
    /// Applied, or ignored as no newer than the entry.
    Done,
    /// Not applied: the row starts a new period (a renewal), and the spend it carries may lack
    /// spend this gateway flushed in the old period that is still in the spend journal (the
    /// renewal folded before it reset, but flushes go on). Fold, read the row again and pass it
    /// to [`KeyEntry::reload_folded`].
    NeedsFold,
}

fn info_of(key: &db::keys::ApiKey) -> KeyInfo {
    KeyInfo {
        name: key.name.clone(),
        prefix: key.prefix.clone(),
        master_key_id: key.master_key_id,
        model_scope: key.model_scope.clone(),
        expires_at: key.expires_at,
        close_reason: key.close_reason.clone(),
        paused_reason: key.paused_reason.clone(),
        period_start: key.period_start,
        changed_at: key.changed_at,
        rate_limit_rpm: key.rate_limit_rpm.and_then(|rpm| u32::try_from(rpm).ok()),
    }
}

enum Slot {
    Known(Arc<KeyEntry>),
    Unknown(Instant),
}

/// The key cache: token hash → key, with negative entries that expire.
pub struct KeyCache {
    by_hash: DashMap<[u8; 32], Slot>,
    by_id: DashMap<Uuid, Arc<KeyEntry>>,
    negative_ttl: Duration,
}

/// What the cache knows of a token hash.
pub enum Cached {
    Known(Arc<KeyEntry>),
    /// Known not to exist (recently looked up).
    Unknown,
    /// Not cached: ask the database.
    Miss,
}

impl KeyCache {
    /// An empty cache.
    pub fn new(negative_ttl: Duration) -> KeyCache {
        KeyCache {
            by_hash: DashMap::new(),
            by_id: DashMap::new(),
            negative_ttl,
        }
    }

    /// Looks a token hash up without touching the database.
    pub fn get(&self, hash: &[u8; 32]) -> Cached {
        match self.by_hash.get(hash).as_deref() {
            Some(Slot::Known(entry)) => Cached::Known(Arc::clone(entry)),
            Some(Slot::Unknown(at)) if at.elapsed() < self.negative_ttl => Cached::Unknown,
            _ => Cached::Miss,
        }
    }

    /// Stores a key loaded from the database; when another request stored it first, returns
    /// that entry, so that every request of a key shares one budget.
    pub fn insert(&self, hash: [u8; 32], entry: KeyEntry) -> Arc<KeyEntry> {
        let mut slot = self
            .by_hash
            .entry(hash)
            .or_insert_with(|| Slot::Unknown(Instant::now() - self.negative_ttl * 2));
        if let Slot::Known(existing) = &*slot {
            return Arc::clone(existing);
        }
        let entry = Arc::new(entry);
        *slot = Slot::Known(Arc::clone(&entry));
        drop(slot);
        self.by_id.insert(entry.id, Arc::clone(&entry));
        entry
    }

    /// Remembers that no key has this hash.
    pub fn insert_unknown(&self, hash: [u8; 32]) {
        let mut slot = self
            .by_hash
            .entry(hash)
            .or_insert_with(|| Slot::Unknown(Instant::now()));
        // An expired negative entry is renewed, so a flood of one bad token keeps missing the
        // database; a key stored meanwhile by another request is kept.
        if let Slot::Unknown(at) = &mut *slot {
            *at = Instant::now();
        }
    }

    /// A cached key by id.
    pub fn by_id(&self, id: Uuid) -> Option<Arc<KeyEntry>> {
        self.by_id.get(&id).map(|entry| Arc::clone(&entry))
    }

    /// The number of cached keys (known ones).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no key is cached.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Drops negative entries that have expired, so the map does not grow without bound.
    pub fn sweep_unknown(&self) {
        self.by_hash.retain(|_, slot| match slot {
            Slot::Known(_) => true,
            Slot::Unknown(at) => at.elapsed() < self.negative_ttl,
        });
    }
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(value: Option<&[u8]>) -> Option<&str> {
    let value = value?.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    std::str::from_utf8(token.trim_ascii()).ok()
}

#[cfg(test)]
mod tests {
    use domain::Money;
    use time::macros::date;

    use super::*;
    use crate::flusher::{Outbox, Settled};

    fn row(period_start: Date, spent: i64, changed_at: i64) -> db::keys::ApiKey {
        db::keys::ApiKey {
            id: Uuid::from_u128(1),
            org_id: Uuid::nil(),
            membership_id: Uuid::nil(),
            member_email: "bob@acme.test".into(),
            master_key_id: Uuid::nil(),
            service: "openrouter".into(),
            name: "k".into(),
            prefix: "kc_00000000".into(),
            cap: Money::from_usd(1),
            spent: Money::from_nanos(spent),
            model_scope: vec![],
            renew_monthly: true,
            period_start,
            paused_reason: None,
            expires_at: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            closed_at: None,
            close_reason: None,
            changed_at: OffsetDateTime::from_unix_timestamp(changed_at).unwrap(),
            rate_limit_rpm: None,
        }
    }

    /// A row of a new period is applied only after a fold of the spend journal; then the spend
    /// this gateway settled and has not flushed stays on top of the new period's, since
    /// Postgres adds it there when it is flushed. A newer row of the same period needs no fold.
    #[test]
    fn a_renewal_waits_for_a_fold_and_keeps_unflushed_spend() {
        let entry = Arc::new(KeyEntry::from_row(&row(date!(2026 - 11 - 01), 100, 1)));
        entry.budget.settle(Money::ZERO, Money::from_nanos(30));
        let usage = Settled {
            prompt_tokens: 1,
            completion_tokens: 1,
            cost_nanousd: 30,
        };
        Outbox::default().record(&entry, usage, OffsetDateTime::UNIX_EPOCH, "m");
        assert_eq!(entry.budget.spent(), Money::from_nanos(130));

        let renewed = row(date!(2026 - 12 - 01), 5, 2);
        assert_eq!(entry.reload(&renewed), Reloaded::NeedsFold);
        assert_eq!(entry.info().period_start, date!(2026 - 11 - 01));
        assert_eq!(entry.budget.spent(), Money::from_nanos(130));
        entry.reload_folded(&renewed);
        assert_eq!(entry.info().period_start, date!(2026 - 12 - 01));
        assert_eq!(entry.budget.spent(), Money::from_nanos(35));

        let mut raised = row(date!(2026 - 12 - 01), 5, 3);
        raised.cap = Money::from_usd(2);
        assert_eq!(entry.reload(&raised), Reloaded::Done);
        assert_eq!(entry.budget.cap(), Money::from_usd(2));
        assert_eq!(entry.budget.spent(), Money::from_nanos(35));
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(bearer(Some(b"Bearer kc_abc")), Some("kc_abc"));
        assert_eq!(bearer(Some(b"bearer   kc_abc ")), Some("kc_abc"));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"kc_abc")), None);
        assert_eq!(bearer(None), None);
        assert_eq!(bearer(Some(&[0xff, 0xfe])), None);
    }
}
