//! The state every handler shares.

use std::sync::{Arc, Mutex};

use crate::config::AdminConfig;

/// Shared by every request: the pool, the keyring, the settings, and the one-time setup token.
#[derive(Clone)]
pub struct AppState {
    pub pool: db::Pool,
    pub keyring: Arc<vault::Keyring>,
    pub config: Arc<AdminConfig>,
    /// Client for testing master keys against the upstream.
    pub http: reqwest::Client,
    /// Sends invite emails, when SMTP is configured.
    pub mailer: Option<crate::mail::Mailer>,
    /// Where every handler takes `now` from.
    pub clock: crate::Clock,
    /// Each org's last usage metrics.
    pub(crate) usage_cache: Arc<crate::usage_metrics::UsageCache>,
    /// The token of the setup link, while nobody can sign in. Held only in memory: a restart
    /// prints a new link.
    setup_token: Arc<Mutex<Option<String>>>,
}

impl AppState {
    /// State for an app on `pool`.
    pub fn new(pool: db::Pool, keyring: vault::Keyring, config: AdminConfig) -> AppState {
        let timeout = std::time::Duration::from_secs(10);
        // The system's root certificates, as the gateway's; a store reqwest cannot read leaves
        // an https upstream unverifiable (the key checks then say so), not the app unstarted.
        // No redirect is followed: a key check carries a master key, and a webhook post a
        // signed alert, to the configured address only (a redirect answer is a failure).
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .or_else(|err| {
                tracing::warn!(error = %err, "no usable root certificates for upstream checks");
                reqwest::Client::builder()
                    .timeout(timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .tls_built_in_root_certs(false)
                    .build()
            })
            .unwrap_or_default();
        AppState {
            pool,
            keyring: Arc::new(keyring),
            config: Arc::new(config),
            http,
            mailer: None,
            clock: crate::Clock::default(),
            usage_cache: Arc::default(),
            setup_token: Arc::new(Mutex::new(None)),
        }
    }

    /// The same state, sending invite emails through `mailer`.
    pub fn with_mailer(mut self, mailer: crate::mail::Mailer) -> AppState {
        self.mailer = Some(mailer);
        self
    }

    /// The same state, taking the time from `clock`.
    pub fn with_clock(mut self, clock: crate::Clock) -> AppState {
        self.clock = clock;
        self
    }

    /// When nobody can sign in yet, makes a one-time setup link and returns it, to be printed at
    /// start-up. Returns `None` once keycap is set up.
    pub async fn setup_link(&self) -> Result<Option<String>, db::Error> {
        let client = self.pool.get().await?;
        if db::accounts::any_user_can_sign_in(&client).await? {
            return Ok(None);
        }
        let token = domain::token::random_secret();
        let link = format!("{}/setup?token={token}", self.config.base());
        *self.setup_token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(Some(link))
    }

    /// True when `token` is the current setup token.
    pub(crate) fn setup_token_matches(&self, token: &str) -> bool {
        let guard = self.setup_token.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_deref()
            .is_some_and(|expected| crate::csrf::same(expected, token))
    }

    /// Forgets the setup token once the first owner exists.
    pub(crate) fn consume_setup_token(&self) {
        *self.setup_token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
