//! What OpenRouter billed for one generation, asked after the fact: `GET
//! /api/v1/generation?id=` under the master key answers `{"data": {"total_cost": …}}` once the
//! generation's stats are ready (404 before). The gateway asks for a request that ended
//! without a reported cost (a client hang-up, a cut stream) and charges that in place of the
//! reservation.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Money;

/// The path to ask for generation `id`'s stats, or `None` for an id that is not one of
/// OpenRouter's (`gen-` and letters, digits, `-`, `_`): nothing else goes into the query.
pub fn lookup_path(id: &str) -> Option<String> {
    let well_formed = id.starts_with("gen-")
        && (5..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| format!("/api/v1/generation?id={id}"))
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    data: Stats<'a>,
}

#[derive(Deserialize)]
struct Stats<'a> {
    id: &'a str,
    #[serde(borrow)]
    total_cost: &'a RawValue,
    #[serde(default)]
    is_byok: Option<bool>,
    #[serde(default, borrow)]
    upstream_inference_cost: Option<&'a RawValue>,
}

/// The most a generation is believed to cost: above it, an answer is taken for a misreport
/// (and the reservation stands), rather than a charge that could overflow a key's counters.
pub const MOST_BELIEVABLE: Money = Money::from_nanos(100_000 * 1_000_000_000);

/// What the answer says generation `id` cost, read from the JSON number's text (no float):
/// `total_cost`, plus the provider's own `upstream_inference_cost` for a BYOK request (where
/// `total_cost` is only OpenRouter's fee), as metering counts a reported `usage`. `None` when
/// the answer holds no such number, is about another generation, or passes
/// [`MOST_BELIEVABLE`].
pub fn billed(id: &str, answer: &[u8]) -> Option<Money> {
    let answer: Answer<'_> = serde_json::from_slice(answer).ok()?;
    if answer.data.id != id {
        return None;
    }
    let number = |raw: &RawValue| {
        let text = raw.get();
        text.starts_with(|c: char| c.is_ascii_digit())
            .then(|| Money::from_usd_str(text).ok())
            .flatten()
    };
    let total = number(answer.data.total_cost)?;
    let billed = match (answer.data.is_byok, answer.data.upstream_inference_cost) {
        (Some(true), Some(upstream)) if upstream.get() != "null" => {
            total.checked_add(number(upstream)?)?
        }
        _ => total,
    };
    (billed <= MOST_BELIEVABLE).then_some(billed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generation_ids_are_asked_for() {
        assert_eq!(
            lookup_path("gen-1733-AbC_9").as_deref(),
            Some("/api/v1/generation?id=gen-1733-AbC_9")
        );
        for bad in ["", "gen-", "gen-a&id=b", "gen-a b", "chatcmpl-1", "gen-é"] {
            assert_eq!(lookup_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_billed_cost_exactly() {
        let cases: &[(&str, Option<i64>)] = &[
            (r#""total_cost":0.0000288,"usage":0.0000288"#, Some(28_800)),
            (r#""total_cost":4.4e-5"#, Some(44_000)),
            (r#""total_cost":0"#, Some(0)),
            // BYOK: OpenRouter's fee plus what the provider billed the owner's key.
            (
                r#""total_cost":0.00001,"is_byok":true,"upstream_inference_cost":0.0002"#,
                Some(210_000),
            ),
            (
                r#""total_cost":0.00001,"is_byok":false,"upstream_inference_cost":0.0002"#,
                Some(10_000),
            ),
            (
                r#""total_cost":0.00001,"is_byok":true,"upstream_inference_cost":null"#,
                Some(10_000),
            ),
            (r#""total_cost":100000"#, Some(100_000_000_000_000)),
            // Not believable: a misreport, not a charge.
            (r#""total_cost":100000.000000001"#, None),
            (r#""total_cost":9e15"#, None),
            (r#""total_cost":null"#, None),
            (r#""total_cost":"0.1""#, None),
            (r#""total_cost":-1"#, None),
            (r#""usage":0.1"#, None),
        ];
        for (fields, expected) in cases {
            let answer = format!(r#"{{"data":{{"id":"gen-1-a",{fields}}}}}"#);
            assert_eq!(
                billed("gen-1-a", answer.as_bytes()).map(Money::nanos),
                *expected,
                "{answer}"
            );
        }
        // About another generation, or no stats at all.
        let other = r#"{"data":{"id":"gen-2-b","total_cost":0.1}}"#;
        assert_eq!(billed("gen-1-a", other.as_bytes()), None);
        for answer in [
            r#"{"error":{"code":404,"message":"Generation not found"}}"#,
            "not json",
        ] {
            assert_eq!(billed("gen-1-a", answer.as_bytes()), None, "{answer}");
        }
    }
}
