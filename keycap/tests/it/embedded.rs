//! The embedded default: no database URL, a private cluster in the data folder.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use testkit::process::{Keycap, Running};

/// A data folder the postgres user can reach when the tests run as root.
fn data_folder() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kc-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Starts `keycap <verb>` (`up` or `demo`) with its three listeners on free loopback ports and
/// waits for `ready`; returns it with its gateway and admin addresses.
fn on_free_ports(keycap: &Keycap, verb: &str, ready: &str) -> (Running, [String; 2]) {
    let [gateway, metrics, admin] = [(); 3].map(|()| format!("127.0.0.1:{}", testkit::free_port()));
    let running = keycap
        .spawn(
            &[
                verb,
                "--gateway-listen",
                &gateway,
                "--metrics-listen",
                &metrics,
                "--admin-listen",
                &admin,
            ],
            ready,
            Duration::from_secs(120),
        )
        .unwrap();
    (running, [gateway, admin])
}

#[test]
fn cli_and_up_share_the_embedded_cluster_and_data_survives_restarts() {
    let dir = data_folder();
    let data = dir.path().join("data");
    let keycap = Keycap::embedded(Path::new(env!("CARGO_BIN_EXE_keycap")), &data);

    // A one-shot command starts the cluster, and stops it again when done.
    let id = keycap
        .ok(&["org", "create", "solo", "--owner", "o@solo.test"])
        .unwrap();
    assert!(data.join("postgres/PG_VERSION").exists());
    let mode = std::fs::metadata(data.join("postgres-run"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    // `keycap up` generates the encryption key and keeps the cluster running.
    let (mut up, [_, admin]) = on_free_ports(&keycap, "up", "keycap is up");
    // Nobody has a password yet, so the admin app offers its one-time setup link.
    up.wait_for("one-time link", Duration::from_secs(10))
        .unwrap();
    let stderr = up.stderr_text();
    let link = stderr
        .split_whitespace()
        .find(|word| word.starts_with(&format!("http://{admin}/setup?token=")))
        .unwrap_or_else(|| panic!("no setup link in: {stderr}"))
        .to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let setup = reqwest::get(&link).await.unwrap();
        assert_eq!(setup.status(), 200);
        assert!(setup.text().await.unwrap().contains("Create owner account"));
        let forged = reqwest::get(format!("http://{admin}/setup?token=forged"))
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
    });
    assert!(data.join("encryption.key").exists());
    let key_mode = std::fs::metadata(data.join("encryption.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    // While it runs, the CLI uses the same cluster and leaves it running.
    keycap
        .ok(&[
            "member",
            "add",
            "--org",
            &id,
            "m@solo.test",
            "--budget",
            "10",
        ])
        .unwrap();
    let listed = keycap.ok(&["member", "list", "--org", "solo"]).unwrap();
    assert!(listed.contains("m@solo.test"), "{listed}");
    let status = up.terminate(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status}: {}", up.stderr_text());
    assert!(
        up.stderr_text().contains("stopped embedded Postgres"),
        "{}",
        up.stderr_text()
    );
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "the cluster is stopped"
    );

    // After a restart the data is still there.
    let listed = keycap
        .ok(&["member", "list", "--org", "solo", "--json"])
        .unwrap();
    assert!(listed.contains("m@solo.test"), "{listed}");
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "the one-shot command stopped the cluster again"
    );
}

/// As root, a data folder the postgres user cannot reach (a folder under /root, say) still
/// works: the cluster is kept under /var/lib/keycap instead, the same one on every run.
#[test]
fn an_unreachable_data_folder_keeps_its_cluster_elsewhere() {
    if !db::embedded::is_root() {
        return;
    }
    let dir = data_folder();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = private.join("data");
    let keycap = Keycap::embedded(Path::new(env!("CARGO_BIN_EXE_keycap")), &data);
    let first = keycap
        .run(&["org", "create", "hidden", "--owner", "o@hidden.test"])
        .unwrap();
    assert!(first.success, "{}", first.stderr);
    assert!(
        first
            .stderr
            .contains("keeping this data folder's Postgres cluster in /var/lib/keycap/clusters/"),
        "{}",
        first.stderr
    );
    let location = std::fs::read_to_string(data.join("postgres-location.txt")).unwrap();
    let listed = keycap.run(&["member", "list", "--org", "hidden"]).unwrap();
    assert!(
        listed.success && listed.stdout.contains("o@hidden.test"),
        "{}",
        listed.stderr
    );
    assert!(
        !listed.stderr.contains("keeping this data folder"),
        "said only once"
    );
    std::fs::remove_dir_all(location.trim()).unwrap();
}

/// `keycap demo`: the mock, keycap on its embedded Postgres and a seeded sub-key; the `curl`
/// lines and the OpenAI-SDK line it prints work as printed, and the key is charged for them.
#[test]
fn the_demo_prints_lines_that_work_as_printed() {
    let dir = data_folder();
    // The demo logs only warnings, so that its lines stay readable; the test waits for the
    // prices, which it loads from the mock within moments of starting.
    let keycap = Keycap::embedded(
        Path::new(env!("CARGO_BIN_EXE_keycap")),
        &dir.path().join("data"),
    )
    .env("KEYCAP_LOG", "info");
    let (mut demo, [gateway, _]) = on_free_ports(&keycap, "demo", "gateway listening on");
    demo.wait_for_stdout("python3 -c", Duration::from_secs(10))
        .unwrap();
    demo.wait_for("loaded upstream prices", Duration::from_secs(30))
        .unwrap();
    let printed = demo.stdout_text();
    let line = |start: &str| {
        printed
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{printed}"))
            .to_string()
    };
    let run = |line: &str| {
        // Straight to loopback, whatever proxy the machine sets for curl and the SDK.
        let out = std::process::Command::new("sh")
            .args(["-c", line])
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = |text: String| -> serde_json::Value {
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
    };

    let answer = json(run(&line("curl -s http://127.0.0.1")));
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let key_line = line(&format!("curl -s http://{gateway}/api/v1/key"));
    let info = json(run(&key_line));
    assert_eq!(info["data"]["limit"], 1, "{info}");
    let used = info["data"]["usage"].as_f64().unwrap();
    assert!(used > 0.0, "{info}");

    // The Python line needs the OpenAI SDK; CI (E2E=1) runs it always.
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|out| out.status.success());
    if has_sdk || std::env::var("E2E").as_deref() == Ok("1") {
        let said = run(&line("python3 -c"));
        assert!(!said.trim().is_empty());
        let info = json(run(&key_line));
        assert!(info["data"]["usage"].as_f64().unwrap() > used, "{info}");
    } else {
        println!(
            "skipped the demo's Python line: the OpenAI SDK is not installed (pip install openai)"
        );
    }
    // Ctrl-C stops it cleanly, its embedded Postgres too.
    let status = demo.interrupt(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{status}: {}", demo.stderr_text());
    assert!(
        demo.stderr_text().contains("stopped embedded Postgres"),
        "{}",
        demo.stderr_text()
    );
}
