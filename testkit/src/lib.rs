//! Test support for keycap's integration tests: real Postgres, real processes.
//!
//! `testkit` owns [`TestDb`] (a fresh database per test, copied from a template migrated once
//! per test binary, on `TEST_DATABASE_URL` or else on a throwaway cluster that this binary
//! starts and a watchdog stops when it exits) and [`process`] (running and spawning the
//! `keycap` binary, waiting until it is ready, killing it on drop). It is used only as a
//! dev-dependency and never by production code. [`chaos::ChaosProxy`] cuts a service off from its
//! database for outage tests, [`smtp::SmtpSink`] receives the email a test sends, and
//! [`tls::TlsFront`] puts a service behind TLS with a certificate from a test CA.

pub mod chaos;
mod database;
pub mod process;
pub mod smtp;
pub mod tls;

pub use database::TestDb;

/// A port on 127.0.0.1 that the OS reports free right now, for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("the OS assigns a free loopback port")
}
