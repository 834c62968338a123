//! The gateway: keycap's data plane, a `pingora` reverse proxy that is OpenRouter-compatible on
//! `/api/v1/*`.
//!
//! It owns the per-request path (auth and the key cache, the key's rate limit, reservation
//! against the key's lease of its cap,
//! the swap of the sub-key for the decrypted master key, metering of the response as it
//! streams, settlement) and the background work that keeps it honest (flushing spend to
//! Postgres, leases and heartbeats, reloading changed keys on `NOTIFY`, refreshing prices). It depends on `domain`,
//! `db` and `vault`, and never on `admin`.
//!
//! Start with [`server::run`]; the request path is in [`proxy`].

pub mod auth;
pub mod body;
pub mod budget;
pub mod config;
pub mod error;
pub mod flusher;
pub mod generations;
pub mod health;
pub mod lease;
pub mod lookups;
pub mod metrics;
pub mod model_list;
pub mod prices;
pub mod proxy;
pub mod rate_limit;
pub mod reconcile;
pub mod server;
pub mod state;
pub mod sync;

pub use config::GatewayConfig;
pub use server::run;
