//! The admin server's limits, on a real listener: a cap on open connections, a time limit on
//! a request's headers (and on idle connections), and one on reading and answering a request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::App;

/// Waits until the server closes `stream` (a read that returns nothing, or an error), at most
/// `within`; returns how long that took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

fn addr(app: &App) -> String {
    app.base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_a_freed_one_serves_again() {
    let app = App::start_with(|config| {
        config.max_connections = 10;
        config.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut one_more = TcpStream::connect(addr(&app)).await.unwrap();
    one_more
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    closed_within(&mut one_more, Duration::from_secs(5)).await;
    // One held connection goes: its place serves again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = reqwest::Client::new()
            .get(format!("{}/livez", app.base))
            .send()
            .await;
        if answer.as_ref().is_ok_and(|a| a.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection was served again: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_slow_bodies_are_cut_off() {
    let app = App::start_with(|config| {
        config.header_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(2);
    })
    .await;
    // Headers that trickle in past the limit.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    let trickle = async {
        for byte in b"GET /login HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n" {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .unwrap();
    closed_within(&mut slow, Duration::from_secs(5)).await;
    // A connection that never sends anything.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let waited = closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    // A connection left idle after a request.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    closed_within(&mut idle, Duration::from_secs(5)).await;
    // A body that never arrives whole: 503 once the request time is up.
    let mut body = TcpStream::connect(addr(&app)).await.unwrap();
    body.write_all(
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nemail=",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match body.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer to a body that never arrived");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
}
