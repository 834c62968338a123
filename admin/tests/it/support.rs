//! The admin app in process on 127.0.0.1:0, a real database, an OpenRouter mock as the
//! upstream, and a cookie-keeping HTTP client per person.

use admin::{AdminConfig, AppState, Clock};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use testkit::TestDb;

pub const PASSWORD: &str = "correct-horse-battery";

pub struct App {
    pub db: TestDb,
    pub state: AppState,
    pub base: String,
    pub mock: openrouter_mock::MockServer,
    _server: tokio::task::JoinHandle<()>,
}

/// A person at a browser: a client with its own cookies.
pub struct Person {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// Asserts the status and that the body contains every one of `texts`.
    #[track_caller]
    pub fn expect(&self, status: u16, texts: &[&str]) -> &Page {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        for text in texts {
            assert!(
                self.body.contains(text),
                "expected {text:?} in: {}",
                self.body
            );
        }
        self
    }

    /// Asserts a redirect to a location starting with `prefix`.
    #[track_caller]
    pub fn expect_redirect(&self, prefix: &str) {
        assert!(
            self.status.is_redirection(),
            "status {} body {}",
            self.status,
            self.body
        );
        let location = self.location.as_deref().unwrap_or("");
        assert!(
            location.starts_with(prefix),
            "redirect to {location}, wanted {prefix}"
        );
    }

    /// The text of the one-time secret shown in `<code id="{id}" class="secret">`: a new token,
    /// an invite link.
    #[track_caller]
    pub fn secret(&self, id: &str) -> String {
        let marker = format!("<code id=\"{id}\" class=\"secret\">");
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {marker} in: {}", self.body))
            + marker.len();
        let rest = &self.body[start..];
        rest[..rest.find('<').unwrap()].to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }
}

