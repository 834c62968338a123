//! Served generations and `GET /api/v1/generation?id=`.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;
use crate::pricing::{Cost, nanos_to_usd};
use crate::state::MockState;

/// One served (or abandoned) generation, as `GET /generation` reports it.
#[derive(Debug, Clone)]
pub struct GenerationRecord {
    /// `gen-…`, as in `X-Generation-Id`.
    pub id: String,
    /// The provider that served it.
    pub provider: &'static str,
    /// The model id served.
    pub model: String,
    /// `"chat"` or `"completions"`.
    pub api_type: &'static str,
    /// When the request arrived.
    pub created_at: OffsetDateTime,
    /// Before this instant `GET /generation` answers 404, as OpenRouter does
    /// while a generation's stats are not ready yet.
    pub available_at: Instant,
    /// The answer was an SSE stream.
    pub streamed: bool,
    /// The client hung up before the stream ended.
    pub cancelled: bool,
    /// `"stop"`, `"length"`, `"error"`, or `None` when cancelled.
    pub finish_reason: Option<&'static str>,
    /// Billed prompt tokens.
    pub prompt_tokens: u64,
    /// Billed completion tokens: those actually sent.
    pub completion_tokens: u64,
    /// What was charged.
    pub cost: Cost,
    /// From the request to the settlement.
    pub latency_ms: u64,
    /// The same as `latency_ms`: the mock has no queue.
    pub generation_time_ms: u64,
    /// The request's `HTTP-Referer` header.
    pub http_referer: Option<String>,
    /// The request's `User-Agent` header.
    pub user_agent: Option<String>,
}

impl GenerationRecord {
    /// The `data` object of `GET /generation`.
    pub fn to_json(&self) -> Value {
        let total_cost = nanos_to_usd(self.cost.total_nanousd);
        let mut data = json!({
            "id": self.id,
            "upstream_id": format!("mock-{}", self.id),
            "request_id": format!("req-{}", self.id.trim_start_matches("gen-")),
            "total_cost": total_cost,
            "usage": total_cost,
            "upstream_inference_cost": null,
            "cache_discount": null,
            "is_byok": false,
            "created_at": self.created_at.format(&Rfc3339).unwrap_or_default(),
            "model": self.model,
            "provider_name": self.provider,
            "router": null,
            "api_type": self.api_type,
            "app_id": null,
            "streamed": self.streamed,
            "cancelled": self.cancelled,
            "finish_reason": self.finish_reason,
            "native_finish_reason": self.finish_reason,
            "latency": self.latency_ms,
            "moderation_latency": null,
            "generation_time": self.generation_time_ms,
            "tokens_prompt": self.prompt_tokens,
            "tokens_completion": self.completion_tokens,
            "native_tokens_prompt": self.prompt_tokens,
            "native_tokens_completion": self.completion_tokens,
            "native_tokens_reasoning": 0,
            "native_tokens_cached": 0,
            "native_tokens_completion_images": 0,
        });
        // Split in two: one `json!` this large exceeds the macro recursion limit.
        let rest = json!({
            "num_media_prompt": null,
            "num_media_completion": null,
            "num_input_audio_prompt": null,
            "num_search_results": null,
            "num_fetches": null,
            "web_search_engine": null,
            "origin": self.http_referer.clone().unwrap_or_default(),
            "http_referer": self.http_referer,
            "user_agent": self.user_agent,
            "external_user": null,
            "session_id": null,
            "service_tier": null,
            "data_region": null,
            "preset_id": null,
            "workspace_id": null,
            "provider_responses": null,
            "response_cache_source_id": null,
        });
        if let (Some(data), Value::Object(rest)) = (data.as_object_mut(), rest) {
            data.extend(rest);
        }
        data
    }
}

/// `GET /generation?id=`: the generation's stats, or 404 when the id is
/// unknown or its stats are not ready yet.
pub async fn get_generation(
    State(state): State<MockState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(error) = state.authenticate(&headers, "No auth credentials found") {
        return error.into_response();
    }
    let Some(id) = query.get("id").filter(|id| !id.is_empty()) else {
        return ApiError::bad_request("id is required").into_response();
    };
    match state.generation(id) {
        Some(record) if record.available_at <= Instant::now() => {
            Json(json!({ "data": record.to_json() })).into_response()
        }
        _ => ApiError::not_found("Generation not found").into_response(),
    }
}
