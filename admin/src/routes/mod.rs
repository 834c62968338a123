//! The page handlers, one module per page, with handlers named `get` and `post_<action>`.
//! `auth` holds the pages around signing in: setup, sign-in, invites, the account page.

pub mod audit;
pub mod auth;
pub mod dashboard;
pub mod members;
pub mod my_keys;
pub mod store;
pub mod vault;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};

use crate::state::AppState;

/// The `?notice=` of a page reached after a change: a fixed code, never free text, so a link
/// cannot put words on a page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct NoticeQuery {
    #[serde(default)]
    pub notice: Option<String>,
}

impl NoticeQuery {
    pub fn text(&self) -> Option<String> {
        let text = match self.notice.as_deref()? {
            "key_revoked" => {
                "Key revoked; its unspent cap went back to the member's budget (what gateways still hold for it, once they give it back)."
            }
            "key_cap_set" => {
                "Cap changed: a raise came from the member's budget, a cut went back to it."
            }
            "master_key_added" => "Master key sealed and stored.",
            "master_key_rotated" => "Master key rotated: keys that use it now use the new secret.",
            "master_key_revoked" => "Master key revoked.",
            "budget_set" => "Budget saved.",
            "role_changed" => "Role changed.",
            "member_removed" => "Member removed; their keys were revoked.",
            "password_changed" => "Password changed; your other sessions were signed out.",
            "password_reset" => "Your new password is set; your other sessions were signed out.",
            "token_revoked" => "Admin token revoked.",
            "invite_cancelled" => "Invite cancelled: its link no longer works.",
            "org_switched" => "Switched org.",
            "joined" => "Welcome: you joined the org.",
            "welcome" => "keycap is set up. Add a master key to the vault, then invite members.",
            _ => return None,
        };
        Some(text.to_string())
    }
}

/// A redirect after a change, with a notice code for the next page.
pub fn done(path: &str, notice: &str) -> Response {
    Redirect::to(&format!("{path}?notice={notice}")).into_response()
}

/// The client's address for sign-in throttling (`client_addr`): the connection's peer, or the
/// address a trusted proxy forwarded for; an IPv6 client by its /64.
pub struct ClientIp(pub String);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip())
        else {
            return Ok(ClientIp("unknown".into()));
        };
        // Every X-Forwarded-For line, in order: a proxy may add its own line after the
        // client's rather than extend it. Bytes that are not text become U+FFFD, which no
        // address parses as, so the walk stops there.
        let forwarded: Vec<String> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|line| String::from_utf8_lossy(line.as_bytes()).into_owned())
            .collect();
        let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
        let client =
            crate::client_addr::client(peer, forwarded.as_deref(), &state.config.trusted_proxies);
        Ok(ClientIp(crate::client_addr::throttle_key(client)))
    }
}

/// `axum::Form` whose refusal is our error page rather than plain text.
pub struct Form<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Form<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = crate::error::AppError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(value)) => Ok(Form(value)),
            Err(rejection) => Err(crate::error::AppError::BadRequest(format!(
                "the form could not be read: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// `axum::extract::Query` whose refusal is our error page rather than plain text.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = crate::error::AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(crate::error::AppError::BadRequest(format!(
                "the address has a bad query parameter: {}",
                rejection.body_text()
            ))),
        }
    }
}
