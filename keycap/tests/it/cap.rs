//! The cap against every request feature that changes what is billed: a tight key is hammered
//! in parallel with each feature, against a mock that bills every request the most it is
//! allowed to (the dearest provider within `provider.max_price`, the whole completion limit,
//! every search and result its limits allow, a prompt of one token per byte, files and videos
//! filling the context window). What the mock billed must stay within the cap, and the key's
//! recorded spend must equal it to the nano-dollar.

use domain::Money;
use futures_util::future::join_all;
use openrouter_mock::MockConfig;
use serde_json::{Value, json};

use crate::gateway_support::{Gateway, start_with};

/// Requests sent at once per feature.
const PARALLEL: usize = 12;

/// A feature to hammer with: where it is sent, its body, and extra headers.
struct Case {
    name: &'static str,
    path: &'static str,
    body: Value,
    headers: &'static [(&'static str, &'static str)],
    /// False for a feature OpenRouter refuses under the gateway's bounds.
    served: bool,
    /// The key's cap: small enough that the requests' worst cases together pass it.
    cap: &'static str,
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me everything about budgets."}],
    });
    for (field, value) in extra.as_object().unwrap() {
        body[field] = value.clone();
    }
    body
}

fn with_part(model: &str, part: Value) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this?"}, part]}],
    })
}

/// Every hole of the cap issue, one case or more each.
fn cases() -> Vec<Case> {
    let chat_path = "/api/v1/chat/completions";
    let case = |name, body| Case {
        name,
        path: chat_path,
        body,
        headers: &[],
        served: true,
        cap: "0.2",
    };
    vec![
        // 1. Pricier providers: suffixes, provider preferences, a fallback.
        case(
            "nitro suffix",
            chat("mock/cheap:nitro", json!({"max_tokens": 8000})),
        ),
        case("exacto suffix", chat("mock/cheap:exacto", json!({}))),
        case(
            "provider order",
            chat(
                "mock/cheap",
                json!({"provider": {"order": ["Fast", "Steady"]}, "max_tokens": 10000}),
            ),
        ),
        case(
            "provider sort",
            chat("mock/cheap", json!({"provider": {"sort": "throughput"}})),
        ),
        case(
            "a client's own max_price above the list",
            chat(
                "mock/cheap",
                json!({"provider": {"max_price": {"prompt": 50, "completion": 50}}}),
            ),
        ),
        Case {
            name: "fallback from a provider that is down",
            path: chat_path,
            body: chat("mock/cheap", json!({"max_tokens": 1000})),
            headers: &[("x-mock-provider-down", "Cheap")],
            // Only dearer providers are up: `max_price` keeps the request from them (404).
            served: false,
            cap: "0.2",
        },
        // 2. Unbounded completions, and a reasoning budget above a lowered limit.
        case("no max_tokens", chat("mock/cheap", json!({}))),
        case(
            "reasoning budget",
            chat(
                "mock/cheap",
                json!({"max_tokens": 16000, "reasoning": {"max_tokens": 12000}}),
            ),
        ),
        Case {
            name: "responses without max_output_tokens",
            path: "/api/v1/responses",
            body: json!({"model": "mock/cheap", "input": "Tell me everything."}),
            headers: &[],
            served: true,
            cap: "0.2",
        },
        Case {
            name: "messages with thinking",
            path: "/api/v1/messages",
            body: json!({"model": "mock/cheap", "max_tokens": 16000,
                "thinking": {"type": "enabled", "budget_tokens": 12000},
                "messages": [{"role": "user", "content": "Think hard."}]}),
            headers: &[],
            served: true,
            cap: "0.2",
        },
        // 3. Inputs not in the body.
        case(
            "a file by URL",
            with_part(
                "mock/cheap",
                json!({"type": "file", "file": {"filename": "a.pdf",
                    "file_data": "https://example.com/a.pdf"}}),
            ),
        ),
        case(
            "a video by URL",
            with_part(
                "mock/cheap",
                json!({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}),
            ),
        ),
        case(
            "audio by URL",
            with_part(
                "mock/cheap",
                json!({"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}}),
            ),
        ),
        case(
            "inline audio",
            with_part(
                "mock/cheap",
                json!({"type": "input_audio",
                    "input_audio": {"data": "ZkxhQw==", "format": "flac"}}),
            ),
        ),
        // 4. Web search in each of its forms.
        Case {
            // Up to 20 results, each a fee and its text in up to three model calls: more
            // than $0.2 a request.
            cap: "0.6",
            ..case(
                "web plugin",
                chat(
                    "mock/cheap",
                    json!({"plugins": [{"id": "web", "max_results": 10, "max_uses": 2}],
                        "max_tokens": 500}),
                ),
            )
        },
        case(
            "online suffix",
            chat("mock/cheap:online", json!({"max_tokens": 500})),
        ),
        case(
            "web_search_options",
            chat(
                "mock/cheap",
                json!({"web_search_options": {"search_context_size": "high"},
                    "max_tokens": 500}),
            ),
        ),
        case(
            "server-side web tool",
            chat(
                "mock/cheap",
                json!({"tools": [{"type": "openrouter:web_search",
                    "parameters": {"max_results": 4}}], "max_tool_calls": 2, "max_tokens": 500}),
            ),
        ),
        Case {
            cap: "0.6",
            ..case(
                "anthropic web tool with its own max_uses",
                chat(
                    "mock/cheap",
                    json!({"tools": [{"type": "web_search_20250305", "name": "web_search",
                        "max_uses": 3}], "max_tokens": 500}),
                ),
            )
        },
        Case {
            // A fetched page may fill the context window: 128,000 tokens a model call.
            cap: "1.2",
            ..case(
                "web fetch tool",
                chat(
                    "mock/cheap",
                    json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}],
                        "max_tokens": 500}),
                ),
            )
        },
        Case {
            cap: "0.6",
            ..case(
                "a disabled web plugin beside :online",
                chat(
                    "mock/cheap:online",
                    json!({"plugins": [{"id": "web", "enabled": false, "max_results": 10}],
                        "max_tokens": 500}),
                ),
            )
        },
        // 5. Routers and fallbacks.
        case(
            "auto router",
            chat("openrouter/auto", json!({"max_tokens": 800})),
        ),
        Case {
            cap: "0.05",
            ..case(
                "auto router over allowed models",
                chat(
                    "openrouter/auto",
                    json!({"plugins": [{"id": "auto-router", "allowed_models": ["openai/*"]}]}),
                ),
            )
        },
        case(
            "fallback models",
            chat(
                "openai/gpt-4o-mini",
                json!({"models": ["mock/with-request-fee", "mock/cheap:nitro"]}),
            ),
        ),
        // 6. Several choices.
        case(
            "n choices",
            chat("mock/cheap", json!({"n": 3, "max_tokens": 1500})),
        ),
    ]
}

