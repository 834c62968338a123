//! The JSON API under `/api/`: the pages' actions for automation, authenticated by a session
//! (with the `X-CSRF-Token` header on changes) or by an owner's admin token. Documented in
//! `openapi.json`, served at `/api/openapi.json`. Money is integer nano-dollars in
//! `*_nanousd` fields; amounts sent in are decimal USD strings, as typed on the pages.

use crate::routes::Query;
use axum::Json;
use axum::extract::FromRequest;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::actions::{self, AuditQuery, InviteInput, KeyInput, Refused};
use crate::error::{ApiError, AppError};
use crate::session::ApiViewer;
use crate::state::AppState;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

type ApiResult = Result<Json<Value>, ApiError>;

/// `axum::Json` whose refusal is our JSON error rather than plain text.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(AppError::BadRequest(format!(
                "the body could not be read: {}",
                rejection.body_text()
            ))
            .into()),
        }
    }
}

fn refused(refused: Refused) -> ApiError {
    match refused {
        Refused::Fields(errors) => ApiError {
            error: AppError::BadRequest("the request has bad fields: see error.fields".into()),
            fields: errors.0,
        },
        Refused::Request(error) => error.into(),
    }
}

fn rfc3339(at: Option<OffsetDateTime>) -> Value {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .map(Value::from)
        .unwrap_or(Value::Null)
}

fn key_json(key: &db::keys::ApiKey, now: OffsetDateTime) -> Value {
    json!({
        "id": key.id, "name": key.name, "prefix": key.prefix, "member": key.member_email,
        "service": key.service, "cap_nanousd": key.cap.nanos(), "spent_nanousd": key.spent.nanos(),
        "remaining_nanousd": key.remaining().nanos(), "model_scope": key.model_scope,
        "renew_monthly": key.renew_monthly, "expires_at": rfc3339(key.expires_at),
        "rate_limit_rpm": key.rate_limit_rpm,
        "created_at": rfc3339(Some(key.created_at)), "status": key.status(now),
    })
}

fn master_key_json(key: &db::master_keys::MasterKey) -> Value {
    json!({
        "id": key.id, "service": key.service, "name": key.name, "last_four": key.last_four,
        "created_at": rfc3339(Some(key.created_at)), "revoked_at": rfc3339(key.revoked_at),
    })
}

/// `GET /api/openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /api/me`: who is asking, their orgs, and their month in the current org.
pub async fn me(State(state): State<AppState>, ApiViewer(viewer): ApiViewer) -> ApiResult {
    let orgs: Vec<Value> = viewer
        .orgs
        .iter()
        .map(|m| json!({ "id": m.org.id, "name": m.org.name, "role": m.role.as_str() }))
        .collect();
    let mut body = json!({ "email": viewer.user.email, "orgs": orgs, "current_org": Value::Null });
    if let Some(member) = &viewer.current {
        let client = state.pool.get().await.map_err(db::Error::from)?;
        let (month, spent) = actions::month_of(&client, member, state.clock.now()).await?;
        body["current_org"] = json!({
            "id": member.org.id, "name": member.org.name, "role": member.role.as_str(),
            "budget_nanousd": month.budget.nanos(),
            "carved_nanousd": month.carved.saturating_sub(month.refunded).nanos(),
            "available_nanousd": month.available().nanos(),
            "spent_nanousd": spent.nanos(),
        });
    }
    if !viewer.csrf_token.is_empty() {
        body["csrf_token"] = viewer.csrf_token.clone().into();
    }
    Ok(Json(body))
}

#[derive(Debug, Default, Deserialize)]
pub struct KeysQuery {
    /// Owners only: every key of the org rather than their own.
    #[serde(default)]
    all: bool,
}

