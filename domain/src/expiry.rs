//! Key expiry as people type it: a duration from now (`30d`, `12h`, `90m`, `2w`), a date
//! (`2027-01-31`, meaning the end of that day in UTC) or an RFC 3339 instant.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, PrimitiveDateTime, Time};

/// An expiry that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    #[error(
        "expiry {0:?} is not understood: write a duration such as 30d, 12h or 2w, a date such as 2027-01-31, or an RFC 3339 time"
    )]
    Unparsed(String),
    #[error("expiry {0:?} is not in the future")]
    InThePast(String),
}

/// Parses an expiry relative to `now`.
pub fn parse_expiry(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ExpiryError> {
    let trimmed = text.trim();
    let unparsed = || ExpiryError::Unparsed(trimmed.to_string());
    let at = if let Some(duration) = parse_duration(trimmed) {
        now.checked_add(duration).ok_or_else(unparsed)?
    } else if let Ok(date) = Date::parse(trimmed, format_description!("[year]-[month]-[day]")) {
        let end_of_day = Time::from_hms(23, 59, 59).map_err(|_| unparsed())?;
        PrimitiveDateTime::new(date, end_of_day).assume_utc()
    } else if let Ok(at) = OffsetDateTime::parse(trimmed, &Rfc3339) {
        at
    } else {
        return Err(unparsed());
    };
    if at <= now {
        return Err(ExpiryError::InThePast(trimmed.to_string()));
    }
    Ok(at)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let count: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    if count <= 0 || count > 100_000 {
        return None;
    }
    match unit {
        'm' => Some(Duration::minutes(count)),
        'h' => Some(Duration::hours(count)),
        'd' => Some(Duration::days(count)),
        'w' => Some(Duration::weeks(count)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn check(input: &str, expected: Result<OffsetDateTime, ExpiryError>) {
        let now = datetime!(2026-11-27 14:00 UTC);
        assert_eq!(parse_expiry(input, now), expected, "{input:?}");
    }

    #[test]
    fn parses_expiries() {
        check("30d", Ok(datetime!(2026-12-27 14:00 UTC)));
        check("12h", Ok(datetime!(2026-11-28 2:00 UTC)));
        check("90m", Ok(datetime!(2026-11-27 15:30 UTC)));
        check("2w", Ok(datetime!(2026-12-11 14:00 UTC)));
        check("2027-01-31", Ok(datetime!(2027-01-31 23:59:59 UTC)));
        check(
            "2027-01-31T10:00:00+01:00",
            Ok(datetime!(2027-01-31 9:00 UTC)),
        );
        check(
            "2026-11-26",
            Err(ExpiryError::InThePast("2026-11-26".into())),
        );
        check("0d", Err(ExpiryError::Unparsed("0d".into())));
        check("-3d", Err(ExpiryError::Unparsed("-3d".into())));
        check("soon", Err(ExpiryError::Unparsed("soon".into())));
        check("", Err(ExpiryError::Unparsed("".into())));
    }
}
