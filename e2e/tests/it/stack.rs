//! Everything behind the browser, in this process on loopback with OS-assigned ports: a fresh
//! database, the OpenRouter mock, the gateway (on a thread of its own, as `keycap up` runs it)
//! and the admin app, sharing one keyring.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use admin::{AdminConfig, AppState};
use testkit::TestDb;
use tokio::sync::watch;

/// How often the gateway writes settled spend and usage rollups to Postgres here: short, so
/// pages show them soon.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

pub struct Stack {
    pub mock: openrouter_mock::MockServer,
    /// `http://127.0.0.1:PORT` of the admin app.
    pub admin_url: String,
    /// `http://127.0.0.1:PORT/api/v1` of the gateway, as apps use it.
    pub gateway_url: String,
    /// The one-time link that creates the first owner.
    pub setup_link: String,
    shutdown: watch::Sender<bool>,
    gateway: Option<JoinHandle<Result<(), String>>>,
    admin: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Kept until the end, and dropped last: everything above uses it.
    _db: TestDb,
}

impl Stack {
    /// Starts everything and returns once the gateway accepts connections.
    pub async fn start() -> Stack {
        let db = TestDb::new().await.expect("a test database");
        let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
            .await
            .expect("the OpenRouter mock starts");
        let keyring = vault::Keyring::generate();
        let (shutdown, shutdown_rx) = watch::channel(false);

        let gateway_listen = format!("127.0.0.1:{}", testkit::free_port());
        let gateway_config = gateway::GatewayConfig {
            listen: gateway_listen.clone(),
            metrics_listen: format!("127.0.0.1:{}", testkit::free_port()),
            upstream_base_url: mock.base_url(),
            flush_interval: FLUSH_INTERVAL,
            rollup_interval: FLUSH_INTERVAL,
            grace_period_seconds: 1,
            ..Default::default()
        };
        gateway::server::check_addresses(&gateway_config).expect("the gateway's ports are free");
        let resources = gateway::server::Resources {
            pool: db.pool.clone(),
            database_url: db.url.clone(),
            keyring: keyring.clone(),
            control: tokio::runtime::Handle::current(),
        };
        let gateway_shutdown = shutdown_rx.clone();
        // pingora blocks the thread it runs on, which must not be a runtime thread.
        let gateway = std::thread::Builder::new()
            .name("gateway".into())
            .spawn(move || gateway::run(gateway_config, resources, gateway_shutdown))
            .expect("the gateway thread starts");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_url = format!("http://{}", listener.local_addr().unwrap());
        let gateway_url = format!("http://{gateway_listen}/api/v1");
        let config = AdminConfig {
            public_url: admin_url.clone(),
            gateway_base_url: gateway_url.clone(),
            upstream_base_url: mock.base_url(),
            ..Default::default()
        };
        let state = AppState::new(db.pool.clone(), keyring, config);
        let setup_link = state
            .setup_link()
            .await
            .expect("the setup state can be read")
            .expect("nobody can sign in to a fresh database");
        let mut admin_shutdown = shutdown_rx;
        let admin = tokio::spawn(admin::serve(listener, state, async move {
            let _ = admin_shutdown.wait_for(|stop| *stop).await;
        }));

        let stack = Stack {
            mock,
            admin_url,
            gateway_url,
            setup_link,
            shutdown,
            gateway: Some(gateway),
            admin: Some(admin),
            _db: db,
        };
        stack.wait_for_gateway(&gateway_listen).await;
        stack
    }

    async fn wait_for_gateway(&self, listen: &str) {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            let gateway = self.gateway.as_ref().unwrap();
            assert!(!gateway.is_finished(), "the gateway stopped while starting");
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the gateway did not listen on {listen} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the gateway (which flushes spend) and the admin app, and checks both ended cleanly.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let gateway = self.gateway.take().unwrap();
        let joined = tokio::task::spawn_blocking(move || gateway.join())
            .await
            .unwrap();
        match joined {
            Ok(result) => result.expect("the gateway stops cleanly"),
            Err(_) => panic!("the gateway thread panicked"),
        }
        let admin = self.admin.take().unwrap();
        admin.await.unwrap().expect("the admin app stops cleanly");
    }
}

impl Drop for Stack {
    /// After a failed assertion: tell the gateway and the admin app to stop.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
