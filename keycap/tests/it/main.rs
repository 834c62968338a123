//! Integration tests of the `keycap` binary against real Postgres.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly, like the tests that call them"
)]

mod apis;
mod bodies;
mod cap;
mod cap_random;
mod cli;
mod deploy;
mod embedded;
mod flood;
mod gateway;
mod gateway_support;
mod leases;
mod ledger;
mod postgres_tls;
mod prometheus;
mod reconcile;
mod sdk;
mod support;
