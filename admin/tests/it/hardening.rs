//! The fixes of the admin app's security review, each shown by what it stops.

use crate::support::{App, PASSWORD};

/// A member of org B made on the command line has no password; an owner of org A must not be
/// able to claim that account through an invite of A.
#[tokio::test]
async fn an_invite_cannot_claim_a_password_less_member_of_another_org() {
    let app = App::start().await;
    let mallory = app.owner("Alpha", "mallory@alpha.test").await;
    db::orgs::create(
        &app.db.pool,
        "Beta",
        &domain::Email::parse("bob@beta.test").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let link = mallory.invite("bob@beta.test", "user", "1").await;
    let path = link.strip_prefix(&app.base).unwrap();
    let thief = app.person();
    thief
        .post_anonymous(path, &[("password", "mallory-knows-this")])
        .await
        .expect(409, &["belongs to another org"]);
    let client = app.db.client().await.unwrap();
    let password: Option<String> = client
        .query_one(
            "SELECT password_hash FROM users WHERE email = 'bob@beta.test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(password, None);
    thief.get("/dashboard").await.expect_redirect("/login");
}

#[tokio::test]
async fn sign_in_redirects_only_within_the_site() {
    let app = App::start().await;
    let _owner = app.owner("Acme", "ann@acme.test").await;
    for next in [
        "/\t/evil.test",
        "/\\evil.test",
        "//evil.test",
        "https://evil.test",
        "/\n",
    ] {
        app.person()
            .post_anonymous(
                "/login",
                &[
                    ("email", "ann@acme.test"),
                    ("password", PASSWORD),
                    ("next", next),
                ],
            )
            .await
            .expect_redirect("/dashboard");
    }
    app.person()
        .post_anonymous(
            "/login",
            &[
                ("email", "ann@acme.test"),
                ("password", PASSWORD),
                ("next", "/audit?kind=refund"),
            ],
        )
        .await
        .expect_redirect("/audit?kind=refund");
}

#[tokio::test]
async fn guesses_sent_at_once_do_not_slip_past_the_throttle() {
    let app = App::start().await;
    let _owner = app.owner("Acme", "ann@acme.test").await;
    let attacker = app.person();
    let guesses = (0..20).map(|i| {
        let attacker = &attacker;
        async move {
            let password = format!("guess-number-{i}");
            attacker
                .post_anonymous(
                    "/login",
                    &[("email", "ann@acme.test"), ("password", &password)],
                )
                .await
                .status
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + refused, 20, "{statuses:?}");
    assert!(checked <= 5, "{checked} guesses were checked: {statuses:?}");
}

#[tokio::test]
async fn an_admin_token_dies_with_its_owner_role() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let page = ann
        .post("/account/tokens", &[("name", "ci"), ("password", PASSWORD)])
        .await;
    let token = page.secret("new-token");
    let _bob = app.member(&ann, "bob@acme.test", "owner", "0").await;
    assert_eq!(app.me_with_token(&token).await, 200);
    ann.post(
        "/members/role",
        &[("email", "ann@acme.test"), ("role", "user")],
    )
    .await
    .expect_redirect("/members");
    assert_eq!(app.me_with_token(&token).await, 401);
    // Made an owner again: the old token stays dead.
    let client = app.db.client().await.unwrap();
    client
        .execute("UPDATE memberships SET role = 'owner' WHERE user_id = (SELECT id FROM users WHERE email = 'ann@acme.test')", &[])
        .await
        .unwrap();
    assert_eq!(app.me_with_token(&token).await, 401);
}

#[tokio::test]
async fn two_owners_demoting_each_other_leave_one_owner_and_no_error() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let bob = app.member(&ann, "bob@acme.test", "owner", "0").await;
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            ann.post(
                "/members/role",
                &[("email", "bob@acme.test"), ("role", "user")]
            ),
            bob.post(
                "/members/role",
                &[("email", "ann@acme.test"), ("role", "user")]
            ),
        );
        let statuses = [a.status.as_u16(), b.status.as_u16()];
        assert!(!statuses.contains(&500), "{a:?} {b:?}");
        let client = app.db.client().await.unwrap();
        let owners: i64 = client
            .query_one(
                "SELECT count(*) FROM memberships WHERE role = 'owner' AND removed_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(owners, 1, "{statuses:?}");
        // Make both owners again for the next round.
        client
            .execute("UPDATE memberships SET role = 'owner'", &[])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_audit_api_pages_with_before() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.invite("bob@acme.test", "user", "1").await;
    let page = ann.get("/api/audit?before=2&limit=10").await;
    page.expect(200, &[]);
    let entries = page.json()["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 1, "{}", page.body);
    assert_eq!(entries[0]["seq"], 1);
}

#[tokio::test]
async fn a_stale_page_does_not_act_on_the_org_switched_to_in_another_tab() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let acme_id = ann.get("/api/me").await.json()["current_org"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // ann becomes the owner of Beta too (made on the command line), then switches to Beta.
    let beta = db::orgs::create(
        &app.db.pool,
        "Beta",
        &domain::Email::parse("ann@acme.test").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap()
    .org;
    ann.post("/orgs/switch", &[("org_id", &beta.id.to_string())])
        .await
        .expect_redirect("/dashboard");
    // A form from the Acme tab: refused, and Beta is unchanged.
    let rows = app.ledger_rows().await;
    ann.post(
        "/members/invite",
        &[
            ("org", &acme_id),
            ("email", "x@acme.test"),
            ("role", "user"),
            ("budget", "1"),
        ],
    )
    .await
    .expect(409, &["another tab"]);
    assert_eq!(app.ledger_rows().await, rows);
    ann.post(
        "/members/invite",
        &[
            ("org", &beta.id.to_string()),
            ("email", "x@acme.test"),
            ("role", "user"),
            ("budget", "1"),
        ],
    )
    .await
    .expect(200, &["Invite created"]);
}

#[tokio::test]
async fn behind_a_proxy_the_public_origin_is_accepted() {
    let app =
        App::start_with(|config| config.public_url = "http://keycap.example:8443".into()).await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let csrf = ann.csrf().await;
    let posted = ann
        .http
        .post(format!("{}/members/budget", app.base))
        .header("origin", "http://keycap.example:8443")
        .form(&[("email", "ann@acme.test"), ("budget", "3"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status().as_u16(), 303);
}

#[tokio::test]
async fn over_https_the_session_cookie_is_host_only_and_secure() {
    let app = App::start_with(|config| config.public_url = "https://keycap.example".into()).await;
    let link = app.state.setup_link().await.unwrap().unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/setup", app.base))
        .form(&[
            ("token", token),
            ("org_name", "Acme"),
            ("email", "ann@acme.test"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("__Host-keycap_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
}

/// Failed sign-ins from one client behind a proxy, with `admin.trusted_proxies`, count against
/// that client (the rightmost address the proxy forwarded for), not against the proxy's
/// address that every client shares: another client still signs in. Without the setting, the
/// header is nobody's to believe, and everyone behind the proxy shares one allowance.
#[tokio::test]
async fn behind_a_trusted_proxy_one_client_cannot_lock_out_the_others() {
    async fn guesses_then_sign_in(app: &App, owner: &str) -> u16 {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = |email: String, password: &'static str, forwarded: &'static str| {
            http.post(format!("{}/login", app.base))
                .header("x-forwarded-for", forwarded)
                .form(&[("email", email.as_str()), ("password", password)])
                .send()
        };
        // 21 guesses at made-up accounts, from one client, through the proxy: past the
        // allowance of one address (4 × 5), below that of any one email.
        for i in 0..21 {
            let email = format!("nobody{i}@acme.test");
            login(email, "wrong-password", "198.51.100.1, 203.0.113.7")
                .await
                .unwrap();
        }
        let refused = login("nobody99@acme.test".into(), "wrong-password", "203.0.113.7")
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 429);
        // The owner, another client behind the same proxy.
        login(owner.into(), PASSWORD, "192.0.2.44")
            .await
            .unwrap()
            .status()
            .as_u16()
    }
    let trusting = App::start_with(|config| {
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    trusting.owner("Acme", "ann@acme.test").await;
    // Signed in: a redirect to the dashboard.
    assert_eq!(guesses_then_sign_in(&trusting, "ann@acme.test").await, 303);

    let plain = App::start().await;
    plain.owner("Acme", "ann@acme.test").await;
    assert_eq!(guesses_then_sign_in(&plain, "ann@acme.test").await, 429);
}

/// A sign-in failure keeps no more of what was typed as the email than the longest address.
#[tokio::test]
async fn the_failure_table_keeps_no_more_than_an_address() {
    let app = App::start().await;
    app.owner("Acme", "ann@acme.test").await;
    let typed = format!("{}@acme.test", "a".repeat(20_000));
    app.person()
        .post_anonymous(
            "/login",
            &[("email", &typed), ("password", "wrong-password")],
        )
        .await
        .expect(401, &[]);
    let client = app.db.client().await.unwrap();
    let longest: i32 = client
        .query_one("SELECT max(length(email))::int FROM login_failures", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(longest, 254);
}

/// A proxy that adds its own `X-Forwarded-For` line after the client's (HAProxy's
/// `option forwardfor`) is read whole: a client who forges a different address in its own line
/// on every guess is still counted by the address the proxy saw.
#[tokio::test]
async fn a_forged_forwarded_line_does_not_dodge_the_throttle() {
    let app = App::start_with(|config| {
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    app.owner("Acme", "ann@acme.test").await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..22 {
        let answer = http
            .post(format!("{}/login", app.base))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("x-forwarded-for", "203.0.113.7")
            .form(&[
                ("email", format!("nobody{i}@acme.test").as_str()),
                ("password", "wrong-password"),
            ])
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses[..20], [401; 20]);
    assert_eq!(statuses[20..], [429, 429], "{statuses:?}");
}

/// Guesses at an owner's email from many addresses refuse sign-ins for that email from
/// addresses it has not used, never from the one it signs in from: the owner still gets in
/// there. One address guessing one email is refused past the limit, known address or not.
#[tokio::test]
async fn a_stranger_cannot_lock_an_owner_out_of_their_usual_address() {
    let app = App::start_with(|config| {
        config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    app.owner("Acme", "ann@acme.test").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |password: &'static str, from: String| {
        http.post(format!("{}/login", app.base))
            .header("x-forwarded-for", from)
            .form(&[("email", "ann@acme.test"), ("password", password)])
            .send()
    };
    let status = |response: reqwest::Response| response.status().as_u16();
    // Ann signs in from her usual address.
    assert_eq!(
        status(login(PASSWORD, "192.0.2.44".into()).await.unwrap()),
        303
    );
    // A stranger guesses her password from twelve addresses, one guess each: past the
    // email's limit (5), so the last guesses are refused.
    let mut guesses = Vec::new();
    for i in 0..12 {
        let from = format!("198.51.100.{i}");
        guesses.push(status(login("wrong-password", from).await.unwrap()));
    }
    assert_eq!(guesses[..5], [401; 5], "{guesses:?}");
    assert_eq!(guesses[5..], [429; 7], "{guesses:?}");
    // Ann still signs in from her usual address; from a new one she waits like the stranger.
    assert_eq!(
        status(login(PASSWORD, "203.0.113.9".into()).await.unwrap()),
        429
    );
    assert_eq!(
        status(login(PASSWORD, "192.0.2.44".into()).await.unwrap()),
        303
    );
    // Her sign-in does not forget the stranger's guesses: a new address still waits.
    assert_eq!(
        status(login(PASSWORD, "203.0.113.10".into()).await.unwrap()),
        429
    );
    // From her usual address, guesses at her email are limited all the same.
    let mut guesses = Vec::new();
    for _ in 0..7 {
        guesses.push(status(
            login("wrong-password", "192.0.2.44".into()).await.unwrap(),
        ));
    }
    assert_eq!(guesses[..5], [401; 5], "{guesses:?}");
    assert_eq!(guesses[5..], [429; 2], "{guesses:?}");
}
