//! Fault modes, selected by header or by model id.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{Mock, assert_usd, chat_body, into_parts, sse_chunks, sse_data};

fn stream_body(model: &str, max_tokens: Option<u64>) -> Value {
    let mut body = chat_body(
        model,
        "0123456789012345678901234567890123456789",
        max_tokens,
    );
    body["stream"] = json!(true);
    body
}

/// Sends `body` with the fault chosen by header, and again by model id.
async fn both_ways(
    mock: &Mock,
    mode: &str,
    body: &Value,
) -> Vec<(u16, reqwest::header::HeaderMap, String)> {
    let by_header = mock
        .chat(body)
        .header("x-mock-fault", mode)
        .send()
        .await
        .expect("mock answers");
    let mut by_model = body.clone();
    by_model["model"] = json!(format!("mock/fault-{mode}"));
    let by_model = mock.chat(&by_model).send().await.expect("mock answers");
    vec![into_parts(by_header).await, into_parts(by_model).await]
}

#[tokio::test]
async fn early_errors_carry_openrouter_bodies() {
    let mock = Mock::start().await;
    let cases = [
        ("402", "payment_required", None),
        ("429", "rate_limit_exceeded", Some("1")),
        ("503", "provider_overloaded", Some("1")),
        ("500", "server", None),
    ];
    for (mode, error_type, retry_after) in cases {
        for stream in [false, true] {
            let mut body = chat_body("mock/cheap", "hi", None);
            body["stream"] = json!(stream);
            for (status, headers, text) in both_ways(&mock, mode, &body).await {
                assert_eq!(status.to_string(), mode, "{text}");
                let body: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(body["error"]["code"].to_string(), mode);
                assert_eq!(body["error"]["metadata"]["error_type"], error_type);
                let header = headers
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap());
                assert_eq!(header, retry_after, "{mode}");
                assert!(headers.get("x-generation-id").is_none());
                match mode {
                    "500" => assert_eq!(body["error"]["message"], "Internal Server Error"),
                    "429" => assert_eq!(body["error"]["message"], "Rate limit exceeded"),
                    "402" => assert_eq!(
                        body["error"]["metadata"]["limit_source"],
                        "openrouter_credits"
                    ),
                    _ => {}
                }
            }
        }
    }
    assert_eq!(mock.server.state().total_usage_nanousd(), 0);
}

#[tokio::test]
async fn midstream_error_ends_the_stream_with_an_error_event() {
    let mock = Mock::start().await;
    for (status, _, text) in
        both_ways(&mock, "midstream-error", &stream_body("mock/cheap", None)).await
    {
        assert_eq!(status, 200);
        assert!(!text.contains("[DONE]"), "{text}");
        assert!(!text.contains("\"usage\""), "{text}");
        let chunks = sse_chunks(&text);
        assert_eq!(chunks.len(), 4, "{text}");
        let last = chunks.last().unwrap();
        assert_eq!(last["error"]["code"], "server_error");
        assert_eq!(
            last["error"]["message"],
            "Provider disconnected unexpectedly"
        );
        assert_eq!(last["choices"][0]["finish_reason"], "error");
    }
    // Billed for the prompt and the 3 tokens sent, twice.
    assert_eq!(
        mock.server.state().total_usage_nanousd(),
        2 * (10 * 1_000 + 3 * 2_000)
    );

    for (status, _, text) in both_ways(
        &mock,
        "midstream-error",
        &chat_body("mock/cheap", "hi", None),
    )
    .await
    {
        assert_eq!(status, 502);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], 502);
    }
}

#[tokio::test]
async fn cut_drops_the_connection_mid_body() {
    let mock = Mock::start().await;
    let response = mock
        .chat(&stream_body("mock/cheap", None))
        .header("x-mock-fault", "cut")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let outcome = loop {
        match body.next().await {
            Some(Ok(bytes)) => received.push_str(std::str::from_utf8(&bytes).unwrap()),
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        }
    };
    assert!(
        outcome.is_err(),
        "the body must end in an error, got {received}"
    );
    assert!(received.contains("\"alpha\""), "{received}");
    assert!(!received.contains("[DONE]"));

    // Without streaming, the connection closes before any response.
    let outcome = mock
        .chat(&chat_body("mock/fault-cut", "hi", None))
        .send()
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test]
async fn slow_delays_a_json_answer() {
    let mock = Mock::start().await;
    let started = Instant::now();
    let response = mock
        .chat(&chat_body("mock/cheap", "hi", Some(2)))
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "150")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn no_usage_leaves_usage_out_but_still_charges() {
    let mock = Mock::start().await;
    let [(status, headers, text), ..] = &both_ways(
        &mock,
        "no-usage",
        &chat_body(
            "mock/cheap",
            "0123456789012345678901234567890123456789",
            Some(5),
        ),
    )
    .await[..] else {
        unreachable!()
    };
    assert_eq!(*status, 200);
    let body: Value = serde_json::from_str(text).unwrap();
    assert!(body.get("usage").is_none(), "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "alpha bravo charlie delta echo"
    );
    // The cost is still known to /generation, for fallback metering.
    let id = headers["x-generation-id"].to_str().unwrap();
    let text = mock
        .get(&format!("/generation?id={id}"), &mock.master_key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "total_cost", 20_000);

    for (status, _, text) in both_ways(&mock, "no-usage", &stream_body("mock/cheap", Some(5))).await
    {
        assert_eq!(status, 200);
        assert!(!text.contains("\"usage\""), "{text}");
        assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
        assert_eq!(sse_chunks(&text).len(), 5 + 1);
    }
    assert_eq!(mock.server.state().total_usage_nanousd(), 4 * 20_000);
}

#[tokio::test]
async fn no_cost_nulls_the_cost() {
    let mock = Mock::start().await;
    for (status, _, text) in
        both_ways(&mock, "no-cost", &chat_body("mock/cheap", "hi", Some(5))).await
    {
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["usage"]["cost"], Value::Null);
        assert_eq!(body["usage"]["completion_tokens"], 5);
    }
    for (_, _, text) in both_ways(&mock, "no-cost", &stream_body("mock/cheap", Some(5))).await {
        let chunks = sse_chunks(&text);
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["cost"], Value::Null);
        assert_eq!(usage["prompt_tokens"], 10);
    }
}

#[tokio::test]
async fn malformed_sends_broken_json() {
    let mock = Mock::start().await;
    for (status, headers, text) in
        both_ways(&mock, "malformed", &chat_body("mock/cheap", "hi", Some(5))).await
    {
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/json");
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    }
    for (status, _, text) in
        both_ways(&mock, "malformed", &stream_body("mock/cheap", Some(5))).await
    {
        assert_eq!(status, 200);
        let data = sse_data(&text);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let n_broken = data
            .iter()
            .filter(|data| serde_json::from_str::<Value>(data).is_err())
            .count();
        // The broken line, and [DONE] which is not JSON either.
        assert_eq!(n_broken, 2, "{text}");
        assert!(!text.contains("\"usage\""));
    }
}

#[tokio::test]
async fn unknown_fault_modes_are_refused() {
    let mock = Mock::start().await;
    let response = mock
        .chat(&chat_body("mock/cheap", "hi", None))
        .header("x-mock-fault", "explode")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _, text) = mock
        .chat_text(&chat_body("mock/fault-explode", "hi", None))
        .await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["error"]["message"],
        "mock/fault-explode is not a valid model ID"
    );
}
