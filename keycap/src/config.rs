//! `Config`: built-in defaults < config file (`--config`) < environment (`KEYCAP_*`, with `__`
//! for nesting, and plain `DATABASE_URL`) < command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Environment variables with the `KEYCAP_` prefix that are not config keys.
const NOT_CONFIG: &[&str] = &["KEYCAP_ENCRYPTION_KEY", "KEYCAP_PG_BIN_DIR", "KEYCAP_LOG"];

/// A mebibyte, for body sizes.
const MIB: usize = 1024 * 1024;

/// The whole configuration of one keycap process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where keycap keeps its embedded Postgres cluster and generated encryption key.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub vault: VaultConfig,
    pub gateway: GatewaySection,
    pub admin: AdminSection,
    pub metrics: ListenConfig,
    pub openrouter: OpenRouterConfig,
    pub smtp: SmtpConfig,
    pub alerts: AlertsSection,
    pub log: LogConfig,
}

/// `[database]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A Postgres URL; empty means the embedded cluster in `data_dir`.
    pub url: String,
    /// Connections per process.
    pub pool_size: usize,
}

/// `[vault]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The encryption key file; empty means `<data_dir>/encryption.key`.
    pub key_file: String,
}

/// `[gateway]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// `host:port` of the proxy.
    pub listen: String,
    /// Milliseconds between flushes of settled spend to Postgres.
    pub flush_interval_ms: u64,
    /// Milliseconds between writes of per-minute usage rollups (with the next flush).
    pub rollup_interval_ms: u64,
    /// Seconds between full reloads of cached keys (behind LISTEN/NOTIFY).
    pub refresh_interval_seconds: u64,
    /// Seconds between fetches of the upstream's prices.
    pub price_refresh_seconds: u64,
    /// Largest request body in bytes (at most 256 MiB).
    pub max_body_bytes: usize,
    /// Request body bytes the gateway holds at once, over all requests; a request that would
    /// pass it waits a little, then gets 503.
    pub max_inflight_body_bytes: usize,
    /// Milliseconds a request body may take to arrive whole; a slower one gets 408.
    pub body_read_timeout_ms: u64,
    /// USD reserved for a request on a model with no known price; empty refuses them.
    pub unpriced_ceiling_usd: String,
    /// Comma-separated `GET` paths passed through free of charge, beyond `models` and
    /// `generation`: exact paths, or prefixes ending in `/*`.
    pub extra_free_paths: String,
    /// Seconds in-flight requests get to finish on shutdown.
    pub grace_period_seconds: u64,
    /// Proxy worker threads.
    pub threads: usize,
    /// Milliseconds between a gateway's heartbeats.
    pub lease_heartbeat_ms: u64,
    /// Milliseconds of silence after which a gateway is dead and its leases are reclaimed.
    pub lease_lapse_ms: u64,
    /// USD: the smallest slice of a key's cap a gateway asks for.
    pub lease_min_slice_usd: String,
    /// Milliseconds without a request after which a key's unused slice goes back.
    pub lease_idle_ms: u64,
    /// Connections of the gateway's own pool for looking up tokens it has not cached.
    pub lookup_connections: usize,
    /// Tokens being looked up at once; past that, a request with a token not cached gets 503.
    pub max_lookups_in_flight: usize,
}

