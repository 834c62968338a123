//! A running gateway in front of an in-process OpenRouter mock, on a fresh database.

use std::path::Path;
use std::time::{Duration, Instant};

use domain::Money;
use openrouter_mock::{MockConfig, MockServer};
use testkit::TestDb;
use testkit::process::{Keycap, Running};

pub struct Gateway {
    pub db: TestDb,
    /// The command line, on the database directly.
    pub keycap: Keycap,
    /// Where `keycap up` finds the database when not directly (a chaos proxy).
    pub up_database_url: Option<String>,
    pub mock: MockServer,
    pub process: Option<Running>,
    pub base: String,
    pub metrics: String,
    pub http: reqwest::Client,
    pub _dir: tempfile::TempDir,
}

/// Seeds org `acme`, member bob ($100), the mock's master key, and starts `keycap up`.
pub async fn start() -> Gateway {
    start_with_env(&[]).await
}

/// Like [`start`], with more environment variables for `keycap up`.
pub async fn start_with_env(env: &[(&str, &str)]) -> Gateway {
    let mock = openrouter_mock::spawn(MockConfig::default()).await.unwrap();
    start_with(mock, None, env).await
}

/// Like [`start`], but the gateway's upstream is `upstream_url` when given (the mock still
/// provides the master key).
pub async fn start_with_upstream(mock: MockServer, upstream_url: Option<String>) -> Gateway {
    start_with(mock, upstream_url, &[]).await
}

/// [`start_with_upstream`] with more environment variables for `keycap up`; it waits for the
/// prices only from the mock itself.
pub async fn start_with(
    mock: MockServer,
    upstream_url: Option<String>,
    env: &[(&str, &str)],
) -> Gateway {
    let wait_for_prices = upstream_url.is_none();
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (testkit::free_port(), testkit::free_port());
    let keycap = Keycap::new(Path::new(env!("CARGO_BIN_EXE_keycap")), &db.url, dir.path())
        .env(
            "KEYCAP_OPENROUTER__BASE_URL",
            &upstream_url.unwrap_or_else(|| mock.base_url()),
        )
        .env("KEYCAP_GATEWAY__LISTEN", &format!("127.0.0.1:{port}"))
        .env("KEYCAP_ADMIN__LISTEN", "127.0.0.1:0")
        .env(
            "KEYCAP_METRICS__LISTEN",
            &format!("127.0.0.1:{metrics_port}"),
        )
        .env("KEYCAP_GATEWAY__FLUSH_INTERVAL_MS", "100")
        .env("KEYCAP_GATEWAY__ROLLUP_INTERVAL_MS", "100")
        .env("KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS", "1")
        .env("KEYCAP_GATEWAY__REFRESH_INTERVAL_SECONDS", "1");
    let keycap = keycap.envs(env);
    crate::support::seed_acme(&keycap, &mock.state().config().master_key);
    let mut gateway = Gateway {
        db,
        keycap,
        up_database_url: None,
        mock,
        process: None,
        base: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
        http: reqwest::Client::new(),
        _dir: dir,
    };
    gateway.restart();
    if wait_for_prices {
        gateway.wait_for_prices();
    }
    gateway
}

impl Gateway {
    /// (Re)starts `keycap up` and waits until it listens and, when the upstream is up, has
    /// loaded prices.
    pub fn restart(&mut self) {
        let up = match &self.up_database_url {
            Some(url) => self.keycap.with_database_url(url),
            None => self.keycap.clone(),
        };
        let running = up
            .spawn(&["up"], "gateway listening on", Duration::from_secs(60))
            .unwrap();
        self.process = Some(running);
    }

