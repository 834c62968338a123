//! Monthly budgets: the calendar-month window and the arithmetic of carving sub-key caps out of
//! a member's budget.
//!
//! A member's budget belongs to one membership and renews each calendar month (UTC). What is
//! available this month is `budget - carved this month + refunded this month`; provisioning a
//! key with cap C carves C, and raising its cap carves the difference (see [`change_cap`]).
//! Refunds (a close, a cut, a lease coming back unspent) follow one rule, kept in the database
//! beside what it needs (`key_refundable`, migration 0024).

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use crate::money::Money;

/// Why a budget operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "cap {cap} exceeds the budget left this month ({available}): lower the cap or ask an owner to raise the budget"
    )]
    OverBudget { cap: Money, available: Money },
    #[error("a cap must be more than $0.00")]
    ZeroCap,
    #[error(
        "raising the cap takes {raise} from the budget, more than is left this month ({available}): raise it by less or ask an owner to raise the budget"
    )]
    RaiseOverBudget { raise: Money, available: Money },
    #[error("the key has spent {spent} already: its cap cannot be lower than that")]
    BelowSpent { spent: Money },
}

/// One calendar month in UTC: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthWindow {
    /// First instant of the month.
    pub start: OffsetDateTime,
    /// First instant of the next month.
    pub end: OffsetDateTime,
}

impl MonthWindow {
    /// The UTC calendar month that contains `at`.
    pub fn containing(at: OffsetDateTime) -> MonthWindow {
        let at = at.to_offset(UtcOffset::UTC);
        let start = first_instant(at.year(), at.month());
        let (next_year, next_month) = match at.month() {
            Month::December => (at.year() + 1, Month::January),
            month => (at.year(), month.next()),
        };
        MonthWindow {
            start,
            end: first_instant(next_year, next_month),
        }
    }

    /// True when `at` falls inside this month.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.start <= at && at < self.end
    }

    /// The first day of the month, the key under which monthly renewals are recorded.
    pub fn first_day(&self) -> Date {
        self.start.date()
    }
}

fn first_instant(year: i32, month: Month) -> OffsetDateTime {
    // Day 1 exists in every month of every year that `time` represents.
    let date = Date::from_calendar_date(year, month, 1).expect("day 1 of a month is a valid date");
    PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()
}

/// A member's money for one month, as the database reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonthlyBudget {
    /// The monthly budget the owner set.
    pub budget: Money,
    /// Caps carved out this month (new keys, renewals and raises).
    pub carved: Money,
    /// Refunds credited this month (revoked or expired keys' unspent caps, cuts of caps, leases
    /// come back unspent).
    pub refunded: Money,
}

impl MonthlyBudget {
    /// Budget left to carve this month. Negative when an owner lowered the budget below what is
    /// already carved; then no new key can be provisioned until it is positive again.
    pub fn available(&self) -> Money {
        self.budget
            .saturating_sub(self.carved)
            .saturating_add(self.refunded)
    }

    /// Checks that a new key with `cap` fits in what is left this month.
    pub fn check_carve(&self, cap: Money) -> Result<(), BudgetError> {
        if cap <= Money::ZERO {
            return Err(BudgetError::ZeroCap);
        }
        let available = self.available();
        if cap > available {
            return Err(BudgetError::OverBudget {
                cap,
                available: available.at_least_zero(),
            });
        }
        Ok(())
    }
}

/// What changing a key's cap does to its member's month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapChange {
    /// A raise: the difference is carved from this month's budget.
    Carve(Money),
    /// A cut: what was paid above the new cap (and above what the key spent and its leases
    /// hold) goes back to this month, up to what the key carved from it.
    Refund(Money),
    /// Nothing moves: a cut of a cap carved in an earlier month (or whose refund waits for
    /// gateways' leases to come back), or a key waiting for its monthly renewal, which carves
    /// whatever its cap is then.
    Neither,
}

impl CapChange {
    /// What the change carved from the month (zero unless a raise).
    pub fn carved(self) -> Money {
        match self {
            CapChange::Carve(carve) => carve,
            CapChange::Refund(_) | CapChange::Neither => Money::ZERO,
        }
    }

