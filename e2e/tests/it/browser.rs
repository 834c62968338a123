//! A headless chromium driven through Debian's `chromedriver`, which this test starts as a child
//! on a free port and kills, with the browser it started, on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The desktop window every page is seen in first.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone's window (an iPhone 12 to 15, in CSS pixels).
pub const PHONE: (u32, u32) = (390, 844);

pub struct Browser {
    pub client: Client,
    /// Where screenshots go.
    pub shots: PathBuf,
    // Dropped in this order: the driver (and its browser) before the profile they use.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// The chromedriver child, in a process group of its own so that drop can stop it and every
/// chromium process it started, even when the session was never closed.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver and opens a session in a fresh chromium profile.
    pub async fn start() -> Browser {
        let port = testkit::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("{CHROMEDRIVER} starts (apt-get install chromium-driver): {err}")
            });
        let mut driver = Driver(child);
        let profile = tempfile::tempdir().unwrap();
        let client = connect(&mut driver, port, profile.path()).await;
        Browser {
            client,
            shots: screenshot_dir(),
            _driver: driver,
            _profile: profile,
        }
    }

    /// Ends the session, which quits chromium; drop then stops chromedriver.
    pub async fn close(self) {
        self.client.clone().close().await.expect("the session ends");
    }
}

async fn connect(driver: &mut Driver, port: u16, profile: &Path) -> Client {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = driver.0.try_wait() {
            panic!("chromedriver exited while starting: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not listen on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (width, height) = DESKTOP;
    let args = [
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        // Without these three, chromium waits on a network this machine does not have.
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
    ];
    let capabilities = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("json! of an object is an object")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("chromedriver opens a chromium session")
}

/// `E2E_SCREENSHOTS`, or else `target/e2e-screenshots` at the workspace root.
fn screenshot_dir() -> PathBuf {
    let dir = match std::env::var_os("E2E_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("target/e2e-screenshots"),
    };
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
    dir
}
