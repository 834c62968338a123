//! The single mapping from why the gateway refuses a request to the HTTP status and the JSON
//! body the client sees, in OpenRouter's error shape:
//! `{"error":{"code":402,"message":"...","metadata":{"error_type":"..."}}}`, or on the
//! Anthropic Messages route in Anthropic's:
//! `{"type":"error","error":{"type":"billing_error","message":"..."}}`, with the same status.

use bytes::Bytes;
use domain::services::ErrorShape;
use serde_json::json;

/// A refusal, answered by the gateway without an upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// A low-cardinality label for metrics (`budget`, `unknown_key`, ...).
    pub reason: &'static str,
    /// OpenRouter's `error_type` for the status.
    pub error_type: &'static str,
    /// What happened and what to do; never a secret.
    pub message: String,
    /// Seconds to send as `Retry-After`: a rate limit, a gateway busy with other bodies.
    pub retry_after_seconds: Option<u64>,
}

impl Refusal {
    fn new(
        status: u16,
        reason: &'static str,
        error_type: &'static str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            status,
            reason,
            error_type,
            message: message.into(),
            retry_after_seconds: None,
        }
    }

    pub fn rate_limited(rpm: u32, wait: std::time::Duration) -> Refusal {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut refusal = Refusal::new(
            429,
            "rate_limit",
            "rate_limit_exceeded",
            format!(
                "this key allows {rpm} requests per minute: retry in {seconds} s, or ask for a key with a higher limit"
            ),
        );
        refusal.retry_after_seconds = Some(seconds);
        refusal
    }

    pub fn missing_key() -> Refusal {
        Refusal::new(
            401,
            "missing_key",
            "authentication",
            "no API key: send `Authorization: Bearer kc_...` (or `x-api-key: kc_...`) with your keycap sub-key",
        )
    }

    pub fn malformed_key(detail: &str) -> Refusal {
        Refusal::new(
            401,
            "malformed_key",
            "authentication",
            format!("the API key is not a keycap sub-key ({detail})"),
        )
    }

    pub fn unknown_key() -> Refusal {
        Refusal::new(
            401,
            "unknown_key",
            "authentication",
            "unknown API key: check that you copied the whole keycap sub-key, or ask for a new one",
        )
    }

    pub fn revoked(prefix: &str) -> Refusal {
        Refusal::new(
            403,
            "revoked",
            "permission_denied",
            format!("key {prefix} was revoked: provision a new key on /store"),
        )
    }

    pub fn expired(prefix: &str) -> Refusal {
        Refusal::new(
            403,
            "expired",
            "permission_denied",
            format!("key {prefix} has expired: provision a new key on /store"),
        )
    }

    pub fn paused(reason: &str) -> Refusal {
        Refusal::new(
            402,
            "paused",
            "payment_required",
            format!("{reason}: ask an owner to raise your budget"),
        )
    }

    pub fn master_key_revoked() -> Refusal {
        Refusal::new(
            403,
            "master_key_revoked",
            "permission_denied",
            "the master key behind this key was revoked: ask an owner to add a new one",
        )
    }

    pub fn out_of_scope(model: &str) -> Refusal {
        Refusal::new(
            403,
            "out_of_scope",
            "permission_denied",
            format!(
                "model {model:?} is not allowed for this key: use a model in its scope or provision a key for it"
            ),
        )
    }

    pub fn out_of_scope_router(router: &str) -> Refusal {
        Refusal::new(
            403,
            "out_of_scope",
            "permission_denied",
            format!(
                "{router:?} may pick any model, and this key is limited to some: list the \
                 models it may pick in the auto-router plugin's allowed_models, each one in \
                 the key's scope"
            ),
        )
    }

    pub fn budget(remaining: domain::Money, need: domain::Money) -> Refusal {
        Refusal::new(
            402,
            "budget",
            "payment_required",
            format!(
                "key budget exhausted: {remaining} left, a minimal request needs {need}; ask for a key with a higher cap"
            ),
        )
    }

    pub fn bad_request(reason: &'static str, message: String) -> Refusal {
        Refusal::new(400, reason, "invalid_request", message)
    }

    pub fn headers_too_large(limit: usize) -> Refusal {
        Refusal::new(
            431,
            "headers_too_large",
            "request_header_fields_too_large",
            format!(
                "the request's headers are larger than the gateway's limit of {limit} bytes: send fewer or shorter headers"
            ),
        )
    }

    pub fn too_large(limit: usize) -> Refusal {
        Refusal::new(
            413,
            "too_large",
            "payload_too_large",
            format!("request body is larger than the gateway's limit of {limit} bytes"),
        )
    }

    pub fn body_too_slow(timeout: std::time::Duration) -> Refusal {
        Refusal::new(
            408,
            "body_timeout",
            "request_timeout",
            format!(
                "the request body did not arrive whole within {} ms: send it faster, or ask the \
                 operator to raise gateway.body_read_timeout_ms",
                timeout.as_millis()
            ),
        )
    }

    /// The gateway holds as many request body bytes as it may (`gateway.max_inflight_body_bytes`).
    pub fn bodies_in_flight(retry_after_seconds: u64) -> Refusal {
        let mut refusal = Refusal::new(
            503,
            "bodies_in_flight",
            "provider_unavailable",
            format!(
                "the gateway is holding as many request bodies as it may: retry in \
                 {retry_after_seconds} s"
            ),
        );
        refusal.retry_after_seconds = Some(retry_after_seconds);
        refusal
    }

    pub fn generation_not_found() -> Refusal {
        Refusal::new(
            404,
            "unknown_generation",
            "not_found",
            "no generation with this id was made with this key",
        )
    }

    pub fn not_found(message: String) -> Refusal {
        Refusal::new(404, "unknown_route", "not_found", message)
    }

    pub fn wrong_method(message: String) -> Refusal {
        Refusal::new(405, "wrong_method", "invalid_request", message)
    }

    pub fn unavailable(reason: &'static str, message: String) -> Refusal {
        Refusal::new(503, reason, "provider_unavailable", message)
    }

    pub fn bad_gateway(message: String) -> Refusal {
        Refusal::new(502, "upstream_unreachable", "provider_unavailable", message)
    }

    /// The JSON body, in OpenRouter's shape.
    pub fn body(&self) -> Bytes {
        self.body_in(ErrorShape::OpenAi)
    }

    /// The JSON body in the shape the route's clients parse.
    pub fn body_in(&self, shape: ErrorShape) -> Bytes {
        error_body_in(shape, self.status, &self.message, self.error_type)
    }
}

