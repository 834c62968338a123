//! `POST /completions`, the legacy text API.

use serde_json::{Value, json};

use crate::{Mock, assert_usd, sse_chunks, sse_data};

#[tokio::test]
async fn answers_with_text_choices() {
    let mock = Mock::start().await;
    let body = json!({ "model": "mock/cheap", "prompt": "x".repeat(40), "max_tokens": 5 });
    let response = mock
        .post("/completions", &mock.master_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-generation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "alpha bravo charlie delta echo");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_usd(&text, "cost", 20_000);
    let request = mock.server.state().last_request().unwrap();
    assert_eq!(request.path, "/api/v1/completions");
}

#[tokio::test]
async fn accepts_an_array_of_prompts() {
    let mock = Mock::start().await;
    let body = json!({ "model": "mock/cheap", "prompt": ["abcd", "efgh", "i"], "max_tokens": 1 });
    let response = mock
        .post("/completions", &mock.master_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let bad = json!({ "model": "mock/cheap", "prompt": 12 });
    let response = mock
        .post("/completions", &mock.master_key())
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn streams_text_chunks() {
    let mock = Mock::start().await;
    let body =
        json!({ "model": "mock/cheap", "prompt": "x".repeat(40), "max_tokens": 3, "stream": true });
    let response = mock
        .post("/completions", &mock.master_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.starts_with(": OPENROUTER PROCESSING\n\n"), "{text}");
    let chunks = sse_chunks(&text);
    // 3 tokens, the finish chunk, the usage chunk.
    assert_eq!(chunks.len(), 5);
    let pieces: String = chunks[..3]
        .iter()
        .map(|chunk| chunk["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(pieces, "alpha bravo charlie");
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "text_completion")
    );
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 3);
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
    assert_usd(&text, "cost", 10_000 + 3 * 2_000);
}
