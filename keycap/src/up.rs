//! `keycap up`: the database, the encryption key, and keycap's background jobs, until Ctrl-C or
//! SIGTERM.

use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use vault::{KeySource, Keyring};

use crate::config::Config;
use crate::database::Database;

/// How often expiry and monthly renewal run.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Loads the encryption key: `KEYCAP_ENCRYPTION_KEY`, the key file, or a new key file.
pub fn load_keyring(config: &Config) -> anyhow::Result<Keyring> {
    let env_key = std::env::var("KEYCAP_ENCRYPTION_KEY").ok();
    let loaded = Keyring::load(env_key.as_deref(), &config.key_file())
        .context("loading the encryption key")?;
    match &loaded.source {
        KeySource::Generated(path) => eprintln!(
            "generated a new encryption key in {} (mode 0600): back it up, master keys cannot be opened without it",
            path.display()
        ),
        KeySource::File(path) => {
            tracing::info!(path = %path.display(), "loaded the encryption key")
        }
        KeySource::Environment => {
            tracing::info!("loaded the encryption key from KEYCAP_ENCRYPTION_KEY")
        }
    }
    Ok(loaded.keyring)
}

/// Runs until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let _keyring = load_keyring(&config)?;
    let database = Database::open(&config).await?;
    let pool = database.pool.clone();
    let maintenance = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(MAINTENANCE_INTERVAL);
        loop {
            ticker.tick().await;
            match db::maintenance::run_due(&pool, OffsetDateTime::now_utc()).await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(?report, "maintenance")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "maintenance pass failed"),
            }
        }
    });
    eprintln!("keycap is up: database ready, background jobs running (Ctrl-C to stop)");
    shutdown_signal().await;
    eprintln!("shutting down");
    maintenance.abort();
    database.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
