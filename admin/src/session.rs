//! Who is asking: sessions from the `keycap_session` cookie, admin tokens from
//! `Authorization: Bearer kca_...` on `/api/`, and the [`Viewer`] extractor built from either.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use db::Actor;
use db::accounts::{OrgMembership, Session, User};
use domain::Role;
use domain::token::hash_token;

use crate::error::{ApiError, AppError};
use crate::state::AppState;

/// The session cookie's name over http.
pub const COOKIE: &str = "keycap_session";
/// Its name over https: the `__Host-` prefix makes browsers refuse the cookie unless it is
/// Secure, for this host only and for every path, so a sibling subdomain cannot plant one.
pub const SECURE_COOKIE: &str = "__Host-keycap_session";

/// The session cookie's name for this app.
pub fn cookie_name(state: &AppState) -> &'static str {
    if state.config.secure_cookies() {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}
pub use domain::token::ADMIN_TOKEN_PREFIX;

/// How the request authenticated, put in the request's extensions by [`load`].
#[derive(Clone)]
pub enum Authenticated {
    Session {
        token_hash: [u8; 32],
        session: Session,
    },
    AdminToken {
        user: User,
        org_id: uuid::Uuid,
    },
}

/// The value of a cookie in the request, if present.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value that starts a session.
pub fn session_cookie(token: &str, state: &AppState) -> String {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        cookie_name(state),
        state.config.session_ttl.as_secs()
    )
}

/// A `Set-Cookie` value that ends a session.
pub fn clear_cookie(state: &AppState) -> String {
    let secure = if state.config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}",
        cookie_name(state)
    )
}

/// Middleware: finds the session or admin token of the request, if any.
pub async fn load(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match authenticate(&state, request.headers().clone(), &path).await {
        Ok(Some(authenticated)) => {
            request.extensions_mut().insert(authenticated);
        }
        Ok(None) => {}
        Err(err) if path.starts_with("/api/") => {
            return ApiError::from(err).into_response();
        }
        Err(err) => return err.into_response(),
    }
    next.run(request).await
}

async fn authenticate(
    state: &AppState,
    headers: HeaderMap,
    path: &str,
) -> Result<Option<Authenticated>, AppError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|_| path.starts_with("/api/"))
        .map(str::to_string);
    let authenticated = if let Some(token) = bearer {
        let client = state.pool.get().await?;
        let found = if token.starts_with(ADMIN_TOKEN_PREFIX) {
            db::accounts::find_admin_token(&client, &hash_token(&token), state.clock.now()).await?
        } else {
            None
        };
        match found {
            Some((user, org_id)) => Some(Authenticated::AdminToken { user, org_id }),
            None => {
                return Err(AppError::NotSignedIn {
                    next: String::new(),
                });
            }
        }
    } else if let Some(token) = cookie(&headers, cookie_name(state)) {
        let token_hash = hash_token(token);
        let client = state.pool.get().await?;
        db::accounts::find_session(&client, &token_hash, state.clock.now())
            .await?
            .map(|session| Authenticated::Session {
                token_hash,
                session,
            })
    } else {
        None
    };
    Ok(authenticated)
}

/// The signed-in user, the orgs they belong to and the org they are working in.
#[derive(Clone)]
pub struct Viewer {
    pub user: User,
    pub orgs: Vec<OrgMembership>,
    /// The org the user is working in; `None` when they belong to no org any more.
    pub current: Option<OrgMembership>,
    /// The session's CSRF token (empty for an admin token, which needs none).
    pub csrf_token: String,
    /// The session's hash, or `None` for an admin token.
    pub session_hash: Option<[u8; 32]>,
}

impl Viewer {
    /// The membership in the current org, or 403 when the user belongs to none.
    pub fn member(&self) -> Result<&OrgMembership, AppError> {
        self.current.as_ref().ok_or_else(|| {
            AppError::Forbidden(
                "you are not a member of any org: ask an owner for an invite".into(),
            )
        })
    }

    /// The membership in the current org when the user is an owner there, or 403.
    pub fn owner(&self) -> Result<&OrgMembership, AppError> {
        let member = self.member()?;
        if member.role != Role::Owner {
            return Err(AppError::forbidden_owner());
        }
        Ok(member)
    }

    /// The ledger's actor for changes this user makes.
    pub fn actor(&self) -> Actor {
        Actor::User(self.user.id)
    }

    pub fn is_owner(&self) -> bool {
        self.current.as_ref().is_some_and(|m| m.role == Role::Owner)
    }
}

async fn viewer_from_parts(parts: &Parts, state: &AppState) -> Result<Viewer, AppError> {
    let viewer = load_viewer(parts, state).await?;
    if let Some(crate::csrf::FormOrg(org)) = parts.extensions.get::<crate::csrf::FormOrg>() {
        let current = viewer.current.as_ref().map(|m| m.org.id.to_string());
        let exempt = matches!(parts.uri.path(), "/orgs/switch" | "/logout");
        if !exempt && current.as_deref() != Some(org.as_str()) {
            return Err(AppError::Conflict(
                "you switched to another org in another tab since this page was loaded: reload the page and try again".into(),
            ));
        }
    }
    Ok(viewer)
}

async fn load_viewer(parts: &Parts, state: &AppState) -> Result<Viewer, AppError> {
    let next = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let authenticated = parts
        .extensions
        .get::<Authenticated>()
        .cloned()
        .ok_or(AppError::NotSignedIn { next })?;
    let client = state.pool.get().await?;
    match authenticated {
        Authenticated::Session {
            token_hash,
            session,
        } => {
            let orgs = db::accounts::memberships_of(&client, session.user.id).await?;
            let current = orgs
                .iter()
                .find(|m| Some(m.org.id) == session.current_org_id)
                .or_else(|| orgs.first())
                .cloned();
            Ok(Viewer {
                user: session.user,
                orgs,
                current,
                csrf_token: session.csrf_token,
                session_hash: Some(token_hash),
            })
        }
        Authenticated::AdminToken { user, org_id } => {
            let orgs: Vec<OrgMembership> = db::accounts::memberships_of(&client, user.id)
                .await?
                .into_iter()
                .filter(|m| m.org.id == org_id)
                .collect();
            Ok(Viewer {
                user,
                current: orgs.first().cloned(),
                orgs,
                csrf_token: String::new(),
                session_hash: None,
            })
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        viewer_from_parts(parts, state).await
    }
}

/// [`Viewer`] for the JSON API: the same, with JSON errors.
pub struct ApiViewer(pub Viewer);

impl FromRequestParts<AppState> for ApiViewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(ApiViewer(viewer_from_parts(parts, state).await?))
    }
}