    /// What the change refunded to the month (zero unless a cut).
    pub fn refunded(self) -> Money {
        match self {
            CapChange::Refund(refund) => refund,
            CapChange::Carve(_) | CapChange::Neither => Money::ZERO,
        }
    }
}

/// Decides what changing a key's cap from `old` to `new` carves.
///
/// - `new` must be more than zero, and at least what the key has `spent` in its period (unless
///   it is `awaiting_renewal`: renewing monthly, not renewed this month yet and paused, so that
///   no gateway serves it; its renewal resets its spend and carves the new cap).
/// - A raise carves what `paid` (the key's carves in its period less its refunds) does not
///   cover yet, and must fit in the month's available budget, like a new key. A cut whose
///   refund was held back (gateways' leases held more than the new cap) has paid for part of
///   the cap already.
/// - A cut carves nothing: what it refunds is decided by the database, by the rule of every
///   refund (`key_refundable`, migration 0024), and returned as [`CapChange::Refund`] there.
pub fn change_cap(
    old: Money,
    new: Money,
    spent: Money,
    paid: Money,
    awaiting_renewal: bool,
    month: &MonthlyBudget,
) -> Result<CapChange, BudgetError> {
    if new <= Money::ZERO {
        return Err(BudgetError::ZeroCap);
    }
    if awaiting_renewal {
        return Ok(CapChange::Neither);
    }
    if new < spent {
        return Err(BudgetError::BelowSpent { spent });
    }
    let raise = new.saturating_sub(paid.max(old));
    if new <= old || raise <= Money::ZERO {
        return Ok(CapChange::Neither);
    }
    let available = month.available();
    if raise > available {
        return Err(BudgetError::RaiseOverBudget {
            raise,
            available: available.at_least_zero(),
        });
    }
    Ok(CapChange::Carve(raise))
}

/// What happens to a monthly-renewing key at a month boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Spend resets to zero and the cap is carved again from the new month's budget.
    Renew { carve: Money },
    /// The new month's budget cannot cover the cap: the key is paused with this reason.
    Pause { reason: String },
}

/// Decides a renewing key's fate given its cap and the member's new month.
pub fn renew(cap: Money, new_month: &MonthlyBudget) -> Renewal {
    match new_month.check_carve(cap) {
        Ok(()) => Renewal::Renew { carve: cap },
        Err(_) => Renewal::Pause {
            reason: format!(
                "monthly renewal paused: cap {cap} exceeds the budget left this month ({})",
                new_month.available().at_least_zero()
            ),
        },
    }
}

