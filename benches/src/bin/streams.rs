//! Holds many streamed chat requests open at once against a proxy, and reports how late each
//! chunk arrives: the client half of `benches/load/streams.sh`.
//!
//! `streams URL STREAMS TOKENS DELAY_MS RAMP_MS TOKEN`
//!
//! Each stream asks the OpenRouter mock (`model: mock/fault-slow`, `x-mock-delay-ms`,
//! `x-mock-completion-tokens`) for TOKENS tokens, one every DELAY_MS, so it stays open
//! TOKENS × DELAY_MS. The streams start
//! spread over RAMP_MS. A token chunk's lateness is its arrival less when it was due: the
//! stream's first token's arrival plus its index × DELAY_MS. Prints one line:
//! `streams_ok chunks p50_ms p99_ms max_ms errors`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: streams URL STREAMS TOKENS DELAY_MS RAMP_MS TOKEN");
        std::process::exit(2);
    }
    let number = |at: usize| -> u64 {
        args[at].parse().unwrap_or_else(|_| {
            eprintln!("argument {at} must be a whole number, not {:?}", args[at]);
            std::process::exit(2)
        })
    };
    let (url, n_streams, tokens, delay_ms, ramp_ms) =
        (args[1].clone(), number(2), number(3), number(4), number(5));
    let token = args[6].clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(tokens * delay_ms + 60_000))
        .build()
        .expect("an HTTP client");
    let body = format!(
        r#"{{"model":"mock/fault-slow","stream":true,"max_tokens":{tokens},"messages":[{{"role":"user","content":"Hold this stream open."}}]}}"#
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n_streams as usize);
    for n in 0..n_streams {
        let (client, url, body, token) = (client.clone(), url.clone(), body.clone(), token.clone());
        let start_at = started + Duration::from_millis(ramp_ms * n / n_streams.max(1));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start_at.into()).await;
            one_stream(&client, &url, &body, &token, (tokens, delay_ms)).await
        }));
    }
    let mut lateness = Vec::new();
    let (mut ok, mut errors) = (0u64, 0u64);
    for task in tasks {
        match task.await {
            Ok(Ok(late)) => {
                ok += 1;
                lateness.extend(late);
            }
            Ok(Err(error)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("stream failed: {error}");
                }
            }
            Err(_) => errors += 1,
        }
    }
    lateness.sort_by(f64::total_cmp);
    let at = |q: f64| {
        lateness
            .get(((lateness.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{ok} {} {:.3} {:.3} {:.3} {errors}",
        lateness.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// One stream: the lateness of each token chunk after the first, in ms.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    token: &str,
    (tokens, delay_ms): (u64, u64),
) -> Result<Vec<f64>, String> {
    let response = client
        .post(format!("{url}/api/v1/chat/completions"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("x-mock-delay-ms", delay_ms.to_string())
        .header("x-mock-completion-tokens", tokens.to_string())
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut chunks = response.bytes_stream();
    let mut first: Option<Instant> = None;
    let mut index = 0u64;
    let mut late = Vec::new();
    let mut done = false;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let now = Instant::now();
        // One token per event; a chunk may carry more than one when the client fell behind.
        let n_tokens = chunk.windows(10).filter(|w| w == b"\"content\":").count() as u64;
        done |= chunk.windows(6).any(|w| w == b"[DONE]");
        for _ in 0..n_tokens {
            match first {
                None => first = Some(now),
                Some(first) => {
                    let due = first + Duration::from_millis(index * delay_ms);
                    late.push(now.saturating_duration_since(due).as_secs_f64() * 1000.0);
                }
            }
            index += 1;
        }
    }
    if !done {
        return Err("the stream ended before [DONE]".into());
    }
    Ok(late)
}
