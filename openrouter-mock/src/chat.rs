//! The inference endpoints (`POST /chat/completions`, `/completions`,
//! `/responses`, `/messages`, `/embeddings`): checks in OpenRouter's order
//! (key, body, model, spend limits, early faults), then a JSON answer or an
//! SSE stream in the endpoint's own shape. `/messages` answers errors in
//! Anthropic's shape.

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
use crate::{embeddings, messages, responses, stream};

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

/// `POST /api/v1/responses`.
pub async fn create_response(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(Api::Responses, state, headers, body).await
}

/// `POST /api/v1/messages`.
pub async fn create_message(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(Api::Messages, state, headers, body).await
}

/// `POST /api/v1/embeddings`.
pub async fn create_embeddings(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(Api::Embeddings, state, headers, body).await
}

async fn infer(api: Api, state: MockState, headers: HeaderMap, body: Bytes) -> Response {
    let response = answer(api, state, headers, body).await;
    match response {
        Ok(response) => response,
        Err(error) if api == Api::Messages => messages::error_response(error),
        Err(error) => error.into_response(),
    }
}

async fn answer(
    api: Api,
    state: MockState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
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
    let caller = state.authenticate_inference(&headers)?;
    let body = parsed
        .map_err(|error| ApiError::bad_request(format!("Invalid JSON in request body: {error}")))?;
    let completion = Completion::plan(api, state.config(), &headers, &body)?;
    state.check_spend_allowed(&caller)?;
    if let Some(error) = completion.fault.and_then(Fault::early_error) {
        return Err(error);
    }
    if completion.stream {
        return Ok(stream::respond(state, caller, completion));
    }
    tokio::time::sleep(completion.delay).await;
    respond_json(&state, &caller, &completion)
}

/// The non-streaming answer, settled as soon as it is built.
fn respond_json(
    state: &MockState,
    caller: &Caller,
    completion: &Completion,
) -> Result<Response, ApiError> {
    match completion.fault {
        Some(Fault::MidstreamError) => return Err(provider_disconnected()),
        Some(Fault::Cut) => return Ok(hang_up()),
        _ => {}
    }
    let body = match (completion.api, completion.embedding) {
        (Api::Embeddings, Some(ask)) => embeddings::body(completion, ask),
        (Api::Responses, _) => responses::response(completion, true, completion.usage_json()),
        (Api::Messages, _) => messages::message(completion),
        _ => {
            let mut body = completion_json(completion);
            if let (Some(usage), Some(body)) = (completion.usage_json(), body.as_object_mut()) {
                body.insert("usage".to_owned(), usage);
            }
            body
        }
    };
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
    Ok(response)
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
        _ => (
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
