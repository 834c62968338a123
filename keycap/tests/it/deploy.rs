//! The parts run apart, as docs/deployment.md describes: `keycap gateway` and `keycap admin` as
//! two processes on one database, with nginx in front of them, configured by the shipped
//! `deploy/nginx/keycap.conf` (only its addresses changed). Through nginx, a stream arrives as
//! a stream, a multi-megabyte body is served and metered, the probes answer, and the admin app
//! serves its pages.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use domain::Money;
use testkit::TestDb;
use testkit::process::{Keycap, Running};

/// GETs `url` until it answers `status`, and returns the body.
async fn wait_for_status(http: &reqwest::Client, url: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = http.get(url).send().await
            && answer.status().as_u16() == status
        {
            return answer.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_admin_run_apart_behind_the_shipped_nginx_config() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .expect("nginx is needed: apt-get install nginx-light (README, prerequisites)");
    let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
        .await
        .unwrap();
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let [
        gateway_port,
        metrics_port,
        admin_port,
        api_port,
        people_port,
    ] = [(); 5].map(|()| testkit::free_port());
    let keycap = Keycap::new(Path::new(env!("CARGO_BIN_EXE_keycap")), &db.url, dir.path())
        .env("KEYCAP_OPENROUTER__BASE_URL", &mock.base_url())
        .env(
            "KEYCAP_GATEWAY__LISTEN",
            &format!("127.0.0.1:{gateway_port}"),
        )
        .env(
            "KEYCAP_METRICS__LISTEN",
            &format!("127.0.0.1:{metrics_port}"),
        )
        .env("KEYCAP_ADMIN__LISTEN", &format!("127.0.0.1:{admin_port}"))
        .env("KEYCAP_GATEWAY__FLUSH_INTERVAL_MS", "100");
    crate::support::seed_acme(&keycap, &mock.state().config().master_key);
    let admin = keycap
        .spawn(&["admin"], "keycap admin is up", Duration::from_secs(60))
        .unwrap();
    let gateway = keycap
        .spawn(
            &["gateway"],
            "gateway listening on",
            Duration::from_secs(60),
        )
        .unwrap();
    // Each runs its part only.
    assert!(!admin.stderr_text().contains("gateway listening"));
    assert!(!gateway.stderr_text().contains("admin on"));

    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/keycap.conf"),
    )
    .unwrap();
    let site = shipped
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gateway_port}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{admin_port}"))
        .replace("listen 8443;", &format!("listen 127.0.0.1:{api_port};"))
        .replace("listen 8444;", &format!("listen 127.0.0.1:{people_port};"));
    assert_ne!(site, shipped);
    let root = dir.path().join("nginx");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("keycap.conf"), site).unwrap();
    let main = format!(
        // One process (no master and workers), so that killing it when the test ends leaves no
        // worker behind.
        "daemon off;\nmaster_process off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
         \x20 fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n  scgi_temp_path {root}/scgi;\n\
         \x20 include {root}/keycap.conf;\n}}\n",
        root = root.display()
    );
    std::fs::write(root.join("nginx.conf"), main).unwrap();
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(&root)
        .arg("-e")
        .arg(root.join("error.log"))
        .arg("-c")
        .arg(root.join("nginx.conf"));
    // nginx prints nothing when it is up: wait for its answers instead.
    let _nginx = Running::spawn(command, "", Duration::from_secs(10)).unwrap();
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let people = format!("http://127.0.0.1:{people_port}");

    // The probes, through nginx.
    assert_eq!(
        wait_for_status(&http, &format!("{api}/livez"), 200).await,
        r#"{"live":true}"#
    );
    let ready: serde_json::Value =
        serde_json::from_str(&wait_for_status(&http, &format!("{api}/readyz"), 200).await).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["prices_loaded"], true, "{ready}");
    let ready = wait_for_status(&http, &format!("{people}/readyz"), 200).await;
    assert!(ready.contains(r#""database":"ok""#), "{ready}");
    wait_for_status(&http, &format!("{people}/livez"), 200).await;
    let login = wait_for_status(&http, &format!("{people}/login"), 200).await;
    assert!(login.contains("Sign in"), "{login}");

    let token = keycap.bobs_key("app", "20", &[]).unwrap();
    let token = token.trim();

    // A slow stream arrives in pieces, as the upstream sends them, and whole.
    let mut answer = http
        .post(format!("{api}/api/v1/chat/completions"))
        .bearer_auth(token)
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "200")
        .header("x-mock-completion-tokens", "4")
        .json(&serde_json::json!({
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 50,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let mut pieces = Vec::new();
    while let Some(piece) = answer.chunk().await.unwrap() {
        pieces.push(String::from_utf8_lossy(&piece).into_owned());
    }
    let whole = pieces.concat();
    assert!(whole.contains("data: [DONE]"), "{whole}");
    assert!(
        pieces.len() > 1 && !pieces[0].contains("[DONE]"),
        "the stream came in one piece: {pieces:?}"
    );

    // A 3 MB body (a question and a base64 screenshot) is read, priced, forwarded and metered.
    let image = "iVBORw0KGgo".repeat(3 * 1024 * 1024 / 11);
    let answer = http
        .post(format!("{api}/api/v1/chat/completions"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "model": "mock/cheap",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What does this screenshot show?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}},
            ]}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "{}",
        answer.text().await.unwrap()
    );
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["usage"]["cost"].is_number(), "{body}");
    // The upstream got the screenshot whole.
    let recorded = mock.state().last_request().unwrap();
    let sent = recorded.body["messages"][0]["content"][1]["image_url"]["url"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(sent, "data:image/png;base64,".len() + image.len());

    // Both requests' spend reached the database through `keycap gateway`'s flushes, as the
    // upstream billed it.
    let billed = Money::from_nanos(i64::try_from(mock.state().total_usage_nanousd()).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let spent = loop {
        let keys = crate::support::keys_json_of(&keycap, &["--org", "acme"]);
        let spent = Money::from_nanos(keys[0]["spent_nanousd"].as_i64().unwrap());
        if spent == billed || Instant::now() > deadline {
            break spent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(billed > Money::ZERO);
    assert_eq!(spent, billed);
}

/// A gateway that cannot load the upstream's prices is alive but not ready; the probes need no
/// key and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_prices_is_live_but_not_ready() {
    let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
        .await
        .unwrap();
    let unreachable = format!("http://127.0.0.1:{}", testkit::free_port());
    let gateway = crate::gateway_support::start_with_upstream(mock, Some(unreachable)).await;
    let live = reqwest::get(format!("{}/livez", gateway.base))
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let ready = reqwest::get(format!("{}/readyz", gateway.base))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["prices_loaded"], false, "{ready}");
    // Counted as probes, not as requests answered or refused.
    gateway
        .wait_for_metric("gateway_requests_total{outcome=\"probe\",service=\"openrouter\"} 2\n")
        .await;
}