impl Default for GatewaySection {
    fn default() -> GatewaySection {
        GatewaySection {
            listen: "127.0.0.1:8080".into(),
            flush_interval_ms: 1000,
            rollup_interval_ms: 60_000,
            refresh_interval_seconds: 30,
            price_refresh_seconds: 300,
            max_body_bytes: 32 * MIB,
            max_inflight_body_bytes: 1024 * MIB,
            body_read_timeout_ms: 60_000,
            unpriced_ceiling_usd: String::new(),
            extra_free_paths: String::new(),
            grace_period_seconds: 5,
            threads: 2,
            lease_heartbeat_ms: 1000,
            lease_lapse_ms: 10_000,
            lease_min_slice_usd: "0.05".into(),
            lease_idle_ms: 60_000,
            lookup_connections: 4,
            max_lookups_in_flight: 64,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// `host:port` of the admin web app.
    pub listen: String,
    /// The URL people use to reach the admin app, for setup and invite links; empty means
    /// `http://<listen>`. An `https://` URL makes session cookies `Secure`.
    pub public_url: String,
    /// The gateway's URL as apps reach it, shown in key snippets; empty means
    /// `http://<gateway.listen>/api/v1`.
    pub gateway_public_url: String,
    /// Hours a sign-in lasts.
    pub session_hours: u64,
    /// Days an invite link works.
    pub invite_days: u64,
    /// Hours a password-reset link works.
    pub password_reset_hours: u64,
    /// Failed sign-ins allowed per email within 15 minutes (an address gets four times as many).
    pub login_max_failures: i64,
    /// Milliseconds one org's usage metrics are kept before a scrape reads them again.
    pub metrics_cache_ms: u64,
    /// Milliseconds a scrape of `/metrics` waits for the database before answering 503.
    pub metrics_timeout_ms: u64,
    /// Whether `/metrics` has a series per open key.
    pub metrics_per_key: bool,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` names the client, for sign-in
    /// throttling.
    pub trusted_proxies: Vec<String>,
    /// Connections the admin app keeps open at once.
    pub max_connections: usize,
    /// Milliseconds a request's headers may take to arrive (and a connection may stay idle).
    pub header_timeout_ms: u64,
    /// Milliseconds a request may take to be read and answered.
    pub request_timeout_ms: u64,
}

impl Default for AdminSection {
    fn default() -> AdminSection {
        AdminSection {
            listen: "127.0.0.1:3000".into(),
            public_url: String::new(),
            gateway_public_url: String::new(),
            session_hours: 12,
            invite_days: 7,
            password_reset_hours: 24,
            login_max_failures: 5,
            metrics_cache_ms: 5000,
            metrics_timeout_ms: 5000,
            metrics_per_key: true,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
        }
    }
}

/// `[alerts]`: budget alerts by email (through `[smtp]`) and webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Shares of a member's monthly budget, in percent, whose passing alerts them.
    pub member_budget_percents: Vec<i32>,
    /// Shares of a key's cap, in percent, whose passing alerts its member.
    pub key_cap_percents: Vec<i32>,
    /// Seconds between alert passes.
    pub interval_seconds: u64,
    /// Where alerts are posted as JSON; empty posts none.
    pub webhook_url: String,
    /// The HMAC-SHA256 key of the webhook's signature; needed with a webhook URL.
    pub webhook_secret: String,
}

impl Default for AlertsSection {
    fn default() -> AlertsSection {
        AlertsSection {
            member_budget_percents: vec![80, 100],
            key_cap_percents: vec![90],
            interval_seconds: 60,
            webhook_url: String::new(),
            webhook_secret: String::new(),
        }
    }
}

/// A listener section: `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// `host:port` to listen on.
    pub listen: String,
}

/// `[openrouter]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpenRouterConfig {
    /// The upstream, without `/api/v1`.
    pub base_url: String,
    /// Prompt tokens reserved per image sent by URL.
    pub image_prompt_tokens: u64,
    /// Prompt tokens reserved per web search result.
    pub web_result_tokens: u64,
    /// The most searches one request may ask for.
    pub max_web_searches: u64,
    /// The most results per search one request may ask for.
    pub max_web_results: u64,
    /// USD reserved per web search.
    pub web_search_fee_usd: String,
    /// USD reserved per web search result.
    pub web_result_fee_usd: String,
    /// Pages reserved per file for the per-page `mistral-ocr` PDF engine; 0 refuses it.
    pub ocr_pages_per_file: u64,
    /// USD reserved per `mistral-ocr` page.
    pub ocr_page_fee_usd: String,
    /// Milliseconds after a request settled without a reported cost before the upstream is
    /// first asked what it billed (`GET /api/v1/generation`); each retry waits twice as long.
    pub reconcile_delay_ms: u64,
    /// How many times to ask before keeping the reservation; 0 never asks.
    pub reconcile_attempts: u32,
}

/// `[smtp]`: where invite emails go out. Without a URL, invite links are only shown to copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS), `smtps://...` (TLS),
    /// or `smtp://host:25` (plain, for a relay on a trusted network); empty sends no email. May hold a password: set it in the
    /// environment, not in a file.
    pub url: String,
    /// The sender, such as `keycap <keycap@example.com>`.
    pub from: String,
}

