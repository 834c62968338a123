//! All of keycap's SQL: the connection pool, migrations, the embedded local cluster, and one
//! module per table group.
//!
//! `db` owns every query (raw SQL on tokio-postgres, bound parameters only) and the conversion of
//! rows into `domain` types. Every write that changes money or access happens in one database
//! transaction together with its ledger row ([`transactions`]). It stores the vault's ciphertext
//! as bytes and never calls `vault`, so it never sees a plaintext secret. It depends only on
//! `domain`.

pub mod accounts;
pub mod alerts;
pub mod embedded;
mod error;
pub mod invites;
pub mod keys;
pub mod leases;
pub mod maintenance;
pub mod master_keys;
pub mod members;
mod migrate;
pub mod notify;
pub mod orgs;
pub mod password_resets;
pub mod tls;
pub mod transactions;
pub mod usage;
pub mod usage_report;

pub use deadpool_postgres::{GenericClient, Pool, PoolError};
pub use error::Error;
pub use migrate::{MIGRATIONS, migrate};

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};

/// Who performed a change, for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user of the admin app.
    User(uuid::Uuid),
    /// The `keycap` command line, run by an operator with database access.
    Cli,
    /// keycap itself: expiry, renewal, lease reclaim.
    System,
}

impl Actor {
    fn user_id(self) -> Option<uuid::Uuid> {
        match self {
            Actor::User(id) => Some(id),
            Actor::Cli | Actor::System => None,
        }
    }

    fn via(self) -> &'static str {
        match self {
            Actor::User(_) => "admin",
            Actor::Cli => "cli",
            Actor::System => "system",
        }
    }
}

/// Builds a pool of at most `max_size` connections to `url` (a `postgres://` URL or a
/// `key=value` connection string, with libpq's `sslmode` and `sslrootcert`: see [`tls`]).
/// Connections are made lazily.
pub fn connect(url: &str, max_size: usize) -> Result<Pool, Error> {
    build_pool(url, max_size, None)
}

/// As [`connect`], and each connection's statements are cut off by the server after
/// `statement_timeout`: a query its caller stopped waiting for does not run on, delaying the
/// next one on its connection.
pub fn connect_with_statement_timeout(
    url: &str,
    max_size: usize,
    statement_timeout: std::time::Duration,
) -> Result<Pool, Error> {
    build_pool(url, max_size, Some(statement_timeout))
}

fn build_pool(
    url: &str,
    max_size: usize,
    statement_timeout: Option<std::time::Duration>,
) -> Result<Pool, Error> {
    let tls::Connector { config, tls, .. } = tls::read_url(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Some(tls) => Manager::from_config(config, tls, manager_config),
        None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
    };
    let mut builder = Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1);
    if let Some(timeout) = statement_timeout {
        // A SET rather than a startup option, which a connection pooler may refuse.
        let set = format!("SET statement_timeout = {}", timeout.as_millis().max(1));
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let set = set.clone();
            Box::pin(async move {
                client
                    .batch_execute(&set)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    builder.build().map_err(|err| Error::Pool(err.to_string()))
}
