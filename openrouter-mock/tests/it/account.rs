//! `GET /key`, `GET /auth/key` and `GET /credits`.

use openrouter_mock::MockConfig;
use serde_json::{Value, json};

use crate::{Mock, assert_usd, chat_body};

#[tokio::test]
async fn key_reports_the_master_key() {
    let mock = Mock::start().await;
    mock.chat_text(&chat_body(
        "mock/cheap",
        "0123456789012345678901234567890123456789",
        Some(5),
    ))
    .await;
    for path in ["/key", "/auth/key"] {
        let response = mock.get(path, &mock.master_key()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let data = &serde_json::from_str::<Value>(&text).unwrap()["data"];
        let master_key = mock.master_key();
        let label = format!(
            "sk-or-v1-{}...{}",
            &master_key[9..12],
            &master_key[master_key.len() - 4..]
        );
        assert_eq!(data["label"], label);
        for field in [
            "limit",
            "limit_remaining",
            "limit_reset",
            "expires_at",
            "creator_user_id",
        ] {
            assert_eq!(data[field], Value::Null, "{field}");
        }
        assert_eq!(data["include_byok_in_limit"], false);
        assert_eq!(data["is_free_tier"], false);
        assert_eq!(data["is_management_key"], false);
        assert_eq!(data["is_provisioning_key"], false);
        assert_eq!(data["byok_usage"], 0.0);
        assert_eq!(data["rate_limit"]["requests"], -1);
        assert_eq!(data["rate_limit"]["interval"], "10s");
        assert_usd(&text, "usage", 20_000);
        assert_usd(&text, "usage_daily", 20_000);
        assert_usd(&text, "usage_weekly", 20_000);
        assert_usd(&text, "usage_monthly", 20_000);
    }
    let response = mock.client.get(mock.url("/key")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn credits_need_the_management_key() {
    let mock = Mock::start().await;
    let response = mock
        .get("/credits", &mock.master_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "error": { "code": 403, "message": "Only management keys can perform this operation" } })
    );
    let response = mock.client.get(mock.url("/credits")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = mock
        .get("/credits", &mock.management_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["total_credits"], 100.0);
    assert_eq!(body["data"]["total_usage"], 0.0);
}

#[tokio::test]
async fn spent_credits_refuse_inference_with_402() {
    let config = MockConfig {
        total_credits_nanousd: 20_000,
        ..Default::default()
    };
    let mock = Mock::with_config(config).await;
    let body = chat_body(
        "mock/cheap",
        "0123456789012345678901234567890123456789",
        Some(5),
    );
    let (status, _, _) = mock.chat_text(&body).await;
    assert_eq!(status, 200);
    let (status, headers, text) = mock.chat_text(&body).await;
    assert_eq!(status, 402, "{text}");
    assert!(headers.get("retry-after").is_none());
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], 402);
    assert_eq!(
        body["error"]["metadata"]["limit_source"],
        "openrouter_credits"
    );
    assert_eq!(mock.server.state().total_usage_nanousd(), 20_000);
}
