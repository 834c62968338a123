//! `keycap up` and `keycap demo`: the database, the encryption key, the gateway, the admin app
//! and keycap's background jobs (maintenance, budget alerts), until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::watch;
use vault::{KeySource, Keyring};

use crate::config::Config;
use crate::database::Database;

/// How often expiry and monthly renewal run.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Which parts to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything: the gateway, the admin app and the background jobs.
    Up,
    /// Everything, against an in-process OpenRouter mock, with a seeded org and key.
    Demo,
}

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
pub async fn run(mut config: Config, mode: Mode) -> anyhow::Result<()> {
    let mock = match mode {
        Mode::Demo => {
            if config.database.url.is_empty() {
                config.data_dir = config.data_dir.join("demo");
            }
            let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
                .await
                .context("starting the OpenRouter mock")?;
            config.openrouter.base_url = mock.base_url();
            Some(mock)
        }
        Mode::Up => None,
    };
    let gateway_config = config.gateway_config()?;
    gateway::server::check_trusted_roots(&gateway_config).map_err(anyhow::Error::msg)?;
    let keyring = load_keyring(&config)?;
    let database = Database::open(&config).await?;
    let demo_token = match &mock {
        Some(mock) => {
            match crate::demo::seed(&database, &keyring, &mock.state().config().master_key).await {
                Ok(token) => Some(token),
                Err(err) => {
                    database.close().await;
                    return Err(err);
                }
            }
        }
        None => None,
    };

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

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let admin_listener = match tokio::net::TcpListener::bind(&config.admin.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            maintenance.abort();
            database.close().await;
            anyhow::bail!(
                "admin.listen {}: {err}: is another keycap running? choose a free port with --admin-listen",
                config.admin.listen
            );
        }
    };
    let admin_addr = admin_listener.local_addr()?;
    let mut admin_state = admin::AppState::new(
        database.pool.clone(),
        keyring.clone(),
        config.admin_config(admin_addr),
    );
    match config.mailer() {
        Ok(Some(mailer)) => admin_state = admin_state.with_mailer(mailer),
        Ok(None) => {}
        Err(err) => {
            maintenance.abort();
            database.close().await;
            return Err(err);
        }
    }
    let setup_link = admin_state.setup_link().await;
    let alerts = tokio::spawn(admin::alerts::run(admin_state.clone()));
    let mut admin_shutdown = shutdown_rx.clone();
    let admin_server = tokio::spawn(admin::serve(admin_listener, admin_state, async move {
        let _ = admin_shutdown.wait_for(|stop| *stop).await;
    }));
    let resources = gateway::server::Resources {
        pool: database.pool.clone(),
        database_url: database.url.clone(),
        keyring,
        control: tokio::runtime::Handle::current(),
    };
    if let Err(err) = gateway::server::check_addresses(&gateway_config) {
        maintenance.abort();
        alerts.abort();
        admin_server.abort();
        database.close().await;
        anyhow::bail!(err);
    }
    let gateway = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || gateway::run(gateway_config, resources, shutdown_rx))
        .context("starting the gateway thread")?;

    eprintln!(
        "keycap is up: admin on http://{admin_addr}, gateway on http://{}/api/v1, metrics on http://{}/metrics, upstream {} (Ctrl-C to stop)",
        config.gateway.listen, config.metrics.listen, config.openrouter.base_url
    );
    match &setup_link {
        Ok(Some(link)) => eprintln!(
            "nobody can sign in yet: open this one-time link to create the first owner and their org:\n  {link}"
        ),
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "could not check whether keycap is set up"),
    }
    if let Some(token) = &demo_token {
        crate::demo::print_instructions(&config.gateway.listen, token);
        if matches!(setup_link, Ok(Some(_))) {
            eprintln!(
                "to look around the admin app, open the setup link above, enter {} and leave the org name empty",
                crate::demo::OWNER
            );
        }
    }
    let mut joined = tokio::task::spawn_blocking(move || gateway.join());
    let early_exit = tokio::select! {
        () = shutdown_signal() => None,
        // The gateway ended on its own: it could not start.
        joined = &mut joined => Some(joined),
    };
    let joined = match early_exit {
        Some(joined) => joined,
        None => {
            eprintln!("shutting down: letting requests in flight finish, then flushing spend");
            let _ = shutdown_tx.send(true);
            joined.await
        }
    };
    maintenance.abort();
    alerts.abort();
    let _ = shutdown_tx.send(true);
    if let Ok(Err(err)) = admin_server.await {
        tracing::warn!(error = %err, "the admin app stopped with an error");
    }
    database.close().await;
    match joined {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(err))) => Err(anyhow::anyhow!("gateway: {err}")),
        _ => Err(anyhow::anyhow!("the gateway thread panicked")),
    }
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
