//! HTTP-level tests of the admin app: the app runs in process on 127.0.0.1:0 against a real
//! Postgres database and is driven over real HTTP with a cookie-keeping client.

#![expect(
    clippy::unwrap_used,
    reason = "test set-up helpers fail the test loudly when a step does not work"
)]

mod accounts;
mod api;
mod audit;
mod forms;
mod hardening;
mod isolation;
mod limits;
mod month;
mod password_reset;
mod roles;
mod support;
mod usage;
mod vault;
