//! The gateway end to end: the real `keycap` binary (pingora), real Postgres, and the
//! OpenRouter mock as the upstream.

use std::time::{Duration, Instant};

use domain::Money;
use futures_util::StreamExt;
use serde_json::json;

use crate::gateway_support::{
    Gateway, RecordingRelay, bounded_for_cheap, cheap_reservation, expect_error, reported_cost,
    start, start_with, start_with_env, start_with_upstream, usd,
};

fn chat_body(model: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Tell me about budgets."}], "max_tokens": max_tokens, "stream": stream})
}

/// Sends the same small request until it is refused with `status` and a message containing
/// `why`, at most `within` after the first; returns how many were still served before that.
async fn served_until_refused(
    gw: &crate::gateway_support::Gateway,
    token: &str,
    status: u16,
    why: &str,
    within: Duration,
) -> i64 {
    let started = Instant::now();
    let mut n_served = 0;
    loop {
        let response = gw
            .chat(token, &chat_body("mock/cheap", 3, false))
            .send()
            .await
            .unwrap();
        if response.status() == status {
            expect_error(response, status, why).await;
            return n_served;
        }
        assert_eq!(response.status(), 200);
        n_served += 1;
        assert!(
            started.elapsed() < within,
            "still served {within:?} after the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a stream whose tokens trickle `delay_ms` apart, waits for its first bytes, and
/// returns the rest of the stream, still open.
pub async fn first_chunk_of_slow_stream(
    gw: &crate::gateway_support::Gateway,
    token: &str,
    body: &serde_json::Value,
    delay_ms: u64,
) -> impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + use<> {
    let response = gw
        .chat(token, body)
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", delay_ms.to_string())
        .send()
        .await
        .unwrap();
    if response.status() != 200 {
        panic!("{}: {}", response.status(), response.text().await.unwrap());
    }
    let mut stream = Box::pin(response.bytes_stream());
    assert!(!stream.next().await.unwrap().unwrap().is_empty());
    stream
}

/// Collects an SSE body and returns (the text, the usage chunk's cost).
async fn read_stream(response: reqwest::Response) -> (String, Option<Money>) {
    let text = response.text().await.unwrap();
    let cost = sse_cost(&text);
    (text, cost)
}

/// The cost reported in an SSE body's usage chunk, if any.
fn sse_cost(text: &str) -> Option<Money> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find(|chunk| chunk["usage"]["cost"].is_number())
        .and_then(|chunk| usd(&chunk["usage"]["cost"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_and_streams_pass_through_and_are_charged_exactly() {
    let gw = start().await;
    let token = gw.key("5", &[]);
    let response = gw
        .chat(&token, &chat_body("openai/gpt-4o-mini", 7, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-generation-id"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    let json_cost = reported_cost(&body);

    let response = gw
        .chat(&token, &chat_body("mock/cheap", 12, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (text, stream_cost) = read_stream(response).await;
    assert!(text.contains(": OPENROUTER PROCESSING"));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(
        text.matches("chat.completion.chunk").count(),
        14,
        "12 tokens, the final chunk and the usage chunk"
    );
    let stream_cost = stream_cost.unwrap();

    // The upstream saw the master key, never the sub-key.
    let last = gw.mock.state().last_request().unwrap();
    assert_eq!(
        last.authorization.as_deref(),
        Some(format!("Bearer {}", gw.mock.state().config().master_key).as_str())
    );
    assert_eq!(gw.mock.state().n_unauthorized(), 0);

    let expected = json_cost.checked_add(stream_cost).unwrap();
    gw.wait_for_spent(&token, expected).await;
    // GET /api/v1/key answers about the sub-key, in OpenRouter's shape.
    let info = gw.key_info(&token).await;
    assert_eq!(info["data"]["limit"], 5);
    assert_eq!(usd(&info["data"]["usage"]), Some(expected));
    let remaining = usd(&info["data"]["limit_remaining"]).unwrap();
    assert_eq!(remaining, Money::from_usd(5).checked_sub(expected).unwrap());
    // Rollups were written too: with a flush at most a rollup interval after the spend.
    let client = gw.db.client().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let rollups = loop {
        let row = client
            .query_one(
                "SELECT coalesce(sum(n_requests), 0)::bigint, coalesce(sum(cost_nanousd), 0)::bigint
                 FROM usage_rollups",
                &[],
            )
            .await
            .unwrap();
        let rollups = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if rollups.0 == 2 || Instant::now() > deadline {
            break rollups;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rollups, (2, expected.nanos()), "{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_never_pass_the_cap() {
    let gw = start().await;
    let body = chat_body("mock/cheap", 50, false);
    let per_request = cheap_reservation(&body, 50);
    let cap = Money::from_nanos(per_request.nanos() * 20);
    let token = gw.key(&cap.to_string().replacen('$', "", 1), &[]);
    let requests = (0..200).map(|_| {
        let request = gw.chat(&token, &body);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        })
    });
    let mut n_ok = 0;
    let mut charged = Money::ZERO;
    for request in requests {
        let (status, body) = request.await.unwrap();
        match status {
            200 => {
                n_ok += 1;
                charged = charged.checked_add(reported_cost(&body)).unwrap();
            }
            402 => assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("budget"),
                "{body}"
            ),
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(
        n_ok >= 20,
        "the cap covers at least 20 requests, {n_ok} succeeded"
    );
    assert!(charged <= cap, "charged {charged} over cap {cap}");
    gw.wait_for_spent(&token, charged).await;
    assert_eq!(gw.mock.state().n_inference_requests(), n_ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_is_refused_within_a_second() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let ok = gw
        .chat(&token, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    gw.keycap
        .ok(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    // Refused within a second of the revocation; until then requests are still served.
    served_until_refused(&gw, &token, 403, "revoked", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_out_of_scope_keys_are_refused_and_charged_nothing() {
    let gw = start().await;
    let scoped = gw.key("1", &["--models", "mock/cheap"]);
    let response = gw
        .chat(&scoped, &chat_body("openai/gpt-4o-mini", 3, false))
        .send()
        .await
        .unwrap();
    expect_error(response, 403, "not allowed for this key").await;
    assert_eq!(
        gw.mock.state().n_inference_requests(),
        0,
        "the refused request never reached the upstream"
    );
    let response = gw
        .chat(&scoped, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Only the allowed request is charged.
    gw.wait_for_spent(&scoped, reported_cost(&response.json().await.unwrap()))
        .await;

    let expiring = gw.key("1", &["--expires", "90m"]);
    let response = gw
        .chat(&expiring, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cost = reported_cost(&response.json().await.unwrap());
    gw.wait_for_spent(&expiring, cost).await;
    let client = gw.db.client().await.unwrap();
    let hash = domain::token::hash_token(&expiring).to_vec();
    client
        .execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
            &[&hash],
        )
        .await
        .unwrap();
    // The change reaches the gateway through NOTIFY; requests until then are still served.
    let n_served =
        1 + served_until_refused(&gw, &expiring, 403, "expired", Duration::from_secs(5)).await;
    let cost = Money::from_nanos(cost.nanos() * n_served);
    gw.wait_for_spent(&expiring, cost).await;
    let n_upstream = gw.mock.state().n_inference_requests();
    for _ in 0..3 {
        let response = gw
            .chat(&expiring, &chat_body("mock/cheap", 3, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    // Refusals reach neither the upstream nor the key's spend.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.spent_in_db(&expiring).await, cost);
    assert_eq!(gw.mock.state().n_inference_requests(), n_upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_faults_get_clear_errors_and_fair_charges() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    // Mid-stream error: the client sees the error event; nothing was reported in the stream,
    // so the gateway asks the upstream what it billed (the tokens it sent) and charges that.
    let body = chat_body("mock/cheap", 10, true);
    let response = gw
        .chat(&token, &body)
        .header("x-mock-fault", "midstream-error")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (text, cost) = read_stream(response).await;
    assert!(
        text.contains("Provider disconnected unexpectedly"),
        "{text}"
    );
    assert_eq!(cost, None);
    let mut expected = billed(&gw);
    assert!(Money::ZERO < expected && expected < cheap_reservation(&body, 10));
    gw.wait_for_spent(&token, expected).await;

    // Upstream 429 and 503 pass through with their bodies and cost nothing.
    for (fault, status) in [("429", 429), ("503", 503), ("500", 500)] {
        let response = gw
            .chat(&token, &chat_body("mock/cheap", 10, false))
            .header("x-mock-fault", fault)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], status, "{body}");
    }
    // No usage reported: computed from... nothing, so the reservation; no cost but tokens:
    // computed from tokens x price.
    let response = gw
        .chat(&token, &chat_body("mock/cheap", 10, false))
        .header("x-mock-fault", "no-cost")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let prompt = body["usage"]["prompt_tokens"].as_i64().unwrap();
    let completion = body["usage"]["completion_tokens"].as_i64().unwrap();
    expected = expected
        .checked_add(Money::from_nanos(prompt * 1_000 + completion * 2_000))
        .unwrap();
    gw.wait_for_spent(&token, expected).await;
    // Malformed upstream JSON: the client gets it as is; nothing usable in it, so again what
    // the upstream says it billed.
    let before = billed(&gw);
    let body = chat_body("mock/cheap", 10, false);
    let response = gw
        .chat(&token, &body)
        .header("x-mock-fault", "malformed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.bytes().await;
    let malformed = billed(&gw).checked_sub(before).unwrap();
    assert!(Money::ZERO < malformed && malformed < cheap_reservation(&body, 10));
    expected = expected.checked_add(malformed).unwrap();
    gw.wait_for_spent(&token, expected).await;
}

/// What the mock has billed so far.
fn billed(gw: &crate::gateway_support::Gateway) -> Money {
    Money::from_nanos(i64::try_from(gw.mock.state().total_usage_nanousd()).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_502_that_costs_nothing() {
    let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
        .await
        .unwrap();
    let closed = format!("http://127.0.0.1:{}", testkit::free_port());
    let gw = start_with_upstream(mock, Some(closed)).await;
    let token = gw.key("1", &[]);
    // Without prices the gateway cannot price a request: it says so and forwards nothing.
    let response = gw
        .chat(&token, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    expect_error(response, 503, "prices").await;
    // Free pass-through routes reach for the upstream and get a clear 502.
    let response = gw.get("/api/v1/models", &token).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 502);
    assert_eq!(gw.spent_in_db(&token).await, Money::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_in_pieces_reaches_the_upstream_whole() {
    let gw = start().await;
    let token = gw.key("5", &[]);
    // 40 KiB of content in a chunked body of many pieces: the gateway reads it ahead to price
    // it, and must forward every byte.
    let content = "budget ".repeat(40 * 1024 / 7);
    let body = serde_json::to_vec(&json!({
        "model": "mock/cheap",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 5,
    }))
    .unwrap();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(3000).map(|piece| Ok(piece.to_vec())).collect();
    let response = gw
        .http
        .post(format!("{}/api/v1/chat/completions", gw.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    // The mock counts a token per 4 bytes of content.
    assert_eq!(
        answer["usage"]["prompt_tokens"],
        content.len().div_ceil(4) as u64
    );
    let last = gw.mock.state().last_request().unwrap();
    assert_eq!(last.body["messages"][0]["content"], content.as_str());
    assert!(!last.headers.contains_key("transfer-encoding"));
    assert_eq!(
        last.headers["content-length"],
        bounded_for_cheap(&body).len().to_string().as_str()
    );
    let mut spent = reported_cost(&answer);

    // A client that asks to be told to go on gets its answer from the gateway; the upstream
    // never sees the `Expect`.
    let response = gw
        .chat(&token, &chat_body("mock/cheap", 3, false))
        .header("expect", "100-continue")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let last = gw.mock.state().last_request().unwrap();
    assert!(!last.headers.contains_key("expect"));
    spent = spent.checked_add(reported_cost(&answer)).unwrap();
    gw.wait_for_spent(&token, spent).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_content_length_reaches_the_upstream_once() {
    // The mock's HTTP server folds repeated headers, so a relay in front of it keeps the
    // request exactly as the gateway wrote it.
    let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
        .await
        .unwrap();
    let relay = RecordingRelay::start(mock.base_url().trim_start_matches("http://")).await;
    let gw = start_with_upstream(mock, Some(relay.url())).await;
    gw.wait_for_prices();
    let token = gw.key("5", &[]);
    relay.clear();
    // The same length declared twice, which HTTP tolerates from a client.
    let body = serde_json::to_vec(&chat_body("mock/cheap", 3, false)).unwrap();
    let (status, answer) = raw_post(
        &gw.base,
        &format!(
            "Authorization: Bearer {token}\r\nContent-Length: {len}\r\nContent-Length: {len}\r\n",
            len = body.len()
        ),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let sent = String::from_utf8_lossy(&relay.sent()).to_string();
    let head = sent
        .split("\r\n\r\n")
        .find(|head| head.starts_with("POST /api/v1/chat/completions"))
        .unwrap_or_else(|| panic!("no chat request upstream in {sent:?}"));
    let lengths: Vec<&str> = head
        .lines()
        .filter(|line| line.to_ascii_lowercase().starts_with("content-length:"))
        .collect();
    assert_eq!(lengths.len(), 1, "{head}");
    let forwarded = bounded_for_cheap(&body).len();
    assert!(lengths[0].ends_with(&format!(" {forwarded}")), "{head}");
    gw.wait_for_spent(&token, reported_cost(&answer)).await;
}

/// Sends `POST /api/v1/chat/completions` with `headers` (each ending in CRLF) and `body` over a
/// plain TCP connection, written as given, and returns the status and the JSON answer.
async fn raw_post(base: &str, headers: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let headers = format!("Content-Type: application/json\r\n{headers}");
    raw_request(base, "POST /api/v1/chat/completions", &headers, body).await
}

/// Sends `request_line` (method and target, written as given: no client tidies the path) with
/// `headers` and `body` over a plain TCP connection; returns the status and the JSON answer.
async fn raw_request(
    base: &str,
    request_line: &str,
    headers: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head =
        format!("{request_line} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(json).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_never_reach_the_upstream() {
    // A body limit of 64 KiB, so that one body here is over it (bodies.rs tests the default).
    let gw = start_with_env(&[("KEYCAP_GATEWAY__MAX_BODY_BYTES", "65536")]).await;
    let token = gw.key("1", &[]);
    let url = format!("{}/api/v1/chat/completions", gw.base);
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (gw.http.post(&url).body("{}"), 401, "no API key"),
        (
            gw.http
                .post(&url)
                .header("authorization", "Bearer sk-or-v1-abc")
                .body("{}"),
            401,
            "not a keycap sub-key",
        ),
        (
            gw.http.post(&url).bearer_auth("kc_0123"),
            401,
            "not a keycap sub-key",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(format!("kc_{}", "ab".repeat(24))),
            401,
            "unknown API key",
        ),
        (
            gw.http.post(&url).bearer_auth(&token).body("{not json"),
            400,
            "not valid JSON",
        ),
        (
            gw.http.post(&url).bearer_auth(&token).body("[1]"),
            400,
            "not an object",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(&token)
                .body(r#"{"messages":[]}"#),
            400,
            "model",
        ),
        (
            gw.http
                .post(&url)
                .bearer_auth(&token)
                .body(r#"{"model":"nobody/knows","messages":[]}"#),
            400,
            "not in OpenRouter's model list",
        ),
        (
            gw.http.post(&url).bearer_auth(&token).body(format!(
                r#"{{"model":"mock/cheap","messages":[{{"role":"user","content":"{big}"}}]}}"#
            )),
            413,
            "larger than",
        ),
        (
            gw.get("/api/v1/keys", &token),
            404,
            "not served through keycap",
        ),
        (
            gw.http
                .get(format!("{}/v1/chat/completions", gw.base))
                .bearer_auth(&token),
            404,
            "not served through keycap",
        ),
        (
            gw.http.get(&url).bearer_auth(&token),
            405,
            "accepts only POST",
        ),
    ];
    for (request, status, message) in cases {
        expect_error(request.send().await.unwrap(), status, message).await;
    }
    // An oversized header is refused by the HTTP layer before any of our code runs.
    let huge = "y".repeat(2 * 1024 * 1024);
    let response = gw
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("x-huge", huge)
        .body("{}")
        .send()
        .await;
    assert!(
        response.map(|r| r.status().as_u16() == 400).unwrap_or(true),
        "an oversized header is refused"
    );
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
    assert_eq!(gw.spent_in_db(&token).await, Money::ZERO);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("gateway_refusals_total{reason=\"bad_body\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_tokens_is_lowered_to_what_the_cap_can_pay_for() {
    let gw = start().await;
    let body = chat_body("mock/cheap", 1_000, false);
    // Room for the prompt and exactly 25 completion tokens.
    let cap = cheap_reservation(&body, 25);
    let token = gw.key(&cap.to_string().replacen('$', "", 1), &[]);
    let response = gw
        .chat(&token, &body)
        .header("x-mock-completion-tokens", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        gw.mock.state().last_request().unwrap().body["max_tokens"],
        25
    );
    let body_out: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body_out["usage"]["completion_tokens"], 25);
    gw.wait_for_spent(&token, reported_cost(&body_out)).await;
    // What is left cannot pay for a minimal completion: 402, nothing forwarded.
    let n_upstream = gw.mock.state().n_inference_requests();
    let response = gw.chat(&token, &body).send().await.unwrap();
    assert_eq!(response.status(), 402);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], 402);
    assert_eq!(gw.mock.state().n_inference_requests(), n_upstream);
}

#[tokio::test(flavor = "multi_thread")]
async fn spend_survives_a_restart() {
    let mut gw = start().await;
    let token = gw.key("1", &[]);
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 9, false))
        .await;
    // SIGTERM: requests in flight finish, then the last flush.
    gw.stop();
    assert_eq!(gw.spent_in_db(&token).await, cost);
    gw.restart();
    let info = gw.key_info(&token).await;
    assert_eq!(usd(&info["data"]["usage"]), Some(cost));
    // Models pass through for free.
    let models: serde_json::Value = gw
        .get("/api/v1/models", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(models["data"].as_array().unwrap().len() > 3);
    assert_eq!(gw.spent_in_db(&token).await, cost);
}

/// Spend flushed to the journal but never folded (the fold interval is ten minutes and the
/// gateway is killed, so it neither folds on its way out) is in the key's spend when the
/// gateway starts again, so the cap holds across the crash. The gateway folds before it loads
/// any key (without that fold the test fails: checked).
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_restarts_from_spend_still_in_the_journal() {
    let mut gw = start_with_env(&[("KEYCAP_GATEWAY__ROLLUP_INTERVAL_MS", "600000")]).await;
    let token = gw.key("1", &[]);
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 9, false))
        .await;
    let client = gw.db.client().await.unwrap();
    let spend_rows = || async {
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(sum(s.spent_nanousd), 0)::bigint FROM key_spends s),
                        (SELECT coalesce(sum(c), 0)::bigint
                         FROM spend_journal, unnest(costs_nanousd) AS c)",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    for _ in 0..500 {
        if spend_rows().await.1 == cost.nanos() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill();
    assert_eq!(spend_rows().await, (0, cost.nanos()), "flushed, not folded");
    gw.restart();
    let info = gw.key_info(&token).await;
    assert_eq!(usd(&info["data"]["usage"]), Some(cost));
    assert_eq!(spend_rows().await, (cost.nanos(), 0));
}

/// A monthly key renewed while the gateway runs: the new period reaches the gateway through
/// NOTIFY within a second (the periodic refresh is an hour), and the key's usage starts again
/// from zero; what it spends next is charged to the new period. The gateway folds the spend
/// journal before it takes a new period's spend (see `KeyEntry::reload`): a renewal committed
/// with journal spend not folded yet (as when a flush lands between the renewal's fold and its
/// reset) shows that spend in the new period.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_key_reaches_the_gateway_with_its_new_period() {
    let gw = start_with_env(&[("KEYCAP_GATEWAY__REFRESH_INTERVAL_SECONDS", "3600")]).await;
    let token = gw.key("1", &["--renew-monthly"]);
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 9, false))
        .await;
    gw.wait_for_spent(&token, cost).await;
    assert_eq!(usd(&gw.key_info(&token).await["data"]["usage"]), Some(cost));

    let next_month = domain::MonthWindow::containing(time::OffsetDateTime::now_utc()).end
        + time::Duration::minutes(5);
    let report = db::maintenance::run_due(&gw.db.pool, next_month)
        .await
        .unwrap();
    assert_eq!(report.renewed, 1);
    wait_for_key_info(&gw, &token, "usage", Money::ZERO).await;
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 5, false))
        .await;
    gw.wait_for_spent(&token, cost).await;
    assert_eq!(usd(&gw.key_info(&token).await["data"]["usage"]), Some(cost));

    // The month after, renewed by hand together with 777 nano-dollars of journal spend.
    let month_after =
        domain::MonthWindow::containing(domain::MonthWindow::containing(next_month).end);
    let hash = domain::token::hash_token(&token).to_vec();
    let mut client = gw.db.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let key_id: uuid::Uuid = tx
        .query_one("SELECT id FROM api_keys WHERE token_hash = $1", &[&hash])
        .await
        .unwrap()
        .get(0);
    let flush_id = uuid::Uuid::new_v4();
    tx.execute(
        "UPDATE api_keys SET period_start = $2 WHERE id = $1",
        &[&key_id, &month_after.first_day()],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE key_spends SET spent_nanousd = 0 WHERE api_key_id = $1",
        &[&key_id],
    )
    .await
    .unwrap();
    tx.execute("INSERT INTO spend_flushes (id) VALUES ($1)", &[&flush_id])
        .await
        .unwrap();
    tx.execute(
        "INSERT INTO spend_journal (flush_id, api_key_ids, costs_nanousd)
         VALUES ($1, ARRAY[$2::uuid], ARRAY[777::bigint])",
        &[&flush_id, &key_id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    wait_for_key_info(&gw, &token, "usage", Money::from_nanos(777)).await;
}

/// Waits (at most a second) until the gateway's `/key` reports `expected` in the money field
/// `field` (`usage`, `limit_remaining`); returns the key's info.
async fn wait_for_key_info(
    gw: &Gateway,
    token: &str,
    field: &str,
    expected: Money,
) -> serde_json::Value {
    let since = Instant::now();
    loop {
        let info = gw.key_info(token).await;
        if usd(&info["data"][field]) == Some(expected) {
            return info;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "{field} {} after a second, expected {expected}\n{}",
            info["data"][field],
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A key's new cap, set with `keycap key set-cap`, reaches a running gateway through NOTIFY
/// within a second (the periodic refresh is an hour): lowered to what the key has spent, the
/// next request is refused with 402 and reaches nothing; raised again, it goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_cap_reaches_the_gateway_within_a_second() {
    let gw = start_with_env(&[("KEYCAP_GATEWAY__REFRESH_INTERVAL_SECONDS", "3600")]).await;
    let token = gw.key("1", &[]);
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 9, false))
        .await;
    gw.wait_for_spent(&token, cost).await;
    let set_cap = async |cap: Money| {
        // Money prints every significant digit: `$0.000123`.
        let usd = cap.to_string();
        gw.keycap
            .ok(&[
                "key",
                "set-cap",
                "--org",
                "acme",
                &token[..11],
                "--cap",
                usd.trim_start_matches('$'),
            ])
            .unwrap();
    };

    set_cap(cost).await;
    let info = wait_for_key_info(&gw, &token, "limit_remaining", Money::ZERO).await;
    assert_eq!(usd(&info["data"]["limit"]), Some(cost));
    let n_upstream = gw.mock.state().n_inference_requests();
    let refused = gw
        .chat(&token, &chat_body("mock/cheap", 9, false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 402);
    assert_eq!(gw.mock.state().n_inference_requests(), n_upstream);

    set_cap(Money::from_usd(2)).await;
    wait_for_key_info(
        &gw,
        &token,
        "limit_remaining",
        Money::from_usd(2).saturating_sub(cost),
    )
    .await;
    let ok = gw
        .chat(&token, &chat_body("mock/cheap", 9, false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Keys changed in one statement are announced together and reloaded together (one query per
/// batch of announcements): each cached one shows its change within a second.
#[tokio::test(flavor = "multi_thread")]
async fn keys_changed_together_reach_the_gateway_within_a_second() {
    let gw = start_with_env(&[("KEYCAP_GATEWAY__REFRESH_INTERVAL_SECONDS", "3600")]).await;
    let tokens: Vec<String> = (0..3).map(|_| gw.key("1", &[])).collect();
    for token in &tokens {
        assert_eq!(
            usd(&gw.key_info(token).await["data"]["limit"]),
            Some(Money::from_usd(1))
        );
    }
    let hashes: Vec<Vec<u8>> = tokens
        .iter()
        .map(|token| domain::token::hash_token(token).to_vec())
        .collect();
    gw.db
        .client()
        .await
        .unwrap()
        .execute(
            "UPDATE api_keys SET cap_nanousd = $2 WHERE token_hash = ANY($1)",
            &[&hashes, &Money::from_usd(3).nanos()],
        )
        .await
        .unwrap();
    for token in &tokens {
        wait_for_key_info(&gw, token, "limit", Money::from_usd(3)).await;
    }
}

/// With Postgres unreachable, keys already in the cache keep working within their caps and
/// their spend waits in memory; unknown keys are refused with 503 (fail closed); once Postgres
/// is back the spend is flushed.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_fails_closed_for_unknown_keys_and_loses_no_spend() {
    let mut gw = start().await;
    let proxy = testkit::chaos::ChaosProxy::start(&gw.db.url).await.unwrap();
    gw.stop();
    gw.up_database_url = Some(proxy.url());
    gw.restart();
    gw.wait_for_prices();
    let cached = gw.key("1", &[]);
    let uncached = gw.key("1", &[]);
    let first = gw
        .chat_json(&cached, &chat_body("mock/cheap", 4, false))
        .await;
    gw.wait_for_spent(&cached, reported_cost(&first)).await;

    proxy.cut();
    let second = gw
        .chat(&cached, &chat_body("mock/cheap", 6, false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        200,
        "a cached key is served during the outage"
    );
    let second: serde_json::Value = second.json().await.unwrap();
    let refused = gw
        .chat(&uncached, &chat_body("mock/cheap", 4, false))
        .send()
        .await
        .unwrap();
    expect_error(refused, 503, "cannot reach its database").await;
    // The flush fails meanwhile, and says so in its metrics.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .metrics_text()
        .await
        .lines()
        .any(|l| l.starts_with("gateway_flush_errors_total ") && !l.ends_with(" 0"))
    {
        assert!(Instant::now() < deadline, "no failed flush was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.spent_in_db(&cached).await, reported_cost(&first));

    proxy.restore();
    let total = reported_cost(&first)
        .checked_add(reported_cost(&second))
        .unwrap();
    gw.wait_for_spent(&cached, total).await;
    // And unknown keys are looked up again (the refusal was not cached as "unknown").
    assert_eq!(
        gw.chat(&uncached, &chat_body("mock/cheap", 4, false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A change whose NOTIFY was lost still reaches the gateway through the periodic refresh.
#[tokio::test(flavor = "multi_thread")]
async fn the_periodic_refresh_catches_a_missed_notification() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    assert_eq!(
        gw.chat(&token, &chat_body("mock/cheap", 3, false))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let client = gw.db.client().await.unwrap();
    let hash = domain::token::hash_token(&token).to_vec();
    client
        .batch_execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify")
        .await
        .unwrap();
    client
        .execute(
            "UPDATE api_keys SET cap_nanousd = 1 WHERE token_hash = $1",
            &[&hash],
        )
        .await
        .unwrap();
    client
        .batch_execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = gw
            .chat(&token, &chat_body("mock/cheap", 3, false))
            .send()
            .await
            .unwrap();
        if response.status() == 402 {
            break;
        }
        assert_eq!(response.status(), 200);
        assert!(
            Instant::now() < deadline,
            "the lowered cap never reached the gateway\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that gives up after its request went upstream, before any answer, is charged the
/// reservation: the upstream may bill the generation all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_before_the_answer_is_charged_the_reservation() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = chat_body("mock/cheap", 30, false);
    let gave_up = gw
        .chat(&token, &body)
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "3000")
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gave_up.is_err_and(|err| err.is_timeout()));
    gw.wait_for_spent(&token, cheap_reservation(&body, 30))
        .await;
    assert!(
        gw.logs().contains("settled without a reported cost"),
        "{}",
        gw.logs()
    );
}

/// A stream still running when the shutdown grace period ends is cut off, and charged its
/// reservation in the last flush.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_off_by_shutdown_is_charged_its_reservation() {
    let mut gw = start().await;
    let token = gw.key("1", &[]);
    let body = chat_body("mock/cheap", 40, true);
    let _stream = first_chunk_of_slow_stream(&gw, &token, &body, 250).await;
    // The grace period is 1 s; the stream needs 10 s.
    gw.stop();
    assert_eq!(gw.spent_in_db(&token).await, cheap_reservation(&body, 40));
}

/// Spend goes out every flush; rollups wait for their own interval, and shutdown writes them.
#[tokio::test(flavor = "multi_thread")]
async fn rollups_are_held_for_their_interval_and_written_on_shutdown() {
    let mut gw = start_with_env(&[("KEYCAP_GATEWAY__ROLLUP_INTERVAL_MS", "600000")]).await;
    let token = gw.key("1", &[]);
    let cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 9, false))
        .await;
    gw.wait_for_spent(&token, cost).await;
    assert_eq!(
        rollups(&gw.db).await,
        (0, 0),
        "rollups went out before their interval"
    );
    gw.stop();
    assert_eq!(rollups(&gw.db).await, (1, cost.nanos()));
}

/// How many rollup rows there are, and the cost they sum to.
async fn rollups(db: &testkit::TestDb) -> (i64, i64) {
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(cost_nanousd), 0)::bigint FROM usage_rollups",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A key with a rate limit: a minute's requests at once, then 429 with `Retry-After`, in
/// OpenRouter's error shape, and nothing charged for the refused request; free paths use the
/// rate too.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_key_gets_429_beyond_its_requests_per_minute() {
    let gw = start().await;
    let token = gw.key("1", &["--rpm", "2"]);
    let body = chat_body("mock/cheap", 9, false);
    gw.clear_of_a_minute_boundary(Duration::from_secs(15)).await;
    let mut charged = Money::ZERO;
    for _ in 0..2 {
        let answer = gw.chat_json(&token, &body).await;
        charged = charged.checked_add(reported_cost(&answer)).unwrap();
    }
    let refused = gw.chat(&token, &body).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], 429);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 requests per minute"),
        "{error}"
    );
    gw.wait_for_spent(&token, charged).await;
    let info = gw.key_info(&token).await;
    assert_eq!(info["data"]["rate_limit"]["requests"], 2);
    assert_eq!(info["data"]["rate_limit"]["interval"], "1m");
    let metrics = gw
        .http
        .get(&gw.metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("reason=\"rate_limit\"} 1"), "{metrics}");
    // A key without a limit is not limited.
    let free = gw.key("1", &[]);
    for _ in 0..5 {
        assert_eq!(gw.chat(&free, &body).send().await.unwrap().status(), 200);
    }
    // Free paths go upstream too, on the master key's rate: they take a slot like the rest,
    // and asking the gateway about the key takes none.
    let listing = gw.key("1", &["--rpm", "1"]);
    let models = |token: &str| gw.get("/api/v1/models", token).send();
    gw.clear_of_a_minute_boundary(Duration::from_secs(10)).await;
    assert_eq!(models(&listing).await.unwrap().status(), 200);
    assert_eq!(models(&listing).await.unwrap().status(), 429);
    assert_eq!(gw.chat(&listing, &body).send().await.unwrap().status(), 429);
    assert_eq!(
        gw.key_info(&listing).await["data"]["rate_limit"]["requests"],
        1
    );
}

/// A key revoked while a stream is in flight is refunded at once what the gateway's lease of it
/// does not hold; the stream's charge comes out of the lease, and what the lease did not spend
/// is refunded when the gateway gives it back (within a sweep). Nothing is taken back, and the
/// member's budget ends up exactly as if the whole refund had waited for the stream.
#[tokio::test(flavor = "multi_thread")]
async fn spend_after_a_revoke_comes_out_of_the_lease_and_the_rest_is_refunded() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = chat_body("mock/cheap", 20, true);
    let mut stream = first_chunk_of_slow_stream(&gw, &token, &body, 100).await;
    gw.keycap
        .ok(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let cost = sse_cost(&String::from_utf8(text).unwrap()).expect("the stream reported its cost");
    assert!(cost > Money::ZERO);
    gw.wait_for_spent(&token, cost).await;
    let client = gw.db.client().await.unwrap();
    let refunds = async || -> Vec<i64> {
        client
            .query(
                "SELECT t.amount_nanousd FROM transactions t JOIN api_keys k ON k.id = t.api_key_id
                 WHERE k.token_hash = $1 AND t.kind = 'refund' ORDER BY t.seq",
                &[&domain::token::hash_token(&token).to_vec()],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let whole = Money::from_usd(1).nanos() - cost.nanos();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = refunds().await;
    while found.iter().sum::<i64>() != whole {
        assert!(
            Instant::now() < deadline,
            "refunds {found:?}, expected them to come to {whole}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = refunds().await;
    }
    assert!(found.iter().all(|&amount| amount > 0), "{found:?}");
    // bob's $100 budget: $1 carved, $1 − cost refunded.
    assert_eq!(
        crate::support::bobs_available_listed(&gw.keycap),
        Money::from_usd(100).nanos() - cost.nanos()
    );
    gw.assert_audit_chain_intact();
}

/// Headers over the gateway's 64 KiB get a 431 in OpenRouter's shape, without an upstream call.
#[tokio::test(flavor = "multi_thread")]
async fn large_headers_get_a_431_in_openrouters_shape() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let response = gw
        .chat(&token, &chat_body("mock/cheap", 9, false))
        .header("x-large", "y".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    expect_error(
        response,
        431,
        "larger than the gateway's limit of 65536 bytes",
    )
    .await;
    assert_eq!(gw.mock.state().n_inference_requests(), 0);
}

/// A request refused after its rate-limit slot was taken (here: the cap cannot pay for it)
/// gives the slot back, so the client keeps seeing why (402), not 429.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_request_does_not_use_up_the_rate() {
    let gw = start().await;
    let token = gw.key("0.000001", &["--rpm", "1"]);
    for _ in 0..3 {
        let response = gw
            .chat(&token, &chat_body("mock/cheap", 9, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 402);
    }
}

/// A path listed in `gateway.extra_free_paths` goes upstream with the master key, on `GET`
/// only and for a valid sub-key; without the setting it is refused, and no spelling of another
/// path gets through a listed prefix.
#[tokio::test(flavor = "multi_thread")]
async fn configured_free_paths_pass_through_on_get_only() {
    use reqwest::Method;
    /// Sends `method path`, with `token` as the bearer key when given.
    async fn send(
        gw: &crate::gateway_support::Gateway,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let request = gw.http.request(method, format!("{}{path}", gw.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
        .await
        .unwrap()
    }
    let mut gw = start().await;
    let token = gw.key("1", &[]);
    let providers = send(&gw, Method::GET, "/api/v1/providers", Some(&token)).await;
    expect_error(providers, 404, "is not served through keycap").await;

    gw.restart_with(&[(
        "KEYCAP_GATEWAY__EXTRA_FREE_PATHS",
        "/api/v1/providers, /api/v1/models/*",
    )]);
    let providers = send(&gw, Method::GET, "/api/v1/providers", Some(&token)).await;
    assert_eq!(providers.status(), 200);
    let providers: serde_json::Value = providers.json().await.unwrap();
    assert_eq!(providers["data"][0]["slug"], "mock", "{providers}");
    for (method, path, token, status, says) in [
        (
            Method::POST,
            "/api/v1/providers",
            Some(&token),
            405,
            "accepts only GET",
        ),
        (Method::GET, "/api/v1/providers", None, 401, "no API key"),
        (
            Method::GET,
            "/api/v1/keys",
            Some(&token),
            404,
            "is not served through keycap",
        ),
    ] {
        let token = token.map(String::as_str);
        expect_error(send(&gw, method, path, token).await, status, says).await;
    }
    // Sent as written (an HTTP client would tidy these paths first).
    let auth = format!("Authorization: Bearer {token}\r\n");
    for target in [
        "/api/v1/models/../chat/completions",
        "/api/v1/models/%2e%2e/chat/completions",
        "/api/v1/models//chat/completions",
    ] {
        let (status, body) = raw_request(&gw.base, &format!("GET {target}"), &auth, b"").await;
        assert_eq!(status, 404, "{target}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("is not served through keycap"),
            "{target}: {body}"
        );
    }
}

/// An `https://` upstream: the gateway checks its certificate against the system's roots (here
/// `SSL_CERT_FILE`, naming a test CA), names the host in the handshake, and fetches prices,
/// proxies and charges through it as over plain http. A certificate it does not trust is a 502
/// that reaches nothing, and with no roots at all `keycap up` refuses to start.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_verified_and_served() {
    let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
        .await
        .unwrap();
    let front = testkit::tls::TlsFront::start("localhost", mock.addr())
        .await
        .unwrap();
    let upstream = format!("https://localhost:{}", front.port());
    // Roots only from SSL_CERT_FILE (SSL_CERT_DIR, which the machine may set, names an empty
    // folder): first another test CA's, then the front's.
    let roots = tempfile::tempdir().unwrap();
    let no_dir = roots.path().join("none");
    std::fs::create_dir(&no_dir).unwrap();
    let stranger = roots.path().join("stranger.pem");
    let stranger_front = testkit::tls::TlsFront::start("localhost", mock.addr())
        .await
        .unwrap();
    std::fs::write(&stranger, stranger_front.ca_pem()).unwrap();
    let ca_file = roots.path().join("test-ca.pem");
    std::fs::write(&ca_file, front.ca_pem()).unwrap();
    let no_dir = no_dir.to_str().unwrap();
    let mut gw = start_with(
        mock,
        Some(upstream),
        &[
            ("SSL_CERT_DIR", no_dir),
            ("SSL_CERT_FILE", stranger.to_str().unwrap()),
        ],
    )
    .await;
    let token = gw.key("5", &[]);
    let models = |gw: &crate::gateway_support::Gateway| gw.get("/api/v1/models", &token).send();
    expect_error(models(&gw).await.unwrap(), 502, "upstream").await;
    assert_eq!(front.server_names(), Vec::<Option<String>>::new());

    gw.restart_with(&[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    assert_eq!(models(&gw).await.unwrap().status(), 200);
    let json_cost = gw
        .chat_cost(&token, &chat_body("mock/cheap", 5, false))
        .await;
    let response = gw
        .chat(&token, &chat_body("mock/cheap", 6, true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (text, stream_cost) = read_stream(response).await;
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    gw.wait_for_spent(&token, json_cost.checked_add(stream_cost.unwrap()).unwrap())
        .await;
    let names = front.server_names();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|name| name.as_deref() == Some("localhost")),
        "{names:?}"
    );

    gw.stop();
    let no_roots = roots.path().join("no-roots.pem");
    std::fs::write(&no_roots, "").unwrap();
    let refused = gw
        .keycap
        .clone()
        .env("SSL_CERT_FILE", no_roots.to_str().unwrap())
        .spawn(&["up"], "gateway listening on", Duration::from_secs(30))
        .err()
        .expect("keycap up must not start without trusted roots")
        .to_string();
    assert!(refused.contains("process exited"), "{refused}");
    assert!(
        refused.contains("no trusted root certificates"),
        "{refused}"
    );
    assert!(!refused.contains("keycap is up"), "{refused}");
}

/// A master key rotated or revoked (`keycap vault rotate` / `revoke`, which make the same `db`
/// calls as the admin app's vault page) reaches a running gateway through NOTIFY within a
/// second: requests go up with the new secret, then are refused without reaching the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_or_revoked_master_key_reaches_the_gateway_within_a_second() {
    // No periodic refresh within the test: the change can arrive only through NOTIFY.
    let gw = start_with_env(&[("KEYCAP_GATEWAY__REFRESH_INTERVAL_SECONDS", "3600")]).await;
    let token = gw.key("1", &[]);
    let upstream_saw = || {
        gw.mock
            .state()
            .last_request()
            .and_then(|request| request.authorization)
    };
    let ok = gw
        .chat(&token, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let old = format!("Bearer {}", gw.mock.state().config().master_key);
    assert_eq!(upstream_saw().as_deref(), Some(old.as_str()));

    // A second OpenRouter key, made at the mock with its management key.
    let created: serde_json::Value = gw
        .http
        .post(format!("{}/api/v1/keys", gw.mock.base_url()))
        .bearer_auth(&gw.mock.state().config().management_key)
        .json(&json!({ "name": "rotated" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap().to_string();
    let rotate = gw
        .keycap
        .run_with_stdin(&["vault", "rotate", "--org", "acme", "main"], &secret)
        .unwrap();
    assert!(rotate.success, "{}", rotate.stderr);
    let rotated = Instant::now();
    let new = format!("Bearer {secret}");
    loop {
        let response = gw
            .chat(&token, &chat_body("mock/cheap", 3, false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let saw = upstream_saw().unwrap();
        if saw == new {
            break;
        }
        assert_eq!(saw, old);
        assert!(
            rotated.elapsed() < Duration::from_secs(1),
            "the old master key still went up a second after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gw.keycap
        .ok(&["vault", "revoke", "--org", "acme", "main"])
        .unwrap();
    served_until_refused(&gw, &token, 403, "master key", Duration::from_secs(1)).await;
    let reached = gw.mock.state().n_inference_requests();
    let refused = gw
        .chat(&token, &chat_body("mock/cheap", 3, false))
        .send()
        .await
        .unwrap();
    expect_error(refused, 403, "was revoked").await;
    assert_eq!(gw.mock.state().n_inference_requests(), reached);
}

/// Neither the master key nor any sub-key token reaches the gateway's logs (at the most verbose
/// level, pingora's own included), its answers or its metrics; the metrics cover the traffic
/// with labels that name no key.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_logs_answers_or_metrics() {
    let gw = start_with_env(&[("KEYCAP_LOG", "trace")]).await;
    let token = gw.key("0.01", &[]);
    let poor = gw.key("0.000001", &[]);
    let other = "kc_0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut answers = String::new();
    let mut keep = |status: u16, text: String| {
        answers.push_str(&format!("{status} {text}\n"));
    };
    for request in [
        gw.chat(&token, &chat_body("mock/cheap", 3, false)),
        gw.chat(&token, &chat_body("mock/cheap", 3, true)),
        gw.chat(&token, &chat_body("mock/cheap", 3, false))
            .header("x-mock-fault", "503"),
        gw.chat(&token, &chat_body("mock/cheap", 3, true))
            .header("x-mock-fault", "midstream-error"),
        gw.chat(&poor, &chat_body("mock/cheap", 3, false)),
        gw.chat(other, &chat_body("mock/cheap", 3, false)),
        gw.chat(&format!("{token}x"), &chat_body("mock/cheap", 3, false)),
        gw.chat(&token, &chat_body("mock/cheap", 3, false))
            .body("{not json"),
        gw.get("/api/v1/models", &token),
        gw.get("/api/v1/key", &token),
    ] {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        keep(status, response.text().await.unwrap());
    }
    assert!(answers.contains("402 "), "{answers}");
    assert!(answers.contains("401 "), "{answers}");
    // The mid-stream error is reconciled: the gateway asks the upstream, under the master key,
    // what it billed. That question is in the logs looked at too.
    gw.wait_for_metric("gateway_reconciliations_total{outcome=\"billed\"} 1")
        .await;
    let metrics = gw.metrics_text().await;
    let info = gw.key_info(&token).await;
    let key_ids: Vec<String> = gw
        .db
        .client()
        .await
        .unwrap()
        .query_one("SELECT array_agg(id::text) FROM api_keys", &[])
        .await
        .unwrap()
        .get(0);
    let logs = gw.logs();
    assert!(logs.contains("TRACE"), "the gateway logged at trace level");

    let config = gw.mock.state().config().clone();
    for (what, text) in [
        ("logs", &logs),
        ("answers", &answers),
        ("metrics", &metrics),
    ] {
        for secret in [
            config.master_key.as_str(),
            &config.management_key,
            &token,
            &poor,
            other,
        ] {
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
            assert!(lines.is_empty(), "a secret in the {what}: {lines:#?}");
        }
        // Not even a prefix of one.
        assert!(
            !text.contains(&config.master_key[..20]),
            "master key in the {what}"
        );
        assert!(!text.contains(&token[..20]), "sub-key in the {what}");
    }
    // (`gateway_upstream_errors_total` counts failed connections, which this traffic has
    // none of; an unreachable upstream has its own test.)
    for family in [
        "gateway_requests_total{",
        "gateway_refusals_total{",
        "gateway_settlements_total{",
        "gateway_spend_nanousd_total ",
        "gateway_added_latency_seconds_bucket{",
        "gateway_upstream_duration_seconds_bucket{",
        "gateway_cache_keys ",
        "gateway_flush_duration_seconds_bucket{",
        "gateway_flush_lag_seconds ",
    ] {
        assert!(metrics.contains(family), "no {family} in:\n{metrics}");
    }
    let prefix = info["data"]["label"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for id in key_ids {
        assert!(!metrics.contains(&id), "a key id in the metrics");
    }
    assert!(
        prefix.is_empty() || !metrics.contains(&prefix),
        "a key label in the metrics"
    );
}

/// Ctrl-C (SIGINT), like SIGTERM, lets a request in flight finish before the gateway stops: a
/// stream that ends within the grace period reaches the client whole, and the last flush
/// charges what the upstream reported.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_lets_a_stream_in_flight_finish_and_flushes_its_cost() {
    // A flush only on the way out, so that Postgres has the stream's cost from the last one.
    let mut gw = start_with_env(&[
        ("KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS", "5"),
        ("KEYCAP_GATEWAY__FLUSH_INTERVAL_MS", "600000"),
    ])
    .await;
    let token = gw.key("1", &[]);
    // 12 tokens 100 ms apart: over a second still to come when the signal arrives.
    let mut stream =
        first_chunk_of_slow_stream(&gw, &token, &chat_body("mock/cheap", 12, true), 100).await;
    let mut running = gw.process.take().unwrap();
    let stopped = tokio::task::spawn_blocking(move || {
        let status = running.interrupt(Duration::from_secs(30)).unwrap();
        (status, running.stderr_text())
    });
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let cost = sse_cost(&text).expect("the stream reported its cost");
    let (status, logs) = stopped.await.unwrap();
    assert!(status.success(), "{status}: {logs}");
    assert!(logs.contains("letting requests in flight finish"), "{logs}");
    // Flushed on the way out (the interval is ten minutes): Postgres has it, the gateway gone.
    assert_eq!(gw.spent_in_db(&token).await, cost);
}
