//! Per-key spend counters: all time, and for the current UTC day, week
//! (Monday to Sunday) and month, as `GET /key` and `/keys` report them.

use time::{Date, OffsetDateTime};

/// The period after which a key's limit starts again, as `limit_reset` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReset {
    /// At midnight UTC.
    Daily,
    /// At midnight UTC between Sunday and Monday.
    Weekly,
    /// At midnight UTC on the first of the month.
    Monthly,
}

impl LimitReset {
    /// Parses `"daily"`, `"weekly"` or `"monthly"`.
    pub fn parse(text: &str) -> Option<LimitReset> {
        match text {
            "daily" => Some(LimitReset::Daily),
            "weekly" => Some(LimitReset::Weekly),
            "monthly" => Some(LimitReset::Monthly),
            _ => None,
        }
    }

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitReset::Daily => "daily",
            LimitReset::Weekly => "weekly",
            LimitReset::Monthly => "monthly",
        }
    }

    /// The first day of the period that contains `date`.
    fn period_start(self, date: Date) -> Date {
        match self {
            LimitReset::Daily => date,
            LimitReset::Weekly => {
                let days_since_monday = date.weekday().number_days_from_monday();
                date - time::Duration::days(i64::from(days_since_monday))
            }
            LimitReset::Monthly => date.replace_day(1).unwrap_or(date),
        }
    }
}

/// Spend of one key, in nano-dollars.
#[derive(Debug, Clone, Default)]
pub struct UsageCounters {
    total_nanousd: u64,
    daily: PeriodCounter,
    weekly: PeriodCounter,
    monthly: PeriodCounter,
}

impl UsageCounters {
    /// Adds one request's cost, spent at `now`.
    pub fn add(&mut self, cost_nanousd: u64, now: OffsetDateTime) {
        self.total_nanousd = self.total_nanousd.saturating_add(cost_nanousd);
        let today = now.date();
        self.daily
            .add(LimitReset::Daily.period_start(today), cost_nanousd);
        self.weekly
            .add(LimitReset::Weekly.period_start(today), cost_nanousd);
        self.monthly
            .add(LimitReset::Monthly.period_start(today), cost_nanousd);
    }

    /// Spend since the key was created.
    pub fn total_nanousd(&self) -> u64 {
        self.total_nanousd
    }

    /// Spend in the current period of `reset`, or all time for `None`.
    pub fn in_period_nanousd(&self, reset: Option<LimitReset>, now: OffsetDateTime) -> u64 {
        let today = now.date();
        match reset {
            None => self.total_nanousd,
            Some(reset @ LimitReset::Daily) => self.daily.read(reset.period_start(today)),
            Some(reset @ LimitReset::Weekly) => self.weekly.read(reset.period_start(today)),
            Some(reset @ LimitReset::Monthly) => self.monthly.read(reset.period_start(today)),
        }
    }
}

/// Spend since `period_start`; a read or write in a later period starts from 0.
#[derive(Debug, Clone, Default)]
struct PeriodCounter {
    period_start: Option<Date>,
    nanousd: u64,
}

impl PeriodCounter {
    fn add(&mut self, period_start: Date, cost_nanousd: u64) {
        if self.period_start != Some(period_start) {
            self.period_start = Some(period_start);
            self.nanousd = 0;
        }
        self.nanousd = self.nanousd.saturating_add(cost_nanousd);
    }

    fn read(&self, period_start: Date) -> u64 {
        if self.period_start == Some(period_start) {
            self.nanousd
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn periods_restart_at_utc_boundaries() {
        let mut usage = UsageCounters::default();
        // 2026-08-05 is a Wednesday.
        usage.add(100, datetime!(2026-08-05 23:00 UTC));
        let next_day = datetime!(2026-08-06 01:00 UTC);
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Daily), next_day),
            0
        );
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Weekly), next_day),
            100
        );
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Monthly), next_day),
            100
        );
        let next_monday = datetime!(2026-08-10 00:00 UTC);
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Weekly), next_monday),
            0
        );
        let next_month = datetime!(2026-09-01 00:00 UTC);
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Monthly), next_month),
            0
        );
        assert_eq!(usage.in_period_nanousd(None, next_month), 100);
        usage.add(5, next_day);
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Daily), next_day),
            5
        );
        assert_eq!(
            usage.in_period_nanousd(Some(LimitReset::Weekly), next_day),
            105
        );
        assert_eq!(usage.total_nanousd(), 105);
    }
}
