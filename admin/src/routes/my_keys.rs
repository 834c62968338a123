//! `/my-keys`: the viewer's sub-keys, with a cap change and revoke; owners also see the org's
//! master keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::actions::{self, Refused};
use crate::error::AppError;
use crate::routes::{Form, NoticeQuery, Query, done};
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, FieldErrors, KeyRow, Layout, MasterKeyRow, MyKeysPage};

/// `GET /my-keys`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    let page = my_keys_page(&state, &viewer, notice.text(), FieldErrors::default()).await?;
    Ok(views::page(&page))
}

async fn my_keys_page(
    state: &AppState,
    viewer: &Viewer,
    notice: Option<String>,
    errors: FieldErrors,
) -> Result<MyKeysPage, AppError> {
    let member = viewer.member()?;
    let now = state.clock.now();
    let email = domain::Email::parse(&viewer.user.email)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let client = state.pool.get().await?;
    let keys = db::keys::list(&client, &member.org, Some(&email)).await?;
    let master_keys = if viewer.is_owner() {
        db::master_keys::list(&client, &member.org).await?
    } else {
        Vec::new()
    };
    Ok(MyKeysPage {
        layout: Layout::new(viewer, "my-keys", notice),
        keys: keys.iter().map(|k| KeyRow::new(k, now)).collect(),
        master_keys: master_keys.iter().map(MasterKeyRow::new).collect(),
        errors,
    })
}

#[derive(Debug, serde::Deserialize)]
pub struct CapForm {
    #[serde(default)]
    cap: String,
}

/// `POST /my-keys/{id}/cap`.
pub async fn post_cap(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CapForm>,
) -> Result<Response, AppError> {
    let now = state.clock.now();
    let (status, why) = match actions::set_key_cap(&state, &viewer, &id, &form.cap, now).await {
        Ok(_) => return Ok(done("/my-keys", "key_cap_set")),
        Err(Refused::Fields(errors)) => (StatusCode::BAD_REQUEST, errors.joined()),
        // The same cap, or a key closed, expired or due for renewal: said on the page too.
        Err(Refused::Request(AppError::Conflict(message))) => (StatusCode::CONFLICT, message),
        Err(Refused::Request(err)) => return Err(err),
    };
    let mut page = my_keys_page(&state, &viewer, None, FieldErrors::default()).await?;
    // Name the key, and keep what was typed in its form.
    let key = match page.keys.iter_mut().find(|row| row.id == id) {
        Some(row) => {
            row.cap_input = form.cap.clone();
            format!("{} ({})", row.name, row.prefix)
        }
        None => "the key".to_string(),
    };
    page.errors
        .add("form", format!("The cap of {key} was not changed: {why}"));
    Ok(views::render(status, &page))
}

/// `POST /my-keys/{id}/revoke`.
pub async fn post_revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    actions::revoke_key(&state, &viewer, &id, state.clock.now()).await?;
    Ok(done("/my-keys", "key_revoked"))
}
