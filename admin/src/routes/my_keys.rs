//! `/my-keys`: the viewer's sub-keys, with revoke; owners also see the org's master keys.

use axum::extract::{Path, State};
use axum::response::Response;
use time::OffsetDateTime;

use crate::actions;
use crate::error::AppError;
use crate::routes::{NoticeQuery, Query, done};
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, KeyRow, Layout, MasterKeyRow, MyKeysPage};

/// `GET /my-keys`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    let member = viewer.member()?;
    let now = OffsetDateTime::now_utc();
    let email = domain::Email::parse(&viewer.user.email)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let client = state.pool.get().await?;
    let keys = db::keys::list(&client, &member.org, Some(&email)).await?;
    let master_keys = if viewer.is_owner() {
        db::master_keys::list(&client, &member.org).await?
    } else {
        Vec::new()
    };
    Ok(views::page(&MyKeysPage {
        layout: Layout::new(&viewer, "my-keys", notice.text()),
        keys: keys.iter().map(|k| KeyRow::new(k, now)).collect(),
        master_keys: master_keys.iter().map(MasterKeyRow::new).collect(),
    }))
}

/// `POST /my-keys/{id}/revoke`.
pub async fn post_revoke(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    actions::revoke_key(&state, &viewer, &id, OffsetDateTime::now_utc()).await?;
    Ok(done("/my-keys", "key_revoked"))
}
