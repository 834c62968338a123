//! `POST /chat/completions` without streaming.

use serde_json::{Value, json};

use crate::{Mock, chat_body};

#[tokio::test]
async fn answers_in_openrouter_shape() {
    let mock = Mock::start().await;
    let (status, headers, text) = mock
        .chat_text(&chat_body("mock/cheap", "hello", None))
        .await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&text).unwrap();
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("gen-"), "{id}");
    assert_eq!(headers["x-generation-id"].to_str().unwrap(), id);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["provider"], "Mock");
    assert_eq!(body["model"], "mock/cheap");
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["native_finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["message"]["reasoning"], Value::Null);
    // The default completion is 20 words of the NATO alphabet.
    let content = choice["message"]["content"].as_str().unwrap();
    let words: Vec<&str> = content.split(' ').collect();
    assert_eq!(words.len(), 20);
    assert_eq!(&words[..3], ["alpha", "bravo", "charlie"]);
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 2);
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(usage["total_tokens"], 22);
    assert_eq!(usage["is_byok"], false);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(
        usage["cost_details"]["upstream_inference_cost"],
        Value::Null
    );
    assert!(usage["cost_details"]["upstream_inference_prompt_cost"].is_number());
    assert!(usage["cost_details"]["upstream_inference_completions_cost"].is_number());
}

#[tokio::test]
async fn max_tokens_cuts_the_completion() {
    let mock = Mock::start().await;
    let check = |body: Value, expected_tokens: u64, expected_finish: &'static str| {
        let request = mock.chat(&body);
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            assert_eq!(
                body["usage"]["completion_tokens"], expected_tokens,
                "{body}"
            );
            assert_eq!(body["choices"][0]["finish_reason"], expected_finish);
            let content = body["choices"][0]["message"]["content"].as_str().unwrap();
            let n_words = content.split(' ').filter(|word| !word.is_empty()).count();
            assert_eq!(n_words as u64, expected_tokens);
        }
    };
    check(chat_body("mock/cheap", "hi", Some(5)), 5, "length").await;
    check(chat_body("mock/cheap", "hi", Some(20)), 20, "stop").await;
    check(chat_body("mock/cheap", "hi", Some(500)), 20, "stop").await;
    check(chat_body("mock/cheap", "hi", Some(0)), 0, "length").await;
    let mut body = chat_body("mock/cheap", "hi", None);
    body["max_completion_tokens"] = json!(7);
    check(body, 7, "length").await;
}

#[tokio::test]
async fn completion_length_follows_the_header_and_the_config() {
    let mock = Mock::with_config(openrouter_mock::MockConfig {
        default_completion_tokens: 3,
        ..Default::default()
    })
    .await;
    let body: Value = mock
        .chat(&chat_body("mock/cheap", "hi", None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "alpha bravo charlie"
    );
    let response = mock
        .chat(&chat_body("mock/cheap", "hi", Some(40)))
        .header("x-mock-completion-tokens", "30")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 30);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // Words repeat after zulu.
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("yankee zulu alpha bravo"), "{content}");
}

#[tokio::test]
async fn prompt_tokens_count_every_content_byte() {
    let mock = Mock::start().await;
    let body = json!({
        "model": "mock/cheap",
        "messages": [
            { "role": "system", "content": "12345678" },
            { "role": "user", "content": [
                { "type": "text", "text": "abcd" },
                { "type": "image_url", "image_url": { "url": "https://example.com/a.png" } },
                { "type": "text", "text": "é" },
            ] },
            { "role": "assistant", "content": null },
        ],
    });
    // 8 + 4 + 2 bytes = 14 bytes -> ceil(14 / 4) = 4 tokens.
    let body: Value = mock.chat(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let body: Value = mock
        .chat(&chat_body("mock/cheap", "", None))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["usage"]["prompt_tokens"], 1,
        "at least one prompt token"
    );
}

#[tokio::test]
async fn bad_requests_get_openrouter_errors() {
    let mock = Mock::start().await;
    let (status, _, text) = mock.chat_text(&chat_body("nope/unknown", "hi", None)).await;
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(
        body["error"]["message"],
        "nope/unknown is not a valid model ID"
    );

    let response = mock
        .post("/chat/completions", &mock.master_key())
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid JSON")
    );

    for bad in [
        json!({ "messages": [{ "role": "user", "content": "hi" }] }),
        json!({ "model": "mock/cheap" }),
        json!({ "model": "mock/cheap", "messages": "hi" }),
        json!({ "model": "mock/cheap", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": -1 }),
        json!({ "model": "mock/cheap", "messages": [{ "role": "user", "content": "hi" }], "stream": "yes" }),
        json!([1, 2]),
    ] {
        let (status, _, text) = mock.chat_text(&bad).await;
        assert_eq!(status, 400, "{bad} -> {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], 400);
    }
    // Refused requests are never charged.
    assert_eq!(mock.server.state().total_usage_nanousd(), 0);
}

#[tokio::test]
async fn context_length_is_enforced() {
    let mock = Mock::start().await;
    // mock/tiny-context has 64 tokens: 200 bytes = 50 prompt tokens + 20 > 64.
    let (status, _, text) = mock
        .chat_text(&chat_body("mock/tiny-context", &"x".repeat(200), None))
        .await;
    assert_eq!(status, 400, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["error"]["metadata"]["error_type"],
        "context_length_exceeded"
    );
    let (status, _, _) = mock
        .chat_text(&chat_body("mock/tiny-context", &"x".repeat(200), Some(14)))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn deprecated_usage_options_are_accepted() {
    let mock = Mock::start().await;
    let mut body = chat_body("mock/cheap", "hi", Some(2));
    body["usage"] = json!({ "include": true });
    body["stream_options"] = json!({ "include_usage": true });
    body["temperature"] = json!(0.2);
    let (status, _, text) = mock.chat_text(&body).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn records_the_last_request() {
    let mock = Mock::start().await;
    assert!(mock.server.state().last_request().is_none());
    let body = chat_body("mock/cheap", "remember me", Some(1));
    let response = mock
        .chat(&body)
        .header("http-referer", "https://keycap.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let state = mock.server.state();
    assert_eq!(state.n_inference_requests(), 1);
    let recorded = state.last_request().unwrap();
    assert_eq!(recorded.path, "/api/v1/chat/completions");
    assert_eq!(
        recorded.authorization.unwrap(),
        format!("Bearer {}", mock.master_key())
    );
    assert_eq!(recorded.body, body);
    assert_eq!(recorded.headers["http-referer"], "https://keycap.test");
    // Requests that are refused are recorded too, with a null body when it
    // is not JSON.
    let response = mock
        .post("/chat/completions", "sk-or-v1-bad")
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(state.n_inference_requests(), 2);
    assert_eq!(state.last_request().unwrap().body, Value::Null);
}

#[tokio::test]
async fn serve_runs_on_a_given_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(openrouter_mock::serve(
        listener,
        openrouter_mock::MockConfig::default(),
    ));
    let response = reqwest::get(format!("http://{addr}/api/v1/models"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["data"].as_array().unwrap().len() >= 4);
    task.abort();
}

#[tokio::test]
async fn unknown_paths_get_404_json() {
    let mock = Mock::start().await;
    let response = mock.get("/nope", &mock.master_key()).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 404);
}
