//! A key's budget on this gateway: what its lease of the key's cap holds unused here (granted
//! by Postgres, see `lease.rs`), from which reservations are taken atomically before
//! forwarding and to which what they did not spend returns when they settle.
//!
//! `available` is the one counter: grants add to it, a reservation takes from it by
//! compare-and-swap only while it covers the reservation, a settlement gives back the
//! reservation less the charge, and a give-back empties it. So concurrent requests can never
//! jointly spend more than the lease, and Postgres never grants leases beyond the cap. A charge
//! above its reservation (a pricing bug) takes it below zero, and later grants pay that back.

use std::sync::atomic::{AtomicI64, Ordering};

use domain::Money;
use domain::services::Fit;

/// The budget counters of one key.
#[derive(Debug)]
pub struct KeyBudget {
    /// The key's cap, as last loaded (shown to the key's holder).
    cap: AtomicI64,
    /// The key's spend as this gateway knows it: loaded from Postgres, plus what it settled
    /// since (shown to the key's holder).
    spent: AtomicI64,
    /// What the lease holds here, less outstanding reservations.
    available: AtomicI64,
}

impl KeyBudget {
    /// Counters for a key with `cap` that has spent `spent`, holding no lease yet.
    pub fn new(cap: Money, spent: Money) -> KeyBudget {
        KeyBudget {
            cap: AtomicI64::new(cap.nanos()),
            spent: AtomicI64::new(spent.nanos()),
            available: AtomicI64::new(0),
        }
    }

    /// The cap.
    pub fn cap(&self) -> Money {
        Money::from_nanos(self.cap.load(Ordering::Acquire))
    }

    /// Spent so far, as this gateway knows it, without outstanding reservations.
    pub fn spent(&self) -> Money {
        Money::from_nanos(self.spent.load(Ordering::Acquire))
    }

    /// What is left of the cap as this gateway knows it (shown to the key's holder).
    pub fn left(&self) -> Money {
        self.cap().saturating_sub(self.spent()).at_least_zero()
    }

    /// What the lease holds here for new reservations.
    pub fn remaining(&self) -> Money {
        Money::from_nanos(self.available.load(Ordering::Acquire)).at_least_zero()
    }

    /// Changes the cap (an owner edited the key). The lease is given back separately.
    pub fn set_cap(&self, cap: Money) {
        self.cap.store(cap.nanos(), Ordering::Release);
    }

    /// A new period began (monthly renewal reset spend to `spent`). The lease is unchanged: it
    /// was granted within the cap and still counts in Postgres.
    pub fn reset_spent(&self, spent: Money) {
        self.spent.store(spent.nanos(), Ordering::Release);
    }

    /// Adds a grant to the lease.
    pub fn grow(&self, granted: Money) {
        self.available.fetch_add(granted.nanos(), Ordering::AcqRel);
    }

    /// Takes everything the lease holds unused, to give it back; [`KeyBudget::kept`] returns
    /// it when it could not go back.
    pub fn take_unused(&self) -> Money {
        let mut taken = 0;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                taken = available.max(0);
                Some(available - taken)
            });
        Money::from_nanos(taken)
    }

    /// `amount`, taken by [`KeyBudget::take_unused`], could not go back: it stays usable here.
    pub fn kept(&self, amount: Money) {
        self.grow(amount);
    }

    /// Reserves what `decide` allows given what the lease holds unused, atomically. `decide`
    /// may run more than once under contention; it must be pure. Returns the decision that was
    /// applied.
    pub fn reserve(&self, decide: impl Fn(Money) -> Fit) -> Fit {
        let mut applied = None;
        let result =
            self.available
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                    let fit = decide(Money::from_nanos(available).at_least_zero());
                    applied = Some(fit);
                    match fit {
                        Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => {
                            (reserve.nanos() <= available).then_some(available - reserve.nanos())
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
            // A decision that does not fit what it was given (not one `fit` makes): refuse.
            (Err(_), Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. }) => Fit::Refuse {
                need_at_least: reserve,
            },
        }
    }

    /// Ends a reservation: `charge` becomes spend and the rest returns to the lease.
    pub fn settle(&self, reservation: Money, charge: Money) {
        self.spent.fetch_add(charge.nanos(), Ordering::AcqRel);
        self.available
            .fetch_add(reservation.nanos() - charge.nanos(), Ordering::AcqRel);
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

    fn leased(cap: i64, spent: i64, lease: i64) -> KeyBudget {
        let budget = KeyBudget::new(Money::from_nanos(cap), Money::from_nanos(spent));
        budget.grow(Money::from_nanos(lease));
        budget
    }

    #[test]
    fn reserves_within_the_lease_and_settles() {
        let budget = leased(1_000, 10, 90);
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
        assert_eq!(budget.left(), Money::from_nanos(970));
    }

    #[test]
    fn nothing_is_reserved_without_a_lease() {
        let budget = KeyBudget::new(Money::from_nanos(1_000), Money::ZERO);
        assert!(matches!(budget.reserve(fixed(1)), Fit::Refuse { .. }));
    }

    #[test]
    fn concurrent_reservations_never_pass_the_lease() {
        let budget = Arc::new(leased(1_000_000, 0, 1_000));
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
    fn giving_back_takes_only_what_is_unused() {
        let budget = leased(1_000, 0, 100);
        budget.reserve(fixed(30));
        let unused = budget.take_unused();
        assert_eq!(unused, Money::from_nanos(70));
        // While it is on its way back, nothing can reserve it.
        assert!(matches!(budget.reserve(fixed(1)), Fit::Refuse { .. }));
        budget.settle(Money::from_nanos(30), Money::from_nanos(10));
        assert_eq!(budget.remaining(), Money::from_nanos(20));
        // A give-back that failed leaves it usable.
        let unused = budget.take_unused();
        budget.kept(unused);
        assert_eq!(budget.remaining(), Money::from_nanos(20));
    }

    #[test]
    fn a_charge_above_its_reservation_is_paid_back_from_the_next_grant() {
        let budget = leased(1_000, 0, 10);
        budget.reserve(fixed(10));
        budget.settle(Money::from_nanos(10), Money::from_nanos(15));
        assert_eq!(budget.remaining(), Money::ZERO);
        assert_eq!(budget.take_unused(), Money::ZERO);
        budget.grow(Money::from_nanos(20));
        assert_eq!(budget.remaining(), Money::from_nanos(15));
    }

    /// A give-back racing reservations never lets them take what went back.
    #[test]
    fn reservations_racing_a_give_back_never_pass_the_lease() {
        let budget = Arc::new(leased(1_000_000, 0, 700));
        let reserved = std::thread::scope(|scope| {
            let reservers: Vec<_> = (0..4)
                .map(|_| {
                    let budget = &budget;
                    scope.spawn(move || {
                        (0..200)
                            .filter(|_| matches!(budget.reserve(fixed(1)), Fit::AsRequested { .. }))
                            .count()
                    })
                })
                .collect();
            let given_back = budget.take_unused();
            let reserved: usize = reservers.into_iter().map(|r| r.join().unwrap()).sum();
            (reserved, given_back)
        });
        assert_eq!(reserved.0 as i64 + reserved.1.nanos(), 700);
    }

    #[test]
    fn renewal_resets_spend_and_keeps_the_lease() {
        let budget = leased(100, 90, 10);
        budget.reserve(fixed(5));
        budget.reset_spent(Money::ZERO);
        assert_eq!(budget.remaining(), Money::from_nanos(5));
        budget.settle(Money::from_nanos(5), Money::from_nanos(5));
        assert_eq!(budget.spent(), Money::from_nanos(5));
    }
}
