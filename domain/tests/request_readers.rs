//! The request readers of every route under random input (proptest): any bytes get an answer
//! (never a panic), and any JSON body that is admitted is forwarded with its bounds written in
//! (a lowered completion limit, `provider.max_price`), which a second bounding leaves as they
//! are. 1,000 cases each
//! by default; more by hand: `PROPTEST_CASES=100000 cargo test -p domain --test request_readers`.

#![expect(
    clippy::unwrap_used,
    reason = "a property test fails loudly when its own fixtures do not parse"
)]

use domain::Money;
use domain::services::openrouter::{ModelPrice, ModelPrices, UnitPrice};
use domain::services::{Api, Fit, OpenRouter, ServiceAdapter};
use proptest::prelude::*;
use serde_json::{Map, Value};

const APIS: [Api; 5] = [
    Api::ChatCompletions,
    Api::Completions,
    Api::Responses,
    Api::Messages,
    Api::Embeddings,
];

/// 1,000 cases a property, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1_000)
}

/// Two priced models: one with a completion limit, one without.
fn prices() -> ModelPrices {
    let price = |text: &str| UnitPrice::parse(text).unwrap();
    let mut prices = ModelPrices::default();
    let mut limited = ModelPrice::per_token(price("0.000001"), price("0.000002"));
    limited.max_completion_tokens = Some(4_096);
    limited.context_length = Some(128_000);
    limited.web_search = price("0.004");
    prices.insert("mock/cheap", limited);
    prices.insert(
        "mock/open",
        ModelPrice::per_token(price("0.00001"), price("0.00003")),
    );
    prices
}

/// Keys the routes read, and some they do not.
const KEYS: &[&str] = &[
    "model",
    "models",
    "messages",
    "input",
    "instructions",
    "prompt",
    "system",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    "stream",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "input_image",
    "file",
    "tools",
    "plugins",
    "id",
    "provider",
    "max_price",
    "reasoning",
    "web_search_options",
    "search_context_size",
    "usage",
    "route",
    "stop",
    "temperature",
    "encoding_format",
    "dimensions",
    "user",
    "x",
];

/// Strings the routes give meaning to, and some they do not.
const STRINGS: &[&str] = &[
    "mock/cheap",
    "mock/open",
    "mock/cheap:online",
    "openrouter/auto",
    "unknown/model",
    "user",
    "assistant",
    "system",
    "text",
    "image_url",
    "input_text",
    "input_image",
    "web",
    "file",
    "high",
    "data:image/png;base64,AAAA",
    "",
    "é",
    "\u{0}",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..10_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(key, value)| (key.to_string(), value))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A body most likely to be admitted: a priced model and the route's fields, with random
/// additions.
fn request_body() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&["mock/cheap", "mock/open", "mock/cheap:online"][..]),
        prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..6),
        prop::option::of(0u64..200_000),
        "[a-z ]{0,40}",
    )
        .prop_map(|(model, extra, max_tokens, text)| {
            let mut body = Map::new();
            for (key, value) in extra {
                body.insert(key.to_string(), value);
            }
            body.insert("model".into(), Value::from(model));
            body.insert(
                "messages".into(),
                serde_json::json!([{"role": "user", "content": text}]),
            );
            body.insert("input".into(), Value::from(text.clone()));
            body.insert("prompt".into(), Value::from(text));
            if let Some(max) = max_tokens {
                body.insert("max_tokens".into(), Value::from(max));
            }
            Value::Object(body)
        })
}

/// How `body` on `api` fits with `remaining` left, if it is admitted; and the body forwarded.
fn admit(api: Api, body: &[u8], remaining: Money) -> Option<(Fit, Vec<u8>)> {
    let adapter = OpenRouter::default();
    let request = adapter.parse_request(api, body).ok()?;
    let quote = adapter.quote(&request, &prices()).ok()?;
    let fit = adapter.fit(&quote, remaining);
    if matches!(fit, Fit::Refuse { .. }) {
        return None;
    }
    let forwarded = adapter.bound_request(api, &quote, &fit, body).ok()?;
    Some((fit, forwarded))
}

/// `a` and `b` are the same JSON, floats within one part in 10^12: a body is re-serialised
/// through serde_json, whose float parsing may move a float by its last digit.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (x, y) => x == y,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Any bytes on any route: an answer, and a refusal that says something.
    #[test]
    fn every_reader_answers_any_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for api in APIS {
            if let Err(err) = OpenRouter::default().parse_request(api, &body) {
                prop_assert!(!err.to_string().is_empty());
            }
        }
    }

    /// Any JSON on any route: an answer, never a panic, through parsing, pricing and bounding.
    #[test]
    fn every_reader_answers_any_json(body in json_value(), remaining in 0i64..50_000_000_000) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for api in APIS {
            let _ = admit(api, &bytes, Money::from_nanos(remaining));
        }
    }

    /// An admitted body is forwarded with its bounds written in: read again, it is admitted
    /// as it is, a lowered completion limit is the one written, and bounding it again changes
    /// nothing (every bound is already in it).
    #[test]
    fn a_forwarded_body_carries_its_bounds(
        body in request_body(),
        remaining in 1i64..50_000_000_000,
    ) {
        let bytes = serde_json::to_vec(&body).unwrap();
        let remaining = Money::from_nanos(remaining);
        let adapter = OpenRouter::default();
        for api in APIS {
            let Some((fit, forwarded)) = admit(api, &bytes, remaining) else {
                continue;
            };
            let reserve = match fit {
                Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => reserve,
                Fit::Refuse { .. } => unreachable!("admit refuses these"),
            };
            prop_assert!(reserve <= remaining, "{api:?} reserved {reserve} of {remaining}");
            let shown = String::from_utf8_lossy(&forwarded).into_owned();
            let sent: Value = serde_json::from_slice(&forwarded).unwrap();
            if let Fit::Lowered { max_tokens, .. } = fit {
                // The API's own limit field is written, and no limit field goes out above the
                // lowered limit (one the client set lower stays theirs).
                let own: &[&str] = match api {
                    Api::Responses => &["max_output_tokens"],
                    Api::ChatCompletions | Api::Completions => {
                        &["max_tokens", "max_completion_tokens"]
                    }
                    _ => &["max_tokens"],
                };
                let written = own.iter().filter_map(|field| sent[*field].as_u64()).max();
                prop_assert!(
                    written.is_some_and(|written| written <= max_tokens),
                    "{:?}: own limit {:?}, lowered to {}: {}", api, written, max_tokens, shown
                );
                for field in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
                    if let Some(value) = sent.get(field) {
                        prop_assert!(
                            value.as_u64().is_some_and(|value| value <= max_tokens),
                            "{:?}: {} above {}: {}", api, field, max_tokens, shown
                        );
                    }
                }
            }
            let again = adapter.parse_request(api, &forwarded);
            prop_assert!(again.is_ok(), "{api:?}: the forwarded body is refused: {again:?}");
            let quote = adapter.quote(&again.unwrap(), &prices());
            prop_assert!(quote.is_ok(), "{api:?}: the forwarded body is not priced: {quote:?}");
            let quote = quote.unwrap();
            let as_sent = adapter.fit(&quote, Money::from_nanos(i64::MAX));
            prop_assert!(matches!(as_sent, Fit::AsRequested { .. }), "{:?}: {:?}", api, as_sent);
            let twice = adapter.bound_request(api, &quote, &as_sent, &forwarded).unwrap();
            let twice: Value = serde_json::from_slice(&twice).unwrap();
            prop_assert!(same(&twice, &sent), "{:?}: bounding again changed {}", api, shown);
        }
    }
}