/// `GET /api/keys`.
pub async fn list_keys(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Query(query): Query<KeysQuery>,
) -> ApiResult {
    let member = if query.all {
        viewer.owner()?
    } else {
        viewer.member()?
    };
    let email = domain::Email::parse(&viewer.user.email)
        .map_err(|err| AppError::Internal(err.to_string()))?;
    let client = state.pool.get().await.map_err(db::Error::from)?;
    let now = state.clock.now();
    let keys = db::keys::list(
        &client,
        &member.org,
        if query.all { None } else { Some(&email) },
    )
    .await?;
    Ok(Json(
        json!({ "keys": keys.iter().map(|k| key_json(k, now)).collect::<Vec<_>>() }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct NewKeyBody {
    #[serde(default = "default_service")]
    service: String,
    name: String,
    /// USD, as a decimal string ("20" or "12.50").
    cap_usd: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    model_scope: Vec<String>,
    #[serde(default)]
    renew_monthly: bool,
    #[serde(default)]
    rate_limit_rpm: Option<i64>,
}

fn default_service() -> String {
    "openrouter".into()
}

/// `POST /api/keys`: provisions a key from the caller's budget; the token is in the answer once.
pub async fn create_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<Response, ApiError> {
    let input = KeyInput {
        service: body.service,
        name: body.name,
        cap: body.cap_usd,
        expires: body.expires.unwrap_or_default(),
        models: body.model_scope,
        renew_monthly: body.renew_monthly,
        rpm: body
            .rate_limit_rpm
            .map(|rpm| rpm.to_string())
            .unwrap_or_default(),
    };
    let now = state.clock.now();
    let (key, token) = actions::provision_key(&state, &viewer, &input, now)
        .await
        .map_err(refused)?;
    let mut body = key_json(&key, now);
    body["token"] = token.expose().into();
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CapBody {
    /// USD, as a decimal string ("20" or "12.50").
    cap_usd: String,
}

/// `POST /api/keys/{id}/cap`: sets a key's cap; a raise is carved from its member's budget this
/// month, a cut refunded to it (see `actions::set_key_cap`).
pub async fn set_key_cap(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CapBody>,
) -> ApiResult {
    let now = state.clock.now();
    let changed = actions::set_key_cap(&state, &viewer, &id, &body.cap_usd, now)
        .await
        .map_err(refused)?;
    let mut out = key_json(&changed.key, now);
    out["old_cap_nanousd"] = changed.old_cap.nanos().into();
    out["carved_nanousd"] = changed.change.carved().nanos().into();
    out["refund_nanousd"] = changed.change.refunded().nanos().into();
    Ok(Json(out))
}

/// `POST /api/keys/{id}/revoke`.
pub async fn revoke_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
) -> ApiResult {
    let now = state.clock.now();
    let revoked = actions::revoke_key(&state, &viewer, &id, now).await?;
    let mut body = key_json(&revoked.key, now);
    body["refund_nanousd"] = revoked.refund.nanos().into();
    Ok(Json(body))
}

/// `GET /api/members` (owners).
pub async fn list_members(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
) -> ApiResult {
    let owner = viewer.owner()?;
    let window = domain::MonthWindow::containing(state.clock.now());
    let client = state.pool.get().await.map_err(db::Error::from)?;
    let out: Vec<Value> = db::members::months(&client, owner.org.id, window, None)
        .await?
        .iter()
        .map(|m| {
            json!({
                "email": m.membership.email, "role": m.membership.role.as_str(),
                "budget_nanousd": m.month.budget.nanos(),
                "carved_nanousd": m.month.carved.saturating_sub(m.month.refunded).nanos(),
                "available_nanousd": m.month.available().nanos(),
                "spent_nanousd": m.spent.nanos(),
            })
        })
        .collect();
    Ok(Json(json!({ "members": out })))
}

/// `POST /api/members/invite` (owners): the link is in the answer once.
pub async fn invite(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<InviteInput>,
) -> Result<Response, ApiError> {
    let invited = actions::invite(&state, &viewer, &body, state.clock.now())
        .await
        .map_err(refused)?;
    let invite = &invited.invite;
    let body = json!({
        "id": invite.id.to_string(),
        "email": invite.email, "role": invite.role.as_str(),
        "budget_nanousd": invite.monthly_budget.nanos(),
        "expires_at": rfc3339(Some(invite.expires_at)), "link": invited.link,
        "emailed": matches!(invited.emailed, Some(Ok(()))),
        "email_error": match &invited.emailed { Some(Err(why)) => Value::from(why.as_str()), _ => Value::Null },
    });
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct MemberBody {
    email: String,
    #[serde(default)]
    budget_usd: String,
    #[serde(default)]
    role: String,
}

fn membership_json(m: &db::members::Membership) -> Value {
    json!({ "email": m.email, "role": m.role.as_str(), "budget_nanousd": m.monthly_budget.nanos() })
}

/// `POST /api/members/budget` (owners).
pub async fn set_budget(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<MemberBody>,
) -> ApiResult {
    let m = actions::set_budget(&state, &viewer, &body.email, &body.budget_usd)
        .await
        .map_err(refused)?;
    Ok(Json(membership_json(&m)))
}

/// `POST /api/members/role` (owners).
pub async fn set_role(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<MemberBody>,
) -> ApiResult {
    let m = actions::set_role(&state, &viewer, &body.email, &body.role)
        .await
        .map_err(refused)?;
    Ok(Json(membership_json(&m)))
}

/// `POST /api/members/remove` (owners).
pub async fn remove_member(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<MemberBody>,
) -> ApiResult {
    let n_keys = actions::remove_member(&state, &viewer, &body.email, state.clock.now()).await?;
    Ok(Json(json!({ "email": body.email, "keys_revoked": n_keys })))
}

/// `POST /api/members/password-reset` (owners): a member's password-reset link, in the answer
/// once.
pub async fn issue_password_reset(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<MemberBody>,
) -> Result<Response, ApiError> {
    let (reset, link) =
        actions::issue_password_reset(&state, &viewer, &body.email, state.clock.now()).await?;
    let body = json!({
        "email": reset.email, "expires_at": rfc3339(Some(reset.expires_at)), "link": link,
    });
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/invites/{id}/cancel` (owners).
pub async fn cancel_invite(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
) -> ApiResult {
    let invite = actions::cancel_invite(&state, &viewer, &id, state.clock.now()).await?;
    Ok(Json(
        json!({ "id": invite.id.to_string(), "email": invite.email, "cancelled": true }),
    ))
}

/// `GET /api/master-keys` (owners).
pub async fn list_master_keys(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
) -> ApiResult {
    let owner = viewer.owner()?;
    let client = state.pool.get().await.map_err(db::Error::from)?;
    let keys = db::master_keys::list(&client, &owner.org).await?;
    Ok(Json(
        json!({ "master_keys": keys.iter().map(master_key_json).collect::<Vec<_>>() }),
    ))
}

// No Debug: it carries a secret.
#[derive(Deserialize)]
pub struct MasterKeyBody {
    #[serde(default = "default_service")]
    service: String,
    #[serde(default)]
    name: String,
    secret: String,
}

/// `POST /api/master-keys` (owners).
pub async fn add_master_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<MasterKeyBody>,
) -> Result<Response, ApiError> {
    let key = actions::add_master_key(
        &state,
        &viewer,
        &body.service,
        &body.name,
        &SecretString::from(body.secret),
    )
    .await
    .map_err(refused)?;
    Ok((axum::http::StatusCode::CREATED, Json(master_key_json(&key))).into_response())
}

// No Debug: it carries a secret.
#[derive(Deserialize)]
pub struct RotateBody {
    secret: String,
}

/// `POST /api/master-keys/{id}/rotate` (owners).
pub async fn rotate_master_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RotateBody>,
) -> ApiResult {
    let key = actions::rotate_master_key(&state, &viewer, &id, &SecretString::from(body.secret))
        .await
        .map_err(refused)?;
    Ok(Json(master_key_json(&key)))
}

/// `POST /api/master-keys/{id}/revoke` (owners).
pub async fn revoke_master_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
) -> ApiResult {
    let key = actions::revoke_master_key(&state, &viewer, &id).await?;
    Ok(Json(master_key_json(&key)))
}

/// `POST /api/master-keys/{id}/test` (owners).
pub async fn test_master_key(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Path(id): Path<String>,
) -> ApiResult {
    let (key, outcome) = actions::test_master_key(&state, &viewer, &id).await?;
    let check = outcome.check(&key.name, &state.config.upstream_base_url);
    Ok(Json(serde_json::to_value(check).unwrap_or(Value::Null)))
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditApiQuery {
    // The page's filters, spelled out: `serde(flatten)` would hand numbers on as strings.
    #[serde(default)]
    member: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /api/audit` (owners): ledger rows, newest first, with the chain's status.
pub async fn audit(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    Query(query): Query<AuditApiQuery>,
) -> ApiResult {
    let owner = viewer.owner()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError {
            error: AppError::BadRequest("the request has bad fields: see error.fields".into()),
            fields: vec![("limit", "use a limit from 1 to 1000".into())],
        });
    }
    let filters = AuditQuery {
        member: query.member,
        kind: query.kind,
        from: query.from,
        to: query.to,
        before: query.before,
    };
    let filter = filters.filter().map_err(|errors| ApiError {
        error: AppError::BadRequest("the request has bad fields: see error.fields".into()),
        fields: errors.0,
    })?;
    let client = state.pool.get().await.map_err(db::Error::from)?;
    let entries = db::transactions::list_filtered(&client, owner.org.id, &filter, limit).await?;
    let (chain, from) = db::transactions::verify_since_checkpoint(&client, owner.org.id).await?;
    let chain = match chain {
        db::transactions::ChainStatus::Intact { n_rows } => {
            json!({ "intact": true, "n_rows": n_rows, "checked_from_seq": from })
        }
        db::transactions::ChainStatus::Broken { seq } => {
            json!({ "intact": false, "broken_at_seq": seq })
        }
    };
    Ok(Json(json!({ "chain": chain, "entries": entries })))
}

#[derive(Debug, Deserialize)]
pub struct SwitchBody {
    org_id: uuid::Uuid,
}

/// `POST /api/orgs/switch`: for a session, works in another org the user belongs to.
pub async fn switch_org(
    State(state): State<AppState>,
    ApiViewer(viewer): ApiViewer,
    ApiJson(body): ApiJson<SwitchBody>,
) -> ApiResult {
    let org = viewer
        .orgs
        .iter()
        .find(|m| m.org.id == body.org_id)
        .ok_or_else(|| AppError::NotFound("you are not a member of that org".into()))?;
    let hash = viewer
        .session_hash
        .ok_or_else(|| AppError::BadRequest("an admin token works in one org only".into()))?;
    let client = state.pool.get().await.map_err(db::Error::from)?;
    db::accounts::switch_org(&client, &hash, org.org.id).await?;
    Ok(Json(
        json!({ "current_org": { "id": org.org.id, "name": org.org.name } }),
    ))
}

/// Any other path under `/api/`.
pub async fn not_found() -> ApiError {
    AppError::NotFound("no such API route: see /api/openapi.json".into()).into()
}
