//! Refusals of missing, unknown and misplaced keys.

use serde_json::{Value, json};

use crate::{Mock, chat_body};

#[tokio::test]
async fn inference_needs_an_inference_key() {
    let mock = Mock::start().await;
    let body = chat_body("mock/cheap", "hi", None);
    let state = mock.server.state();

    let response = mock
        .client
        .post(mock.url("/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], 401);
    assert_eq!(error["error"]["message"], "No auth credentials found");
    assert_eq!(state.n_unauthorized(), 1);

    let unknown = format!("sk-or-v1-{}", "0".repeat(64));
    let response = mock
        .post("/chat/completions", &unknown)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "User not found.");
    assert_eq!(state.n_unauthorized(), 2);

    let response = mock
        .post("/completions", &mock.management_key())
        .json(&json!({ "model": "mock/cheap", "prompt": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(state.n_unauthorized(), 3);

    let response = mock
        .client
        .post(mock.url("/chat/completions"))
        .header("authorization", format!("Basic {}", mock.master_key()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(state.n_unauthorized(), 4);

    // Refused before anything else: even a bad body is a 401, not a 400.
    let response = mock
        .client
        .post(mock.url("/chat/completions"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(state.n_unauthorized(), 5);
    assert_eq!(state.n_inference_requests(), 5);
    assert_eq!(state.total_usage_nanousd(), 0);

    let response = mock.chat(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(state.n_unauthorized(), 5);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let mock = Mock::start().await;
    let response = mock
        .client
        .post(mock.url("/chat/completions"))
        .header("authorization", format!("bearer {}", mock.master_key()))
        .json(&chat_body("mock/cheap", "hi", Some(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
