//! Randomized: requests drawn over every combination of the features that change what is billed
//! (models and routers, provider preferences, suffixes, limits and reasoning budgets, choices,
//! web search in each form, files, videos and images, each API), on keys with small random
//! caps, against a mock that bills every request the most it is allowed to. For every key,
//! what the mock billed stays within its cap, and its recorded spend equals that bill.
//!
//! `CAP_CASES` sets the number of keys (300 by default), `CAP_SEED` the seed (printed, and by
//! default drawn from the clock). By hand, for many more:
//! `CAP_CASES=5000 cargo test -p keycap --test it cap_random -- --nocapture`.

use std::time::{SystemTime, UNIX_EPOCH};

use domain::Money;
use futures_util::future::join_all;
use openrouter_mock::MockConfig;
use serde_json::{Value, json};

use crate::gateway_support::{Gateway, start_with, usd};

/// Keys served at once.
const BATCH: usize = 10;

/// SplitMix64: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.next() % items.len() as u64).unwrap()]
    }
}

/// One request: its path, body and headers.
#[derive(Debug, Clone)]
struct Request {
    path: &'static str,
    body: Value,
    down: bool,
}

fn random_request(rng: &mut Rng) -> Request {
    let api = *rng.pick(&["chat", "chat", "chat", "responses", "messages"]);
    let model = (*rng.pick(&[
        "mock/cheap",
        "mock/cheap:nitro",
        "mock/cheap:exacto",
        "mock/cheap:floor",
        "mock/cheap:online",
        "openai/gpt-4o-mini",
        "mock/with-request-fee",
        "openrouter/auto",
    ]))
    .to_string();
    let text = "budget ".repeat(usize::try_from(rng.range(1, 200)).unwrap());
    let mut content = vec![json!({"type": "text", "text": text})];
    let part = match rng.range(0, 7) {
        0 => Some(json!({"type": "file", "file": {"filename": "a.pdf",
            "file_data": "https://example.com/a.pdf"}})),
        1 => Some(json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}})),
        2 => Some(json!({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})),
        3 => Some(json!({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}})),
        4 => Some(json!({"type": "input_audio",
            "input_audio": {"data": "ZkxhQw==", "format": "flac"}})),
        _ => None,
    };
    let mut body = match api {
        "responses" => json!({"model": model, "input": text}),
        _ => json!({"model": model, "messages": [{"role": "user", "content": text}]}),
    };
    if let (Some(part), "chat") = (part, api) {
        content.push(part);
        body["messages"][0]["content"] = Value::Array(content);
    }
    let limit = rng.range(1, 20_000);
    match api {
        "messages" => body["max_tokens"] = json!(limit),
        "responses" if rng.chance(60) => body["max_output_tokens"] = json!(limit),
        "chat" if rng.chance(60) => body["max_tokens"] = json!(limit),
        _ => {}
    }
    if rng.chance(25) {
        let budget = rng.range(1, 25_000);
        match api {
            "messages" => {
                body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
            }
            _ => body["reasoning"] = json!({"max_tokens": budget}),
        }
    }
    if api == "chat" && rng.chance(20) {
        body["n"] = json!(rng.range(1, 3));
    }
    if rng.chance(15) {
        body["models"] = json!(["openai/gpt-4o-mini", "mock/cheap:nitro"]);
    }
    let mut plugins = Vec::new();
    match rng.range(0, 8) {
        0 => plugins.push(json!({"id": "web", "max_results": rng.range(1, 12),
            "max_uses": rng.range(1, 3)})),
        1 => body["web_search_options"] = json!({"search_context_size": "high"}),
        2 if api != "messages" => {
            body["tools"] = json!([{"type": "openrouter:web_search",
                "parameters": {"max_results": rng.range(1, 6)}}]);
            body["max_tool_calls"] = json!(rng.range(1, 3));
        }
        3 if api != "responses" => {
            body["tools"] = json!([{"type": "web_search_20250305", "name": "web_search",
                "max_uses": rng.range(1, 3)}]);
        }
        4 if api != "responses" => {
            body["tools"] = json!([{"type": "web_fetch_20250910", "name": "web_fetch"}]);
        }
        // A web plugin switched off: the gateway turns it on within its bounds when the
        // request searches anyway (`:online`), and leaves it off otherwise.
        5 => plugins.push(json!({"id": "web", "enabled": false})),
        _ => {}
    }
    if rng.chance(30) {
        let engine = *rng.pick(&["cloudflare-ai", "native"]);
        plugins.push(json!({"id": "file-parser", "pdf": {"engine": engine}}));
    }
    if model == "openrouter/auto" && rng.chance(50) {
        let allowed = *rng.pick(&["openai/*", "mock/*", "mock/cheap"]);
        plugins.push(json!({"id": "auto-router", "allowed_models": [allowed]}));
    }
    if !plugins.is_empty() {
        body["plugins"] = Value::Array(plugins);
    }
    match rng.range(0, 5) {
        0 => body["provider"] = json!({"order": ["Fast", "Steady"]}),
        1 => body["provider"] = json!({"sort": "throughput"}),
        2 => body["provider"] = json!({"only": ["Steady", "Fast"]}),
        3 => body["provider"] = json!({"max_price": {"prompt": 100, "completion": 100}}),
        _ => {}
    }
    Request {
        path: match api {
            "responses" => "/api/v1/responses",
            "messages" => "/api/v1/messages",
            _ => "/api/v1/chat/completions",
        },
        body,
        down: rng.chance(10),
    }
}

