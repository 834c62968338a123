//! `openrouter-mock` owns a deterministic stand-in for OpenRouter's HTTP API
//! (`/api/v1`), for tests, benchmarks and the demo (`keycap mock-openrouter`).
//! It answers in OpenRouter's shapes, charges by a configurable price table
//! with exact arithmetic, and fails on request in the ways OpenRouter fails.
//! It must not depend on any other keycap crate: it is the independent
//! oracle the gateway's metering is checked against.
//!
//! # Deterministic rules
//!
//! - `prompt_tokens` = ceil(UTF-8 bytes of all message `content` strings, or
//!   of the text parts of array contents (chat), or of `prompt`
//!   (completions) / 4), at least 1.
//! - The natural length N is the `x-mock-completion-tokens` header, else
//!   [`MockConfig::default_completion_tokens`] (20).
//!   `completion_tokens` = min(`max_tokens` (else `max_completion_tokens`), N);
//!   `finish_reason` is `"length"` when that cut N short, else `"stop"`.
//! - The completion is `completion_tokens` words of the NATO alphabet
//!   (`"alpha bravo charlie…"`, repeating), streamed one word per chunk.
//! - cost = prompt_tokens × prompt + completion_tokens × completion +
//!   request, computed from the decimal price strings in pico-dollars and
//!   rounded half up to whole nano-dollars, then written as the f64 USD
//!   `nanos / 1e9`, whose shortest decimal form is exactly `nanos` × 1e-9.
//! - Spend is charged when a generation ends: in full when it completes
//!   (also for `no-usage`, `no-cost`, `malformed`); for a stream that fails
//!   (`midstream-error`, `cut`) or that the client abandons, the prompt, the
//!   request fee and only the tokens already sent. Early errors charge nothing.
//! - A key with a `limit` is refused with 402 (`openrouter_key_limit`) once
//!   its spend in the current `limit_reset` period reaches the limit; the
//!   account is refused with 402 (`openrouter_credits`) once total spend
//!   reaches [`MockConfig::total_credits_nanousd`].
//!
//! # Fault modes
//!
//! Chosen by the `x-mock-fault: <mode>` header or the model id
//! `mock/fault-<mode>` (priced like `mock/cheap`): `402`, `429`, `503`
//! (`Retry-After: 1` on the last two), `500`, `midstream-error`, `cut`,
//! `slow` (`x-mock-delay-ms`, default 50), `no-usage`, `no-cost`,
//! `malformed`. See `README.md` for what each one does.

mod account;
mod auth;
mod chat;
mod config;
mod embeddings;
mod error;
mod extras;
mod faults;
mod generation;
mod keys;
mod messages;
mod models;
mod pricing;
mod request;
mod responses;
mod routing;
mod state;
mod stream;
mod usage;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use crate::chat::GENERATION_ID_HEADER;
pub use crate::config::{FAULT_MODEL_PREFIX, MockConfig, MockModel};
pub use crate::extras::BILL_HEADER;
pub use crate::faults::{DELAY_HEADER, FAULT_HEADER};
pub use crate::request::{COMPLETION_TOKENS_HEADER, GENERATION_DELAY_HEADER};
pub use crate::routing::PROVIDER_DOWN_HEADER;
pub use crate::state::{MockState, RecordedRequest};

use crate::error::ApiError;

/// The largest request body the mock reads. OpenRouter documents no limit of its own, so the
/// mock's is far above any gateway's (256 MiB at most): the gateway's limits are what tests see.
pub const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;

/// The mock's routes, all under `/api/v1`, and the state they share.
pub fn router(config: MockConfig) -> (Router, MockState) {
    let state = MockState::new(config);
    let api = Router::new()
        .route("/chat/completions", post(chat::chat_completions))
        .route("/completions", post(chat::completions))
        .route("/responses", post(chat::create_response))
        .route("/messages", post(chat::create_message))
        .route("/embeddings", post(chat::create_embeddings))
        .route("/models", get(models::list_models))
        .route("/embeddings/models", get(models::list_embedding_models))
        .route("/providers", get(models::list_providers))
        .route(
            "/models/{author}/{slug}/endpoints",
            get(routing::list_endpoints),
        )
        .route("/key", get(account::get_current_key))
        .route("/auth/key", get(account::get_current_key))
        .route("/credits", get(account::get_credits))
        .route("/generation", get(generation::get_generation))
        .route("/keys", get(keys::list_keys).post(keys::create_key))
        .route(
            "/keys/{hash}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::delete_key),
        );
    let router = Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    (router, state)
}

/// Serves the mock on `listener` until the returned future is dropped (or
/// the listener fails).
pub async fn serve(listener: TcpListener, config: MockConfig) -> io::Result<()> {
    let (router, _state) = router(config);
    axum::serve(listener, router).await
}

/// Starts the mock on `127.0.0.1` with an OS-assigned port, served by a
/// tokio task that stops when the [`MockServer`] is dropped.
pub async fn spawn(config: MockConfig) -> io::Result<MockServer> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (router, state) = router(config);
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "openrouter-mock stopped serving");
        }
    });
    Ok(MockServer { addr, state, task })
}

/// A running mock; dropping it stops the server.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    state: MockState,
    task: JoinHandle<()>,
}

impl MockServer {
    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without `/api/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The mock's state, for assertions.
    pub fn state(&self) -> &MockState {
        &self.state
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn not_found() -> impl IntoResponse {
    ApiError::new(StatusCode::NOT_FOUND, "Not Found").with_error_type("not_found")
}
