//! A real Prometheus server (Debian's `prometheus` package) scrapes `keycap up`: the usage
//! on the admin listener with a metrics token made on the command line, and the gateway's own
//! metrics. A PromQL query over Prometheus' HTTP API gives a member's spend equal to what
//! `keycap key list` says.

use std::process::Command;
use std::time::{Duration, Instant};

use domain::Money;
use testkit::process::Running;

use crate::gateway_support;

/// Runs `query` on Prometheus until it has a result for which `accept` says yes, and returns
/// the value of its first series.
async fn query_until(
    prometheus: &str,
    query: &str,
    accept: impl Fn(&str) -> bool,
    server: &Running,
) -> String {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let answer: serde_json::Value = http
            .get(format!("{prometheus}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(value) = answer["data"]["result"][0]["value"][1].as_str()
            && accept(value)
        {
            return value.to_string();
        }
        last = answer;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{query}: no acceptable answer in 60 s; last: {last}\nprometheus:\n{}",
        server.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_members_spend_equal_to_the_key_list() {
    let prometheus_bin = which("prometheus").expect(
        "the prometheus binary is needed: apt-get install prometheus (README, prerequisites)",
    );
    let admin_port = testkit::free_port();
    let gateway = gateway_support::start_with_env(&[
        ("KEYCAP_ADMIN__LISTEN", &format!("127.0.0.1:{admin_port}")),
        ("KEYCAP_ADMIN__METRICS_CACHE_MS", "200"),
    ])
    .await;
    let chat = serde_json::json!({
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 50,
    });
    let mut billed = Money::ZERO;
    for _ in 0..2 {
        let token = gateway.key("3", &[]);
        for _ in 0..3 {
            billed = billed.saturating_add(gateway.chat_cost(&token, &chat).await);
        }
    }
    let metrics_token = gateway
        .keycap
        .ok(&["token", "create", "--org", "acme", "--scope", "metrics"])
        .unwrap();
    let metrics_token = metrics_token.trim();
    assert!(metrics_token.starts_with("kcm_"), "{metrics_token}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), metrics_token).unwrap();
    let gateway_target = gateway
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: keycap-gateway\n    static_configs:\n      - targets: ['{gateway_target}']\n\
         \x20 - job_name: keycap-usage\n    metrics_path: /metrics\n\
         \x20   authorization:\n      type: Bearer\n      credentials_file: {}\n\
         \x20   static_configs:\n      - targets: ['127.0.0.1:{admin_port}']\n",
        dir.path().join("token").display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let web_port = testkit::free_port();
    let mut command = Command::new(prometheus_bin);
    command
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"));
    let server = Running::spawn(
        command,
        "Server is ready to receive web requests",
        Duration::from_secs(60),
    )
    .unwrap();
    let prometheus = format!("http://127.0.0.1:{web_port}");

    // What `keycap key list` says bob spent, once the gateway's flushes have all landed.
    let listed = || -> Money {
        crate::support::keys_json_of(
            &gateway.keycap,
            &["--org", "acme", "--member", "bob@acme.test"],
        )
        .iter()
        .map(|k| Money::from_nanos(k["spent_nanousd"].as_i64().unwrap()))
        .fold(Money::ZERO, Money::saturating_add)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed() != billed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let spent = listed();
    assert_eq!(spent, billed, "the key list and the upstream's bill differ");
    assert!(spent > Money::ZERO);

    let same = |value: &str| Money::parse_usd(value).ok() == Some(spent);
    let bob = r#"member="bob@acme.test""#;
    query_until(
        &prometheus,
        &format!("sum by (member) (keycap_key_spent_dollars{{{bob}}})"),
        same,
        &server,
    )
    .await;
    query_until(
        &prometheus,
        &format!("keycap_member_spent_dollars{{{bob}}}"),
        same,
        &server,
    )
    .await;
    query_until(
        &prometheus,
        &format!("sum by (member) (keycap_member_spend_dollars_total{{{bob},model=\"openai/gpt-4o-mini\"}})"),
        same,
        &server,
    )
    .await;
    // The gateway's own metrics are scraped too.
    query_until(
        &prometheus,
        r#"up{job="keycap-gateway"}"#,
        |value| value == "1",
        &server,
    )
    .await;
    query_until(
        &prometheus,
        r#"sum(gateway_spend_nanousd_total)"#,
        |value| value.parse::<i64>().ok() == Some(billed.nanos()),
        &server,
    )
    .await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|path| path.is_file())
}
