//! The account view: `GET /key` (alias `/auth/key`), `GET /credits`, and the
//! spend checks that refuse inference with 402 before it starts.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::keys::{label_of, timestamp, usage_usd};
use crate::pricing::nanos_to_usd;
use crate::state::MockState;
use crate::usage::{LimitReset, UsageCounters};

/// `GET /key` and `GET /auth/key`: the calling key's limit and spend.
pub async fn get_current_key(
    State(state): State<MockState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.authenticate(&headers, "No auth credentials found")?;
    let now = OffsetDateTime::now_utc();
    let config = state.config();
    let ledger = state.ledger();
    let mut data = match &caller {
        Caller::Master => account_key_json(&config.master_key, &ledger.master_usage, false, now),
        Caller::Management => {
            account_key_json(&config.management_key, &UsageCounters::default(), true, now)
        }
        Caller::Created { hash } => {
            let key = ledger
                .keys
                .iter()
                .find(|key| &key.hash == hash)
                .ok_or_else(|| ApiError::unauthorized("User not found."))?;
            let mut data = key.to_json(now);
            if let Some(data) = data.as_object_mut() {
                for field in ["hash", "name", "disabled", "created_at", "updated_at"] {
                    data.remove(field);
                }
                data.insert("is_free_tier".to_owned(), json!(false));
                data.insert("is_management_key".to_owned(), json!(false));
                data.insert("is_provisioning_key".to_owned(), json!(false));
            }
            data
        }
    };
    if let Some(data) = data.as_object_mut() {
        let rate_limit = json!({
            "requests": -1,
            "interval": "10s",
            "note": "This field is deprecated and safe to ignore.",
        });
        data.insert("rate_limit".to_owned(), rate_limit);
    }
    Ok(Json(json!({ "data": data })).into_response())
}

/// `GET /credits`: the account balance and total spend; management key only.
pub async fn get_credits(
    State(state): State<MockState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authenticate_management(&headers)?;
    let data = json!({
        "total_credits": nanos_to_usd(state.config().total_credits_nanousd),
        "total_usage": nanos_to_usd(state.total_usage_nanousd()),
    });
    Ok(Json(json!({ "data": data })).into_response())
}

impl MockState {
    /// 402 when the account's credits are spent, or when a created key has
    /// reached its limit for the current period. A request is only refused
    /// once the limit is reached, so concurrent requests may overshoot it,
    /// as they can on OpenRouter.
    pub(crate) fn check_spend_allowed(&self, caller: &Caller) -> Result<(), ApiError> {
        let now = OffsetDateTime::now_utc();
        let ledger = self.ledger();
        if ledger.total_usage_nanousd >= self.config().total_credits_nanousd {
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "Insufficient credits. Add more using https://openrouter.ai/credits",
            )
            .with_error_type("payment_required")
            .with_metadata("limit_source", json!("openrouter_credits")));
        }
        let Caller::Created { hash } = caller else {
            return Ok(());
        };
        let Some(key) = ledger.keys.iter().find(|key| &key.hash == hash) else {
            return Ok(());
        };
        match key.limit_nanousd {
            Some(limit) if key.limited_usage_nanousd(now) >= limit => Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "Key limit exceeded. Raise the key's limit or wait for it to reset",
            )
            .with_error_type("payment_required")
            .with_metadata("limit_source", json!("openrouter_key_limit"))),
            _ => Ok(()),
        }
    }
}

/// The `GET /key` data of the master or the management key: no limit.
fn account_key_json(
    key: &str,
    usage: &UsageCounters,
    is_management_key: bool,
    now: OffsetDateTime,
) -> Value {
    json!({
        "label": label_of(key),
        "limit": null,
        "limit_remaining": null,
        "limit_reset": null,
        "include_byok_in_limit": false,
        "usage": nanos_to_usd(usage.total_nanousd()),
        "usage_daily": usage_usd(usage, LimitReset::Daily, now),
        "usage_weekly": usage_usd(usage, LimitReset::Weekly, now),
        "usage_monthly": usage_usd(usage, LimitReset::Monthly, now),
        "byok_usage": 0.0,
        "byok_usage_daily": 0.0,
        "byok_usage_weekly": 0.0,
        "byok_usage_monthly": 0.0,
        "is_free_tier": false,
        "is_management_key": is_management_key,
        "is_provisioning_key": is_management_key,
        "expires_at": timestamp(None),
        "creator_user_id": null,
    })
}
