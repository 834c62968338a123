//! The one mapping from what went wrong to an HTTP status, a page and a JSON body.
//!
//! Pages get [`AppError`], the JSON API gets [`ApiError`]; both share [`AppError::status`]. A
//! 4xx says what was wrong and what to do. A 5xx says only that something failed, with a
//! request id; the full cause is logged once, here, under the same id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use crate::views;

/// An error a page handler returns.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No valid session: pages redirect to sign-in, the API answers 401.
    #[error("sign in first")]
    NotSignedIn { next: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// The status of each kind of error: the only place it is decided.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::NotSignedIn { .. } => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An error the person can act on has a message; an internal one does not leak its cause.
    fn public_message(&self, request_id: &str) -> String {
        match self {
            AppError::Internal(_) => format!(
                "something went wrong on our side and nothing was changed; if it keeps happening, give an operator this request id: {request_id}"
            ),
            other => other.to_string(),
        }
    }

    fn log(&self) -> String {
        let request_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        if let AppError::Internal(cause) = self {
            tracing::error!(request.id = %request_id, error = %cause, "admin request failed");
        }
        request_id
    }

    pub fn forbidden_owner() -> AppError {
        AppError::Forbidden("only an owner of this org can open this page".into())
    }
}

impl From<db::Error> for AppError {
    fn from(err: db::Error) -> Self {
        match err {
            db::Error::NotFound { .. } => AppError::NotFound(err.to_string()),
            db::Error::Conflict(_) => AppError::Conflict(err.to_string()),
            db::Error::Invalid(_) | db::Error::Budget(_) => AppError::BadRequest(err.to_string()),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<db::PoolError> for AppError {
    fn from(err: db::PoolError) -> Self {
        db::Error::from(err).into()
    }
}

impl From<askama::Error> for AppError {
    fn from(err: askama::Error) -> Self {
        AppError::Internal(format!("rendering a page: {err}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::NotSignedIn { next } = &self {
            let target = if next.is_empty() || next == "/" {
                "/login".to_string()
            } else {
                format!("/login?next={}", urlencode(next))
            };
            return Redirect::to(&target).into_response();
        }
        let request_id = self.log();
        let status = self.status();
        let page = views::ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            message: self.public_message(&request_id),
        };
        views::render(status, &page)
    }
}

/// An error a JSON API handler returns: the same errors, as
/// `{"error": {"status": 400, "message": "...", "fields": {...}}}`.
#[derive(Debug)]
pub struct ApiError {
    pub error: AppError,
    /// Per-field messages for a bad request body.
    pub fields: Vec<(&'static str, String)>,
}

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(err: E) -> Self {
        ApiError {
            error: err.into(),
            fields: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = self.error.log();
        let status = self.error.status();
        let message = match &self.error {
            AppError::NotSignedIn { .. } => {
                "sign in, or send an admin token as Authorization: Bearer kca_...".to_string()
            }
            other => other.public_message(&request_id),
        };
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .into_iter()
            .map(|(field, message)| (field.to_string(), message.into()))
            .collect();
        let mut body = json!({ "error": { "status": status.as_u16(), "message": message } });
        if !fields.is_empty() {
            body["error"]["fields"] = fields.into();
        }
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Percent-encodes a string for a query parameter.
pub fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