/// What the mock has billed so far, in nano-dollars.
fn billed(gw: &Gateway) -> Money {
    Money::from_nanos(i64::try_from(gw.mock.state().total_usage_nanousd()).unwrap())
}

/// Sends `case` `PARALLEL` times at once with `token`; returns the statuses.
async fn hammer(gw: &Gateway, token: &str, case: &Case) -> Vec<u16> {
    let sends = (0..PARALLEL).map(|_| {
        let mut request = gw
            .http
            .post(format!("{}{}", gw.base, case.path))
            .bearer_auth(token)
            .json(&case.body);
        for (name, value) in case.headers {
            request = request.header(*name, *value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // Read the whole answer: the request is over (and settled) when this returns.
            let _ = response.bytes().await;
            status
        }
    });
    join_all(sends).await
}

/// Hammers each feature on a key of its own, and checks what was billed.
async fn check_cases(gw: &Gateway, cases: &[Case]) {
    for case in cases {
        let cap_money = Money::parse_usd(case.cap).unwrap();
        let token = gw.key(case.cap, &[]);
        let before = billed(gw);
        let statuses = hammer(gw, &token, case).await;
        let bill = billed(gw).checked_sub(before).unwrap();
        assert!(
            bill <= cap_money,
            "{}: the upstream billed {bill} on a key capped at {cap_money} ({statuses:?})",
            case.name
        );
        assert_eq!(
            statuses.contains(&200),
            case.served,
            "{}: {statuses:?}",
            case.name
        );
        assert!(
            statuses
                .iter()
                .all(|status| matches!(status, 200 | 402 | 404)),
            "{}: {statuses:?}",
            case.name
        );
        gw.wait_for_spent(&token, bill).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_feature_takes_a_key_past_its_cap() {
    let mock = openrouter_mock::spawn(MockConfig {
        bill_most: true,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = start_with(mock, None, &[]).await;
    check_cases(&gw, &cases()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn features_whose_cost_has_no_bound_are_refused_and_change_nothing() {
    let gw = start_with(
        openrouter_mock::spawn(MockConfig::default()).await.unwrap(),
        None,
        &[],
    )
    .await;
    let token = gw.key("1", &[]);
    let refused = [
        (
            with_part(
                "mock/cheap",
                json!({"type": "file", "file": {"filename": "a.pdf",
                    "file_data": "https://example.com/a.pdf"}}),
            ),
            Some(json!([{"id": "file-parser", "pdf": {"engine": "mistral-ocr"}}])),
            "ocr_pages_per_file",
        ),
        (chat("@preset/team", json!({})), None, "presets"),
        (
            chat("mock/cheap", json!({"preset": "team"})),
            None,
            "presets",
        ),
        (
            chat(
                "mock/cheap",
                json!({"tools": [{"type": "code_interpreter"}]}),
            ),
            None,
            "code_interpreter",
        ),
        (
            chat("mock/cheap", json!({})),
            Some(json!([{"id": "mystery"}])),
            "mystery",
        ),
        (
            chat("mock/cheap", json!({})),
            Some(json!([{"id": "web", "max_results": 100}])),
            "at most 25",
        ),
        (
            chat("mock/cheap:unheard-of", json!({})),
            None,
            "not in OpenRouter's model list",
        ),
    ];
    for (mut body, plugins, says) in refused {
        if let Some(plugins) = plugins {
            body["plugins"] = plugins;
        }
        let response = gw.chat(&token, &body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
    assert_eq!(gw.spent_in_db(&token).await, Money::ZERO);
}
