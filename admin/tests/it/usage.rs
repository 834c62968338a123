//! Usage where operators look: `GET /metrics` for a metrics token, and budget alerts by email
//! and signed webhook, once per threshold per period. Spend reaches the database as the
//! gateway writes it (`db::usage::flush`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use time::macros::datetime;
use uuid::Uuid;

use crate::support::{App, Person};

/// Acme, its owner ann with a master key, and bob, a user with $100 a month.
async fn ann_and_bob(app: &App) -> (Person, Person) {
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.add_master_key("main", &app.master_secret()).await;
    let bob = app.member(&ann, "bob@acme.test", "user", "100").await;
    (ann, bob)
}

/// Writes `cost` nano-dollars of spend on key `key_id`, settled `at` by requests naming
/// `model`, as one gateway flush.
async fn spend(app: &App, key_id: &str, cost: i64, model: &str, at: OffsetDateTime) {
    let key = Uuid::parse_str(key_id).unwrap();
    let mut deltas = db::usage::SpendDeltas::default();
    deltas.push(key, cost);
    let rollups = [db::usage::UsageDelta {
        api_key_id: key,
        minute: at,
        model: model.into(),
        n_requests: 1,
        prompt_tokens: 10,
        completion_tokens: 20,
        cost_nanousd: cost,
    }];
    db::usage::flush(&app.db.pool, Uuid::new_v4(), &deltas, &rollups)
        .await
        .unwrap();
}

const USD: i64 = 1_000_000_000;

/// Makes a token on /account with `scope` and returns it.
async fn token(owner: &Person, scope: &str) -> String {
    let page = owner
        .post(
            "/account/tokens",
            &[
                ("name", scope),
                ("scope", scope),
                ("password", crate::support::PASSWORD),
            ],
        )
        .await;
    page.expect(200, &["shown only once"]);
    page.secret("new-token")
}

async fn scrape(app: &App, token: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", app.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.unwrap())
}

#[track_caller]
fn has_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "no line {line:?} in:\n{text}"
    );
}

