//! Streamed chat completions: SSE framing, incremental delivery, and a
//! client that hangs up.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{Mock, chat_body, sse_chunks, sse_data};

fn stream_body(model: &str, content: &str, max_tokens: Option<u64>) -> Value {
    let mut body = chat_body(model, content, max_tokens);
    body["stream"] = json!(true);
    body
}

#[tokio::test]
async fn sse_framing_matches_openrouter() {
    let mock = Mock::start().await;
    let (status, headers, text) = mock
        .chat_text(&stream_body("mock/cheap", "hello", Some(4)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let generation_id = headers["x-generation-id"].to_str().unwrap();
    assert!(text.starts_with(": OPENROUTER PROCESSING\n\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(
        data.iter().filter(|data| data.as_str() == "[DONE]").count(),
        1
    );
    let chunks = sse_chunks(&text);
    // One chunk per token, then the finish chunk, then the usage chunk.
    assert_eq!(chunks.len(), 4 + 2);
    for chunk in &chunks {
        assert_eq!(chunk["id"], generation_id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "mock/cheap");
        assert_eq!(chunk["provider"], "Mock");
    }
    let content: String = chunks[..4]
        .iter()
        .map(|chunk| {
            let choice = &chunk["choices"][0];
            assert_eq!(choice["delta"]["role"], "assistant");
            assert_eq!(choice["finish_reason"], Value::Null);
            assert_eq!(choice["native_finish_reason"], Value::Null);
            assert!(chunk.get("usage").is_none());
            choice["delta"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(content, "alpha bravo charlie delta");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"][0]["delta"]["content"], "");
    // The usage chunk comes last, with empty choices and the full usage.
    let usage_chunk = &chunks[5];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 6);
    assert!(usage_chunk["usage"]["cost"].is_number());
}

#[tokio::test]
async fn zero_tokens_still_finish_and_report_usage() {
    let mock = Mock::start().await;
    let (_, _, text) = mock
        .chat_text(&stream_body("mock/cheap", "hello", Some(0)))
        .await;
    let chunks = sse_chunks(&text);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[1]["usage"]["completion_tokens"], 0);
}

#[tokio::test]
async fn slow_stream_is_delivered_incrementally() {
    let mock = Mock::start().await;
    let response = mock
        .chat(&stream_body("mock/cheap", "hello", None))
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "100")
        .header("x-mock-completion-tokens", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = String::new();
    let mut n_reads = 0;
    // Read until the first token is in.
    while !received.contains("\"alpha\"") {
        received.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
        n_reads += 1;
    }
    // The client holds the first token while the server has not finished:
    // nothing is settled and [DONE] has not been sent.
    assert!(!received.contains("[DONE]"));
    assert_eq!(mock.server.state().total_usage_nanousd(), 0);
    while let Some(bytes) = body.next().await {
        received.push_str(std::str::from_utf8(&bytes.unwrap()).unwrap());
        n_reads += 1;
    }
    // Chunks 100 ms apart arrive in separate reads.
    assert!(n_reads >= 4, "{n_reads} reads");
    assert!(received.ends_with("data: [DONE]\n\n"));
    assert_eq!(sse_chunks(&received).len(), 5 + 2);
    assert_eq!(
        mock.server.state().total_usage_nanousd(),
        2 * 1_000 + 5 * 2_000
    );
}

#[tokio::test]
async fn client_hang_up_is_recorded_as_cancelled() {
    let mock = Mock::start().await;
    let response = mock
        .chat(&stream_body(
            "mock/fault-slow",
            "0123456789012345678901234567890123456789",
            None,
        ))
        .header("x-mock-delay-ms", "30")
        .header("x-mock-completion-tokens", "200")
        .send()
        .await
        .unwrap();
    let generation_id = response.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.bytes_stream();
    let mut received = String::new();
    while !received.contains("bravo") {
        let bytes = body
            .next()
            .await
            .unwrap_or_else(|| panic!("ended: {received}"))
            .unwrap();
        received.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    drop(body);

    let mut generation = Value::Null;
    for _ in 0..200 {
        let response = mock
            .get(
                &format!("/generation?id={generation_id}"),
                &mock.master_key(),
            )
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            generation = response.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let data = &generation["data"];
    assert_eq!(data["cancelled"], true, "{generation}");
    assert_eq!(data["streamed"], true);
    assert_eq!(data["tokens_prompt"], 10);
    // Only the tokens sent before the hang-up are billed.
    let n_sent = data["tokens_completion"].as_u64().unwrap();
    assert!((2..200).contains(&n_sent), "{n_sent} tokens billed");
    let expected_nanousd = 10 * 1_000 + n_sent * 2_000;
    assert_eq!(mock.server.state().total_usage_nanousd(), expected_nanousd);
}
