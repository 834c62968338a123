//! `POST /chat/completions` and `POST /completions`: checks in OpenRouter's
//! order (key, body, model, spend limits, early faults), then a JSON answer
//! or an SSE stream.

use std::io;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::faults::{Fault, provider_disconnected};
use crate::request::{Api, Completion};
use crate::state::{MockState, RecordedRequest};
use crate::stream;

/// The response header that names the generation.
pub const GENERATION_ID_HEADER: &str = "x-generation-id";

/// `POST /api/v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(Api::Chat, state, headers, body).await
}

/// `POST /api/v1/completions`.
pub async fn completions(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(Api::Completions, state, headers, body).await
}

async fn infer(api: Api, state: MockState, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body);
    state.record_inference_request(RecordedRequest {
        path: api.path().to_owned(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        headers: headers.clone(),
        body: parsed.as_ref().map_or(Value::Null, Value::clone),
    });
    let caller = match state.authenticate_inference(&headers) {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    let body = match parsed {
        Ok(body) => body,
        Err(error) => {
            return ApiError::bad_request(format!("Invalid JSON in request body: {error}"))
                .into_response();
        }
    };
    let completion = match Completion::plan(api, state.config(), &headers, &body) {
        Ok(completion) => completion,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = state.check_spend_allowed(&caller) {
        return error.into_response();
    }
    if let Some(error) = completion.fault.and_then(Fault::early_error) {
        return error.into_response();
    }
    if completion.stream {
        return stream::respond(state, caller, completion);
    }
    tokio::time::sleep(completion.delay).await;
    respond_json(&state, &caller, &completion)
}

/// The non-streaming answer, settled as soon as it is built.
fn respond_json(state: &MockState, caller: &Caller, completion: &Completion) -> Response {
    match completion.fault {
        Some(Fault::MidstreamError) => return provider_disconnected().into_response(),
        Some(Fault::Cut) => return hang_up(),
        _ => {}
    }
    let mut body = completion_json(completion);
    if let (Some(usage), Some(body)) = (completion.usage_json(), body.as_object_mut()) {
        body.insert("usage".to_owned(), usage);
    }
    let record = completion.record(
        completion.completion_tokens,
        Some(completion.finish_reason),
        false,
    );
    state.settle(caller, record);
    let mut response = if completion.fault == Some(Fault::Malformed) {
        let text = body.to_string();
        let truncated = text[..text.floor_char_boundary(text.len() / 2)].to_owned();
        let mut response = Response::new(Body::from(truncated));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    } else {
        Json(body).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&completion.id) {
        response.headers_mut().insert(GENERATION_ID_HEADER, value);
    }
    response
}

fn completion_json(completion: &Completion) -> Value {
    let finish_reason = completion.finish_reason;
    let (object, choice) = match completion.api {
        Api::Chat => (
            "chat.completion",
            json!({
                "index": 0,
                "logprobs": null,
                "finish_reason": finish_reason,
                "native_finish_reason": finish_reason,
                "message": {
                    "role": "assistant",
                    "content": completion.text(),
                    "refusal": null,
                    "reasoning": null,
                },
            }),
        ),
        Api::Completions => (
            "text_completion",
            json!({
                "index": 0,
                "logprobs": null,
                "finish_reason": finish_reason,
                "native_finish_reason": finish_reason,
                "text": completion.text(),
            }),
        ),
    };
    json!({
        "id": completion.id,
        "provider": "Mock",
        "model": completion.model,
        "object": object,
        "created": completion.created,
        "system_fingerprint": null,
        "choices": [choice],
    })
}

/// A response whose body fails before its first byte: hyper then closes
/// the connection without having written the status line, so the client
/// sees the connection drop with no response at all.
fn hang_up() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, io::Error>(io::Error::other("mock fault: cut"))
    });
    let mut response = Response::new(Body::from_stream(failing));
    *response.status_mut() = StatusCode::OK;
    response
}