impl Default for SmtpConfig {
    fn default() -> SmtpConfig {
        SmtpConfig {
            url: String::new(),
            from: "keycap <keycap@localhost>".into(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `keycap=debug,info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data_dir: PathBuf::from("./keycap-data"),
            database: DatabaseConfig::default(),
            vault: VaultConfig::default(),
            gateway: GatewaySection::default(),
            admin: AdminSection::default(),
            metrics: ListenConfig {
                listen: "127.0.0.1:9464".into(),
            },
            openrouter: OpenRouterConfig::default(),
            smtp: SmtpConfig::default(),
            alerts: AlertsSection::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> DatabaseConfig {
        DatabaseConfig {
            url: String::new(),
            pool_size: 16,
        }
    }
}

impl Default for OpenRouterConfig {
    fn default() -> OpenRouterConfig {
        let pricing = domain::services::openrouter::OpenRouterConfig::default();
        OpenRouterConfig {
            base_url: "https://openrouter.ai".into(),
            image_prompt_tokens: pricing.image_prompt_tokens,
            web_result_tokens: pricing.web_result_tokens,
            max_web_searches: pricing.max_web_searches,
            max_web_results: pricing.max_web_results,
            web_search_fee_usd: usd_text(pricing.web_search_fee),
            web_result_fee_usd: usd_text(pricing.web_result_fee),
            ocr_pages_per_file: pricing.ocr_pages_per_file,
            ocr_page_fee_usd: usd_text(pricing.ocr_page_fee),
            reconcile_delay_ms: 1000,
            reconcile_attempts: 8,
        }
    }
}

/// A default amount as a setting's text: `0.015`.
fn usd_text(amount: domain::Money) -> String {
    amount.decimal_usd()
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Overrides from command-line flags; `None` leaves the layered value alone.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub gateway_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub metrics_listen: Option<String>,
}

impl Config {
    /// Layers defaults, the file, the environment and the flags, then validates.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &FlagOverrides,
    ) -> anyhow::Result<Config> {
        let mut layered =
            toml::Value::try_from(Config::default()).context("serialising default config")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let from_file: toml::Value = toml::from_str(&text)
                .with_context(|| format!("parsing config file {}", path.display()))?;
            merge(&mut layered, from_file);
        }
        // Plain DATABASE_URL first, so that KEYCAP_DATABASE__URL wins over it.
        let (plain, prefixed): (Vec<_>, Vec<_>) =
            env.iter().partition(|(name, _)| name == "DATABASE_URL");
        for (name, value) in plain.into_iter().chain(prefixed) {
            if let Some(path) = env_path(name) {
                set_path(&mut layered, &path, env_value(value))
                    .with_context(|| format!("environment variable {name}"))?;
            }
        }
        let mut config: Config = layered.try_into().context("invalid configuration")?;
        if let Some(dir) = &flags.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(level) = &flags.log_level {
            config.log.level = level.clone();
        }
        if let Some(listen) = &flags.gateway_listen {
            config.gateway.listen = listen.clone();
        }
        if let Some(listen) = &flags.admin_listen {
            config.admin.listen = listen.clone();
        }
        if let Some(listen) = &flags.metrics_listen {
            config.metrics.listen = listen.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Fails fast, naming the bad key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, listen) in [
            ("gateway.listen", &self.gateway.listen),
            ("admin.listen", &self.admin.listen),
            ("metrics.listen", &self.metrics.listen),
        ] {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                bail!("{key} = {listen:?} is not a host:port address such as 127.0.0.1:8080");
            }
        }
        for (key, listen) in [
            ("gateway.listen", &self.gateway.listen),
            ("metrics.listen", &self.metrics.listen),
        ] {
            if listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|addr| addr.port() == 0)
            {
                bail!("{key} = {listen:?}: port 0 is not supported here, choose a port");
            }
        }
        if self.gateway.listen == self.metrics.listen {
            bail!(
                "gateway.listen and metrics.listen are both {:?}: give each its own port",
                self.gateway.listen
            );
        }
        if self.gateway.max_body_bytes == 0 || self.gateway.max_body_bytes > 256 * MIB {
            bail!(
                "gateway.max_body_bytes must be between 1 and {} (256 MiB)",
                256 * MIB
            );
        }
        if self.gateway.max_inflight_body_bytes < self.gateway.max_body_bytes {
            bail!(
                "gateway.max_inflight_body_bytes ({}) must be at least gateway.max_body_bytes ({}): \
                 a body of the largest size must fit",
                self.gateway.max_inflight_body_bytes,
                self.gateway.max_body_bytes
            );
        }
        if self.gateway.body_read_timeout_ms == 0 {
            bail!("gateway.body_read_timeout_ms must be at least 1");
        }
        // With each wait twice the one before, the last question comes delay × (2^attempts − 1)
        // after the request; the reservation is held until then.
        let attempts = self.openrouter.reconcile_attempts.min(63);
        let held_ms = u128::from(self.openrouter.reconcile_delay_ms) * ((1u128 << attempts) - 1);
        if self.openrouter.reconcile_attempts > 16
            || self.openrouter.reconcile_delay_ms == 0
            || held_ms > 3_600_000
        {
            bail!(
                "openrouter.reconcile_attempts must be at most 16, openrouter.reconcile_delay_ms \
                 at least 1, and together they may hold a request's reservation for an hour at \
                 most (delay × (2^attempts − 1) ≤ 3,600,000 ms; now {held_ms} ms)"
            );
        }
        if self.gateway.lease_heartbeat_ms == 0
            || self.gateway.lease_lapse_ms < 3 * self.gateway.lease_heartbeat_ms
        {
            bail!(
                "gateway.lease_heartbeat_ms must be at least 1, and gateway.lease_lapse_ms at \
                 least three heartbeats (now {} and {} ms): a live gateway must not be taken \
                 for dead",
                self.gateway.lease_heartbeat_ms,
                self.gateway.lease_lapse_ms
            );
        }
        if self.gateway.flush_interval_ms == 0
            || self.gateway.rollup_interval_ms == 0
            || self.gateway.refresh_interval_seconds == 0
            || self.gateway.threads == 0
            || self.gateway.lookup_connections == 0
            || self.gateway.max_lookups_in_flight == 0
        {
            bail!(
                "gateway.flush_interval_ms, gateway.rollup_interval_ms, gateway.refresh_interval_seconds, gateway.threads, gateway.lookup_connections and gateway.max_lookups_in_flight must be at least 1"
            );
        }
        // The settings the gateway reads from text (a ceiling, the free paths).
        self.gateway_config()?;
        if self.admin.max_connections == 0
            || self.admin.header_timeout_ms == 0
            || self.admin.request_timeout_ms == 0
        {
            bail!(
                "admin.max_connections, admin.header_timeout_ms and admin.request_timeout_ms must be at least 1"
            );
        }
        if !(1..=24 * 366).contains(&self.admin.session_hours) {
            bail!("admin.session_hours must be between 1 and 8784 (a year)");
        }
        if !(1..=366).contains(&self.admin.invite_days) {
            bail!("admin.invite_days must be between 1 and 366");
        }
        if !(1..=168).contains(&self.admin.password_reset_hours) {
            bail!("admin.password_reset_hours must be between 1 and 168 (a week)");
        }
        if self.admin.login_max_failures < 1 {
            bail!("admin.login_max_failures must be at least 1");
        }
        for (key, url) in [
            ("admin.public_url", &self.admin.public_url),
            ("admin.gateway_public_url", &self.admin.gateway_public_url),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{key} = {url:?} must be empty or start with http:// or https://");
            }
        }
        if !self.smtp.url.is_empty() {
            admin::Mailer::new(&self.smtp.url, &self.smtp.from)?;
        }
        for proxy in &self.admin.trusted_proxies {
            proxy
                .parse::<admin::client_addr::Network>()
                .map_err(|err| anyhow::anyhow!("admin.trusted_proxies: {err}"))?;
        }
        if !(1..=60_000).contains(&self.admin.metrics_cache_ms)
            || !(1..=60_000).contains(&self.admin.metrics_timeout_ms)
        {
            bail!(
                "admin.metrics_cache_ms and admin.metrics_timeout_ms must be between 1 and 60000"
            );
        }
        let alerts = &self.alerts;
        if alerts
            .member_budget_percents
            .iter()
            .chain(&alerts.key_cap_percents)
            .any(|p| !(1..=1000).contains(p))
        {
            bail!(
                "alerts.member_budget_percents and alerts.key_cap_percents must hold percentages between 1 and 1000, such as [80, 100]"
            );
        }
        if !(1..=86_400).contains(&alerts.interval_seconds) {
            bail!("alerts.interval_seconds must be between 1 and 86400");
        }
        if !alerts.webhook_url.is_empty() {
            // The URL may hold a credential: it is not repeated.
            if !(alerts.webhook_url.starts_with("http://")
                || alerts.webhook_url.starts_with("https://"))
            {
                bail!("alerts.webhook_url must start with http:// or https://");
            }
            if alerts.webhook_secret.len() < 16 {
                bail!(
                    "alerts.webhook_secret must be set, at least 16 characters, with alerts.webhook_url: receivers check the signature made with it (set it in the environment: KEYCAP_ALERTS__WEBHOOK_SECRET)"
                );
            }
        }
        if self.database.pool_size == 0 {
            bail!("database.pool_size must be at least 1");
        }
        let base = &self.openrouter.base_url;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("openrouter.base_url = {base:?} must start with http:// or https://");
        }
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir must not be empty");
        }
        Ok(())
    }

    /// The gateway's settings; an error names the setting that does not read.
    pub fn gateway_config(&self) -> anyhow::Result<gateway::GatewayConfig> {
        use std::time::Duration;
        let unpriced_ceiling = match self.gateway.unpriced_ceiling_usd.as_str() {
            "" => None,
            usd => Some(
                domain::Money::parse_usd(usd)
                    .map_err(|err| anyhow::anyhow!("gateway.unpriced_ceiling_usd: {err}"))?,
            ),
        };
        let extra_free_paths =
            domain::services::openrouter::FreePaths::parse(&self.gateway.extra_free_paths)
                .map_err(|err| anyhow::anyhow!("gateway.extra_free_paths: {err}"))?;
        let fee = |name: &str, usd: &str| {
            domain::Money::parse_usd(usd).map_err(|err| anyhow::anyhow!("openrouter.{name}: {err}"))
        };
        let or = &self.openrouter;
        let openrouter = domain::services::openrouter::OpenRouterConfig {
            unpriced_ceiling,
            image_prompt_tokens: or.image_prompt_tokens,
            web_result_tokens: or.web_result_tokens,
            max_web_searches: or.max_web_searches,
            max_web_results: or.max_web_results,
            web_search_fee: fee("web_search_fee_usd", &or.web_search_fee_usd)?,
            web_result_fee: fee("web_result_fee_usd", &or.web_result_fee_usd)?,
            ocr_pages_per_file: or.ocr_pages_per_file,
            ocr_page_fee: fee("ocr_page_fee_usd", &or.ocr_page_fee_usd)?,
            extra_free_paths,
            ..Default::default()
        };
        Ok(gateway::GatewayConfig {
            listen: self.gateway.listen.clone(),
            metrics_listen: self.metrics.listen.clone(),
            upstream_base_url: self.openrouter.base_url.clone(),
            flush_interval: Duration::from_millis(self.gateway.flush_interval_ms),
            rollup_interval: Duration::from_millis(self.gateway.rollup_interval_ms),
            refresh_interval: Duration::from_secs(self.gateway.refresh_interval_seconds),
            price_refresh_interval: Duration::from_secs(self.gateway.price_refresh_seconds.max(1)),
            negative_cache_ttl: Duration::from_secs(10),
            max_body_bytes: self.gateway.max_body_bytes,
            max_inflight_body_bytes: self.gateway.max_inflight_body_bytes,
            body_read_timeout: Duration::from_millis(self.gateway.body_read_timeout_ms),
            openrouter,
            reconcile_delay: Duration::from_millis(self.openrouter.reconcile_delay_ms),
            reconcile_attempts: self.openrouter.reconcile_attempts,
            grace_period_seconds: self.gateway.grace_period_seconds,
            threads: self.gateway.threads,
            lease: gateway::lease::LeaseConfig {
                heartbeat: Duration::from_millis(self.gateway.lease_heartbeat_ms),
                lapse: Duration::from_millis(self.gateway.lease_lapse_ms),
                min_slice: domain::Money::parse_usd(&self.gateway.lease_min_slice_usd)
                    .map_err(|err| anyhow::anyhow!("gateway.lease_min_slice_usd: {err}"))?,
                idle: Duration::from_millis(self.gateway.lease_idle_ms),
            },
            lookup_connections: self.gateway.lookup_connections,
            max_lookups_in_flight: self.gateway.max_lookups_in_flight,
        })
    }

    /// The admin app's settings. `admin_addr` is the address the admin listener got, which
    /// differs from `admin.listen` when that asks for port 0.
    pub fn admin_config(&self, admin_addr: std::net::SocketAddr) -> admin::AdminConfig {
        use std::time::Duration;
        let public_url = if self.admin.public_url.is_empty() {
            format!("http://{admin_addr}")
        } else {
            self.admin.public_url.clone()
        };
        let gateway_base_url = if self.admin.gateway_public_url.is_empty() {
            format!("http://{}/api/v1", self.gateway.listen)
        } else {
            self.admin.gateway_public_url.clone()
        };
        admin::AdminConfig {
            public_url,
            gateway_base_url,
            upstream_base_url: self.openrouter.base_url.clone(),
            session_ttl: Duration::from_secs(self.admin.session_hours * 3600),
            invite_ttl: Duration::from_secs(self.admin.invite_days * 24 * 3600),
            password_reset_ttl: Duration::from_secs(self.admin.password_reset_hours * 3600),
            login_max_failures: self.admin.login_max_failures,
            login_window: Duration::from_secs(15 * 60),
            trusted_proxies: self
                .admin
                .trusted_proxies
                .iter()
                .filter_map(|proxy| proxy.parse().ok())
                .collect(),
            metrics_cache: Duration::from_millis(self.admin.metrics_cache_ms),
            metrics_timeout: Duration::from_millis(self.admin.metrics_timeout_ms),
            metrics_per_key: self.admin.metrics_per_key,
            max_connections: self.admin.max_connections,
            header_timeout: Duration::from_millis(self.admin.header_timeout_ms),
            request_timeout: Duration::from_millis(self.admin.request_timeout_ms),
            alerts: admin::alerts::AlertConfig {
                thresholds: db::alerts::Thresholds {
                    member_percents: self.alerts.member_budget_percents.clone(),
                    key_percents: self.alerts.key_cap_percents.clone(),
                },
                webhook: (!self.alerts.webhook_url.is_empty()).then(|| admin::alerts::Webhook {
                    url: self.alerts.webhook_url.clone(),
                    secret: self.alerts.webhook_secret.clone().into(),
                }),
                interval: Duration::from_secs(self.alerts.interval_seconds),
            },
        }
    }

    /// The admin app's URL for links printed by the command line: `admin.public_url`, or
    /// `http://<admin.listen>`.
    pub fn admin_public_url(&self) -> String {
        if self.admin.public_url.is_empty() {
            format!("http://{}", self.admin.listen)
        } else {
            self.admin.public_url.clone()
        }
    }

    /// The mailer for invite emails, when `smtp.url` is set.
    pub fn mailer(&self) -> anyhow::Result<Option<admin::Mailer>> {
        if self.smtp.url.is_empty() {
            return Ok(None);
        }
        Ok(Some(admin::Mailer::new(&self.smtp.url, &self.smtp.from)?))
    }

    /// The encryption key file.
    pub fn key_file(&self) -> PathBuf {
        if self.vault.key_file.is_empty() {
            self.data_dir.join("encryption.key")
        } else {
            PathBuf::from(&self.vault.key_file)
        }
    }
}

/// `KEYCAP_GATEWAY__LISTEN` -> `["gateway", "listen"]`; `DATABASE_URL` -> `["database", "url"]`.
fn env_path(name: &str) -> Option<Vec<String>> {
    if name == "DATABASE_URL" {
        return Some(vec!["database".into(), "url".into()]);
    }
    if NOT_CONFIG.contains(&name) {
        return None;
    }
    let rest = name.strip_prefix("KEYCAP_")?;
    Some(
        rest.split("__")
            .map(|part| part.to_ascii_lowercase())
            .collect(),
    )
}

/// An environment variable's value: an integer, `true` or `false`, a TOML array such as
/// `[80, 100]`, or else a string.
fn env_value(text: &str) -> toml::Value {
    if let Ok(n) = text.parse::<i64>() {
        return toml::Value::Integer(n);
    }
    if let Ok(b) = text.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if text.trim_start().starts_with('[')
        && let Ok(mut table) = toml::from_str::<toml::Table>(&format!("v = {text}"))
        && let Some(array) = table.remove("v")
    {
        return array;
    }
    toml::Value::String(text.to_string())
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(());
    };
    let mut node = root;
    for part in parents {
        let table = node.as_table_mut().context("not a table")?;
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node
        .as_table_mut()
        .with_context(|| format!("{} is not a section", parents.join(".")))?;
    // A string from the environment for a string key stays a string ("8080" listen ports are not).
    let value = match (table.get(last), value) {
        (Some(toml::Value::String(_)), toml::Value::Integer(n)) => {
            toml::Value::String(n.to_string())
        }
        (_, value) => value,
    };
    table.insert(last.clone(), value);
    Ok(())
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keycap.toml");
        std::fs::write(
            &file,
            "[gateway]\nlisten = \"127.0.0.1:1111\"\n[admin]\nlisten = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        let flags = FlagOverrides {
            admin_listen: Some("127.0.0.1:3333".into()),
            ..Default::default()
        };
        let config = Config::load(
            Some(&file),
            &env(&[
                ("KEYCAP_GATEWAY__LISTEN", "127.0.0.1:4444"),
                ("DATABASE_URL", "postgres://x/y"),
                ("HOME", "/root"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(config.gateway.listen, "127.0.0.1:4444");
        assert_eq!(config.admin.listen, "127.0.0.1:3333");
        assert_eq!(config.database.url, "postgres://x/y");
        assert_eq!(config.metrics.listen, "127.0.0.1:9464");
    }

    #[test]
    fn the_environment_sets_lists_and_switches() {
        let config = Config::load(
            None,
            &env(&[
                ("KEYCAP_ALERTS__MEMBER_BUDGET_PERCENTS", "[50, 90]"),
                ("KEYCAP_ADMIN__METRICS_PER_KEY", "false"),
                ("KEYCAP_ADMIN__LISTEN", "[::1]:3000"),
            ]),
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(config.alerts.member_budget_percents, vec![50, 90]);
        assert!(!config.admin.metrics_per_key);
        assert_eq!(config.admin.listen, "[::1]:3000");
        for (pairs, expected) in [
            (
                &[("KEYCAP_ALERTS__KEY_CAP_PERCENTS", "[0]")][..],
                "percentages between 1 and 1000",
            ),
            (
                &[("KEYCAP_ALERTS__WEBHOOK_URL", "https://hooks.example/x")][..],
                "alerts.webhook_secret must be set",
            ),
            (
                &[("KEYCAP_ADMIN__METRICS_TIMEOUT_MS", "0")][..],
                "admin.metrics_timeout_ms must be between 1 and 60000",
            ),
        ] {
            let err = Config::load(None, &env(pairs), &FlagOverrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{pairs:?}: {err:#}");
        }
    }

    #[test]
    fn keycap_database_url_wins_over_plain() {
        let config = Config::load(
            None,
            &env(&[
                ("DATABASE_URL", "postgres://plain/db"),
                ("KEYCAP_DATABASE__URL", "postgres://keycap/db"),
            ]),
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(config.database.url, "postgres://keycap/db");
    }

    #[test]
    fn listeners_need_their_own_real_ports() {
        for (pairs, expected) in [
            (
                &[("KEYCAP_GATEWAY__LISTEN", "127.0.0.1:0")][..],
                "port 0 is not supported",
            ),
            (
                &[("KEYCAP_METRICS__LISTEN", "127.0.0.1:8080")][..],
                "give each its own port",
            ),
            (
                &[("KEYCAP_GATEWAY__MAX_BODY_BYTES", "268435457")][..],
                "gateway.max_body_bytes must be between 1 and 268435456",
            ),
            (
                &[
                    ("KEYCAP_GATEWAY__MAX_BODY_BYTES", "2000"),
                    ("KEYCAP_GATEWAY__MAX_INFLIGHT_BODY_BYTES", "1999"),
                ][..],
                "gateway.max_inflight_body_bytes (1999) must be at least gateway.max_body_bytes (2000)",
            ),
            (
                &[("KEYCAP_OPENROUTER__RECONCILE_ATTEMPTS", "17")][..],
                "openrouter.reconcile_attempts must be at most 16",
            ),
            (
                &[
                    ("KEYCAP_OPENROUTER__RECONCILE_ATTEMPTS", "16"),
                    ("KEYCAP_OPENROUTER__RECONCILE_DELAY_MS", "1000"),
                ][..],
                "now 65535000 ms",
            ),
            (
                &[("KEYCAP_GATEWAY__UNPRICED_CEILING_USD", "lots")][..],
                "gateway.unpriced_ceiling_usd",
            ),
            (
                &[("KEYCAP_GATEWAY__EXTRA_FREE_PATHS", "/api/v1/chat/*")][..],
                "gateway.extra_free_paths: \"/api/v1/chat/*\" reaches /api/v1/chat/completions",
            ),
        ] {
            let err = Config::load(None, &env(pairs), &FlagOverrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{err:#}");
        }
    }

    #[test]
    fn extra_free_paths_reach_the_gateway() {
        let config = Config::load(
            None,
            &env(&[(
                "KEYCAP_GATEWAY__EXTRA_FREE_PATHS",
                "/api/v1/providers,/api/v1/models/*",
            )]),
            &FlagOverrides::default(),
        )
        .unwrap();
        let paths = config.gateway_config().unwrap().openrouter.extra_free_paths;
        assert!(paths.contains("/api/v1/providers"));
        assert!(paths.contains("/api/v1/models/a/b/endpoints"));
        assert!(
            Config::default()
                .gateway_config()
                .unwrap()
                .openrouter
                .extra_free_paths
                .is_empty()
        );
    }

    #[test]
    fn pricing_allowances_reach_the_gateway() {
        // The defaults are the adapter's own.
        let defaults = Config::default().gateway_config().unwrap();
        assert_eq!(
            defaults.openrouter,
            domain::services::openrouter::OpenRouterConfig::default()
        );
        assert_eq!(defaults.reconcile_attempts, 8);
        let config = Config::load(
            None,
            &env(&[
                ("KEYCAP_OPENROUTER__OCR_PAGES_PER_FILE", "40"),
                ("KEYCAP_OPENROUTER__WEB_RESULT_FEE_USD", "0.01"),
                ("KEYCAP_OPENROUTER__MAX_WEB_SEARCHES", "2"),
                ("KEYCAP_OPENROUTER__RECONCILE_DELAY_MS", "250"),
            ]),
            &FlagOverrides::default(),
        )
        .unwrap()
        .gateway_config()
        .unwrap();
        assert_eq!(config.openrouter.ocr_pages_per_file, 40);
        assert_eq!(
            config.openrouter.web_result_fee,
            domain::Money::from_nanos(10_000_000)
        );
        assert_eq!(config.openrouter.max_web_searches, 2);
        assert_eq!(
            config.reconcile_delay,
            std::time::Duration::from_millis(250)
        );
        let bad = Config::load(
            None,
            &env(&[("KEYCAP_OPENROUTER__WEB_SEARCH_FEE_USD", "-1")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{bad:#}").contains("openrouter.web_search_fee_usd"),
            "{bad:#}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Config::load(
            None,
            &env(&[("KEYCAP_GATEWAY__LISTEN", "nope")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("gateway.listen"), "{err:#}");
        let err = Config::load(
            None,
            &env(&[("KEYCAP_GATEWY__LISTEN", "x")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("gatewy"), "{err:#}");
        let err = Config::load(
            None,
            &env(&[("KEYCAP_DATABASE__POOL_SIZE", "0")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("pool_size"), "{err:#}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/keycap.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let config: Config = toml::from_str(&text).unwrap();
        assert_eq!(config, Config::default());
    }
}
