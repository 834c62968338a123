//! The error type of every `db` function.

use domain::BudgetError;

/// What went wrong in a database operation. Messages say what failed for which input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("database URL is not valid: {source}")]
    BadUrl { source: tokio_postgres::Error },
    #[error("database connection pool: {0}")]
    Pool(String),
    #[error("database: {}", detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
}

/// The server's own message when there is one ("db error" alone says nothing).
fn detail(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(err) {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(source) => Error::Postgres(source),
            other => Error::Pool(other.to_string()),
        }
    }
}

impl Error {
    pub(crate) fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }

    /// True when the error is a refusal of bad input rather than a failure of the database.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. } | Error::Conflict(_) | Error::Invalid(_) | Error::Budget(_)
        )
    }
}
