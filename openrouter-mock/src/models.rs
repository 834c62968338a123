//! `GET /api/v1/models`: the price table in OpenRouter's model shape.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::MockModel;
use crate::error::ApiError;
use crate::state::MockState;

/// Unix seconds reported as every model's `created`: fixed, so `/models`
/// answers the same bytes on every run.
const MODELS_CREATED: i64 = 1_767_225_600;

/// The parameters every mock model claims to support.
const SUPPORTED_PARAMETERS: [&str; 8] = [
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
];

/// `GET /models?offset=&limit=&category=&supported_parameters=`. No key is
/// needed. `category` is accepted and ignored; `supported_parameters` keeps
/// the models that support every listed parameter.
pub async fn list_models(
    State(state): State<MockState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let offset = count_param(&query, "offset")?.unwrap_or(0);
    let limit = count_param(&query, "limit")?.unwrap_or(usize::MAX);
    let wanted: Vec<&str> = query
        .get("supported_parameters")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<Value> = state
        .config()
        .models
        .iter()
        .map(model_json)
        .chain(std::iter::once(auto_router_json()))
        .filter(|_| {
            wanted
                .iter()
                .all(|name| SUPPORTED_PARAMETERS.contains(name))
        })
        .skip(offset)
        .take(limit)
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

/// `GET /embeddings/models`: the embedding models, in the same shape. No key is needed.
pub async fn list_embedding_models(State(state): State<MockState>) -> Response {
    let data: Vec<Value> = state
        .config()
        .embedding_models
        .iter()
        .map(model_json)
        .collect();
    Json(json!({ "data": data })).into_response()
}

/// `GET /providers`: the one provider the mock plays. No key is needed.
pub async fn list_providers() -> Response {
    Json(json!({ "data": [{
        "name": "Mock",
        "slug": "mock",
        "privacy_policy_url": null,
        "terms_of_service_url": null,
        "status_page_url": null,
    }] }))
    .into_response()
}

/// One model in OpenRouter's `Model` shape.
pub fn model_json(model: &MockModel) -> Value {
    let name = model.id.split('/').next_back().unwrap_or(&model.id);
    json!({
        "id": model.id,
        "canonical_slug": model.id,
        "hugging_face_id": null,
        "name": format!("Mock: {name}"),
        "created": MODELS_CREATED,
        "description": "A deterministic model served by openrouter-mock.",
        "context_length": model.context_length,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": null,
        },
        "pricing": {
            "prompt": model.prompt_price,
            "completion": model.completion_price,
            "request": model.request_price,
            "image": "0",
            "web_search": "0",
            "internal_reasoning": "0",
            "input_cache_read": "0",
            "input_cache_write": "0",
        },
        "top_provider": {
            "context_length": model.context_length,
            "max_completion_tokens": model.max_completion_tokens,
            "is_moderated": false,
        },
        "per_request_limits": null,
        "supported_parameters": SUPPORTED_PARAMETERS,
        "default_parameters": {},
        "expiration_date": null,
    })
}

fn count_param(query: &HashMap<String, String>, name: &str) -> Result<Option<usize>, ApiError> {
    let Some(text) = query.get(name) else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("{name} must be a non-negative integer")))
}

/// `openrouter/auto`, listed as OpenRouter lists its routers: with the price `-1`, since it is
/// billed at the price of the model it picks.
fn auto_router_json() -> Value {
    json!({
        "id": crate::routing::AUTO_ROUTER,
        "name": "Auto Router",
        "context_length": 2_000_000,
        "pricing": { "prompt": "-1", "completion": "-1" },
        "top_provider": { "context_length": null, "max_completion_tokens": null },
    })
}
