//! `/api/v1/keys` CRUD for the management key. Created keys are real
//! inference keys: their spend is counted and their `limit` enforced.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::key_hash;
use crate::error::ApiError;
use crate::pricing::{nanos_to_usd, usd_to_nanos};
use crate::state::MockState;
use crate::usage::{LimitReset, UsageCounters};

/// The most keys one `GET /keys` page lists.
const KEYS_PAGE_SIZE: usize = 100;

/// A key created through `POST /keys`. Its plaintext is never stored.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The hex SHA-256 of the key, its name in `/keys/{hash}`.
    pub hash: String,
    /// The name given at creation or by `PATCH`.
    pub name: String,
    /// `sk-or-v1-abc...wxyz`: enough of the key to recognise it.
    pub label: String,
    /// A disabled key gets 401 on inference.
    pub disabled: bool,
    /// The spend limit per `limit_reset` period; `None` is unlimited.
    pub limit_nanousd: Option<u64>,
    /// When the limit starts again; `None` never.
    pub limit_reset: Option<LimitReset>,
    /// Stored and reported only: the mock has no BYOK spend.
    pub include_byok_in_limit: bool,
    /// What the key has spent.
    pub usage: UsageCounters,
    /// When `POST /keys` made it.
    pub created_at: OffsetDateTime,
    /// When `PATCH` last changed it.
    pub updated_at: Option<OffsetDateTime>,
    /// After this the key gets 401 on inference.
    pub expires_at: Option<OffsetDateTime>,
    /// Stored and reported only.
    pub creator_user_id: Option<String>,
    /// Stored and reported only.
    pub workspace_id: Option<String>,
}

impl KeyRecord {
    /// Spend counted against `limit`: in the current reset period.
    pub fn limited_usage_nanousd(&self, now: OffsetDateTime) -> u64 {
        self.usage.in_period_nanousd(self.limit_reset, now)
    }

    /// The key object of the `/keys` endpoints.
    pub fn to_json(&self, now: OffsetDateTime) -> Value {
        let limit_remaining = self
            .limit_nanousd
            .map(|limit| nanos_to_usd(limit.saturating_sub(self.limited_usage_nanousd(now))));
        json!({
            "hash": self.hash,
            "name": self.name,
            "label": self.label,
            "disabled": self.disabled,
            "limit": self.limit_nanousd.map(nanos_to_usd),
            "limit_remaining": limit_remaining,
            "limit_reset": self.limit_reset.map(LimitReset::as_str),
            "include_byok_in_limit": self.include_byok_in_limit,
            "usage": nanos_to_usd(self.usage.total_nanousd()),
            "usage_daily": usage_usd(&self.usage, LimitReset::Daily, now),
            "usage_weekly": usage_usd(&self.usage, LimitReset::Weekly, now),
            "usage_monthly": usage_usd(&self.usage, LimitReset::Monthly, now),
            "byok_usage": 0.0,
            "byok_usage_daily": 0.0,
            "byok_usage_weekly": 0.0,
            "byok_usage_monthly": 0.0,
            "created_at": timestamp(Some(self.created_at)),
            "updated_at": timestamp(self.updated_at),
            "expires_at": timestamp(self.expires_at),
            "creator_user_id": self.creator_user_id,
            "workspace_id": self.workspace_id,
        })
    }
}

/// The key's spend in the current period of `reset`, in USD.
pub fn usage_usd(usage: &UsageCounters, reset: LimitReset, now: OffsetDateTime) -> f64 {
    nanos_to_usd(usage.in_period_nanousd(Some(reset), now))
}

/// `sk-or-v1-` plus the first 3 and last 4 characters of the secret part.
pub fn label_of(key: &str) -> String {
    let secret = key.strip_prefix("sk-or-v1-").unwrap_or(key);
    let head: String = secret.chars().take(3).collect();
    let n_chars = secret.chars().count();
    let tail: String = secret.chars().skip(n_chars.saturating_sub(4)).collect();
    format!("sk-or-v1-{head}...{tail}")
}

/// RFC 3339 in UTC, or null.
pub fn timestamp(at: Option<OffsetDateTime>) -> Value {
    at.and_then(|at| at.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// `POST /keys`: 201 with the key object and, only here, the plaintext key.
pub async fn create_key(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let body = parse_object(&body)?;
    let name = match body.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "name is required and must be non-empty",
            ));
        }
    };
    let secret: [u8; 32] = rand::rng().random();
    let key = format!("sk-or-v1-{}", hex::encode(secret));
    let mut record = KeyRecord {
        hash: key_hash(&key),
        name,
        label: label_of(&key),
        disabled: false,
        limit_nanousd: None,
        limit_reset: None,
        include_byok_in_limit: false,
        usage: UsageCounters::default(),
        created_at: OffsetDateTime::now_utc(),
        updated_at: None,
        expires_at: None,
        creator_user_id: optional_string(&body, "creator_user_id")?,
        workspace_id: optional_string(&body, "workspace_id")?,
    };
    apply_limits(&mut record, &body)?;
    if let Some(expires_at) = body.get("expires_at").filter(|value| !value.is_null()) {
        record.expires_at = Some(parse_expires_at(expires_at)?);
    }
    let data = record.to_json(OffsetDateTime::now_utc());
    state.ledger().keys.push(record);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "data": data, "key": key })),
    )
        .into_response())
}