/// An OpenRouter-shaped error body.
pub fn error_body(status: u16, message: &str, error_type: &str) -> Bytes {
    error_body_in(ErrorShape::OpenAi, status, message, error_type)
}

/// An error body in `shape`: OpenRouter's with `error_type` in its metadata, or Anthropic's,
/// whose `error.type` follows from the status as Anthropic's API documents it.
pub fn error_body_in(shape: ErrorShape, status: u16, message: &str, error_type: &str) -> Bytes {
    let body = match shape {
        ErrorShape::OpenAi => {
            json!({ "error": { "code": status, "message": message, "metadata": { "error_type": error_type } } })
        }
        ErrorShape::Anthropic => {
            json!({ "type": "error", "error": { "type": anthropic_error_type(status), "message": message } })
        }
    };
    Bytes::from(body.to_string())
}

/// Anthropic's `error.type` for an HTTP status (<https://docs.anthropic.com/en/api/errors>).
fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 | 503 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_take_the_shape_of_their_route() {
        let refusal = Refusal::budget(domain::Money::ZERO, domain::Money::from_nanos(5));
        let openai: serde_json::Value = serde_json::from_slice(&refusal.body()).unwrap();
        assert_eq!(openai["error"]["code"], 402);
        assert_eq!(
            openai["error"]["metadata"]["error_type"],
            "payment_required"
        );
        let anthropic: serde_json::Value =
            serde_json::from_slice(&refusal.body_in(ErrorShape::Anthropic)).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "billing_error");
        assert_eq!(anthropic["error"]["message"], refusal.message.as_str());
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (404, "not_found_error"),
            (408, "invalid_request_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
        ] {
            assert_eq!(anthropic_error_type(status), kind, "{status}");
        }
    }
}
