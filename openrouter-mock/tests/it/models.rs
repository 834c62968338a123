//! `GET /models`.

use serde_json::Value;

use crate::Mock;

async fn model_ids(mock: &Mock, query: &str) -> Vec<String> {
    let response = mock
        .client
        .get(mock.url(&format!("/models{query}")))
        .send()
        .await
        .expect("mock answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("body is JSON");
    body["data"]
        .as_array()
        .expect("data is an array")
        .iter()
        .map(|model| model["id"].as_str().expect("id is a string").to_owned())
        .collect()
}

#[tokio::test]
async fn lists_the_price_table_in_openrouter_shape() {
    let mock = Mock::start().await;
    let body: Value = mock
        .client
        .get(mock.url("/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models = body["data"].as_array().unwrap();
    let cheap = models
        .iter()
        .find(|model| model["id"] == "mock/cheap")
        .unwrap();
    assert_eq!(cheap["canonical_slug"], "mock/cheap");
    assert!(cheap["name"].is_string());
    assert!(cheap["created"].is_i64());
    assert!(cheap["description"].is_string());
    assert_eq!(cheap["context_length"], 128_000);
    assert_eq!(cheap["architecture"]["input_modalities"][0], "text");
    let pricing = &cheap["pricing"];
    assert_eq!(pricing["prompt"], "0.000001");
    assert_eq!(pricing["completion"], "0.000002");
    assert_eq!(pricing["request"], "0");
    for field in [
        "image",
        "web_search",
        "internal_reasoning",
        "input_cache_read",
        "input_cache_write",
    ] {
        assert!(pricing[field].is_string(), "{field}");
    }
    assert_eq!(cheap["top_provider"]["context_length"], 128_000);
    assert_eq!(cheap["top_provider"]["is_moderated"], false);
    assert!(cheap["top_provider"]["max_completion_tokens"].is_u64());
    assert_eq!(cheap["per_request_limits"], Value::Null);
    assert!(
        cheap["supported_parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|param| param == "max_tokens")
    );

    let mini = models
        .iter()
        .find(|model| model["id"] == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(mini["pricing"]["prompt"], "0.00000015");
    assert_eq!(mini["pricing"]["completion"], "0.0000006");
    let fee = models
        .iter()
        .find(|model| model["id"] == "mock/with-request-fee")
        .unwrap();
    assert_eq!(fee["pricing"]["request"], "0.0001");
    let free = models
        .iter()
        .find(|model| model["id"] == "mock/free:free")
        .unwrap();
    assert_eq!(free["pricing"]["prompt"], "0");
    assert!(models.iter().any(|model| model["id"] == "mock/fault-429"));
}

#[tokio::test]
async fn offset_and_limit_page_the_list() {
    let mock = Mock::start().await;
    let all = model_ids(&mock, "").await;
    assert!(all.len() > 4);
    assert_eq!(model_ids(&mock, "?limit=2").await, all[..2]);
    assert_eq!(model_ids(&mock, "?offset=1&limit=2").await, all[1..3]);
    assert_eq!(
        model_ids(&mock, &format!("?offset={}", all.len())).await,
        Vec::<String>::new()
    );
    assert_eq!(model_ids(&mock, "?category=programming").await, all);
    assert_eq!(
        model_ids(&mock, "?supported_parameters=max_tokens,temperature").await,
        all
    );
    assert!(
        model_ids(&mock, "?supported_parameters=tools")
            .await
            .is_empty()
    );
    let response = mock
        .client
        .get(mock.url("/models?limit=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}
