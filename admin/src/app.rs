//! The router: every URL of the admin app, as a table.

use axum::Router;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::error::AppError;
use crate::routes::{audit, auth, dashboard, members, my_keys, store, vault};
use crate::state::AppState;
use crate::{api, csrf, health, session, usage_metrics};

/// The whole app. Tests build it without a server; `serve` runs it.
pub fn app(state: AppState) -> Router {
    let pages = Router::new()
        .route("/", get(auth::root))
        .route("/setup", get(auth::get_setup).post(auth::post_setup))
        .route("/login", get(auth::get_login).post(auth::post_login))
        .route("/logout", post(auth::post_logout))
        .route(
            "/invite/{token}",
            get(auth::get_invite).post(auth::post_invite),
        )
        .route(
            "/reset/{token}",
            get(auth::get_reset).post(auth::post_reset),
        )
        .route("/orgs/switch", post(auth::post_switch_org))
        .route("/account", get(auth::get_account))
        .route("/account/password", post(auth::post_password))
        .route("/account/tokens", post(auth::post_token))
        .route("/account/tokens/{id}/revoke", post(auth::post_revoke_token))
        .route("/dashboard", get(dashboard::get))
        .route("/my-keys", get(my_keys::get))
        .route("/my-keys/{id}/cap", post(my_keys::post_cap))
        .route("/my-keys/{id}/revoke", post(my_keys::post_revoke))
        .route("/store", get(store::get).post(store::post))
        .route("/vault", get(vault::get).post(vault::post_add))
        .route("/vault/{id}/test", post(vault::post_test))
        .route("/vault/{id}/rotate", post(vault::post_rotate))
        .route(
            "/vault/{id}/revoke",
            get(vault::get_revoke).post(vault::post_revoke),
        )
        .route("/members", get(members::get))
        .route("/members/invite", post(members::post_invite))
        .route("/members/budget", post(members::post_budget))
        .route("/members/role", post(members::post_role))
        .route("/members/remove", post(members::post_remove))
        .route(
            "/members/password-reset",
            post(members::post_password_reset),
        )
        .route(
            "/members/invites/{id}/cancel",
            post(members::post_cancel_invite),
        )
        .route("/audit", get(audit::get))
        .route("/audit.csv", get(audit::get_csv));
    // The stylesheet and script need no session: they are served outside its middleware, so
    // loading a page does not look the session up three times.
    // So are `/metrics`, which takes a metrics token and nothing else, and the probes.
    let assets = Router::new()
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
        .route("/metrics", get(usage_metrics::get))
        .route("/livez", get(health::live))
        .route("/readyz", get(health::ready));
    let api = Router::new()
        .route("/api/openapi.json", get(api::openapi))
        .route("/api/me", get(api::me))
        .route("/api/orgs/switch", post(api::switch_org))
        .route("/api/keys", get(api::list_keys).post(api::create_key))
        .route("/api/keys/{id}/cap", post(api::set_key_cap))
        .route("/api/keys/{id}/revoke", post(api::revoke_key))
        .route("/api/members", get(api::list_members))
        .route("/api/members/invite", post(api::invite))
        .route("/api/members/budget", post(api::set_budget))
        .route("/api/members/role", post(api::set_role))
        .route("/api/members/remove", post(api::remove_member))
        .route(
            "/api/members/password-reset",
            post(api::issue_password_reset),
        )
        .route("/api/invites/{id}/cancel", post(api::cancel_invite))
        .route(
            "/api/master-keys",
            get(api::list_master_keys).post(api::add_master_key),
        )
        .route("/api/master-keys/{id}/rotate", post(api::rotate_master_key))
        .route("/api/master-keys/{id}/revoke", post(api::revoke_master_key))
        .route("/api/master-keys/{id}/test", post(api::test_master_key))
        .route("/api/audit", get(api::audit))
        .route("/api/{*rest}", get(api::not_found).post(api::not_found));
    pages
        .merge(api)
        .fallback(not_found)
        // Outermost first: find who is asking, then check the CSRF token of changes.
        .layer(middleware::from_fn_with_state(state.clone(), csrf::protect))
        .layer(middleware::from_fn_with_state(state.clone(), session::load))
        .layer(axum::extract::DefaultBodyLimit::max(csrf::MAX_FORM_BYTES))
        .merge(assets)
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("there is no page at this address".into())
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
}
