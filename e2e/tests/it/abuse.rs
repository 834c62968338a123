//! The admin app under abuse: 5,000 connections held open without a word, and clients sending
//! their headers a byte at a time, while a real browser sets keycap up and signs in. The
//! server closes what idles past its header time limit (10 s by default) and keeps serving.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::browser::Browser;
use crate::stack::Stack;
use crate::{act, check};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_works_while_5000_idle_connections_and_slow_headers_hold_the_admin_app() {
    if !crate::enabled(
        "a_browser_works_while_5000_idle_connections_and_slow_headers_hold_the_admin_app",
    ) {
        return;
    }
    let open_files = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        open_files >= 12_000,
        "this test holds 5,000 connections to an admin app in its own process (10,000 file \
         descriptors): run it with `ulimit -n 12000` or more (now {open_files})"
    );
    let stack = Stack::start().await;
    let addr = stack.admin_url.trim_start_matches("http://").to_string();
    let mut idle = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let opened = Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.unwrap();
                let started = Instant::now();
                // Each byte half a second apart: the whole header would take 20 s.
                for byte in b"GET /login HTTP/1.1\r\nHost: keycap\r\nX-Slow: 1\r\n\r\n" {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let mut buf = [0u8; 256];
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => started.elapsed(),
                    Ok(_) => panic!("a header sent over 20 s was answered"),
                }
            })
        })
        .collect();

    // Meanwhile a browser sets keycap up and lands on the dashboard.
    let browser = Browser::start().await;
    let client = &browser.client;
    act::open(client, &stack.setup_link).await;
    check::says(client, "h1", "Set up keycap").await;
    act::fill(client, "#org_name", "Busy Org").await;
    act::fill(client, "#email", "owner@busy.example").await;
    act::fill(client, "#password", "owner-password-123").await;
    act::submit(client, "form[action='/setup']").await;
    check::no_form_errors(client).await;
    check::at(client, "/dashboard").await;
    act::open(client, &format!("{}/members", stack.admin_url)).await;
    check::says(client, "h1", "Members").await;
    browser.close().await;

    // The slow clients were cut off at the header time limit, not served.
    for client in slow {
        let cut = client.await.unwrap();
        assert!(
            cut < Duration::from_secs(19),
            "a slow client was held {cut:?}"
        );
    }
    // The idle connections are closed by the server once the limit has passed.
    let mut buf = [0u8; 16];
    for stream in idle.iter_mut().step_by(50) {
        let left = Duration::from_secs(30).saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("an idle connection was not closed: {other:?}"),
        }
    }
    drop(idle);
    stack.stop().await;
}
