//! Probes for load balancers and orchestrators, with no session: `GET /livez` (the process
//! answers requests) and `GET /readyz` (it reaches the database within two seconds: every page
//! needs it).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /livez`.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// `GET /readyz`: 200 when a pooled connection answers `SELECT 1` in time, else 503.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let check = async {
        let client = state.pool.get().await.map_err(|err| err.to_string())?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(json!({ "ready": true, "database": "ok" })),
        ),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: the database is unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "ready": false, "database": "unreachable" })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "database": "no answer within 2 s" })),
        ),
    }
}
