//! Per-key rate limits: `rpm` requests per minute sustained, with bursts of up to a minute's
//! worth (so a key idle for a minute may send `rpm` at once, and any 60 s window admits at
//! most `2 * rpm - 1`), enforced with GCRA (the generic cell rate algorithm) on one atomic per key, so
//! concurrent requests never jointly pass it.
//!
//! GCRA keeps a "theoretical arrival time" (TAT): when the key would be back to an empty
//! bucket. A request at `now` is allowed when `TAT - now` stays within the burst tolerance,
//! and moves TAT one emission interval (a minute / rpm) later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MINUTE_NANOS: u64 = 60_000_000_000;

/// The rate-limit state of one key.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds since `epoch` at which the bucket is empty again.
    tat: AtomicU64,
    epoch: Instant,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            tat: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl RateLimiter {
    /// Takes one request's slot at `now`, or says how long to wait for one.
    pub fn try_acquire(&self, rpm: u32, now: Instant) -> Result<(), Duration> {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let next = gcra(current, now, rpm)?;
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

impl RateLimiter {
    /// Gives back a slot taken by [`RateLimiter::try_acquire`] for a request that was refused
    /// afterwards (a bad body, the budget), so refusals do not use up the rate.
    pub fn release(&self, rpm: u32) {
        let interval = MINUTE_NANOS / u64::from(rpm.max(1));
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(interval))
            });
    }
}

/// One GCRA step: the new TAT when a request at `now` is allowed, or the wait until it would be.
fn gcra(tat: u64, now: u64, rpm: u32) -> Result<u64, Duration> {
    let interval = MINUTE_NANOS / u64::from(rpm.max(1));
    // A burst may use a whole minute's requests at once.
    let tolerance = MINUTE_NANOS - interval;
    let start = tat.max(now);
    if start - now > tolerance {
        return Err(Duration::from_nanos(start - now - tolerance));
    }
    Ok(start + interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_minutes_burst_then_one_per_interval() {
        // 3 per minute: three at once, then the fourth waits 20 s.
        let mut tat = 0;
        let now = 100 * SECOND;
        for _ in 0..3 {
            tat = gcra(tat, now, 3).unwrap();
        }
        assert_eq!(gcra(tat, now, 3), Err(Duration::from_secs(20)));
        assert_eq!(gcra(tat, now + 19 * SECOND, 3), Err(Duration::from_secs(1)));
        let tat = gcra(tat, now + 20 * SECOND, 3).unwrap();
        assert!(gcra(tat, now + 20 * SECOND, 3).is_err());
    }

    #[test]
    fn a_released_slot_can_be_taken_again() {
        let limiter = RateLimiter::default();
        let now = Instant::now();
        assert!(limiter.try_acquire(1, now).is_ok());
        assert!(limiter.try_acquire(1, now).is_err());
        limiter.release(1);
        assert!(limiter.try_acquire(1, now).is_ok());
    }

    #[test]
    fn an_idle_key_starts_with_a_full_burst() {
        let tat = gcra(0, 5 * SECOND, 60).unwrap();
        assert_eq!(tat, 6 * SECOND);
        // After a long pause the bucket is full again: 60 requests at once.
        let mut tat = tat;
        for _ in 0..60 {
            tat = gcra(tat, 1_000 * SECOND, 60).unwrap();
        }
        assert!(gcra(tat, 1_000 * SECOND, 60).is_err());
    }

    #[test]
    fn concurrent_requests_never_pass_the_limit() {
        let limiter = std::sync::Arc::new(RateLimiter::default());
        let now = Instant::now();
        let allowed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let limiter = &limiter;
                    scope.spawn(move || {
                        (0..100)
                            .filter(|_| limiter.try_acquire(50, now).is_ok())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 50);
    }
}
