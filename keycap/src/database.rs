//! Finding the database: `database.url` when set, else the embedded cluster in the data folder,
//! started when it is not running. Every subcommand finds it the same way.

use anyhow::Context;
use db::embedded::Cluster;

use crate::config::Config;

/// How far this process's clock may be from the database's. Every change that moves money is
/// dated by the clock of the process that makes it (ARCHITECTURE.md, "One clock for money"), so
/// a process further off refuses to run rather than date carves and refunds into another month.
const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(2);

/// An open pool, and the embedded cluster when this process started it.
pub struct Database {
    pub pool: db::Pool,
    /// The connection string, for connections outside the pool (LISTEN).
    pub url: String,
    started: Option<Cluster>,
}

impl Database {
    /// Connects (starting the embedded cluster if needed), checks that this machine's clock
    /// agrees with the database's, and applies pending migrations.
    pub async fn open(config: &Config) -> anyhow::Result<Database> {
        let (url, started) = if config.database.url.is_empty() {
            let cluster = Cluster::in_folder(&config.data_dir).context("embedded Postgres")?;
            let folder = config.data_dir.display().to_string();
            let cluster_for_start = cluster.clone();
            let started = tokio::task::spawn_blocking(move || cluster_for_start.ensure_running())
                .await
                .context("starting embedded Postgres")?
                .with_context(|| format!("embedded Postgres in {folder}"))?;
            if started {
                tracing::info!(data_dir = %folder, "started embedded Postgres");
            }
            (
                cluster.url(db::embedded::DATABASE),
                started.then_some(cluster),
            )
        } else {
            (config.database.url.clone(), None)
        };
        let pool = db::connect(&url, config.database.pool_size).context("database.url")?;
        let database = Database { pool, url, started };
        if let Err(err) = database.check_clock().await {
            database.close().await;
            return Err(err);
        }
        let applied = db::migrate(&database.pool).await;
        match applied {
            Ok(0) => {}
            Ok(n) => tracing::info!(migrations = n, "database schema is up to date"),
            Err(err) => {
                database.close().await;
                return Err(err).context("applying migrations");
            }
        }
        Ok(database)
    }

    /// Refuses a clock further than [`MAX_CLOCK_SKEW`] from the database's.
    async fn check_clock(&self) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("reading the database's clock")?;
        let sent = time::OffsetDateTime::now_utc();
        let database_now = db::keys::database_now(&client)
            .await
            .context("reading the database's clock")?;
        let received = time::OffsetDateTime::now_utc();
        let ours = sent + (received - sent) / 2;
        let skew: time::Duration = ours - database_now;
        if skew.abs() <= MAX_CLOCK_SKEW {
            return Ok(());
        }
        let way = if skew.is_positive() {
            "ahead of"
        } else {
            "behind"
        };
        anyhow::bail!(
            "this machine's clock is {}s {way} the database's: keycap dates every change to money \
             by this clock, so it runs only while the two agree within {}s (set the clock right, \
             e.g. with NTP)",
            skew.abs().whole_seconds(),
            MAX_CLOCK_SKEW.whole_seconds()
        )
    }

    /// Closes the pool and stops the embedded cluster if this process started it.
    pub async fn close(self) {
        self.pool.close();
        if let Some(cluster) = self.started {
            let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
            match stopped {
                Ok(Ok(())) => tracing::info!("stopped embedded Postgres"),
                Ok(Err(err)) => tracing::warn!(error = %err, "could not stop embedded Postgres"),
                Err(err) => tracing::warn!(error = %err, "could not stop embedded Postgres"),
            }
        }
    }
}
