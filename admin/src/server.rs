//! Serving the app, so that no client can hold the server: one task per connection (HTTP/1.1),
//! at most `admin.max_connections` open at once (one more is closed as soon as it is
//! accepted), a request's headers must arrive within `admin.header_timeout_ms` (hyper's header
//! read timeout, which also closes a connection idle that long), a request must be read and
//! answered within `admin.request_timeout_ms` (else 503, and the connection closes), and an
//! answer the client stops reading is cut off after `admin.header_timeout_ms` without
//! progress. Every body is bounded (`DefaultBodyLimit` in `app.rs`). On shutdown the listener
//! closes, idle connections close at once, and requests in flight get
//! `admin.request_timeout_ms` to finish.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::state::AppState;

/// Serves the app on `listener` until `shutdown` completes, letting requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = Arc::clone(&state.config);
    let app = crate::app(state).layer(middleware::from_fn_with_state(
        config.request_timeout,
        answer_within,
    ));
    warn_if_descriptors_are_short(config.max_connections);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut accept_failed_at: Option<Instant> = None;
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin, and say so
                    // once a second at most.
                    if accept_failed_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %err, "cannot accept a connection");
                        accept_failed_at = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%addr, "admin.max_connections reached: a connection is closed");
            continue;
        };
        let service = app.clone().map_request(move |mut request: Request<_>| {
            request.extensions_mut().insert(ConnectInfo(addr));
            request
        });
        let mut closing = closing_rx.clone();
        let header_timeout = config.header_timeout;
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder.serve_connection(
                TokioIo::new(WriteDeadline::new(stream, header_timeout)),
                TowerToHyperService::new(service),
            );
            tokio::pin!(connection);
            let closing = tokio::select! {
                _ = connection.as_mut() => false,
                closing = closing.wait_for(|closing| *closing) => closing.is_ok(),
            };
            if closing {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(config.request_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            n_connections = connections.len(),
            "requests still in flight at shutdown were cut off"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Warns when the process may run out of file descriptors before it reaches
/// `max_connections` (each connection takes one), with what to do.
fn warn_if_descriptors_are_short(max_connections: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < max_connections + 256
    {
        tracing::warn!(
            open_files = soft,
            admin.max_connections = max_connections,
            "the admin app may run out of file descriptors before admin.max_connections: raise \
             the limit (ulimit -n, or LimitNOFILE in the systemd unit) or lower the setting"
        );
    }
}

/// A connection whose writes fail once they have made no progress for `limit`: a client that
/// stops reading an answer cannot hold its connection.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write that could not go on: pending until `limit` has passed since the first
    /// such write, then an error.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progressed(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.progressed(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Answers 503 (and closes the connection) when the request is not read and answered within
/// `limit`: too slow a body, or too slow a database. Not 408, which browsers send again on
/// their own, and a form could then be sent twice.
async fn answer_within(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::CONNECTION, "close")],
            format!(
                "the request was not read and answered within {} s: try again",
                limit.as_secs()
            ),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_after_the_limit() {
        let (client, server) = tokio::io::duplex(16);
        let mut server = WriteDeadline::new(server, Duration::from_millis(100));
        let started = Instant::now();
        let err = server.write_all(&[7; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(client);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_reading_is_never_cut_off() {
        let (mut client, server) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 8];
            while all.len() < 1024 {
                let n = client.read(&mut buf).await.unwrap();
                all.extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            all.len()
        });
        let mut server = WriteDeadline::new(server, Duration::from_millis(100));
        server.write_all(&[7; 1024]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 1024);
    }
}
