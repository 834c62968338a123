//! Parsers under random input (proptest): money parsing against `rust_decimal` as the
//! reference, and the token shape check. 1,000 cases each by default (so a few thousand in
//! CI); more by hand: `PROPTEST_CASES=200000 cargo test -p domain --test properties`.

use std::str::FromStr;

use domain::Money;
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};

const NANOS_PER_USD: i64 = 1_000_000_000;

/// What `text` is in nano-dollars by `rust_decimal`, rounded half away from zero at the ninth
/// decimal; `None` when it does not fit an `i64`.
fn reference_nanos(text: &str) -> Option<i64> {
    let value = Decimal::from_str(text).ok()?;
    let nanos = value
        .checked_mul(Decimal::from(NANOS_PER_USD))?
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(nanos).ok()
}

/// 1,000 cases a property, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A dollar amount as a person types it, with up to nine decimals: parsed exactly.
    #[test]
    fn typed_amounts_parse_exactly(
        dollars in 0u64..9_000_000_000,
        decimals in "[0-9]{0,9}",
        dollar_sign: bool,
    ) {
        let text = match decimals.is_empty() {
            true => format!("{}{dollars}", if dollar_sign { "$" } else { "" }),
            false => format!("{}{dollars}.{decimals}", if dollar_sign { "$" } else { "" }),
        };
        let expected = reference_nanos(text.trim_start_matches('$'));
        match Money::parse_usd(&text) {
            Ok(money) => prop_assert_eq!(Some(money.nanos()), expected, "{}", text),
            Err(err) => prop_assert!(expected.is_none(), "{} refused: {}", text, err),
        }
    }

    /// More than nine decimals, typed: refused, never rounded.
    #[test]
    fn typed_amounts_finer_than_a_nano_dollar_are_refused(
        dollars in 0u64..1_000,
        decimals in "[0-9]{10,20}",
    ) {
        let text = format!("{dollars}.{decimals}");
        prop_assert!(Money::parse_usd(&text).is_err(), "{} was accepted", text);
    }

    /// A provider's decimal price, finer than a nano-dollar or with an exponent: rounded half
    /// away from zero at the nano-dollar, as `rust_decimal` rounds it.
    #[test]
    fn provider_prices_round_like_the_reference(
        negative: bool,
        digits in "[0-9]{1,12}",
        // Within what `rust_decimal` holds (28 decimals), so the reference can say.
        decimals in "[0-9]{0,14}",
        exponent in -12i32..4,
        with_exponent: bool,
    ) {
        let mut text = format!("{}{digits}", if negative { "-" } else { "" });
        if !decimals.is_empty() {
            text.push('.');
            text.push_str(&decimals);
        }
        let reference_text = if with_exponent {
            text.push_str(&format!("e{exponent}"));
            Decimal::from_scientific(&text).ok().map(|d| d.to_string())
        } else {
            Some(text.clone())
        };
        let expected = reference_text.as_deref().and_then(reference_nanos);
        match Money::from_usd_str(&text) {
            Ok(money) => prop_assert_eq!(Some(money.nanos()), expected, "{}", text),
            Err(err) => prop_assert!(expected.is_none(), "{} refused: {}", text, err),
        }
    }

    /// Any string at all: parsing never panics.
    #[test]
    fn any_text_parses_or_is_refused_without_a_panic(text in "\\PC{0,40}") {
        let _ = Money::parse_usd(&text);
        let _ = Money::from_usd_str(&text);
    }

    /// The token shape check accepts exactly `kc_` and 48 lowercase hex digits.
    #[test]
    fn the_token_shape_check_accepts_exactly_the_shape(text in "(kc_)?[0-9a-fA-Fg_ ]{0,60}") {
        let well_formed = text.strip_prefix("kc_").is_some_and(|body| {
            body.len() == 48 && body.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        prop_assert_eq!(domain::token::check_shape(&text).is_ok(), well_formed, "{}", text);
    }

    /// A token made by keycap always passes the check.
    #[test]
    fn made_tokens_pass_the_check(_seed: u8) {
        let token = domain::ApiKeyToken::generate();
        prop_assert!(domain::token::check_shape(token.expose()).is_ok());
    }
}

/// A streamed chat answer (token events, comments, a usage event and `[DONE]`) and a JSON
/// one, as OpenRouter sends them.
fn answers() -> [(&'static str, String); 2] {
    let mut stream = String::from(": OPENROUTER PROCESSING\n\n");
    for word in [
        "alpha",
        " beta",
        " \\\"usage\\\": {\\\"cost\\\": 9}",
        " delta",
    ] {
        stream.push_str(&format!(
            "data: {{\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}}}}]}}\n\n"
        ));
    }
    stream.push_str("data: {\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":15,\"total_tokens\":25,\"cost\":0.00002}}\n\ndata: [DONE]\n\n");
    let json = r#"{"id":"gen-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {} words"}}],"usage":{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25,"cost":0.00002}}"#;
    [
        ("text/event-stream", stream),
        ("application/json", json.to_string()),
    ]
}

fn meter(content_type: &str, chunks: &[&[u8]]) -> domain::services::openrouter::MeterOutcome {
    use domain::services::ResponseMeter;
    let mut meter = domain::services::openrouter::UsageMeter::new(200, Some(content_type));
    for chunk in chunks {
        meter.feed(chunk);
    }
    meter.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The meters read the same usage however the answer is cut into chunks.
    #[test]
    fn the_meters_read_the_same_usage_in_any_chunking(
        cuts in proptest::collection::vec(0usize..2_000, 0..40),
    ) {
        for (content_type, body) in answers() {
            let bytes = body.as_bytes();
            let whole = meter(content_type, &[bytes]);
            prop_assert!(
                matches!(whole, domain::services::openrouter::MeterOutcome::Reported { .. }),
                "{:?}",
                whole
            );
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            chunks.push(&bytes[from..]);
            prop_assert_eq!(meter(content_type, &chunks), whole);
        }
    }
}
