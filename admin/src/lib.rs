//! The admin app: keycap's control plane for owners and members, an `axum` web app with
//! server-rendered pages (askama templates, no JavaScript needed) and a JSON API under `/api/`.
//!
//! `admin` owns accounts (argon2id passwords, server-side sessions in Postgres, CSRF checks,
//! sign-in throttling, invites), the six pages (`/dashboard`, `/my-keys`, `/store`, `/vault`,
//! `/members`, `/audit`), the JSON API with its OpenAPI document, and the mapping of errors to
//! pages and JSON ([`error`]). Every change goes through `db`, which writes the same ledger rows
//! as the command line. It depends on `domain`, `db` and `vault` (to seal master keys it is
//! given and to open one when an owner tests it), and never on `gateway`.

mod actions;
pub mod alerts;
mod api;
mod app;
mod chart;
pub mod client_addr;
mod clock;
mod config;
mod csrf;
mod error;
mod health;
mod mail;
mod password;
mod routes;
mod server;
mod session;
mod state;
mod usage_metrics;
mod views;

pub use app::app;
pub use clock::Clock;
pub use config::AdminConfig;
pub use mail::{MailConfigError, Mailer};
pub use server::serve;
pub use state::AppState;
