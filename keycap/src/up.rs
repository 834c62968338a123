//! `keycap up`, `keycap demo`, `keycap gateway` and `keycap admin`: the database, the encryption
//! key, and the gateway, the admin app with keycap's background jobs (maintenance, budget
//! alerts), or both, until Ctrl-C or SIGTERM.

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
    /// The gateway and its metrics listener only (`keycap gateway`).
    Gateway,
    /// The admin app, maintenance and budget alerts only (`keycap admin`).
    Admin,
}

impl Mode {
    fn runs_gateway(self) -> bool {
        self != Mode::Admin
    }

    fn runs_admin(self) -> bool {
        self != Mode::Gateway
    }
}

/// Loads the encryption key: `KEYCAP_ENCRYPTION_KEY`, the key file, or, when `may_generate`
/// and the database holds no sealed master key, a new key file. A missing key is refused when
/// master keys are sealed (a new key could not open them).
pub async fn load_keyring(
    config: &Config,
    database: &Database,
    may_generate: bool,
) -> anyhow::Result<Keyring> {
    let env_key = std::env::var("KEYCAP_ENCRYPTION_KEY").ok();
    let sealed = {
        let client = database.pool.get().await?;
        db::master_keys::count_sealed(&client).await?
    };
    let path = config.key_file();
    let loaded = match Keyring::load(env_key.as_deref(), &path, may_generate && sealed == 0) {
        Ok(loaded) => loaded,
        Err(vault::LoadError::Missing { .. }) if sealed > 0 => anyhow::bail!(
            "{sealed} master key(s) are sealed in this database, but no encryption key was found \
             (KEYCAP_ENCRYPTION_KEY is not set and {} does not exist): restore the key file from \
             your backup, or set KEYCAP_ENCRYPTION_KEY; keycap does not make a new key, which \
             could not open them",
            path.display()
        ),
        Err(vault::LoadError::Missing { .. }) => anyhow::bail!(
            "no encryption key (KEYCAP_ENCRYPTION_KEY is not set and {} does not exist): \
             keycap gateway and keycap admin never make one, as every process must use the same \
             key: give them the key that keycap up or the first keycap command made",
            path.display()
        ),
        Err(err) => return Err(anyhow::Error::new(err).context("loading the encryption key")),
    };
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
        Mode::Up | Mode::Gateway | Mode::Admin => None,
    };
    let gateway_config = config.gateway_config()?;
    if mode.runs_gateway() {
        gateway::server::check_trusted_roots(&gateway_config).map_err(anyhow::Error::msg)?;
    }
    if matches!(mode, Mode::Gateway | Mode::Admin) && config.database.url.is_empty() {
        anyhow::bail!(
            "keycap gateway and keycap admin need database.url (KEYCAP_DATABASE__URL): one \
             Postgres that every part shares; the embedded cluster is for keycap up, which runs \
             both parts in one process"
        );
    }
    let database = Database::open(&config).await?;
    let keyring =
        match load_keyring(&config, &database, matches!(mode, Mode::Up | Mode::Demo)).await {
            Ok(keyring) => keyring,
            Err(err) => {
                database.close().await;
                return Err(err);
            }
        };
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

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The admin side: the app, maintenance and budget alerts, on this runtime.
    let mut admin = if mode.runs_admin() {
        match start_admin(&config, &database, &keyring, shutdown_rx.clone()).await {
            Ok(admin) => Some(admin),
            Err(err) => {
                database.close().await;
                return Err(err);
            }
        }
    } else {
        None
    };
    // The gateway, on a thread of its own with pingora's runtimes.
    let gateway = if mode.runs_gateway() {
        let resources = gateway::server::Resources {
            pool: database.pool.clone(),
            database_url: database.url.clone(),
            keyring,
            control: tokio::runtime::Handle::current(),
        };
        let started = gateway::server::check_addresses(&gateway_config)
            .map_err(anyhow::Error::msg)
            .and_then(|()| {
                let shutdown = shutdown_rx.clone();
                std::thread::Builder::new()
                    .name("gateway".into())
                    .spawn(move || gateway::run(gateway_config, resources, shutdown))
                    .context("starting the gateway thread")
            });
        match started {
            Ok(thread) => Some(thread),
            Err(err) => {
                let _ = shutdown_tx.send(true);
                if let Some(admin) = admin {
                    admin.stop().await;
                }
                database.close().await;
                return Err(err);
            }
        }
    } else {
        None
    };

    let mut parts = Vec::new();
    if let Some(admin) = &admin {
        parts.push(format!("admin on http://{}", admin.addr));
    }
    if gateway.is_some() {
        parts.push(format!(
            "gateway on http://{}/api/v1, metrics on http://{}/metrics, upstream {}",
            config.gateway.listen, config.metrics.listen, config.openrouter.base_url
        ));
    }
    let what = match mode {
        Mode::Up | Mode::Demo => "keycap is up",
        Mode::Gateway => "keycap gateway is up",
        Mode::Admin => "keycap admin is up",
    };
    eprintln!("{what}: {} (Ctrl-C to stop)", parts.join(", "));
    let setup_pending = match admin.as_ref().map(|admin| &admin.setup_link) {
        Some(Ok(Some(link))) => {
            eprintln!(
                "nobody can sign in yet: open this one-time link to create the first owner and their org:\n  {link}"
            );
            true
        }
        Some(Err(err)) => {
            tracing::warn!(error = %err, "could not check whether keycap is set up");
            false
        }
        _ => false,
    };
    if let Some(token) = &demo_token {
        crate::demo::print_instructions(&config.gateway.listen, token);
        if setup_pending {
            eprintln!(
                "to look around the admin app, open the setup link above, enter {} and leave the org name empty",
                crate::demo::OWNER
            );
        }
    }
    // What ended the wait: the gateway thread (when it runs), or the admin app's server on its
    // own (when it runs alone); `None` for a signal.
    let (joined, admin_ended) = match gateway {
        Some(gateway) => {
            let mut joined = tokio::task::spawn_blocking(move || gateway.join());
            let early_exit = tokio::select! {
                () = shutdown_signal() => None,
                // The gateway ended on its own: it could not start.
                joined = &mut joined => Some(joined),
            };
            let joined = match early_exit {
                Some(joined) => joined,
                None => {
                    eprintln!(
                        "shutting down: letting requests in flight finish, then flushing spend"
                    );
                    let _ = shutdown_tx.send(true);
                    joined.await
                }
            };
            (Some(joined), None)
        }
        None => {
            // The admin side alone: until a signal, or until its server ends on its own (then
            // the process ends with an error, for a supervisor to restart it).
            let server = admin.as_mut().and_then(|admin| admin.server.as_mut());
            let ended = match server {
                Some(server) => tokio::select! {
                    () = shutdown_signal() => None,
                    ended = server => Some(ended),
                },
                None => {
                    shutdown_signal().await;
                    None
                }
            };
            match (&ended, admin.as_mut()) {
                (Some(_), Some(admin)) => admin.server = None,
                _ => eprintln!("shutting down"),
            }
            (None, ended)
        }
    };
    let _ = shutdown_tx.send(true);
    if let Some(admin) = admin {
        admin.stop().await;
    }
    database.close().await;
    match (joined, admin_ended) {
        (_, Some(Ok(Ok(())))) => Err(anyhow::anyhow!("the admin app stopped on its own")),
        (_, Some(Ok(Err(err)))) => Err(anyhow::anyhow!("the admin app stopped: {err}")),
        (_, Some(Err(err))) => Err(anyhow::anyhow!("the admin app's task failed: {err}")),
        (None | Some(Ok(Ok(Ok(())))), None) => Ok(()),
        (Some(Ok(Ok(Err(err)))), None) => Err(anyhow::anyhow!("gateway: {err}")),
        (Some(_), None) => Err(anyhow::anyhow!("the gateway thread panicked")),
    }
}