#[tokio::test]
async fn metrics_show_each_members_month_spend_by_model_and_keys_for_a_metrics_token_only() {
    let now = datetime!(2026-12-10 12:00 UTC);
    let app = App::start_full(
        |config| config.metrics_cache = Duration::from_secs(2),
        None,
        admin::Clock::fixed(now),
    )
    .await;
    let (ann, bob) = ann_and_bob(&app).await;
    let (app_key, _) = bob.provision("app", "30").await;
    // A second key of the same name, made a second later.
    app.state.clock.set(now + time::Duration::seconds(1));
    bob.provision("app", "10").await;
    spend(&app, &app_key, 12_500_000_000, "openai/gpt-4o-mini", now).await;
    spend(&app, &app_key, USD, "anthropic/claude-sonnet-4", now).await;

    let metrics = token(&ann, "metrics").await;
    let admin_token = token(&ann, "admin").await;
    // Nothing, an admin token, or a made-up one: 401.
    for presented in [None, Some(admin_token.as_str()), Some("kcm_0000")] {
        let (status, body) = scrape(&app, presented).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{presented:?}: {body}");
    }
    let (status, text) = scrape(&app, Some(&metrics)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let bob_labels = r#"org="Acme",member="bob@acme.test""#;
    has_line(
        &text,
        &format!("keycap_member_budget_dollars{{{bob_labels}}} 100.00"),
    );
    has_line(
        &text,
        &format!("keycap_member_allocated_dollars{{{bob_labels}}} 40.00"),
    );
    has_line(
        &text,
        &format!("keycap_member_budget_left_dollars{{{bob_labels}}} 60.00"),
    );
    has_line(
        &text,
        &format!("keycap_member_spent_dollars{{{bob_labels}}} 13.50"),
    );
    has_line(
        &text,
        &format!(
            "keycap_member_spend_dollars_total{{{bob_labels},model=\"openai/gpt-4o-mini\"}} 12.50"
        ),
    );
    has_line(
        &text,
        &format!(
            "keycap_member_spend_dollars_total{{{bob_labels},model=\"anthropic/claude-sonnet-4\"}} 1.00"
        ),
    );
    let app_labels = format!(r#"{bob_labels},key="app",service="openrouter""#);
    has_line(
        &text,
        &format!("keycap_key_cap_dollars{{{app_labels}}} 30.00"),
    );
    has_line(
        &text,
        &format!("keycap_key_spent_dollars{{{app_labels}}} 13.50"),
    );
    has_line(
        &text,
        &format!("keycap_key_remaining_dollars{{{app_labels}}} 16.50"),
    );
    // The second key named "app" is told apart, never by its id or token.
    has_line(
        &text,
        &format!(
            "keycap_key_cap_dollars{{{bob_labels},key=\"app (2)\",service=\"openrouter\"}} 10.00"
        ),
    );
    assert!(!text.contains(&app_key), "a key id is a label:\n{text}");
    has_line(
        &text,
        r#"keycap_member_budget_dollars{org="Acme",member="ann@acme.test"} 0.00"#,
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("keycap_usage_metrics_age_seconds ")),
        "{text}"
    );

    // Within the cache's time, a scrape is the same batch; after it, a new one.
    spend(&app, &app_key, USD, "openai/gpt-4o-mini", now).await;
    let (_, cached) = scrape(&app, Some(&metrics)).await;
    has_line(
        &cached,
        &format!("keycap_member_spent_dollars{{{bob_labels}}} 13.50"),
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, fresh) = scrape(&app, Some(&metrics)).await;
    has_line(
        &fresh,
        &format!("keycap_member_spent_dollars{{{bob_labels}}} 14.50"),
    );
    has_line(
        &fresh,
        &format!("keycap_key_spent_dollars{{{app_labels}}} 14.50"),
    );

    // The metrics token reads nothing else: not the API, not a page.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/api/me", "/api/keys", "/api/members", "/api/audit"] {
        let answer = http
            .get(format!("{}{path}", app.base))
            .bearer_auth(&metrics)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 401, "{path}");
    }
    let created = http
        .post(format!("{}/api/keys", app.base))
        .bearer_auth(&metrics)
        .json(&serde_json::json!({"name": "x", "cap_usd": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 401);
    let page = http
        .get(format!("{}/dashboard", app.base))
        .bearer_auth(&metrics)
        .send()
        .await
        .unwrap();
    assert!(page.status().is_redirection(), "{}", page.status());

    // Revoked on /account: refused at once.
    let account = ann.get("/account").await;
    let ids: Vec<&str> = account
        .body
        .split("/account/tokens/")
        .skip(1)
        .filter_map(|rest| rest.split('/').next())
        .collect();
    assert_eq!(ids.len(), 2, "{}", account.body);
    for id in ids {
        ann.post(&format!("/account/tokens/{id}/revoke"), &[])
            .await
            .expect_redirect("/account");
    }
    let (status, _) = scrape(&app, Some(&metrics)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn per_key_series_can_be_turned_off() {
    let app = App::start_with(|config| config.metrics_per_key = false).await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.add_master_key("main", &app.master_secret()).await;
    ann.provision_after_budget(&app, "ci").await;
    let metrics = token(&ann, "metrics").await;
    let (status, text) = scrape(&app, Some(&metrics)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    has_line(
        &text,
        r#"keycap_member_allocated_dollars{org="Acme",member="ann@acme.test"} 5.00"#,
    );
    assert!(!text.contains("keycap_key_"), "{text}");
}

#[tokio::test]
async fn a_slow_database_makes_the_scrape_answer_503_not_hang() {
    let app = App::start_with(|config| {
        config.metrics_timeout = Duration::from_millis(1500);
        config.metrics_cache = Duration::from_millis(1);
    })
    .await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let metrics = token(&ann, "metrics").await;
    // Another session holds the keys' spend rows locked, as a long migration or a stuck
    // transaction would: the scrape's fold waits on it.
    let mut blocker = app.db.client().await.unwrap();
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE key_spends IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (status, body) = scrape(&app, Some(&metrics)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // The database cuts the batch's statements off too, whoever waits for them. (Not under
    // .ci/at-dates: there, a Postgres run under libfaketime with its clock moved ahead did not
    // fire the statement timeout within 20 s; the plain run checks it.)
    if std::env::var_os("FAKETIME").is_none() {
        let org_id: Uuid = app
            .db
            .client()
            .await
            .unwrap()
            .query_one("SELECT id FROM orgs", &[])
            .await
            .unwrap()
            .get(0);
        let read = db::usage_report::org_usage(
            &app.db.pool,
            org_id,
            OffsetDateTime::now_utc(),
            true,
            Duration::from_millis(300),
        );
        let read = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the database did not cut the statement off");
        let err = read.unwrap_err().to_string();
        assert!(err.contains("statement timeout"), "{err}");
    }
    tx.rollback().await.unwrap();
    let (status, body) = scrape(&app, Some(&metrics)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A webhook that answers with a redirect is not followed (the signed alert would go wherever
/// the answer points): the delivery fails, and is tried again later.
#[tokio::test]
async fn a_webhook_redirect_is_not_followed() {
    let receiver = Receiver::default();
    let moved = receiver.start().await.replace("/hook", "/moved");
    let now = datetime!(2026-12-10 12:00 UTC);
    let app = App::start_full(
        |config| {
            config.alerts.webhook = Some(admin::alerts::Webhook {
                url: moved,
                secret: SECRET.to_string().into(),
            });
        },
        None,
        admin::Clock::fixed(now),
    )
    .await;
    let (_, bob) = ann_and_bob(&app).await;
    let (key, _) = bob.provision("app", "95").await;
    spend(&app, &key, 81 * USD, "openai/gpt-4o-mini", now).await;
    let report = admin::alerts::pass(&app.state, now).await.unwrap();
    assert_eq!((report.new_alerts, report.sent, report.retried), (1, 0, 1));
    assert!(receiver.posts().is_empty(), "the redirect was followed");
}

/// Webhook posts as received: headers and body. The first `fail` posts are answered 500.
/// `/moved` answers every post with a redirect to `/hook`.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    fail: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = self.clone();
        let app = axum::Router::new()
            .route(
                "/moved",
                axum::routing::post(|| async {
                    (StatusCode::TEMPORARY_REDIRECT, [("location", "/hook")])
                }),
            )
            .route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let receiver = receiver.clone();
                    async move {
                        receiver.posts.lock().unwrap().push((headers, body));
                        let mut fail = receiver.fail.lock().unwrap();
                        if *fail > 0 {
                            *fail -= 1;
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        }
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook")
    }

    fn posts(&self) -> Vec<(HeaderMap, String)> {
        self.posts.lock().unwrap().clone()
    }
}

const SECRET: &str = "webhook-secret-for-tests";

/// The alert emails received (the sink also has bob's invite).
fn alert_mails(sink: &testkit::smtp::SmtpSink) -> Vec<testkit::smtp::Mail> {
    sink.messages()
        .into_iter()
        .filter(|m| m.data.contains("Subject: keycap:"))
        .collect()
}

/// The post's JSON, after checking its signature as a receiver would.
#[track_caller]
fn verified(headers: &HeaderMap, body: &str) -> serde_json::Value {
    let timestamp = headers["x-keycap-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(headers["x-keycap-signature"].to_str().unwrap(), expected);
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn budget_alerts_are_sent_once_per_threshold_and_period_by_email_and_signed_webhook() {
    let sink = testkit::smtp::SmtpSink::start().await.unwrap();
    let receiver = Receiver::default();
    let hook = receiver.start().await;
    let mailer = admin::Mailer::new(&sink.url(), "keycap <keycap@acme.test>").unwrap();
    let mut now = datetime!(2026-12-10 12:00 UTC);
    let app = App::start_full(
        |config| {
            config.alerts.webhook = Some(admin::alerts::Webhook {
                url: hook.clone(),
                secret: SECRET.to_string().into(),
            });
        },
        Some(mailer),
        admin::Clock::fixed(now),
    )
    .await;
    let (ann, bob) = ann_and_bob(&app).await;
    let (key, _) = bob.provision("app", "95").await;
    let pass = |at: OffsetDateTime| {
        let state = app.state.clone();
        async move { admin::alerts::pass(&state, at).await.unwrap() }
    };

    // $79 of $100, and of a $95 cap: below every threshold.
    spend(&app, &key, 79 * USD, "openai/gpt-4o-mini", now).await;
    assert_eq!(pass(now).await.new_alerts, 0);
    assert!(alert_mails(&sink).is_empty());

    // $81: bob passed 80% of his budget (the key is at 85% of its cap). An email to bob and
    // to ann (an owner), and the webhook, which fails once and is tried again a minute later.
    *receiver.fail.lock().unwrap() = 1;
    spend(&app, &key, 2 * USD, "openai/gpt-4o-mini", now).await;
    let report = pass(now).await;
    assert_eq!((report.new_alerts, report.sent, report.retried), (1, 2, 1));
    let mails = alert_mails(&sink);
    let mut to: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    assert_eq!(to, vec!["ann@acme.test", "bob@acme.test"]);
    assert!(
        mails[0]
            .data
            .contains("Subject: keycap: bob@acme.test passed 80% of this month's budget in Acme"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("$81.00 of a $100.00 monthly budget"));
    // Not yet due again: nothing is sent.
    assert_eq!(pass(now + time::Duration::seconds(30)).await.sent, 0);
    now += time::Duration::seconds(61);
    assert_eq!(pass(now).await.sent, 1);
    let posts = receiver.posts();
    assert_eq!(posts.len(), 2);
    let alert = verified(&posts[1].0, &posts[1].1);
    assert_eq!(alert["type"], "member_budget");
    assert_eq!(alert["member"], "bob@acme.test");
    assert_eq!(alert["org"], "Acme");
    assert_eq!(alert["threshold_percent"], 80);
    assert_eq!(alert["spent_nanousd"], 81 * USD);
    assert_eq!(alert["limit_nanousd"], 100 * USD);
    assert_eq!(alert["period_start"], "2026-12-01T00:00:00Z");

    // Passing again changes nothing: once per threshold.
    spend(&app, &key, USD / 2, "openai/gpt-4o-mini", now).await;
    let report = pass(now).await;
    assert_eq!((report.new_alerts, report.sent), (0, 0));

    // $86: the key passed 90% of its $95 cap.
    spend(&app, &key, 9 * USD / 2, "openai/gpt-4o-mini", now).await;
    let report = pass(now).await;
    assert_eq!((report.new_alerts, report.sent), (1, 3));
    let posts = receiver.posts();
    let alert = verified(&posts[2].0, &posts[2].1);
    assert_eq!(alert["type"], "key_cap");
    assert_eq!(alert["key"]["name"], "app");
    assert_eq!(alert["threshold_percent"], 90);
    assert!(
        alert_mails(&sink)
            .iter()
            .any(|m| m.data.contains("passed 90% of its cap"))
    );

    // $100: 100% of the budget.
    spend(&app, &key, 14 * USD, "openai/gpt-4o-mini", now).await;
    assert_eq!(pass(now).await.new_alerts, 1);
    assert_eq!(alert_mails(&sink).len(), 6);

    // A new month: spending past 80% of January's budget alerts again; the key (not renewed
    // monthly) is still in the period it was alerted in.
    now = datetime!(2027-01-03 09:00 UTC);
    app.state.clock.set(now);
    spend(&app, &key, 85 * USD, "openai/gpt-4o-mini", now).await;
    let report = pass(now).await;
    assert_eq!((report.new_alerts, report.sent), (1, 3));
    let posts = receiver.posts();
    let alert = verified(&posts[posts.len() - 1].0, &posts[posts.len() - 1].1);
    assert_eq!(alert["period_start"], "2027-01-01T00:00:00Z");
    assert_eq!(alert["spent_nanousd"], 85 * USD);

    // Members see theirs on /dashboard; owners the org's (signed in again: a month passed).
    for (person, email) in [(&bob, "bob@acme.test"), (&ann, "ann@acme.test")] {
        person
            .post_anonymous(
                "/login",
                &[("email", email), ("password", crate::support::PASSWORD)],
            )
            .await
            .expect_redirect("/dashboard");
    }
    bob.get("/dashboard").await.expect(
        200,
        &[
            "Your budget alerts",
            "passed 80% of the monthly budget: $85.00 of $100.00",
            "key &#34;app&#34; passed 90% of its cap",
        ],
    );
    ann.get("/dashboard")
        .await
        .expect(200, &["Recent budget alerts in the org", "bob@acme.test"]);
}