    /// Stops the gateway and starts it again with more environment variables, then waits for
    /// its prices.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.keycap = self.keycap.clone().envs(env);
        self.restart();
        self.wait_for_prices();
    }

    /// Waits until the gateway has loaded the upstream's prices.
    pub fn wait_for_prices(&self) {
        self.process
            .as_ref()
            .unwrap()
            .wait_for("loaded upstream prices", Duration::from_secs(30))
            .unwrap();
    }

    /// Stops the gateway with SIGTERM and waits for its last flush.
    pub fn stop(&mut self) {
        let mut running = self.process.take().unwrap();
        let status = running.terminate(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "{status}: {}", running.stderr_text());
    }

    /// Kills the gateway (SIGKILL): no drain, no last flush.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    pub fn logs(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.stderr_text())
            .unwrap_or_default()
    }

    /// A new key for bob; returns the token.
    pub fn key(&self, cap: &str, extra: &[&str]) -> String {
        self.keycap.bobs_key("k", cap, extra).unwrap()
    }

    pub fn chat(&self, token: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/api/v1/chat/completions", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Sends a chat request and returns its JSON answer, whatever the status.
    pub async fn chat_json(&self, token: &str, body: &serde_json::Value) -> serde_json::Value {
        self.chat(token, body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Sends a chat request and returns the cost its answer reports.
    pub async fn chat_cost(&self, token: &str, body: &serde_json::Value) -> Money {
        reported_cost(&self.chat_json(token, body).await)
    }

    /// `GET path` on the gateway with `token` as the bearer key.
    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    /// `GET /api/v1/key` with `token`, as JSON.
    pub async fn key_info(&self, token: &str) -> serde_json::Value {
        self.get("/api/v1/key", token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until the database clock's minute has at least `margin` left: rate limits count
    /// per minute of that clock, so a test of one must not straddle two.
    pub async fn clear_of_a_minute_boundary(&self, margin: Duration) {
        let client = self.db.client().await.unwrap();
        let left: f64 = client
            .query_one(
                "SELECT 60 - extract(second FROM clock_timestamp())::float8",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left < margin.as_secs_f64() {
            tokio::time::sleep(Duration::from_secs_f64(left + 0.1)).await;
        }
    }

    /// The key's spend in Postgres, the spend journal folded in first.
    pub async fn spent_in_db(&self, token: &str) -> Money {
        spent_in(&self.db.pool, token).await
    }

    /// Waits (at most 10 s) until the key's flushed spend equals `expected`.
    pub async fn wait_for_spent(&self, token: &str, expected: Money) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spent = self.spent_in_db(token).await;
            if spent == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "spent {spent}, expected {expected}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks that `keycap audit` finds acme's ledger chain whole.
    pub fn assert_audit_chain_intact(&self) {
        let audit = self.keycap.run(&["audit", "--org", "acme"]).unwrap();
        assert!(
            audit.stderr.contains("hash chain intact"),
            "{}",
            audit.stderr
        );
    }

    /// Waits (at most 10 s) until the metrics hold `line`.
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.metrics_text().await.contains(line) {
            assert!(
                Instant::now() < deadline,
                "no {line:?} in the metrics:\n{}",
                self.metrics_text().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(&self.metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Checks that `response` is an OpenRouter-shaped error with `status` whose message says
/// `says`, and returns its body.
pub async fn expect_error(
    response: reqwest::Response,
    status: u16,
    says: &str,
) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(says),
        "{body}"
    );
    body
}

/// A JSON number of dollars as money, read from its text as the gateway reads it; `None` for
/// anything else.
pub fn usd(value: &serde_json::Value) -> Option<Money> {
    value
        .is_number()
        .then(|| Money::from_usd_str(&value.to_string()).ok())
        .flatten()
}

/// The reported `usage.cost` of a JSON body, in nano-dollars.
pub fn reported_cost(body: &serde_json::Value) -> Money {
    usd(&body["usage"]["cost"]).unwrap()
}

/// What the gateway reserves on `mock/cheap` ($0.000001 per prompt token, $0.000002 per
/// completion token) for `body`: every body byte counts as a prompt token.
pub fn cheap_reservation(body: &serde_json::Value, max_tokens: u64) -> Money {
    Money::from_nanos(body.to_string().len() as i64 * 1_000 + max_tokens as i64 * 2_000)
}

/// A TCP relay that keeps every byte sent through it (all connections in one buffer), in front
/// of an upstream: to see a request exactly as the gateway wrote it, which an HTTP server would
/// parse and fold. Stops accepting when dropped; open connections end with the test's runtime.
pub struct RecordingRelay {
    port: u16,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingRelay {
    /// A relay on 127.0.0.1 to `target` (`host:port`).
    pub async fn start(target: &str) -> RecordingRelay {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (target, kept) = (target.to_string(), std::sync::Arc::clone(&sent));
        let accepted = std::sync::Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let kept = std::sync::Arc::clone(&kept);
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                            kept.lock().unwrap().extend_from_slice(&buf[..n]);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                    let _ = tokio::join!(upstream, downstream);
                });
            }
        });
        RecordingRelay {
            port,
            sent,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything sent through the relay so far, on every connection.
    pub fn sent(&self) -> Vec<u8> {
        self.sent.lock().unwrap().clone()
    }

    /// How many connections the relay has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.sent.lock().unwrap().clear();
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A body to `mock/cheap` as the gateway forwards it: the client's (whose keys, as
/// `serde_json` writes them, come out sorted, all before `provider`, with its own `max_tokens`)
/// with `provider.max_price` at the model's prices added.
pub fn bounded_for_cheap(body: &[u8]) -> Vec<u8> {
    const MAX_PRICE: &str =
        r#","provider":{"max_price":{"prompt":1,"completion":2,"request":0,"image":0}}}"#;
    let mut forwarded = body[..body.len() - 1].to_vec();
    forwarded.extend_from_slice(MAX_PRICE.as_bytes());
    forwarded
}

/// The spend in Postgres of the key of `token`, the spend journal folded in first.
pub async fn spent_in(pool: &db::Pool, token: &str) -> Money {
    let client = pool.get().await.unwrap();
    db::usage::fold(&client).await.unwrap();
    let hash = domain::token::hash_token(token).to_vec();
    let row = client
        .query_one(
            "SELECT s.spent_nanousd FROM api_keys k JOIN key_spends s ON s.api_key_id = k.id
             WHERE k.token_hash = $1",
            &[&hash],
        )
        .await
        .unwrap();
    Money::from_nanos(row.get(0))
}