impl App {
    pub async fn start() -> App {
        App::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut AdminConfig)) -> App {
        App::start_full(adjust, None, Clock::default()).await
    }

    /// An app that sends invite emails through `mailer`.
    pub async fn start_with_mailer(mailer: admin::Mailer) -> App {
        App::start_full(|_| {}, Some(mailer), Clock::default()).await
    }

    /// An app whose clock stands at `at` until the test moves it (`app.state.clock.set`).
    pub async fn start_at(at: time::OffsetDateTime) -> App {
        App::start_full(|_| {}, None, Clock::fixed(at)).await
    }

    pub async fn start_full(
        adjust: impl FnOnce(&mut AdminConfig),
        mailer: Option<admin::Mailer>,
        clock: Clock,
    ) -> App {
        let db = TestDb::new().await.expect("test database");
        let mock = openrouter_mock::spawn(openrouter_mock::MockConfig::default())
            .await
            .expect("mock");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = AdminConfig {
            public_url: format!("http://{addr}"),
            gateway_base_url: "http://127.0.0.1:9/api/v1".into(),
            upstream_base_url: mock.base_url(),
            ..Default::default()
        };
        adjust(&mut config);
        let mut state =
            AppState::new(db.pool.clone(), vault::Keyring::generate(), config).with_clock(clock);
        if let Some(mailer) = mailer {
            state = state.with_mailer(mailer);
        }
        let served = state.clone();
        let server = tokio::spawn(async move {
            admin::serve(listener, served, std::future::pending())
                .await
                .unwrap();
        });
        App {
            db,
            state,
            base: format!("http://{addr}"),
            mock,
            _server: server,
        }
    }

    pub fn person(&self) -> Person {
        Person {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: self.base.clone(),
        }
    }

    /// Sets up the first owner of org `org` through the setup link and returns them signed in.
    pub async fn owner(&self, org: &str, email: &str) -> Person {
        let link = self
            .state
            .setup_link()
            .await
            .unwrap()
            .expect("not set up yet");
        let token = link.split("token=").nth(1).unwrap().to_string();
        let owner = self.person();
        owner
            .post_anonymous(
                "/setup",
                &[
                    ("token", &token),
                    ("org_name", org),
                    ("email", email),
                    ("password", PASSWORD),
                ],
            )
            .await
            .expect_redirect("/dashboard");
        owner
    }

    /// `inviter` invites `email`; the invitee accepts with a new password and is signed in.
    pub async fn member(&self, inviter: &Person, email: &str, role: &str, budget: &str) -> Person {
        let link = inviter.invite(email, role, budget).await;
        let member = self.person();
        let path = link.strip_prefix(&self.base).unwrap().to_string();
        member
            .post_anonymous(&path, &[("password", PASSWORD)])
            .await
            .expect_redirect("/dashboard");
        member
    }

    /// Number of ledger rows, to show that a refused request wrote nothing.
    pub async fn ledger_rows(&self) -> i64 {
        let client = self.db.client().await.unwrap();
        client
            .query_one("SELECT count(*) FROM transactions", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn sql(&self, statement: &str) {
        let client = self.db.client().await.unwrap();
        client.batch_execute(statement).await.unwrap();
    }

    /// The status of `GET /api/me` with the admin token `token`.
    pub async fn me_with_token(&self, token: &str) -> u16 {
        reqwest::Client::new()
            .get(format!("{}/api/me", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn master_secret(&self) -> String {
        self.mock.state().config().master_key.clone()
    }
}

async fn read(response: reqwest::Response) -> Page {
    Page {
        status: response.status(),
        location: response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: response.text().await.unwrap(),
    }
}

impl Person {
    pub async fn get(&self, path: &str) -> Page {
        read(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The session's CSRF token, from the JSON API.
    pub async fn csrf(&self) -> String {
        let me = self.get("/api/me").await;
        me.json()["csrf_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Posts a form with the session's CSRF token added.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf().await;
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrf", &csrf));
        self.post_anonymous(path, &all).await
    }

    /// Posts a form with the CSRF token and follows the redirect that answers it.
    pub async fn post_follow(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let posted = self.post(path, fields).await;
        match posted.location.clone() {
            Some(location) if posted.status.is_redirection() => self.get(&location).await,
            _ => posted,
        }
    }

    /// Posts a form as it is, with no CSRF token added.
    pub async fn post_anonymous(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        read(
            self.http
                .post(format!("{}{path}", self.base))
                .form(fields)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Posts JSON to the API with the session's CSRF header.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> Page {
        let csrf = self.csrf().await;
        read(
            self.http
                .post(format!("{}{path}", self.base))
                .header("x-csrf-token", csrf)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Creates an invite and returns its link.
    pub async fn invite(&self, email: &str, role: &str, budget: &str) -> String {
        let page = self
            .post(
                "/members/invite",
                &[("email", email), ("role", role), ("budget", budget)],
            )
            .await;
        page.expect(200, &["Invite created"]);
        page.secret("invite-link")
    }

    /// Adds a master key to the vault and returns its id.
    pub async fn add_master_key(&self, name: &str, secret: &str) -> String {
        self.post(
            "/vault",
            &[
                ("service", "openrouter"),
                ("name", name),
                ("secret", secret),
            ],
        )
        .await
        .expect_redirect("/vault?notice=master_key_added");
        let keys = self.get("/api/master-keys").await.json();
        keys["master_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Provisions a key on /store and returns its id and token.
    pub async fn provision(&self, name: &str, cap: &str) -> (String, String) {
        let page = self
            .post(
                "/store",
                &[
                    ("service", "openrouter"),
                    ("name", name),
                    ("cap", cap),
                    ("expires", "30d"),
                    ("models", ""),
                ],
            )
            .await;
        page.expect(200, &["is ready"]);
        let token = page.secret("token");
        let keys = self.get("/api/keys").await.json();
        let id = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        (id, token)
    }
}

impl Person {
    /// Gives this person (an owner) a budget of $50, then provisions a key with a $5 cap.
    pub async fn provision_after_budget(&self, app: &App, name: &str) -> (String, String) {
        let me = self.get("/api/me").await.json();
        let email = me["email"].as_str().unwrap().to_string();
        self.post("/members/budget", &[("email", &email), ("budget", "50")])
            .await
            .expect_redirect("/members?notice=budget_set");
        let _ = app;
        self.provision(name, "5").await
    }
}
