//! Created keys used for inference: their spend, limits, and refusals.

use serde_json::{Value, json};

use crate::Mock;
use crate::assert_usd;
use crate::keys::{chat_with, create};

#[tokio::test]
async fn created_keys_show_in_get_key() {
    let mock = Mock::start().await;
    let (_, created) = create(
        &mock,
        json!({ "name": "app", "limit": 0.001, "limit_reset": "daily" }),
    )
    .await;
    let key = created["key"].as_str().unwrap();
    chat_with(&mock, key).await;
    let text = mock
        .get("/key", key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data = &serde_json::from_str::<Value>(&text).unwrap()["data"];
    assert_eq!(data["label"], created["data"]["label"]);
    assert_eq!(data["limit"], 0.001);
    assert_eq!(data["limit_reset"], "daily");
    assert_eq!(data["is_management_key"], false);
    assert_usd(&text, "usage", 20_000);
    assert_usd(&text, "usage_daily", 20_000);
    assert_usd(&text, "limit_remaining", 1_000_000 - 20_000);
}

#[tokio::test]
async fn key_limits_are_enforced() {
    let mock = Mock::start().await;
    let (_, created) = create(&mock, json!({ "name": "capped", "limit": 0.00003 })).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(chat_with(&mock, key).await.0, 200);
    // 20 000 of 30 000 spent: still under the limit, so one more may run
    // and overshoot it.
    assert_eq!(chat_with(&mock, key).await.0, 200);
    let (status, error) = chat_with(&mock, key).await;
    assert_eq!(status, 402, "{error}");
    assert_eq!(error["error"]["code"], 402);
    assert_eq!(
        error["error"]["metadata"]["limit_source"],
        "openrouter_key_limit"
    );
    let text = mock
        .get("/key", key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "usage", 40_000);
    assert_usd(&text, "limit_remaining", 0);
    // The master key is not limited by it.
    assert_eq!(chat_with(&mock, &mock.master_key()).await.0, 200);
    // Raising the limit lets the key through again.
    let hash = created["data"]["hash"].as_str().unwrap();
    let response = mock
        .client
        .patch(mock.url(&format!("/keys/{hash}")))
        .bearer_auth(mock.management_key())
        .json(&json!({ "limit": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(chat_with(&mock, key).await.0, 200);
}

#[tokio::test]
async fn disabled_and_expired_keys_are_refused() {
    let mock = Mock::start().await;
    let (_, created) = create(&mock, json!({ "name": "soon-off" })).await;
    let key = created["key"].as_str().unwrap();
    let hash = created["data"]["hash"].as_str().unwrap();
    let response = mock
        .client
        .patch(mock.url(&format!("/keys/{hash}")))
        .bearer_auth(mock.management_key())
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap()["data"]["disabled"],
        true
    );
    let before = mock.server.state().n_unauthorized();
    assert_eq!(chat_with(&mock, key).await.0, 401);
    assert_eq!(mock.server.state().n_unauthorized(), before + 1);

    // Disabled keys are listed only on request.
    let listed: Value = mock
        .get("/keys", &mock.management_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
    let listed: Value = mock
        .get("/keys?include_disabled=true", &mock.management_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["hash"], hash);

    let (status, created) = create(
        &mock,
        json!({ "name": "old", "expires_at": "2020-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, error) = chat_with(&mock, created["key"].as_str().unwrap()).await;
    assert_eq!(status, 401, "{error}");
}
