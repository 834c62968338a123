//! `/keys` CRUD and its refusals.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Mock, assert_usd, chat_body};

/// 10 prompt tokens and 5 completion tokens on mock/cheap: 20 000 nano-USD.
pub fn cheap_request() -> Value {
    chat_body(
        "mock/cheap",
        "0123456789012345678901234567890123456789",
        Some(5),
    )
}

/// `POST /keys` with the management key: status and body.
pub async fn create(mock: &Mock, body: Value) -> (u16, Value) {
    let response = mock
        .post("/keys", &mock.management_key())
        .json(&body)
        .send()
        .await
        .expect("mock answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("body is JSON"))
}

/// The cheap request with `key`: status and body.
pub async fn chat_with(mock: &Mock, key: &str) -> (u16, Value) {
    let response = mock
        .post("/chat/completions", key)
        .json(&cheap_request())
        .send()
        .await
        .expect("mock answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("body is JSON"))
}

#[tokio::test]
async fn keys_lifecycle() {
    let mock = Mock::start().await;
    let management_key = mock.management_key();
    let (status, created) = create(
        &mock,
        json!({ "name": "ci", "limit": 1.5, "limit_reset": "monthly", "include_byok_in_limit": true, "expires_at": "2099-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let secret = key.strip_prefix("sk-or-v1-").unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    let data = &created["data"];
    let hash = data["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash, hex::encode(Sha256::digest(key.as_bytes())));
    assert_eq!(data["name"], "ci");
    assert_eq!(
        data["label"],
        format!("sk-or-v1-{}...{}", &secret[..3], &secret[60..])
    );
    assert_eq!(data["disabled"], false);
    assert_eq!(data["limit"], 1.5);
    assert_eq!(data["limit_remaining"], 1.5);
    assert_eq!(data["limit_reset"], "monthly");
    assert_eq!(data["include_byok_in_limit"], true);
    assert_eq!(data["usage"], 0.0);
    assert_eq!(data["byok_usage_monthly"], 0.0);
    assert_eq!(data["updated_at"], Value::Null);
    assert!(
        data["expires_at"]
            .as_str()
            .unwrap()
            .starts_with("2099-01-01T00:00:00")
    );
    assert!(data["created_at"].is_string());

    // The plaintext key is only in the 201 answer.
    let response = mock
        .get(&format!("/keys/{hash}"), &management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fetched["data"]["hash"], hash.as_str());
    assert!(fetched.get("key").is_none());
    assert!(!fetched.to_string().contains(&key));

    let (status, _) = chat_with(&mock, &key).await;
    assert_eq!(status, 200);
    let listed: Value = mock
        .get("/keys", &management_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let text = mock
        .get(&format!("/keys/{hash}"), &management_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "usage", 20_000);
    assert_usd(&text, "usage_monthly", 20_000);
    assert_usd(&text, "limit_remaining", 1_500_000_000 - 20_000);
    // The master key's own usage is separate.
    let text = mock
        .get("/key", &mock.master_key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "usage", 0);

    let response = mock
        .client
        .patch(mock.url(&format!("/keys/{hash}")))
        .bearer_auth(&management_key)
        .json(&json!({ "name": "renamed", "limit": null, "limit_reset": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["data"]["name"], "renamed");
    assert_eq!(patched["data"]["limit"], Value::Null);
    assert_eq!(patched["data"]["limit_remaining"], Value::Null);
    assert_eq!(patched["data"]["limit_reset"], Value::Null);
    assert!(patched["data"]["updated_at"].is_string());

    let response = mock
        .client
        .delete(mock.url(&format!("/keys/{hash}")))
        .bearer_auth(&management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "deleted": true })
    );
    let response = mock
        .get(&format!("/keys/{hash}"), &management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = mock
        .client
        .delete(mock.url(&format!("/keys/{hash}")))
        .bearer_auth(&management_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, error) = chat_with(&mock, &key).await;
    assert_eq!(status, 401, "{error}");
}

#[tokio::test]
async fn bad_key_requests_are_refused() {
    let mock = Mock::start().await;
    for body in [
        json!({}),
        json!({ "name": "" }),
        json!({ "name": 3 }),
        json!({ "name": "x", "limit": "ten" }),
        json!({ "name": "x", "limit": -1 }),
        json!({ "name": "x", "limit_reset": "hourly" }),
        json!({ "name": "x", "include_byok_in_limit": "yes" }),
        json!({ "name": "x", "expires_at": "2099-01-01T00:00:00+02:00" }),
        json!({ "name": "x", "expires_at": "tomorrow" }),
    ] {
        let (status, error) = create(&mock, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {error}");
        assert_eq!(error["error"]["code"], 400);
    }
    let response = mock
        .post("/keys", &mock.management_key())
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let listed: Value = mock
        .get("/keys", &mock.management_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
}

#[tokio::test]
async fn keys_need_the_management_key() {
    let mock = Mock::start().await;
    let response = mock
        .post("/keys", &mock.master_key())
        .json(&json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "Only management keys can perform this operation"
    );
    let response = mock.client.get(mock.url("/keys")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "Missing Authentication header");
    let response = mock.get("/keys", "sk-or-v1-unknown").send().await.unwrap();
    assert_eq!(response.status(), 401);
    // A created key is an inference key, not a management key.
    let (_, created) = create(&mock, json!({ "name": "inference" })).await;
    let response = mock
        .get("/keys", created["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = mock
        .get(&format!("/keys/{}", "0".repeat(64)), &mock.management_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn listing_pages_newest_first() {
    let mock = Mock::start().await;
    for key_idx in 0..105 {
        let (status, _) = create(&mock, json!({ "name": format!("key-{key_idx}") })).await;
        assert_eq!(status, 201);
    }
    let page: Value = mock
        .get("/keys", &mock.management_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], "key-104");
    let page: Value = mock
        .get("/keys?offset=100", &mock.management_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["key-4", "key-3", "key-2", "key-1", "key-0"]);
}