/// `GET /keys?include_disabled=&offset=`: newest first, 100 per page.
pub async fn list_keys(
    State(state): State<MockState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let include_disabled = query
        .get("include_disabled")
        .is_some_and(|value| value == "true");
    let offset = match query.get("offset") {
        Some(offset) => offset
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("offset must be a non-negative integer"))?,
        None => 0,
    };
    let now = OffsetDateTime::now_utc();
    let ledger = state.ledger();
    let data: Vec<Value> = ledger
        .keys
        .iter()
        .rev()
        .filter(|key| include_disabled || !key.disabled)
        .skip(offset)
        .take(KEYS_PAGE_SIZE)
        .map(|key| key.to_json(now))
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

/// `GET /keys/{hash}`.
pub async fn get_key(
    State(state): State<MockState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let ledger = state.ledger();
    let key = ledger
        .keys
        .iter()
        .find(|key| key.hash == hash)
        .ok_or_else(key_not_found)?;
    Ok(Json(json!({ "data": key.to_json(OffsetDateTime::now_utc()) })).into_response())
}

/// `PATCH /keys/{hash}`: changes the fields present in the body.
pub async fn update_key(
    State(state): State<MockState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let body = parse_object(&body)?;
    let mut ledger = state.ledger();
    let key = ledger
        .keys
        .iter_mut()
        .find(|key| key.hash == hash)
        .ok_or_else(key_not_found)?;
    // Validate into a copy, so that a bad field changes nothing.
    let mut updated = key.clone();
    match body.get("name") {
        None => {}
        Some(Value::String(name)) if !name.is_empty() => updated.name = name.clone(),
        Some(_) => return Err(ApiError::bad_request("name must be a non-empty string")),
    }
    match body.get("disabled") {
        None => {}
        Some(Value::Bool(disabled)) => updated.disabled = *disabled,
        Some(_) => return Err(ApiError::bad_request("disabled must be a boolean")),
    }
    apply_limits(&mut updated, &body)?;
    let now = OffsetDateTime::now_utc();
    updated.updated_at = Some(now);
    *key = updated;
    Ok(Json(json!({ "data": key.to_json(now) })).into_response())
}

/// `DELETE /keys/{hash}`: the key stops working at once.
pub async fn delete_key(
    State(state): State<MockState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let mut ledger = state.ledger();
    let key_idx = ledger
        .keys
        .iter()
        .position(|key| key.hash == hash)
        .ok_or_else(key_not_found)?;
    ledger.keys.remove(key_idx);
    Ok(Json(json!({ "deleted": true })).into_response())
}

fn key_not_found() -> ApiError {
    ApiError::not_found("Key not found")
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(error) => Err(ApiError::bad_request(format!(
            "Invalid JSON in request body: {error}"
        ))),
    }
}

/// Applies `limit`, `limit_reset` and `include_byok_in_limit` when present;
/// null clears the first two.
fn apply_limits(key: &mut KeyRecord, body: &Map<String, Value>) -> Result<(), ApiError> {
    match body.get("limit") {
        None => {}
        Some(Value::Null) => key.limit_nanousd = None,
        Some(Value::Number(limit)) => {
            let nanousd = usd_to_nanos(&limit.to_string()).ok_or_else(|| {
                ApiError::bad_request("limit must be a non-negative number of USD")
            })?;
            key.limit_nanousd = Some(nanousd);
        }
        Some(_) => return Err(ApiError::bad_request("limit must be a number or null")),
    }
    match body.get("limit_reset") {
        None => {}
        Some(Value::Null) => key.limit_reset = None,
        Some(Value::String(reset)) => {
            let reset = LimitReset::parse(reset).ok_or_else(|| {
                ApiError::bad_request("limit_reset must be daily, weekly, monthly or null")
            })?;
            key.limit_reset = Some(reset);
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "limit_reset must be daily, weekly, monthly or null",
            ));
        }
    }
    match body.get("include_byok_in_limit") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(include)) => key.include_byok_in_limit = *include,
        Some(_) => {
            return Err(ApiError::bad_request(
                "include_byok_in_limit must be a boolean",
            ));
        }
    }
    Ok(())
}

/// An ISO 8601 date-time in UTC, spelled with a trailing `Z`; other time
/// zones are refused, as OpenRouter refuses them. A past time is accepted,
/// so that tests can create an already expired key.
fn parse_expires_at(value: &Value) -> Result<OffsetDateTime, ApiError> {
    let invalid = || ApiError::bad_request("expires_at must be an ISO 8601 date-time in UTC (Z)");
    let text = value.as_str().ok_or_else(invalid)?;
    if !text.ends_with('Z') {
        return Err(invalid());
    }
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())
}

fn optional_string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field} must be a string or null"
        ))),
    }
}
