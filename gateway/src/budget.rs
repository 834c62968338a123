//! A key's spend in memory: reservations taken atomically before forwarding, settled after.
//!
//! `committed` is what the key has spent (as loaded from Postgres plus what this gateway has
//! settled since) plus every reservation still outstanding. A reservation succeeds only if it
//! keeps `committed <= cap`, by compare-and-swap, so concurrent requests can never jointly pass
//! the cap.

use std::sync::atomic::{AtomicI64, Ordering};

use domain::Money;
use domain::services::Fit;

/// The budget counters of one key.
#[derive(Debug)]
pub struct KeyBudget {
    cap: AtomicI64,
    /// `settled + reserved`: the one counter reservations compare-and-swap against the cap.
    committed: AtomicI64,
    /// Spend settled (loaded from Postgres, plus what this gateway settled since).
    settled: AtomicI64,
}

impl KeyBudget {
    /// Counters for a key with `cap` that has spent `spent`.
    pub fn new(cap: Money, spent: Money) -> KeyBudget {
        KeyBudget {
            cap: AtomicI64::new(cap.nanos()),
            committed: AtomicI64::new(spent.nanos()),
            settled: AtomicI64::new(spent.nanos()),
        }
    }

    /// The cap.
    pub fn cap(&self) -> Money {
        Money::from_nanos(self.cap.load(Ordering::Acquire))
    }

    /// Spent so far, settled, without outstanding reservations.
    pub fn spent(&self) -> Money {
        Money::from_nanos(self.settled.load(Ordering::Acquire))
    }

    /// What is left for new reservations.
    pub fn remaining(&self) -> Money {
        Money::from_nanos(self.cap.load(Ordering::Acquire) - self.committed.load(Ordering::Acquire))
            .at_least_zero()
    }

    /// Changes the cap (an owner edited the key).
    pub fn set_cap(&self, cap: Money) {
        self.cap.store(cap.nanos(), Ordering::Release);
    }

    /// A new period began (monthly renewal reset spend to `spent`): keep only the outstanding
    /// reservations on top of it.
    pub fn reset_spent(&self, spent: Money) {
        // By deltas, so that reservations and settlements racing with the reset still count.
        let previous = self.settled.swap(spent.nanos(), Ordering::AcqRel);
        self.committed
            .fetch_add(spent.nanos() - previous, Ordering::AcqRel);
    }

    /// Reserves what `decide` allows given the remaining cap, atomically. `decide` may run more
    /// than once under contention; it must be pure. Returns the decision that was applied.
    pub fn reserve(&self, decide: impl Fn(Money) -> Fit) -> Fit {
        let mut applied = None;
        let cap = self.cap.load(Ordering::Acquire);
        let result =
            self.committed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |committed| {
                    let remaining = Money::from_nanos(cap - committed).at_least_zero();
                    let fit = decide(remaining);
                    applied = Some(fit);
                    match fit {
                        Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => {
                            let next = committed.checked_add(reserve.nanos())?;
                            (next <= cap).then_some(next)
                        }
                        Fit::Refuse { .. } => None,
                    }
                });
        let fit = applied.unwrap_or(Fit::Refuse {
            need_at_least: Money::ZERO,
        });
        match (result, fit) {
            (Ok(_), fit) => fit,
            (Err(_), Fit::Refuse { need_at_least }) => Fit::Refuse { need_at_least },
            // The last decision fitted `remaining` but not the cap read before the loop (the
            // cap was lowered meanwhile): refuse.
            (Err(_), Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. }) => Fit::Refuse {
                need_at_least: reserve,
            },
        }
    }

    /// Ends a reservation: `charge` becomes spend and the rest is released.
    pub fn settle(&self, reservation: Money, charge: Money) {
        self.settled.fetch_add(charge.nanos(), Ordering::AcqRel);
        self.committed
            .fetch_add(charge.nanos() - reservation.nanos(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn fixed(cost: i64) -> impl Fn(Money) -> Fit {
        move |remaining| {
            let reserve = Money::from_nanos(cost);
            if reserve <= remaining {
                Fit::AsRequested { reserve }
            } else {
                Fit::Refuse {
                    need_at_least: reserve,
                }
            }
        }
    }

    #[test]
    fn reserve_and_settle() {
        let budget = KeyBudget::new(Money::from_nanos(100), Money::from_nanos(10));
        assert_eq!(
            budget.reserve(fixed(50)),
            Fit::AsRequested {
                reserve: Money::from_nanos(50)
            }
        );
        assert_eq!(budget.remaining(), Money::from_nanos(40));
        assert!(matches!(budget.reserve(fixed(41)), Fit::Refuse { .. }));
        budget.settle(Money::from_nanos(50), Money::from_nanos(20));
        assert_eq!(budget.spent(), Money::from_nanos(30));
        assert_eq!(budget.remaining(), Money::from_nanos(70));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_cap() {
        let budget = Arc::new(KeyBudget::new(Money::from_nanos(1_000), Money::ZERO));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    (0..1_000)
                        .filter(|_| matches!(budget.reserve(fixed(7)), Fit::AsRequested { .. }))
                        .count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 1_000 / 7);
        assert!(budget.remaining() < Money::from_nanos(7));
    }

    #[test]
    fn renewal_keeps_outstanding_reservations() {
        let budget = KeyBudget::new(Money::from_nanos(100), Money::from_nanos(90));
        budget.reserve(fixed(5));
        budget.reset_spent(Money::ZERO);
        assert_eq!(budget.remaining(), Money::from_nanos(95));
        budget.settle(Money::from_nanos(5), Money::from_nanos(5));
        assert_eq!(budget.spent(), Money::from_nanos(5));
    }
}