/// Sends `requests` at once with `token`; returns each one's status and the cost its answer
/// reported (what the mock billed for it).
async fn send_all(gw: &Gateway, token: &str, requests: &[Request]) -> Vec<(u16, Money, String)> {
    let sends = requests.iter().map(|request| {
        let mut builder = gw
            .http
            .post(format!("{}{}", gw.base, request.path))
            .bearer_auth(token)
            .json(&request.body);
        if request.down {
            builder = builder.header("x-mock-provider-down", "Cheap");
        }
        async move {
            let response = builder.send().await.unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let cost = match status {
                200 => usd(&answer["usage"]["cost"]).unwrap(),
                _ => Money::ZERO,
            };
            (status, cost, answer.to_string())
        }
    });
    join_all(sends).await
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_never_take_a_key_past_its_cap() {
    let cases: usize = std::env::var("CAP_CASES")
        .ok()
        .map_or(300, |cases| cases.parse().unwrap());
    let seed: u64 = std::env::var("CAP_SEED").ok().map_or_else(
        || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            u64::try_from(now.as_nanos() % u128::from(u64::MAX)).unwrap()
        },
        |seed| seed.parse().unwrap(),
    );
    eprintln!("cap_random: {cases} keys, CAP_SEED={seed}");
    let mut rng = Rng(seed);
    let mock = openrouter_mock::spawn(MockConfig {
        bill_most: true,
        // Credit for every key's cap (at most $0.30 each): the account never runs dry.
        total_credits_nanousd: (cases as u64 + 1) * 300_000_000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = start_with(mock, None, &[]).await;
    // Room for every key's cap (at most $0.30 each).
    let budget = (cases as u64 * 3 / 10 + 1).to_string();
    gw.keycap
        .ok(&["budget", "set", "--org", "acme", "bob@acme.test", &budget])
        .unwrap();
    let billed_before = gw.mock.state().total_usage_nanousd();
    let mut total = Money::ZERO;
    let mut served = 0;
    for batch in 0..cases.div_ceil(BATCH) {
        let mut keys = Vec::new();
        for _ in 0..BATCH.min(cases - batch * BATCH) {
            let cap_nanos = rng.range(5_000_000, 300_000_000);
            let cap = Money::from_nanos(i64::try_from(cap_nanos).unwrap());
            let token = gw.key(&cap.to_string().replace('$', ""), &[]);
            let requests: Vec<Request> = (0..rng.range(1, 8))
                .map(|_| random_request(&mut rng))
                .collect();
            keys.push((token, cap, requests));
        }
        let results = join_all(
            keys.iter()
                .map(|(token, _, requests)| send_all(&gw, token, requests)),
        )
        .await;
        for ((token, cap, requests), results) in keys.iter().zip(results) {
            let mut bill = Money::ZERO;
            for (request, (status, cost, answer)) in requests.iter().zip(&results) {
                assert!(
                    matches!(status, 200 | 402 | 404),
                    "CAP_SEED={seed}: {status} for {request:?}: {answer}"
                );
                served += usize::from(*status == 200);
                bill = bill.checked_add(*cost).unwrap();
            }
            assert!(
                bill <= *cap,
                "CAP_SEED={seed}: billed {bill} on a key capped at {cap}: {requests:#?} {results:#?}"
            );
            gw.wait_for_spent(token, bill).await;
            total = total.checked_add(bill).unwrap();
        }
    }
    // The answers' costs are everything the upstream billed.
    let billed = gw.mock.state().total_usage_nanousd() - billed_before;
    assert_eq!(total.nanos(), i64::try_from(billed).unwrap());
    eprintln!("cap_random: {served} requests served, {total} billed in all");
    assert!(served > cases / 4, "too few requests were served: {served}");
}
