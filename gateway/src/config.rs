//! `GatewayConfig`: what the gateway needs from keycap's configuration.

use std::time::Duration;

use domain::services::openrouter::OpenRouterConfig;

/// Settings of one gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `host:port` of the proxy listener.
    pub listen: String,
    /// `host:port` of the Prometheus listener.
    pub metrics_listen: String,
    /// The upstream, without `/api/v1` (`https://openrouter.ai`).
    pub upstream_base_url: String,
    /// How often settled spend is written to Postgres.
    pub flush_interval: Duration,
    /// How often per-minute usage rollups are written (with the next flush after it).
    pub rollup_interval: Duration,
    /// How often every cached key is reloaded, as a safety net behind `NOTIFY`.
    pub refresh_interval: Duration,
    /// How often the upstream's model list (prices) is fetched again.
    pub price_refresh_interval: Duration,
    /// How long an unknown token is remembered as unknown.
    pub negative_cache_ttl: Duration,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Request body bytes held at once over all requests (`gateway.max_inflight_body_bytes`).
    pub max_inflight_body_bytes: usize,
    /// How long a request body may take to arrive whole.
    pub body_read_timeout: Duration,
    /// The OpenRouter adapter's pricing settings: the unpriced ceiling, the allowances for
    /// what a body does not hold (web results, images, OCR pages), and the extra free paths.
    pub openrouter: OpenRouterConfig,
    /// How long after a request settled without a reported cost the upstream is first asked
    /// what it billed; each later attempt waits twice as long.
    pub reconcile_delay: Duration,
    /// How many times the upstream is asked before the reservation is kept; 0 never asks.
    pub reconcile_attempts: u32,
    /// Seconds in-flight requests get to finish on SIGTERM.
    pub grace_period_seconds: u64,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// How leases of keys' caps are sized and kept, and the heartbeat.
    pub lease: crate::lease::LeaseConfig,
    /// Connections of the pool that looks up tokens the key cache does not know.
    pub lookup_connections: usize,
    /// Tokens being looked up at once (waiting for a query or in one); past that a lookup is
    /// refused with 503.
    pub max_lookups_in_flight: usize,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: "127.0.0.1:9464".into(),
            upstream_base_url: "https://openrouter.ai".into(),
            flush_interval: Duration::from_secs(1),
            rollup_interval: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(30),
            price_refresh_interval: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(10),
            max_body_bytes: 32 * 1024 * 1024,
            max_inflight_body_bytes: 1024 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(60),
            openrouter: OpenRouterConfig::default(),
            reconcile_delay: Duration::from_secs(1),
            reconcile_attempts: 8,
            grace_period_seconds: 5,
            threads: 2,
            lease: Default::default(),
            lookup_connections: 4,
            max_lookups_in_flight: 64,
        }
    }
}

/// The most the request line and headers may hold, in bytes. Larger ones up to pingora's own
/// limit (1 MiB) get a 431 in OpenRouter's shape; beyond that, pingora answers 400 itself.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// An upstream base URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The address, when `host` is an IP address (no lookup per request).
    pub ip_addr: Option<std::net::SocketAddr>,
    /// The `Host` header value: the host, and the port unless it is the scheme's default.
    pub host_header: http::HeaderValue,
}

impl Upstream {
    /// Parses `http(s)://host[:port]` (a trailing `/` is allowed; no path).
    pub fn parse(base_url: &str) -> Result<Upstream, String> {
        let (tls, rest) = if let Some(rest) = base_url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base_url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "upstream {base_url:?} must start with http:// or https://"
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "upstream {base_url:?} must be a scheme and host, without a path"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let bad_port = || format!("upstream {base_url:?} has a bad port");
        let parse_port = |port: &str| port.parse::<u16>().map_err(|_| bad_port());
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 address: `[::1]` or `[::1]:8090`.
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("upstream {base_url:?} has an unclosed '['"))?;
            let port = match after {
                "" => default_port,
                after => parse_port(after.strip_prefix(':').ok_or_else(bad_port)?)?,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), parse_port(port)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || (host.contains(':') && !authority.starts_with('[')) {
            return Err(format!(
                "upstream {base_url:?} needs a host (an IPv6 address goes in brackets: http://[::1]:8090)"
            ));
        }
        let ip_addr = host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, port));
        let host_in_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let host_header = if port == default_port {
            host_in_header
        } else {
            format!("{host_in_header}:{port}")
        };
        let host_header = http::HeaderValue::try_from(host_header)
            .map_err(|_| format!("upstream {base_url:?} has a bad host"))?;
        Ok(Upstream {
            host_header,
            host,
            port,
            tls,
            ip_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstreams() {
        let check = |url: &str, expected: Result<(&str, u16, bool), ()>| {
            let got = Upstream::parse(url)
                .map(|u| (u.host, u.port, u.tls))
                .map_err(|_| ());
            assert_eq!(
                got,
                expected.map(|(h, p, t)| (h.to_string(), p, t)),
                "{url}"
            );
        };
        check("https://openrouter.ai", Ok(("openrouter.ai", 443, true)));
        check("https://openrouter.ai/", Ok(("openrouter.ai", 443, true)));
        check("http://127.0.0.1:8090", Ok(("127.0.0.1", 8090, false)));
        check("http://localhost", Ok(("localhost", 80, false)));
        check("ftp://x", Err(()));
        check("https://openrouter.ai/api/v1", Err(()));
        check("http://h:notaport", Err(()));
        check("http://[::1]:8090", Ok(("::1", 8090, false)));
        check("https://[::1]", Ok(("::1", 443, true)));
        check("http://[::1", Err(()));
        check("http://[::1]8090", Err(()));
        check("http://:80", Err(()));
        check("http://[]", Err(()));
        check("http://::1", Err(()));
    }

    #[test]
    fn writes_the_host_header() {
        let host = |url: &str| Upstream::parse(url).unwrap().host_header;
        assert_eq!(host("https://openrouter.ai"), "openrouter.ai");
        assert_eq!(host("http://127.0.0.1:8090"), "127.0.0.1:8090");
        assert_eq!(host("http://[::1]:8090"), "[::1]:8090");
        assert_eq!(host("http://[::1]"), "[::1]");
    }
}
