//! OpenRouter's error body, `{"error":{"code":N,"message":"…","metadata":{…}}}`,
//! with the HTTP status equal to `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answered in OpenRouter's shape.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status, also written as `error.code`.
    pub status: StatusCode,
    /// `error.message`.
    pub message: String,
    /// `error.metadata`, when the error carries any.
    pub metadata: Option<Value>,
    /// Seconds for a `Retry-After` header, when the client may retry.
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    /// An error with this status and message and no metadata.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            metadata: None,
            retry_after_seconds: None,
        }
    }

    /// 400 with `metadata.error_type` `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message).with_error_type("invalid_request")
    }

    /// 401, as for a missing, unknown, disabled or expired key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403 for a key that may not use a management endpoint.
    pub fn management_only() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "Only management keys can perform this operation",
        )
    }

    /// 404 with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message).with_error_type("not_found")
    }

    /// 500 with OpenRouter's masked message.
    pub fn internal() -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            .with_error_type("server")
    }

    /// Sets `metadata.error_type`, keeping any other metadata.
    pub fn with_error_type(self, error_type: &str) -> Self {
        self.with_metadata("error_type", json!(error_type))
    }

    /// Sets one `metadata` field.
    pub fn with_metadata(mut self, field: &str, value: Value) -> Self {
        let mut metadata = match self.metadata.take() {
            Some(Value::Object(metadata)) => metadata,
            _ => serde_json::Map::new(),
        };
        metadata.insert(field.to_owned(), value);
        self.metadata = Some(Value::Object(metadata));
        self
    }

    /// Adds a `Retry-After` header.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.status.as_u16(), "message": self.message });
        if let (Some(metadata), Some(error)) = (&self.metadata, error.as_object_mut()) {
            error.insert("metadata".to_owned(), metadata.clone());
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
