//! The Anthropic Messages API's shapes: the `message` object, its stream of named events
//! (`message_start` with the input usage, `content_block_*`, `message_delta` with the output
//! usage, `message_stop`), and Anthropic's error body.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::request::Completion;

/// Anthropic's `stop_reason` for the completion.
fn stop_reason(completion: &Completion) -> &'static str {
    if completion.finish_reason == "length" {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// The whole `message`, for a request that does not stream.
pub fn message(completion: &Completion) -> Value {
    json!({
        "id": completion.id,
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": [{ "type": "text", "text": completion.text() }],
        "stop_reason": stop_reason(completion),
        "stop_sequence": null,
        "usage": completion.usage_json().unwrap_or(Value::Null),
    })
}

/// One event: `event:` and `data:` lines.
fn event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// `message_start` (the input usage, and an output count of 1 that `message_delta` replaces)
/// and the text block's start.
pub fn start_events(completion: &Completion) -> String {
    let usage = match completion.usage_json_after(1) {
        Some(Value::Object(mut usage)) => {
            usage.remove("cost");
            Value::Object(usage)
        }
        _ => json!({ "input_tokens": completion.prompt_tokens, "output_tokens": 1 }),
    };
    let message = json!({
        "id": completion.id,
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": [],
        "stop_reason": null,
        "stop_sequence": null,
        "usage": usage,
    });
    [
        event(
            "message_start",
            json!({ "type": "message_start", "message": message }),
        ),
        event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        ),
        event("ping", json!({ "type": "ping" })),
    ]
    .concat()
}

/// One token's text.
pub fn delta_event(text: &str) -> String {
    event(
        "content_block_delta",
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } }),
    )
}

/// The text block's end.
pub fn block_stop_event() -> String {
    event(
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": 0 }),
    )
}

/// `message_delta`: the stop reason and the output usage (no cost: OpenRouter documents none
/// in this event).
pub fn message_delta_event(completion: &Completion) -> String {
    let mut data = json!({
        "type": "message_delta",
        "delta": { "stop_reason": stop_reason(completion), "stop_sequence": null },
    });
    // The `no-usage` fault leaves the usage out.
    if let (Some(_), Some(data)) = (completion.usage_json(), data.as_object_mut()) {
        data.insert(
            "usage".into(),
            json!({ "output_tokens": completion.completion_tokens }),
        );
    }
    event("message_delta", data)
}

/// `message_stop`.
pub fn stop_event() -> String {
    event("message_stop", json!({ "type": "message_stop" }))
}

/// An `error` event mid-stream.
pub fn error_event(message: &str) -> String {
    event(
        "error",
        json!({ "type": "error", "error": { "type": "api_error", "message": message } }),
    )
}

/// An error in Anthropic's shape, with the same status.
pub fn error_response(error: ApiError) -> Response {
    let kind = match error.status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    let body = json!({ "type": "error", "error": { "type": kind, "message": error.message } });
    let mut response = (error.status, axum::Json(body)).into_response();
    if let Some(seconds) = error.retry_after_seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
