//! What the admin app needs to know about its surroundings.

use std::time::Duration;

/// The admin app's settings, built by the `keycap` binary from its `Config`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The URL people use to reach the admin app (`http://127.0.0.1:3000`), for setup and
    /// invite links. A `https://` URL also marks session cookies `Secure`.
    pub public_url: String,
    /// The gateway's base URL as apps should use it (`http://127.0.0.1:8080/api/v1`), for the
    /// snippets shown with a new key.
    pub gateway_base_url: String,
    /// The upstream's base URL (`https://openrouter.ai`), for testing a master key.
    pub upstream_base_url: String,
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
    /// How long an invite link works.
    pub invite_ttl: Duration,
    /// How long a password-reset link works.
    pub password_reset_ttl: Duration,
    /// Failed sign-ins allowed per email, and per client address, within `login_window`.
    pub login_max_failures: i64,
    /// The window over which failed sign-ins are counted.
    pub login_window: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (`admin.trusted_proxies`).
    pub trusted_proxies: Vec<crate::client_addr::Network>,
    /// How long one org's usage metrics are kept before a scrape reads them again.
    pub metrics_cache: Duration,
    /// How long a scrape may wait for the database before it is answered 503.
    pub metrics_timeout: Duration,
    /// Whether `/metrics` has a series per open key (off for orgs too large for them).
    pub metrics_per_key: bool,
    /// Budget alerts.
    pub alerts: crate::alerts::AlertConfig,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive (and a connection may stay idle).
    pub header_timeout: Duration,
    /// How long a request may take to be read and answered.
    pub request_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            public_url: "http://127.0.0.1:3000".into(),
            gateway_base_url: "http://127.0.0.1:8080/api/v1".into(),
            upstream_base_url: "https://openrouter.ai".into(),
            session_ttl: Duration::from_secs(12 * 3600),
            invite_ttl: Duration::from_secs(7 * 24 * 3600),
            password_reset_ttl: Duration::from_secs(24 * 3600),
            login_max_failures: 5,
            login_window: Duration::from_secs(15 * 60),
            trusted_proxies: Vec::new(),
            metrics_cache: Duration::from_secs(5),
            metrics_timeout: Duration::from_secs(5),
            metrics_per_key: true,
            alerts: crate::alerts::AlertConfig {
                thresholds: db::alerts::Thresholds {
                    member_percents: vec![80, 100],
                    key_percents: vec![90],
                },
                webhook: None,
                interval: Duration::from_secs(60),
            },
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl AdminConfig {
    /// True when people reach the app over https, so cookies must be `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// `public_url` without a trailing slash.
    pub fn base(&self) -> &str {
        self.public_url.trim_end_matches('/')
    }
}
