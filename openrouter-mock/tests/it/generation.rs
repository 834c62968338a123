//! `GET /generation?id=`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Mock, assert_usd, chat_body, into_parts};

#[tokio::test]
async fn unknown_ids_are_404() {
    let mock = Mock::start().await;
    let response = mock
        .get("/generation?id=gen-nope", &mock.master_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "error": { "code": 404, "message": "Generation not found", "metadata": { "error_type": "not_found" } } })
    );
    let response = mock
        .get("/generation", &mock.master_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = mock
        .client
        .get(mock.url("/generation?id=gen-nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn served_generations_report_their_cost() {
    let mock = Mock::start().await;
    let (_, headers, _) = mock
        .chat_text(&chat_body(
            "mock/with-request-fee",
            "0123456789012345678901234567890123456789",
            Some(5),
        ))
        .await;
    let id = headers["x-generation-id"].to_str().unwrap();
    let response = mock
        .get(&format!("/generation?id={id}"), &mock.master_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_usd(&text, "total_cost", 120_000);
    assert_usd(&text, "usage", 120_000);
    let data = &serde_json::from_str::<Value>(&text).unwrap()["data"];
    assert_eq!(data["id"], id);
    assert_eq!(data["model"], "mock/with-request-fee");
    assert_eq!(data["provider_name"], "Cheap");
    assert_eq!(data["tokens_prompt"], 10);
    assert_eq!(data["tokens_completion"], 5);
    assert_eq!(data["native_tokens_prompt"], 10);
    assert_eq!(data["native_tokens_completion"], 5);
    assert_eq!(data["streamed"], false);
    assert_eq!(data["cancelled"], false);
    assert_eq!(data["finish_reason"], "length");
    assert_eq!(data["is_byok"], false);
    assert!(data["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn streamed_generations_are_marked_streamed() {
    let mock = Mock::start().await;
    let mut body = chat_body("mock/cheap", "hi", Some(3));
    body["stream"] = json!(true);
    let (_, headers, _) = mock.chat_text(&body).await;
    let id = headers["x-generation-id"].to_str().unwrap();
    let data: Value = mock
        .get(&format!("/generation?id={id}"), &mock.master_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["data"]["streamed"], true);
    assert_eq!(data["data"]["cancelled"], false);
    assert_eq!(data["data"]["finish_reason"], "length");
    assert_eq!(data["data"]["tokens_completion"], 3);
}

#[tokio::test]
async fn a_delay_header_hides_the_generation_for_a_while() {
    let mock = Mock::start().await;
    let response = mock
        .chat(&chat_body("mock/cheap", "hi", Some(1)))
        .header("x-mock-generation-delay-ms", "300")
        .send()
        .await
        .unwrap();
    let (_, headers, _) = into_parts(response).await;
    let id = headers["x-generation-id"].to_str().unwrap();
    let url = format!("/generation?id={id}");
    let response = mock.get(&url, &mock.master_key()).send().await.unwrap();
    assert_eq!(response.status(), 404);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let response = mock.get(&url, &mock.master_key()).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
