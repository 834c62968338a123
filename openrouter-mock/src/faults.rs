//! Fault modes, chosen per request with the `x-mock-fault: <mode>` header or
//! the model id `mock/fault-<mode>` (the header wins).

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::json;

use crate::config::FAULT_MODEL_PREFIX;
use crate::error::ApiError;

/// The header that selects a fault mode.
pub const FAULT_HEADER: &str = "x-mock-fault";

/// The header that sets the `slow` mode's delay, in milliseconds.
pub const DELAY_HEADER: &str = "x-mock-delay-ms";

/// The `slow` mode's delay when [`DELAY_HEADER`] is absent.
const DEFAULT_DELAY_MS: u64 = 50;

/// How many completion tokens `midstream-error` and `cut` send before they fail.
pub const TOKENS_BEFORE_FAILURE: u64 = 3;

/// A way for one request to go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `402`: insufficient credits, before any token.
    PaymentRequired,
    /// `429`: rate limited, with `Retry-After: 1`.
    RateLimited,
    /// `503`: no provider available, with `Retry-After: 1`.
    Unavailable,
    /// `500`: masked internal error.
    Internal,
    /// `midstream-error`: a few tokens, then OpenRouter's error event.
    MidstreamError,
    /// `cut`: a few tokens, then the connection drops mid-body.
    Cut,
    /// `slow`: a delay before the response and between stream chunks.
    Slow,
    /// `no-usage`: no `usage` object at all.
    NoUsage,
    /// `no-cost`: `usage.cost` is null.
    NoCost,
    /// `malformed`: a body (or one SSE event) that is not JSON.
    Malformed,
}

impl Fault {
    /// Parses a mode name such as `"429"` or `"midstream-error"`.
    pub fn parse(mode: &str) -> Option<Fault> {
        let fault = match mode {
            "402" => Fault::PaymentRequired,
            "429" => Fault::RateLimited,
            "503" => Fault::Unavailable,
            "500" => Fault::Internal,
            "midstream-error" => Fault::MidstreamError,
            "cut" => Fault::Cut,
            "slow" => Fault::Slow,
            "no-usage" => Fault::NoUsage,
            "no-cost" => Fault::NoCost,
            "malformed" => Fault::Malformed,
            _ => return None,
        };
        Some(fault)
    }

    /// The fault this request asks for, if any; 400 for an unknown mode.
    pub fn select(headers: &HeaderMap, model_id: &str) -> Result<Option<Fault>, ApiError> {
        if let Some(value) = headers.get(FAULT_HEADER) {
            let mode = value.to_str().unwrap_or_default().trim();
            return match Fault::parse(mode) {
                Some(fault) => Ok(Some(fault)),
                None => Err(ApiError::bad_request(format!(
                    "unknown {FAULT_HEADER} mode {mode:?}"
                ))),
            };
        }
        let Some(mode) = model_id.strip_prefix(FAULT_MODEL_PREFIX) else {
            return Ok(None);
        };
        match Fault::parse(mode) {
            Some(fault) => Ok(Some(fault)),
            None => Err(ApiError::bad_request(format!(
                "{model_id} is not a valid model ID"
            ))),
        }
    }

    /// The error answered instead of a completion, for the faults that fail
    /// before any token.
    pub fn early_error(self) -> Option<ApiError> {
        let error = match self {
            Fault::PaymentRequired => ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "Insufficient credits. Add more using https://openrouter.ai/credits",
            )
            .with_error_type("payment_required")
            .with_metadata("limit_source", json!("openrouter_credits")),
            Fault::RateLimited => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded")
                    .with_error_type("rate_limit_exceeded")
                    .with_retry_after(1)
            }
            Fault::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "No endpoints found that can handle the request at this time",
            )
            .with_error_type("provider_overloaded")
            .with_retry_after(1),
            Fault::Internal => ApiError::internal(),
            _ => return None,
        };
        Some(error)
    }
}

/// The error answered when a non-streaming request meets a fault that
/// strikes mid-generation.
pub fn provider_disconnected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "Provider disconnected unexpectedly",
    )
    .with_error_type("provider_unavailable")
}

/// The `slow` mode's delay: [`DELAY_HEADER`] or 50 ms.
pub fn slow_delay(headers: &HeaderMap) -> Duration {
    let delay_ms = headers
        .get(DELAY_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(DEFAULT_DELAY_MS);
    Duration::from_millis(delay_ms)
}
