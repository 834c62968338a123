//! Cross-site request forgery protection for every state-changing request.
//!
//! A request with a session must carry the session's CSRF token: as the `csrf` field of a form,
//! or in the `X-CSRF-Token` header for the JSON API. Requests with an admin token carry no
//! cookie, so they need none. Any request whose `Origin` header names another site is refused,
//! which also covers the forms used before a session exists (sign-in, setup, invites), which
//! act only with what they carry (a password or the setup token).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, AppError};
use crate::session::Authenticated;
use crate::state::AppState;

/// The `org` field of a submitted form: the org the page was showing. The `Viewer` extractor
/// refuses the request when the session has since switched to another org (in another tab),
/// so that a stale page never acts on the wrong org.
#[derive(Clone)]
pub struct FormOrg(pub String);

/// The most a form body may hold.
pub const MAX_FORM_BYTES: usize = 256 * 1024;
/// The header that carries the CSRF token for JSON requests.
pub const HEADER: &str = "x-csrf-token";

/// Compares two tokens in time that does not depend on where they differ.
pub fn same(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(is_api: bool, error: AppError) -> Response {
    if is_api {
        ApiError::from(error).into_response()
    } else {
        error.into_response()
    }
}

/// The `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_len = rest.find('/').unwrap_or(rest.len());
            &url[..scheme.len() + 3 + host_len]
        }
        None => url,
    }
}

/// Middleware: refuses a state-changing request without the right token or from another site.
pub async fn protect(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let is_api = request.uri().path().starts_with("/api/");
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest);
        // Our own pages post with an Origin of the Host they were served from, or, behind a
        // proxy that rewrites Host, of the public URL.
        let public = origin.to_str().ok() == Some(origin_of(state.config.base()));
        if !public && (host.is_none() || origin_host != host) {
            return refuse(
                is_api,
                AppError::Forbidden(
                    "this request came from another site and was refused: submit the form from keycap's own pages".into(),
                ),
            );
        }
    }
    // Sign-in, setup, invite acceptance and password reset act with what the form or link
    // carries (a password, the setup token, the link's token), never with the session's
    // authority, so a stale session cookie must not block them; the Origin check above still
    // applies.
    let path = request.uri().path();
    if path == "/login"
        || path == "/setup"
        || path.starts_with("/invite/")
        || path.starts_with("/reset/")
    {
        return next.run(request).await;
    }
    let expected = match request.extensions().get::<Authenticated>() {
        Some(Authenticated::Session { session, .. }) => session.csrf_token.clone(),
        // An admin token is sent deliberately; an anonymous request changes nothing without
        // signing in first, except the sign-in and invite forms themselves.
        Some(Authenticated::AdminToken { .. }) | None => return next.run(request).await,
    };
    let missing = || {
        AppError::Forbidden(
            "the form's security token is missing or out of date: reload the page and try again"
                .into(),
        )
    };
    if let Some(given) = request.headers().get(HEADER) {
        if given.to_str().is_ok_and(|given| same(&expected, given)) {
            return next.run(request).await;
        }
        return refuse(is_api, missing());
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return refuse(is_api, missing());
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(
                is_api,
                AppError::BadRequest(format!(
                    "the form is larger than {} KiB",
                    MAX_FORM_BYTES / 1024
                )),
            );
        }
    };
    let given = form_field(&bytes, "csrf");
    if !given.is_some_and(|given| same(&expected, &given)) {
        return refuse(is_api, missing());
    }
    let mut request = Request::from_parts(parts, Body::from(bytes.clone()));
    if let Some(org) = form_field(&bytes, "org") {
        request.extensions_mut().insert(FormOrg(org));
    }
    next.run(request).await
}

/// The first value of `name` in an urlencoded form body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_found_and_decoded() {
        let check = |body: &str, name: &str, expected: Option<&str>| {
            assert_eq!(
                form_field(body.as_bytes(), name).as_deref(),
                expected,
                "{body}"
            );
        };
        check("csrf=abc&x=1", "csrf", Some("abc"));
        check("x=1&csrf=a%2Db+c", "csrf", Some("a-b c"));
        check("x=1", "csrf", None);
        check("csrf", "csrf", Some(""));
        check("csrf=%zz", "csrf", Some("%zz"));
        check("csrf=%4", "csrf", Some("%4"));
    }

    #[test]
    fn origins_are_scheme_and_authority() {
        assert_eq!(
            origin_of("https://keycap.example/admin"),
            "https://keycap.example"
        );
        assert_eq!(origin_of("http://127.0.0.1:3000"), "http://127.0.0.1:3000");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }
}
