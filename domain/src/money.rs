//! Money as an integer count of nano-dollars (1e-9 USD).
//!
//! No floating point ever holds money in keycap. Amounts typed by people (`"20"`, `"20.50"`,
//! `"$0.0015"`) are parsed digit by digit; amounts reported by a provider as decimal strings or
//! JSON numbers are converted once, at the edge, by [`Money::from_usd_str`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// An amount of US dollars, stored as whole nano-dollars.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

/// Why a dollar amount could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty: write dollars such as 20 or 20.50")]
    Empty,
    #[error("amount {0:?} is not a dollar amount: write dollars such as 20 or 0.0015")]
    Invalid(String),
    #[error("amount {0:?} has more than nine decimals: the smallest unit is one nano-dollar")]
    TooPrecise(String),
    #[error("amount {0:?} is too large")]
    TooLarge(String),
    #[error("amount {0:?} is negative: amounts must be zero or more")]
    Negative(String),
}

impl Money {
    /// Zero dollars.
    pub const ZERO: Money = Money(0);

    /// An amount from a count of nano-dollars.
    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    /// An amount of whole dollars.
    pub const fn from_usd(usd: i64) -> Money {
        Money(usd * NANOS_PER_USD)
    }

    /// The count of nano-dollars.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Parses a non-negative dollar amount typed by a person: `20`, `20.50`, `$0.0015`,
    /// `1_000`, with at most nine decimals. No float is involved.
    pub fn parse_usd(input: &str) -> Result<Money, MoneyError> {
        let money = Money::parse_signed(input)?;
        if money.0 < 0 {
            return Err(MoneyError::Negative(input.trim().to_string()));
        }
        Ok(money)
    }

    /// Parses a decimal dollar string that may be negative or use an exponent, as providers
    /// report prices (`"0.00003"`, `"-1"`, `"1e-7"`). Digits past the ninth decimal are rounded
    /// half away from zero, since a provider's price may be finer than a nano-dollar.
    pub fn from_usd_str(input: &str) -> Result<Money, MoneyError> {
        let (mantissa, exponent) = split_exponent(input)?;
        let (negative, int_part, frac_part) = split_decimal(input, mantissa)?;
        // value = digits * 10^(exponent - frac_len) dollars = digits * 10^(exponent - frac_len + 9) nanos
        let scale = exponent - frac_part.len() as i64 + 9;
        let digits = int_part.bytes().chain(frac_part.bytes());
        let nanos = scale_digits(input, digits, scale)?;
        Ok(Money(if negative { -nanos } else { nanos }))
    }

    fn parse_signed(input: &str) -> Result<Money, MoneyError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(MoneyError::Empty);
        }
        let (negative, rest) = match trimmed.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let rest = rest.strip_prefix('$').unwrap_or(rest);
        let cleaned: String = rest.chars().filter(|c| *c != '_' && *c != ',').collect();
        let (int_part, frac_part) = match cleaned.split_once('.') {
            Some((i, f)) => (i, f),
            None => (cleaned.as_str(), ""),
        };
        let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !all_digits(int_part)
            || !all_digits(frac_part)
        {
            return Err(MoneyError::Invalid(trimmed.to_string()));
        }
        if frac_part.len() > 9 {
            return Err(MoneyError::TooPrecise(trimmed.to_string()));
        }
        let too_large = || MoneyError::TooLarge(trimmed.to_string());
        let whole: i64 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut frac_digits = frac_part.to_string();
        while frac_digits.len() < 9 {
            frac_digits.push('0');
        }
        let frac: i64 = frac_digits.parse().map_err(|_| too_large())?;
        let nanos = whole
            .checked_mul(NANOS_PER_USD)
            .and_then(|n| n.checked_add(frac))
            .ok_or_else(too_large)?;
        Ok(Money(if negative { -nanos } else { nanos }))
    }

    /// Adds, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// Subtracts, or `None` on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// Adds, clamping at the bounds of `i64`.
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Subtracts, clamping at the bounds of `i64`.
    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// Multiplies a per-unit price by a count, clamping at `i64::MAX`.
    pub fn saturating_mul(self, count: u64) -> Money {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        Money(self.0.saturating_mul(count))
    }

    /// The larger of this amount and zero.
    pub fn at_least_zero(self) -> Money {
        Money(self.0.max(0))
    }

    /// True when the amount is below zero.
    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

fn split_exponent(input: &str) -> Result<(&str, i64), MoneyError> {
    let trimmed = input.trim();
    match trimmed.find(['e', 'E']) {
        Some(at) => {
            let exponent: i64 = trimmed[at + 1..]
                .parse()
                .map_err(|_| MoneyError::Invalid(trimmed.to_string()))?;
            if exponent > 30 {
                return Err(MoneyError::Invalid(trimmed.to_string()));
            }
            // However small, a value below a nano-dollar rounds to zero; the floor keeps the
            // scale arithmetic far from overflow.
            Ok((&trimmed[..at], exponent.max(-1000)))
        }
        None => Ok((trimmed, 0)),
    }
}

