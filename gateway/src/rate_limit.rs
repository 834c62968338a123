//! Per-key rate limits, shared by every gateway and kept across restarts: a key's requests are
//! counted per minute of the database's clock in Postgres (`db::leases::take_requests`,
//! migration 0016), and each gateway takes a batch of a minute's requests at a time, then
//! admits them from memory until the batch or the minute runs out. A key with a limit of N
//! requests per minute is sent at most N in any minute of the clock, over all gateways.
//!
//! The batch asked for starts at one and doubles while the key stays busy; Postgres shares
//! what is left of the minute among the live gateways. A minute found used up is remembered
//! until it ends, so refusals cost no query. What a batch holds lapses with its minute.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::KeyEntry;
use crate::error::Refusal;
use crate::state::Gateway;

/// The requests one key holds on this gateway for the current minute.
#[derive(Debug, Default)]
pub struct RateLimiter {
    held: Mutex<Held>,
    /// The last batch taken (when, how many asked): one request at a time asks Postgres.
    sizing: tokio::sync::Mutex<Option<(Instant, u32)>>,
}

#[derive(Debug, Default)]
struct Held {
    /// When the minute of what is held ends.
    until: Option<Instant>,
    left: u32,
    /// The minute is used up (over all gateways): refuse until `until`.
    used_up: bool,
}

/// One request taken from a minute (the instant it ends names it), to give back if the request
/// is refused later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken(Instant);

/// What the key holds here right now.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    Taken(Taken),
    /// The minute is used up: retry after this long.
    UsedUp(Duration),
    /// Nothing held: ask Postgres.
    Empty,
}

impl RateLimiter {
    fn take(&self, now: Instant) -> Take {
        let mut held = lock(&self.held);
        match held.until {
            Some(until) if until > now => {
                if held.left > 0 {
                    held.left -= 1;
                    Take::Taken(Taken(until))
                } else if held.used_up {
                    Take::UsedUp(until - now)
                } else {
                    Take::Empty
                }
            }
            _ => {
                *held = Held::default();
                Take::Empty
            }
        }
    }

    /// Adds `granted` requests of the minute that ends at `until`; none means it is used up.
    fn add(&self, granted: u32, until: Instant) {
        let mut held = lock(&self.held);
        if held
            .until
            .is_none_or(|current| current + Duration::from_secs(1) < until)
        {
            *held = Held::default();
        }
        held.until = Some(until);
        held.left += granted;
        held.used_up = granted == 0;
    }

    /// Gives back a request taken by [`acquire`] for a request that was refused afterwards (a
    /// bad body, the budget), so refusals do not use up the rate: another request on this
    /// gateway may use it within the same minute, and only then.
    pub fn release(&self, taken: Taken) {
        let mut held = lock(&self.held);
        if held.until == Some(taken.0) && taken.0 > Instant::now() {
            held.left += 1;
        }
    }
}

/// The batch to ask for: twice the last when that was recent (within a second), else one; at
/// most `rpm`. Pure, for tests.
fn batch_to_ask(rpm: u32, last: Option<(Instant, u32)>, now: Instant) -> u32 {
    match last {
        Some((at, asked)) if now.saturating_duration_since(at) < Duration::from_secs(1) => {
            asked.saturating_mul(2).min(rpm).max(1)
        }
        _ => 1,
    }
}

/// Takes one of `key`'s `rpm` requests per minute, or refuses with 429 (and how long to wait)
/// when the minute is used up over all gateways. While Postgres cannot be reached, only the
/// requests already held here are used.
pub async fn acquire(gateway: &Gateway, key: &KeyEntry, rpm: u32) -> Result<Taken, Refusal> {
    loop {
        match key.rate.take(Instant::now()) {
            Take::Taken(taken) => return Ok(taken),
            Take::UsedUp(wait) => return Err(Refusal::rate_limited(rpm, wait)),
            Take::Empty => {}
        }
        let mut last = key.rate.sizing.lock().await;
        // Another request may have taken a batch while this one waited.
        if lock(&key.rate.held).left > 0 {
            continue;
        }
        let now = Instant::now();
        let want = batch_to_ask(rpm, *last, now);
        let (pool, id, live) = (gateway.pool.clone(), key.id, gateway.leases.config.lapse);
        let taken = gateway
            .control
            .spawn(async move {
                let client = pool.get().await?;
                db::leases::take_requests(&client, id, rpm, want, live).await
            })
            .await;
        match taken {
            Ok(Ok(taken)) => {
                key.rate.add(taken.granted, now + taken.ends_in);
                *last = Some((now, want));
                if taken.granted == 0 {
                    return Err(Refusal::rate_limited(rpm, taken.ends_in));
                }
            }
            _ => {
                return Err(Refusal::unavailable(
                    "database",
                    "keycap cannot reach its database to count this key's requests per \
                     minute: retry in a moment"
                        .into(),
                ));
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_is_held_until_the_minute_ends() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        assert_eq!(limiter.take(now), Take::Empty);
        let minute = now + Duration::from_secs(30);
        limiter.add(2, minute);
        assert_eq!(limiter.take(now), Take::Taken(Taken(minute)));
        assert_eq!(limiter.take(now), Take::Taken(Taken(minute)));
        assert_eq!(limiter.take(now), Take::Empty);
        // A released request can be taken again; one of another minute cannot be released.
        limiter.release(Taken(minute));
        limiter.release(Taken(minute + Duration::from_secs(60)));
        assert_eq!(limiter.take(now), Take::Taken(Taken(minute)));
        assert_eq!(limiter.take(now), Take::Empty);
        // What is held lapses with its minute.
        limiter.add(5, now + Duration::from_secs(30));
        assert_eq!(limiter.take(now + Duration::from_secs(31)), Take::Empty);
    }

    #[test]
    fn a_used_up_minute_is_refused_until_it_ends() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        limiter.add(0, now + Duration::from_secs(20));
        assert_eq!(
            limiter.take(now + Duration::from_secs(5)),
            Take::UsedUp(Duration::from_secs(15))
        );
        assert_eq!(limiter.take(now + Duration::from_secs(21)), Take::Empty);
    }

    #[test]
    fn a_new_minute_replaces_what_the_last_one_held() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        limiter.add(3, now + Duration::from_secs(1));
        limiter.add(1, now + Duration::from_secs(61));
        assert_eq!(
            limiter.take(now),
            Take::Taken(Taken(now + Duration::from_secs(61)))
        );
        assert_eq!(limiter.take(now), Take::Empty);
    }

    #[test]
    fn the_batch_doubles_while_busy_up_to_the_limit() {
        let now = Instant::now();
        assert_eq!(batch_to_ask(60, None, now), 1);
        assert_eq!(batch_to_ask(60, Some((now, 4)), now), 8);
        assert_eq!(batch_to_ask(60, Some((now, 40)), now), 60);
        let long_ago = now.checked_sub(Duration::from_secs(2)).map(|at| (at, 8));
        assert_eq!(batch_to_ask(60, long_ago, now), 1);
    }
}
