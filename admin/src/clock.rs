//! The admin app's one clock. Handlers and actions read `now` from it, once per change, and
//! pass it down to `db`: it dates the ledger rows a change writes, picks the month they are
//! checked against and that the pages show, and decides what has expired. Tests set it to an instant of their
//! choosing, so the month boundary is tested without waiting for one.

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// The system clock, or an instant set by a test.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    fixed: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// A clock that stands at `at` until [`Clock::set`] moves it.
    pub fn fixed(at: OffsetDateTime) -> Clock {
        Clock {
            fixed: Some(Arc::new(Mutex::new(at))),
        }
    }

    /// Moves a fixed clock to `at`; the system clock ignores it.
    pub fn set(&self, at: OffsetDateTime) {
        if let Some(fixed) = &self.fixed {
            *fixed.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }
    }

    /// The current instant, in UTC.
    pub fn now(&self) -> OffsetDateTime {
        match &self.fixed {
            Some(fixed) => *fixed.lock().unwrap_or_else(|e| e.into_inner()),
            None => OffsetDateTime::now_utc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn a_fixed_clock_stands_until_set_and_the_system_clock_runs() {
        let clock = Clock::fixed(datetime!(2026-11-30 23:59:59 UTC));
        assert_eq!(clock.now(), datetime!(2026-11-30 23:59:59 UTC));
        clock.clone().set(datetime!(2026-12-01 0:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-12-01 0:00 UTC));

        let system = Clock::default();
        system.set(datetime!(2000-01-01 0:00 UTC));
        let before = OffsetDateTime::now_utc();
        let now = system.now();
        assert!(now >= before && now <= OffsetDateTime::now_utc());
    }
}