fn split_decimal<'a>(
    input: &str,
    mantissa: &'a str,
) -> Result<(bool, &'a str, &'a str), MoneyError> {
    let invalid = || MoneyError::Invalid(input.trim().to_string());
    let (negative, rest) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = rest.split_once('.').unwrap_or((rest, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err(invalid());
    }
    Ok((negative, int_part, frac_part))
}

/// `digits * 10^scale` (ASCII digits, most significant first), rounded half away from zero
/// when `scale` is negative. Reads the digits in place: this runs for every metered response.
fn scale_digits(
    input: &str,
    digits: impl Iterator<Item = u8> + Clone,
    scale: i64,
) -> Result<i64, MoneyError> {
    let too_large = || MoneyError::TooLarge(input.trim().to_string());
    let mut digits = digits
        .skip_while(|d| *d == b'0')
        .map(|d| i64::from(d - b'0'));
    let significant = digits.clone().count();
    // How many of the significant digits are kept; the first dropped one decides rounding.
    let kept = match usize::try_from(-scale) {
        Ok(dropped) if dropped > significant => return Ok(0),
        Ok(dropped) => significant - dropped,
        Err(_) => significant,
    };
    let mut value: i64 = 0;
    for digit in digits.by_ref().take(kept) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or_else(too_large)?;
    }
    if scale >= 0 {
        for _ in 0..scale {
            value = value.checked_mul(10).ok_or_else(too_large)?;
        }
    } else if digits.next().is_some_and(|d| d >= 5) {
        value = value.checked_add(1).ok_or_else(too_large)?;
    }
    Ok(value)
}

impl Money {
    /// Dollars as a plain decimal, as a form or a metric writes them: `20.00`, `0.0015`,
    /// `-1.25` (the `Display` text without its `$`).
    pub fn decimal_usd(self) -> String {
        self.to_string().replacen('$', "", 1)
    }
}

impl fmt::Display for Money {
    /// Dollars with at least two decimals and no trailing zeros past them: `$20.00`,
    /// `$0.0015`, `-$1.25`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / NANOS_PER_USD as u64;
        let frac = abs % NANOS_PER_USD as u64;
        let mut frac_text = format!("{frac:09}");
        while frac_text.len() > 2 && frac_text.ends_with('0') {
            frac_text.pop();
        }
        write!(f, "{sign}${whole}.{frac_text}")
    }
}

impl std::str::FromStr for Money {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse_usd(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<i64, MoneyError>) {
        assert_eq!(
            Money::parse_usd(input).map(Money::nanos),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn parses_typed_amounts() {
        check("20", Ok(20_000_000_000));
        check("20.50", Ok(20_500_000_000));
        check("$0.0015", Ok(1_500_000));
        check("0.000576", Ok(576_000));
        check(" 7 ", Ok(7_000_000_000));
        check(".5", Ok(500_000_000));
        check("1_000", Ok(1_000_000_000_000));
        check("0.000000001", Ok(1));
        check("0", Ok(0));
        check("", Err(MoneyError::Empty));
        check("abc", Err(MoneyError::Invalid("abc".into())));
        check("1.2.3", Err(MoneyError::Invalid("1.2.3".into())));
        check("$", Err(MoneyError::Invalid("$".into())));
        check("1e3", Err(MoneyError::Invalid("1e3".into())));
        check(
            "0.0000000001",
            Err(MoneyError::TooPrecise("0.0000000001".into())),
        );
        check("-5", Err(MoneyError::Negative("-5".into())));
        check(
            "99999999999999999999",
            Err(MoneyError::TooLarge("99999999999999999999".into())),
        );
        check(
            "10000000000",
            Err(MoneyError::TooLarge("10000000000".into())),
        );
    }

    fn check_provider(input: &str, expected: Option<i64>) {
        assert_eq!(
            Money::from_usd_str(input).ok().map(Money::nanos),
            expected,
            "input {input:?}"
        );
    }

    #[test]
    fn parses_provider_prices() {
        check_provider("0.00003", Some(30_000));
        check_provider("0.0000000015", Some(2));
        check_provider("0.0000000014", Some(1));
        check_provider("1e-7", Some(100));
        check_provider("2.5E-6", Some(2_500));
        check_provider("-1", Some(-1_000_000_000));
        check_provider("0", Some(0));
        check_provider("nope", None);
        check_provider("000.0000000005", Some(1));
        check_provider("12345678901234567890e-20", Some(123_456_789));
        check_provider("9223372036.854775807", Some(i64::MAX));
        check_provider("9223372036.854775808", None);
        check_provider("9223372036.8547758075", None);
        check_provider("9223372036.8547758074", Some(i64::MAX));
        check_provider("1e9", Some(1_000_000_000_000_000_000));
        check_provider("1e10", None);
        check_provider("1e99", None);
    }

    #[test]
    fn reads_json_number_text_exactly() {
        let read = |text: &str| Money::from_usd_str(text).ok();
        assert_eq!(read("0.0015"), Some(Money::from_nanos(1_500_000)));
        assert_eq!(read("0.0012"), Some(Money::from_nanos(1_200_000)));
        assert_eq!(read("4.4e-5"), Some(Money::from_nanos(44_000)));
        // Below a nano-dollar rounds half up, once.
        assert_eq!(read("1e-10"), Some(Money::ZERO));
        assert_eq!(read("1e-31"), Some(Money::ZERO));
        assert_eq!(read("5e-9223372036854775808"), Some(Money::ZERO));
        assert_eq!(read("0.0000000015"), Some(Money::from_nanos(2)));
        assert_eq!(read("null"), None);
        assert_eq!(read("\"0.01\""), None);
    }

    #[test]
    fn displays_dollars() {
        let cases = [
            (20_000_000_000, "$20.00"),
            (20_500_000_000, "$20.50"),
            (1_500_000, "$0.0015"),
            (1, "$0.000000001"),
            (-1_250_000_000, "-$1.25"),
            (0, "$0.00"),
        ];
        for (nanos, text) in cases {
            assert_eq!(Money::from_nanos(nanos).to_string(), text);
        }
    }

    #[test]
    fn display_round_trips() {
        for nanos in [0, 1, 999, 1_500_000, 20_500_000_000, 123_456_789_012] {
            let text = Money::from_nanos(nanos).to_string();
            assert_eq!(Money::parse_usd(&text), Ok(Money::from_nanos(nanos)));
        }
    }
}
