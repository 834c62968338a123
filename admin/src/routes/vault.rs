//! `/vault` (owners): add, test, rotate and revoke master keys. Secrets are write-only: a page
//! never shows more than a key's name and last four characters.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use secrecy::SecretString;

use crate::actions::{self, CheckOutcome, Refused};
use crate::error::AppError;
use crate::routes::{Form, NoticeQuery, Query, done};
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, FieldErrors, KeyRow, Layout, MasterKeyRow, VaultPage, VaultRevokePage};

async fn vault_page(
    state: &AppState,
    viewer: &Viewer,
    notice: Option<String>,
    service: String,
    name: String,
    errors: FieldErrors,
) -> Result<VaultPage, AppError> {
    let owner = viewer.owner()?;
    let client = state.pool.get().await?;
    let keys = db::master_keys::list(&client, &owner.org).await?;
    Ok(VaultPage {
        layout: Layout::new(viewer, "vault", notice),
        services: actions::SERVICES.to_vec(),
        keys: keys.iter().map(MasterKeyRow::new).collect(),
        service,
        name,
        errors,
    })
}

/// `GET /vault`.
/// The query of the vault page: a notice code, or the result of a master-key test.
#[derive(Debug, Default, serde::Deserialize)]
pub struct VaultQuery {
    #[serde(default)]
    notice: Option<String>,
    #[serde(default)]
    tested: Option<String>,
    #[serde(default)]
    result: Option<String>,
}

/// `GET /vault`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<VaultQuery>,
) -> Result<Response, AppError> {
    let mut notice = NoticeQuery {
        notice: query.notice,
    }
    .text();
    let mut errors = FieldErrors::default();
    // The result of a test: a fixed code and the id of a key of this org, never free text.
    let outcome = query.result.as_deref().and_then(CheckOutcome::from_code);
    let tested = query
        .tested
        .as_deref()
        .and_then(|id| uuid::Uuid::parse_str(id).ok());
    if let (Some(outcome), Some(id)) = (outcome, tested) {
        let owner = viewer.owner()?;
        let client = state.pool.get().await?;
        if let Ok(key) = db::master_keys::find(&client, &owner.org, id).await {
            let check = outcome.check(&key.name, &state.config.upstream_base_url);
            if check.ok {
                notice = Some(check.message);
            } else {
                errors.add("form", check.message);
            }
        }
    }
    let page = vault_page(
        &state,
        &viewer,
        notice,
        actions::SERVICES[0].into(),
        String::new(),
        errors,
    )
    .await?;
    Ok(views::page(&page))
}

#[derive(serde::Deserialize)]
pub struct AddForm {
    #[serde(default)]
    service: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    secret: String,
}

/// `POST /vault`: seals and stores a master key.
pub async fn post_add(
    State(state): State<AppState>,
    viewer: Viewer,
    Form(form): Form<AddForm>,
) -> Result<Response, AppError> {
    match actions::add_master_key(
        &state,
        &viewer,
        &form.service,
        &form.name,
        &SecretString::from(form.secret),
    )
    .await
    {
        Ok(_) => Ok(done("/vault", "master_key_added")),
        // The secret is never sent back into the form.
        Err(Refused::Fields(errors)) => {
            let page = vault_page(&state, &viewer, None, form.service, form.name, errors).await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Err(Refused::Request(err)) => Err(err),
    }
}

#[derive(serde::Deserialize)]
pub struct RotateForm {
    #[serde(default)]
    secret: String,
}

/// `POST /vault/{id}/rotate`.
pub async fn post_rotate(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<RotateForm>,
) -> Result<Response, AppError> {
    match actions::rotate_master_key(&state, &viewer, &id, &SecretString::from(form.secret)).await {
        Ok(_) => Ok(done("/vault", "master_key_rotated")),
        Err(Refused::Fields(errors)) => {
            let message = errors.get("secret").unwrap_or("the new secret was refused");
            let mut page_errors = FieldErrors::default();
            page_errors.add("form", format!("rotation refused: {message}"));
            let page = vault_page(
                &state,
                &viewer,
                None,
                actions::SERVICES[0].into(),
                String::new(),
                page_errors,
            )
            .await?;
            Ok(views::render(StatusCode::BAD_REQUEST, &page))
        }
        Err(Refused::Request(err)) => Err(err),
    }
}

/// `POST /vault/{id}/test`: asks the upstream whether the key works, then shows the vault
/// with the answer (a redirect, so reloading the page does not test again).
pub async fn post_test(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let (key, outcome) = actions::test_master_key(&state, &viewer, &id).await?;
    Ok(Redirect::to(&format!(
        "/vault?tested={}&result={}",
        key.id,
        outcome.code()
    ))
    .into_response())
}

/// `GET /vault/{id}/revoke`: the keys that depend on it, and the button that revokes it.
pub async fn get_revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let owner = viewer.owner()?;
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| AppError::NotFound(format!("master key {id:?} not found")))?;
    let client = state.pool.get().await?;
    let key = db::master_keys::find(&client, &owner.org, id).await?;
    if key.revoked_at.is_some() {
        return Err(AppError::Conflict(format!(
            "master key {:?} is already revoked",
            key.name
        )));
    }
    let now = state.clock.now();
    let dependents = db::keys::open_using_master_key(&client, &owner.org, id).await?;
    Ok(views::page(&VaultRevokePage {
        layout: Layout::new(&viewer, "vault", None),
        key: MasterKeyRow::new(&key),
        keys: dependents.iter().map(|k| KeyRow::new(k, now)).collect(),
    }))
}

/// `POST /vault/{id}/revoke`.
pub async fn post_revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    actions::revoke_master_key(&state, &viewer, &id).await?;
    Ok(done("/vault", "master_key_revoked"))
}
