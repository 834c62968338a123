//! Exact cost arithmetic. Prices arrive as USD decimal strings; they are
//! parsed without floats into pico-dollars, multiplied by token counts, and
//! rounded (half up) to whole nano-dollars. Only the final JSON carries a
//! float, built so that it converts back to the exact nano-dollar amount.

use crate::config::MockModel;

/// Pico-dollars in one nano-dollar.
const PICOS_PER_NANO: u128 = 1_000;

/// Decimal places in a pico-dollar amount of USD.
const PICO_DECIMALS: i64 = 12;

/// A model's prices in pico-dollars per unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    /// Per prompt token.
    pub prompt_picos: u128,
    /// Per completion token.
    pub completion_picos: u128,
    /// Per request.
    pub request_picos: u128,
}

impl Prices {
    /// Parses the model's price strings; the error names the bad one.
    pub fn of(model: &MockModel) -> Result<Prices, String> {
        let parse = |price: &str, what: &str| {
            usd_to_picos(price)
                .ok_or_else(|| format!("model {} has an invalid {what} price {price:?}", model.id))
        };
        Ok(Prices {
            prompt_picos: parse(&model.prompt_price, "prompt")?,
            completion_picos: parse(&model.completion_price, "completion")?,
            request_picos: parse(&model.request_price, "request")?,
        })
    }

    /// The cost of one request with these token counts and `fees_picos` on top (searches,
    /// pages, further model calls' request fees).
    pub fn cost_with_fees(
        &self,
        prompt_tokens: u64,
        completion_tokens: u64,
        fees_picos: u128,
    ) -> Cost {
        let prompt_picos = self.prompt_picos * u128::from(prompt_tokens);
        let completion_picos = self.completion_picos * u128::from(completion_tokens);
        let total_picos = prompt_picos + completion_picos + self.request_picos + fees_picos;
        Cost {
            prompt_nanousd: picos_to_nanos(prompt_picos),
            completion_nanousd: picos_to_nanos(completion_picos),
            total_nanousd: picos_to_nanos(total_picos),
        }
    }
}

/// The cost of one request, in whole nano-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// The prompt tokens' share, rounded on its own.
    pub prompt_nanousd: u64,
    /// The completion tokens' share, rounded on its own.
    pub completion_nanousd: u64,
    /// Prompt, completion and request fee together, rounded once.
    pub total_nanousd: u64,
}

/// The USD float whose shortest decimal form is exactly `nanousd` × 1e-9.
/// Both operands are exact in an f64 and the division is correctly rounded,
/// so the result is the double nearest that decimal.
pub fn nanos_to_usd(nanousd: u64) -> f64 {
    nanousd as f64 / 1e9
}

/// Pico-dollars as an exact USD decimal string (`150000` is `"0.00000015"`).
pub fn picos_to_usd_text(picos: u128) -> String {
    const PICOS_PER_USD: u128 = 1_000_000_000_000;
    let (whole, fraction) = (picos / PICOS_PER_USD, picos % PICOS_PER_USD);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses a non-negative USD decimal (`"0.00000015"`, `"1e-7"`, `"12"`)
/// into nano-dollars, rounding half up. `None` when it is not a number.
pub fn usd_to_nanos(usd: &str) -> Option<u64> {
    usd_to_picos(usd).and_then(|picos| u64::try_from(picos_to_nanos_u128(picos)).ok())
}

/// Parses a non-negative USD decimal into pico-dollars, rounding half up.
pub fn usd_to_picos(usd: &str) -> Option<u128> {
    let usd = usd.trim();
    let (mantissa, exponent) = match usd.find(['e', 'E']) {
        Some(idx) => (&usd[..idx], usd[idx + 1..].parse::<i64>().ok()?),
        None => (usd, 0),
    };
    let mantissa = mantissa.strip_prefix('+').unwrap_or(mantissa);
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((int_part, frac_part)) => (int_part, frac_part),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    let all_digits = int_part
        .chars()
        .chain(frac_part.chars())
        .all(|c| c.is_ascii_digit());
    if !all_digits {
        return None;
    }
    // The digits as one integer, scaled by 10^(exponent - frac_len).
    let digits: String = int_part.chars().chain(frac_part.chars()).collect();
    let digits = digits.trim_start_matches('0');
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let shift = PICO_DECIMALS + exponent - frac_len;
    if digits.is_empty() {
        return Some(0);
    }
    if shift >= 0 {
        let value: u128 = digits.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(shift).ok()?)?;
        return value.checked_mul(scale);
    }
    // Dropping -shift digits: keep the head and round on the first dropped.
    let n_dropped = usize::try_from(-shift).ok()?;
    if n_dropped > digits.len() {
        return Some(0);
    }
    let (head, tail) = digits.split_at(digits.len() - n_dropped);
    let head: u128 = if head.is_empty() {
        0
    } else {
        head.parse().ok()?
    };
    let round_up = tail.as_bytes().first().is_some_and(|digit| *digit >= b'5');
    Some(head + u128::from(round_up))
}

fn picos_to_nanos_u128(picos: u128) -> u128 {
    (picos + PICOS_PER_NANO / 2) / PICOS_PER_NANO
}

fn picos_to_nanos(picos: u128) -> u64 {
    u64::try_from(picos_to_nanos_u128(picos)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(usd: &str, expected_picos: Option<u128>) {
        assert_eq!(usd_to_picos(usd), expected_picos, "parsing {usd:?}");
    }

    #[test]
    fn parses_decimal_prices() {
        check("0", Some(0));
        check("0.000001", Some(1_000_000));
        check("0.00000015", Some(150_000));
        check("0.0000006", Some(600_000));
        check("0.0001", Some(100_000_000));
        check("12", Some(12_000_000_000_000));
        check("1.5e-7", Some(150_000));
        check("2E-5", Some(20_000_000));
        check(".5", Some(500_000_000_000));
        check("0.0000000000004", Some(0));
        check("0.0000000000005", Some(1));
        check("", None);
        check("-1", None);
        check("abc", None);
        check("1e", None);
    }

    #[test]
    fn cost_rounds_once_to_nanos() {
        let prices = Prices {
            prompt_picos: 150_000,
            completion_picos: 600_000,
            request_picos: 0,
        };
        let cost = prices.cost_with_fees(10, 5, 0);
        assert_eq!(cost.prompt_nanousd, 1_500);
        assert_eq!(cost.completion_nanousd, 3_000);
        assert_eq!(cost.total_nanousd, 4_500);
        let fine = Prices {
            prompt_picos: 400,
            completion_picos: 0,
            request_picos: 0,
        };
        assert_eq!(fine.cost_with_fees(3, 0, 0).total_nanousd, 1);
    }

    #[test]
    fn usd_float_round_trips_to_nanos() {
        for nanos in [1u64, 7, 150, 20_000, 42_000, 123_456_789, 1_000_000_000] {
            let usd = nanos_to_usd(nanos);
            let printed = serde_json::to_string(&usd).unwrap();
            assert_eq!(usd_to_nanos(&printed), Some(nanos), "{printed}");
            assert_eq!((usd * 1e9).round() as u64, nanos);
        }
    }
}
