//! The load harness's baseline: a bare pingora reverse proxy with no budget logic, built the
//! same way as keycap's gateway (same pingora version and features, same thread count), so
//! the harness measures what keycap adds on top of pingora itself.
//!
//! `passthrough LISTEN UPSTREAM_HOST:PORT [THREADS] [--read-ahead] [--write-buffer BYTES]`
//!
//! With `--read-ahead` it reads each request body whole into memory before contacting the
//! upstream, and sends it from there, as keycap must to price a request: this isolates what
//! that pingora path costs by itself.
//! `--write-buffer` sets the client connections' write buffer (pingora's default is 1,460
//! bytes; keycap uses 16 KiB): the baseline with keycap's transport setting.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::listeners::ListenerConfig;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

/// The same allocator as the `keycap` binary, so the comparison is of the proxies alone.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Passthrough {
    upstream: String,
    read_ahead: bool,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    /// The body read ahead, with `--read-ahead`.
    type CTX = Option<Bytes>;

    fn new_ctx(&self) -> Option<Bytes> {
        None
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Option<Bytes>,
    ) -> pingora::Result<bool> {
        if self.read_ahead {
            // Room for the declared length at once, as keycap's reading keeps it.
            let declared = session
                .req_header()
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = BytesMut::with_capacity(declared.min(256 * 1024 * 1024));
            while let Some(chunk) = session.read_request_body().await? {
                body.extend_from_slice(&chunk);
            }
            *ctx = Some(body.freeze());
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Option<Bytes>,
    ) -> pingora::Result<()> {
        // The body read ahead goes out whole at the end (the vendored pingora-proxy calls this
        // once, with end of stream, for a body already read).
        if let Some(ready) = ctx {
            *body = Some(if end_of_stream {
                ready.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Option<Bytes>,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "usage: passthrough LISTEN UPSTREAM_HOST:PORT [THREADS] [--read-ahead] [--write-buffer BYTES]";
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let mut threads = 1;
    let mut read_ahead = false;
    let mut buffers = L4BufferSettings::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--read-ahead" => read_ahead = true,
            "--write-buffer" => match args.next().and_then(|n| n.parse().ok()) {
                Some(bytes) => buffers = buffers.write(bytes),
                None => {
                    eprintln!("--write-buffer needs a size in bytes\n{USAGE}");
                    std::process::exit(2);
                }
            },
            n => match n.parse() {
                Ok(n) => threads = n,
                Err(_) => {
                    eprintln!("unknown argument {n:?}\n{USAGE}");
                    std::process::exit(2);
                }
            },
        }
    }
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream,
            read_ahead,
        },
    );
    proxy.add_listener(ListenerConfig::tcp(listen.as_str()).l4_buffer(buffers));
    server.add_service(proxy);
    server.bootstrap();
    eprintln!("passthrough listening on {listen}");
    server.run_forever();
}
