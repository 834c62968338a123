//! Starting and stopping a gateway: the pingora server (proxy and metrics listeners) on its own
//! threads, the background tasks on the caller's runtime, and an orderly shutdown that ends
//! with a last flush of spend and the leases given back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

use crate::config::GatewayConfig;
use crate::proxy::Proxy;
use crate::state::Gateway;
use crate::{flusher, lease, sync};

/// What the gateway needs from the process that runs it.
pub struct Resources {
    pub pool: db::Pool,
    /// The database URL, for the dedicated `LISTEN` connection.
    pub database_url: String,
    pub keyring: vault::Keyring,
    /// The runtime for database work and background tasks.
    pub control: tokio::runtime::Handle,
}

/// The write buffer of each client connection. pingora's default (1,460 bytes, one TCP segment)
/// makes an answer with a `Content-Length` longer than that go out in two writes, its header
/// and then its body; with room for both, it goes out in one at the end of the body (a
/// streamed answer of ~3 KiB: 6 system calls per request instead of 7, measured in
/// benches/README.md). Answers without a length (OpenRouter's streams are chunked) are still
/// flushed chunk by chunk, so streams stay unbuffered. The buffer is allocated for each client
/// connection as it is accepted (pingora's read buffer there is 64 KiB): ~15 KiB more per open
/// connection than the default.
const CLIENT_WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Turns our shutdown watch into pingora's shutdown signal.
struct WatchShutdown(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for WatchShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut shutdown = self.0.clone();
        let _ = shutdown.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Runs a gateway until `shutdown` turns true; blocks the calling thread, which must not be a
/// runtime thread. In-flight requests get `grace_period_seconds` to finish, then spend still in
/// memory is flushed.
pub fn run(
    config: GatewayConfig,
    resources: Resources,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    check_addresses(&config)?;
    let control = resources.control.clone();
    let lookup_pool = db::connect_with_statement_timeout(
        &resources.database_url,
        config.lookup_connections,
        crate::lookups::STATEMENT_TIMEOUT,
    )
    .map_err(|err| format!("cannot make the key lookup pool: {err}"))?;
    let gateway = Arc::new(Gateway::new(
        config.clone(),
        resources.pool.clone(),
        lookup_pool,
        resources.keyring,
        control.clone(),
    )?);
    check_trusted_roots(&config)?;
    // Spend flushed before this start (by this gateway before a restart) reaches the keys'
    // rows before any key is loaded from them (migrations/0009_spend_journal.sql).
    control
        .block_on(flusher::fold(&resources.pool))
        .map_err(|err| format!("cannot fold the spend journal before starting: {err}"))?;
    control
        .block_on(lease::register(&gateway))
        .map_err(|err| format!("cannot register this gateway in the database: {err}"))?;

    // The flusher stops only after the proxy has stopped, so no settled request is missed.
    let (flusher_stop_tx, flusher_stop_rx) = watch::channel(false);
    let flusher = control.spawn(flusher::run(
        resources.pool.clone(),
        Arc::clone(&gateway.outbox),
        flusher::Intervals {
            flush: config.flush_interval,
            rollup: config.rollup_interval,
        },
        gateway.metrics,
        gateway.leases.id,
        flusher_stop_rx,
    ));
    // The heartbeat goes on until the leases are given back, after the last flush.
    let (heartbeat_stop_tx, heartbeat_stop_rx) = watch::channel(false);
    control.spawn(lease::heartbeat(
        Arc::clone(&gateway),
        resources.database_url.clone(),
        heartbeat_stop_rx,
    ));
    control.spawn(lease::reclaim(
        Arc::clone(&gateway),
        resources.database_url.clone(),
        shutdown.clone(),
    ));
    control.spawn(lease::sweep(Arc::clone(&gateway), shutdown.clone()));
    control.spawn(sync::listen_for_changes(
        Arc::clone(&gateway),
        resources.database_url,
        shutdown.clone(),
    ));
    control.spawn(sync::refresh_periodically(
        Arc::clone(&gateway),
        shutdown.clone(),
    ));
    control.spawn(sync::refresh_prices(Arc::clone(&gateway), shutdown.clone()));
    control.spawn(crate::lookups::sweep(
        Arc::clone(&gateway),
        config.negative_cache_ttl,
        shutdown.clone(),
    ));
    control.spawn(announce_when_listening(
        config.listen.clone(),
        config.metrics_listen.clone(),
    ));

    let conf = ServerConf {
        threads: config.threads.max(1),
        grace_period_seconds: Some(config.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Proxy {
            gateway: Arc::clone(&gateway),
        },
    );
    proxy.add_listener(
        ListenerConfig::tcp(config.listen.as_str())
            .l4_buffer(L4BufferSettings::default().write(CLIENT_WRITE_BUFFER_BYTES)),
    );
    let mut metrics = pingora_prometheus::prometheus_http_service();
    metrics.add_tcp(&config.metrics_listen);
    server.add_service(proxy);
    server.add_service(metrics);
    server.bootstrap();
    server.run(RunArgs {
        shutdown_signal: Box::new(WatchShutdown(shutdown)),
    });

    tracing::info!("gateway stopped; flushing spend");
    gateway.reconciler.drain(&gateway);
    let _ = flusher_stop_tx.send(true);
    // Leases are given back only when every settled request reached Postgres; otherwise they
    // stay counted until a live gateway reclaims them.
    if let Ok(true) = control.block_on(flusher) {
        control.block_on(lease::stop(&gateway));
    }
    let _ = heartbeat_stop_tx.send(true);
    Ok(())
}

/// Checks that the listen addresses can be bound now: pingora retries a busy address forever,
/// so a clear error up front is better.
pub fn check_addresses(config: &GatewayConfig) -> Result<(), String> {
    for (key, addr) in [
        ("gateway.listen", &config.listen),
        ("metrics.listen", &config.metrics_listen),
    ] {
        std::net::TcpListener::bind(addr.as_str())
            .map_err(|err| format!("{key} = {addr:?} cannot be used: {err}"))?;
    }
    Ok(())
}

/// An https upstream is verified against the system's root certificates, or only those named
/// by `SSL_CERT_FILE` / `SSL_CERT_DIR` when either is set. They are read here as pingora's TLS
/// connector reads them (which panics on a store it cannot read): with none, or with one that
/// does not read, the gateway does not start.
pub fn check_trusted_roots(config: &GatewayConfig) -> Result<(), String> {
    if !config.upstream_base_url.starts_with("https://") {
        return Ok(());
    }
    let mut roots = pingora::tls::RootCertStore::empty();
    let why = match pingora::tls::load_platform_certs_incl_env_into_store(&mut roots) {
        Ok(()) if !roots.is_empty() => return Ok(()),
        Ok(()) => String::new(),
        Err(err) => format!(" ({err})"),
    };
    Err(format!(
        "no trusted root certificates for the https upstream{why}: install the system's CA \
         certificates (Debian: apt-get install ca-certificates) or set SSL_CERT_FILE to a PEM \
         file of them"
    ))
}

/// Logs `gateway listening on ADDR` once the proxy accepts connections: the line tests and
/// scripts wait for.
async fn announce_when_listening(listen: String, metrics_listen: String) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(&listen).await.is_ok() {
            tracing::info!(metrics = %metrics_listen, "gateway listening on {listen}");
            eprintln!("gateway listening on {listen} (metrics on {metrics_listen})");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::error!("gateway did not start listening on {listen}");
}