/// The admin side while it runs.
struct Admin {
    addr: std::net::SocketAddr,
    setup_link: Result<Option<String>, db::Error>,
    /// The app's server; `None` once it has ended.
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    maintenance: tokio::task::JoinHandle<()>,
    alerts: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// Stops the jobs and waits for the app to finish its requests: send its shutdown signal
    /// first, or this waits for ever.
    async fn stop(self) {
        self.maintenance.abort();
        self.alerts.abort();
        if let Some(server) = self.server
            && let Ok(Err(err)) = server.await
        {
            tracing::warn!(error = %err, "the admin app stopped with an error");
        }
    }
}

/// Binds the admin listener and starts the app, maintenance and budget alerts.
async fn start_admin(
    config: &Config,
    database: &Database,
    keyring: &Keyring,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Admin> {
    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "admin.listen {}: {err}: is another keycap running? choose a free port with --admin-listen",
                config.admin.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let mut state = admin::AppState::new(
        database.pool.clone(),
        keyring.clone(),
        config.admin_config(addr),
    );
    if let Some(mailer) = config.mailer()? {
        state = state.with_mailer(mailer);
    }
    let setup_link = state.setup_link().await;
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
    let alerts = tokio::spawn(admin::alerts::run(state.clone()));
    let server = tokio::spawn(admin::serve(listener, state, async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    }));
    Ok(Admin {
        addr,
        setup_link,
        server: Some(server),
        maintenance,
        alerts,
    })
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
