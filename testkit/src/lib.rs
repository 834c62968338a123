//! Test support for keycap's integration tests: real Postgres, real processes.
//!
//! `testkit` owns [`TestDb`] (a fresh database per test, copied from a template migrated once
//! per test binary, on `TEST_DATABASE_URL` or else on a throwaway cluster that this binary
//! starts and a watchdog stops when it exits) and [`process`] (running and spawning the
//! `keycap` binary, waiting until it is ready, killing it on drop). It is used only as a
//! dev-dependency and never by production code. [`chaos::ChaosProxy`] cuts a service off from its
//! database for outage tests, [`smtp::SmtpSink`] receives the email a test sends,
//! [`tls::TlsFront`] puts a service behind TLS with a certificate from a test CA, and
//! [`tls_postgres::TlsPostgres`] is a Postgres reached over TLS only.

pub mod chaos;
mod database;
pub mod process;
pub mod smtp;
pub mod tls;
pub mod tls_postgres;

pub use database::TestDb;

/// A port on 127.0.0.1 that is free right now, for a child process to listen on.
///
/// It is taken from [`PORTS`], below the kernel's ephemeral range (32768 and up by default):
/// a port the OS hands out for `bind(0)` is also one it may give an outgoing connection (to
/// Postgres, to a test's HTTP client) as its local port before the child binds it, which then
/// fails. Ports are handed out in turn from a start that depends on the process id, so one test
/// binary never gives the same port twice, and a busy one is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    let start = std::process::id() % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = PORTS.start + u16::try_from(offset).expect("within the span");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}");
}

/// Where [`free_port`] takes ports from.
pub const PORTS: std::ops::Range<u16> = 20_000..32_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        assert!(ports.iter().all(|port| PORTS.contains(port)), "{ports:?}");
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len());
    }
}