/// When a key has an expiry and it has passed, the key is closed.
pub fn is_expired(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn usd(text: &str) -> Money {
        Money::parse_usd(text).unwrap()
    }

    #[test]
    fn month_windows_are_utc_calendar_months() {
        let cases = [
            (
                datetime!(2026-11-27 14:20 UTC),
                datetime!(2026-11-01 0:00 UTC),
                datetime!(2026-12-01 0:00 UTC),
            ),
            (
                datetime!(2026-12-31 23:59:59 UTC),
                datetime!(2026-12-01 0:00 UTC),
                datetime!(2027-01-01 0:00 UTC),
            ),
            (
                datetime!(2028-02-29 12:00 UTC),
                datetime!(2028-02-01 0:00 UTC),
                datetime!(2028-03-01 0:00 UTC),
            ),
            // 23:30 on Jan 31 in UTC-5 is already February in UTC.
            (
                datetime!(2027-01-31 23:30 -5),
                datetime!(2027-02-01 0:00 UTC),
                datetime!(2027-03-01 0:00 UTC),
            ),
        ];
        for (at, start, end) in cases {
            let window = MonthWindow::containing(at);
            assert_eq!((window.start, window.end), (start, end), "at {at}");
            assert!(window.contains(at));
            assert!(!window.contains(end));
        }
    }

    fn check(
        budget: &str,
        carved: &str,
        refunded: &str,
        cap: &str,
        expected: Result<(), BudgetError>,
    ) {
        let month = MonthlyBudget {
            budget: usd(budget),
            carved: usd(carved),
            refunded: usd(refunded),
        };
        assert_eq!(month.check_carve(usd(cap)), expected, "{month:?} cap {cap}");
    }

    #[test]
    fn carving_stays_within_the_month() {
        check("100", "0", "0", "20", Ok(()));
        check("100", "80", "0", "20", Ok(()));
        check(
            "100",
            "80",
            "0",
            "20.000000001",
            Err(BudgetError::OverBudget {
                cap: usd("20.000000001"),
                available: usd("20"),
            }),
        );
        check("100", "100", "15", "15", Ok(()));
        check(
            "100",
            "100",
            "15",
            "16",
            Err(BudgetError::OverBudget {
                cap: usd("16"),
                available: usd("15"),
            }),
        );
        check("100", "0", "0", "0", Err(BudgetError::ZeroCap));
        // An owner lowered the budget below what is carved: nothing fits until it is positive.
        check(
            "10",
            "30",
            "0",
            "1",
            Err(BudgetError::OverBudget {
                cap: usd("1"),
                available: usd("0"),
            }),
        );
        check(
            "0",
            "0",
            "0",
            "0.01",
            Err(BudgetError::OverBudget {
                cap: usd("0.01"),
                available: usd("0"),
            }),
        );
    }

    #[test]
    fn available_may_go_negative_after_a_lowered_budget() {
        let month = MonthlyBudget {
            budget: usd("10"),
            carved: usd("30"),
            refunded: usd("5"),
        };
        assert_eq!(month.available(), Money::from_usd(-15));
    }

    #[test]
    fn a_cap_change_carves_a_raise_and_nothing_for_a_cut() {
        let month = MonthlyBudget {
            budget: usd("100"),
            carved: usd("70"),
            refunded: Money::ZERO,
        };
        // A key whose cap is paid for in full.
        let change =
            |old, new, spent| change_cap(usd(old), usd(new), usd(spent), usd(old), false, &month);
        assert_eq!(change("20", "50", "5"), Ok(CapChange::Carve(usd("30"))));
        assert_eq!(
            change("20", "50.01", "5"),
            Err(BudgetError::RaiseOverBudget {
                raise: usd("30.01"),
                available: usd("30")
            })
        );
        assert_eq!(change("20", "8", "5"), Ok(CapChange::Neither));
        assert_eq!(change("20", "5", "5"), Ok(CapChange::Neither));
        assert_eq!(
            change("20", "4.99", "5"),
            Err(BudgetError::BelowSpent { spent: usd("5") })
        );
        assert_eq!(change("20", "0", "0"), Err(BudgetError::ZeroCap));
        // (old, new, spent, paid): after a cut whose refund was held back, a raise carves only
        // what is not paid for.
        let other = |old, new, spent, paid| {
            change_cap(usd(old), usd(new), usd(spent), usd(paid), false, &month)
        };
        assert_eq!(other("5", "9", "4", "8"), Ok(CapChange::Carve(usd("1"))));
        assert_eq!(other("5", "8", "4", "8"), Ok(CapChange::Neither));
        // Waiting for its renewal: the renewal carves the new cap, spent or not.
        let waiting =
            |new, spent| change_cap(usd("20"), usd(new), usd(spent), usd("20"), true, &month);
        assert_eq!(waiting("2", "5"), Ok(CapChange::Neither));
        assert_eq!(waiting("500", "5"), Ok(CapChange::Neither));
        assert_eq!(waiting("0", "5"), Err(BudgetError::ZeroCap));
    }

    #[test]
    fn renewal_carves_again_or_pauses() {
        let roomy = MonthlyBudget {
            budget: usd("100"),
            ..Default::default()
        };
        assert_eq!(
            renew(usd("20"), &roomy),
            Renewal::Renew { carve: usd("20") }
        );
        let tight = MonthlyBudget {
            budget: usd("100"),
            carved: usd("90"),
            ..Default::default()
        };
        match renew(usd("20"), &tight) {
            Renewal::Pause { reason } => assert!(reason.contains("$10.00"), "{reason}"),
            other => panic!("expected a pause, got {other:?}"),
        }
    }

    #[test]
    fn expiry_is_inclusive_of_the_instant() {
        let now = datetime!(2026-11-27 12:00 UTC);
        assert!(!is_expired(None, now));
        assert!(is_expired(Some(now), now));
        assert!(!is_expired(Some(datetime!(2026-11-27 12:00:01 UTC)), now));
    }
}
