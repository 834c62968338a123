//! Setup, sign-in, throttling, sessions, password change, invites and org switching.

use crate::support::{App, PASSWORD};

#[tokio::test]
async fn the_setup_link_creates_the_first_owner_once() {
    let app = App::start().await;
    let visitor = app.person();
    visitor
        .get("/setup?token=wrong")
        .await
        .expect(403, &["setup link is not valid"]);
    let link = app.state.setup_link().await.unwrap().unwrap();
    let token = link.split("token=").nth(1).unwrap();
    visitor
        .get(&format!("/setup?token={token}"))
        .await
        .expect(200, &["Create owner account"]);
    // Bad fields: the form comes back with messages and what was typed, and nothing exists.
    visitor
        .post_anonymous(
            "/setup",
            &[
                ("token", token),
                ("org_name", "Acme"),
                ("email", "not-an-email"),
                ("password", "short"),
            ],
        )
        .await
        .expect(
            400,
            &[
                "is not an email address",
                "at least 10 characters",
                "value=\"Acme\"",
            ],
        );
    assert_eq!(app.ledger_rows().await, 0);
    let owner = app.owner("Acme", "ann@acme.test").await;
    owner
        .get("/dashboard")
        .await
        .expect(200, &["Acme", "ann@acme.test"]);
    assert_eq!(app.ledger_rows().await, 1, "org_created");
    // The link is spent, and no new one is made once someone can sign in.
    visitor
        .post_anonymous(
            "/setup",
            &[
                ("token", token),
                ("org_name", "Evil"),
                ("email", "eve@evil.test"),
                ("password", PASSWORD),
            ],
        )
        .await
        .expect(404, &["already set up"]);
    assert_eq!(app.state.setup_link().await.unwrap(), None);
}

#[tokio::test]
async fn sign_in_is_throttled_and_sign_out_ends_the_session() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let other = app.person();
    other
        .get("/dashboard")
        .await
        .expect_redirect("/login?next=/dashboard");
    other
        .post_anonymous(
            "/login",
            &[("email", "ann@acme.test"), ("password", "wrong-password")],
        )
        .await
        .expect(
            401,
            &[
                "the email or the password is wrong",
                "value=\"ann@acme.test\"",
            ],
        );
    other
        .post_anonymous(
            "/login",
            &[
                ("email", "nobody@acme.test"),
                ("password", "wrong-password"),
            ],
        )
        .await
        .expect(401, &["the email or the password is wrong"]);
    for _ in 0..4 {
        other
            .post_anonymous(
                "/login",
                &[("email", "ann@acme.test"), ("password", "wrong-password")],
            )
            .await
            .expect(401, &[]);
    }
    // Five failures for this email: even the right password waits now.
    other
        .post_anonymous(
            "/login",
            &[("email", "ann@acme.test"), ("password", PASSWORD)],
        )
        .await
        .expect(429, &["too many failed sign-ins"]);
    app.sql("DELETE FROM login_failures").await;
    other
        .post_anonymous(
            "/login",
            &[
                ("email", "ann@acme.test"),
                ("password", PASSWORD),
                ("next", "/audit"),
            ],
        )
        .await
        .expect_redirect("/audit");
    // An absolute URL in `next` is not followed off the site.
    app.person()
        .post_anonymous(
            "/login",
            &[
                ("email", "ann@acme.test"),
                ("password", PASSWORD),
                ("next", "//evil.test/x"),
            ],
        )
        .await
        .expect_redirect("/dashboard");
    owner.post("/logout", &[]).await.expect_redirect("/login");
    owner.get("/dashboard").await.expect_redirect("/login");
    other.get("/dashboard").await.expect(200, &["Dashboard"]);
}

#[tokio::test]
async fn an_expired_session_signs_out() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    owner.get("/members").await.expect(200, &["Members"]);
    app.sql("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .await;
    owner
        .get("/members")
        .await
        .expect_redirect("/login?next=/members");
    let api = owner.get("/api/me").await;
    api.expect(401, &["sign in"]);
    assert_eq!(api.json()["error"]["status"], 401);
}

#[tokio::test]
async fn a_password_change_checks_the_old_one_and_signs_out_other_sessions() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let laptop = app.person();
    laptop
        .post_anonymous(
            "/login",
            &[("email", "ann@acme.test"), ("password", PASSWORD)],
        )
        .await
        .expect_redirect("/dashboard");
    owner
        .post(
            "/account/password",
            &[
                ("current", "wrong-password"),
                ("new_password", "a-new-password-1"),
                ("confirm", "a-new-password-1"),
            ],
        )
        .await
        .expect(400, &["that is not your current password"]);
    owner
        .post(
            "/account/password",
            &[
                ("current", PASSWORD),
                ("new_password", "a-new-password-1"),
                ("confirm", "different-password"),
            ],
        )
        .await
        .expect(400, &["the two new passwords differ"]);
    owner
        .post(
            "/account/password",
            &[
                ("current", PASSWORD),
                ("new_password", "a-new-password-1"),
                ("confirm", "a-new-password-1"),
            ],
        )
        .await
        .expect_redirect("/account?notice=password_changed");
    owner
        .get("/account?notice=password_changed")
        .await
        .expect(200, &["Password changed"]);
    laptop.get("/dashboard").await.expect_redirect("/login");
    app.person()
        .post_anonymous(
            "/login",
            &[("email", "ann@acme.test"), ("password", PASSWORD)],
        )
        .await
        .expect(401, &[]);
    app.person()
        .post_anonymous(
            "/login",
            &[("email", "ann@acme.test"), ("password", "a-new-password-1")],
        )
        .await
        .expect_redirect("/dashboard");
}

#[tokio::test]
async fn invites_are_single_use_expire_and_join_existing_accounts() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let link = owner.invite("bob@acme.test", "user", "100").await;
    let path = link.strip_prefix(&app.base).unwrap();
    let bob = app.person();
    bob.get(path).await.expect(
        200,
        &["Join Acme", "bob@acme.test", "$100.00", "Choose a password"],
    );
    bob.post_anonymous(path, &[("password", "short")])
        .await
        .expect(400, &["at least 10 characters"]);
    bob.post_anonymous(path, &[("password", PASSWORD)])
        .await
        .expect_redirect("/dashboard");
    bob.get("/dashboard")
        .await
        .expect(200, &["$100.00", "bob@acme.test"]);
    // Used once: the link now says so.
    app.person().get(path).await.expect(409, &["already used"]);
    app.person()
        .post_anonymous(path, &[("password", PASSWORD)])
        .await
        .expect(409, &["already used"]);
    // An expired invite does not work.
    let late = owner.invite("carol@acme.test", "user", "5").await;
    app.sql("UPDATE invites SET expires_at = now() - interval '1 minute' WHERE email = 'carol@acme.test'")
        .await;
    let late_path = late.strip_prefix(&app.base).unwrap();
    app.person().get(late_path).await.expect(409, &["expired"]);
    owner
        .get("/members")
        .await
        .expect(200, &["carol@acme.test", "expired"]);
    app.person()
        .get("/invite/not-a-real-token")
        .await
        .expect(404, &["not valid"]);
}

#[tokio::test]
async fn a_member_of_two_orgs_switches_between_them() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    // A second org, made on the command line's path, whose owner invites ann.
    let beta = db::orgs::create(
        &app.db.pool,
        "Beta",
        &domain::Email::parse("bea@beta.test").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let token = "beta-invite-token-0123456789";
    db::invites::create(
        &app.db.pool,
        &beta.org,
        &db::invites::NewInvite {
            email: domain::Email::parse("ann@acme.test").unwrap(),
            role: domain::Role::User,
            monthly_budget: domain::Money::parse_usd("7").unwrap(),
            token_hash: domain::token::hash_token(token),
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        },
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    // ann already has an account: the invite asks for her password, not a new one.
    let path = format!("/invite/{token}");
    ann.get(&path).await.expect(200, &["Your keycap password"]);
    ann.post_anonymous(&path, &[("password", "wrong-password")])
        .await
        .expect(400, &["not the password of this account"]);
    ann.post_anonymous(&path, &[("password", PASSWORD)])
        .await
        .expect_redirect("/dashboard");
    // Now in Beta as a user: owner pages are refused, and the switcher lists both orgs.
    ann.get("/dashboard")
        .await
        .expect(200, &["$7.00", "org-switch", "Acme", "Beta"]);
    ann.get("/vault").await.expect(403, &["only an owner"]);
    let acme_id = ann.get("/api/me").await.json()["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "Acme")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    ann.post("/orgs/switch", &[("org_id", &acme_id)])
        .await
        .expect_redirect("/dashboard");
    ann.get("/vault").await.expect(200, &["Vault"]);
    ann.post(
        "/orgs/switch",
        &[("org_id", &uuid::Uuid::new_v4().to_string())],
    )
    .await
    .expect(404, &["not a member of that org"]);
}

#[tokio::test]
async fn with_smtp_the_invite_link_is_emailed() {
    let sink = testkit::smtp::SmtpSink::start().await.unwrap();
    let mailer = admin::Mailer::new(&sink.url(), "keycap <keycap@acme.test>").unwrap();
    let app = App::start_with_mailer(mailer).await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let page = owner
        .post(
            "/members/invite",
            &[
                ("email", "bob@acme.test"),
                ("role", "user"),
                ("budget", "40"),
            ],
        )
        .await;
    page.expect(200, &["Invite created and emailed to bob@acme.test"]);
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0].to, vec!["bob@acme.test".to_string()]);
    assert_eq!(mails[0].from, "keycap@acme.test");
    assert!(
        mails[0]
            .data
            .contains("Subject: You are invited to Acme on keycap"),
        "{}",
        mails[0].data
    );
    // The emailed link is the one shown on the page, and it works.
    let shown = page.secret("invite-link");
    // The body is quoted-printable: long lines are folded with soft breaks ("=" at line end).
    let body = mails[0].data.replace("=\r\n", "");
    assert!(body.contains(&shown), "{}", mails[0].data);
    let path = shown.strip_prefix(&app.base).unwrap();
    app.person()
        .post_anonymous(path, &[("password", PASSWORD)])
        .await
        .expect_redirect("/dashboard");
}

#[tokio::test]
async fn an_unreachable_mail_server_still_makes_the_invite() {
    let mailer = admin::Mailer::new("smtp://127.0.0.1:9", "keycap@acme.test").unwrap();
    let app = App::start_with_mailer(mailer).await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let page = owner
        .post(
            "/members/invite",
            &[
                ("email", "bob@acme.test"),
                ("role", "user"),
                ("budget", "40"),
            ],
        )
        .await;
    page.expect(
        200,
        &[
            "Invite created.",
            "could not be sent",
            "Copy the link above",
        ],
    );
    let link = page.secret("invite-link");
    let path = link.strip_prefix(&app.base).unwrap();
    app.person()
        .post_anonymous(path, &[("password", PASSWORD)])
        .await
        .expect_redirect("/dashboard");
    assert!(admin::Mailer::new("http://nope", "a@b.test").is_err());
    assert!(admin::Mailer::new("smtp://127.0.0.1:25", "not an address").is_err());
}

#[tokio::test]
async fn people_made_on_the_command_line_get_in_through_setup_and_invites() {
    let app = App::start().await;
    // `keycap org create acme --owner ann@acme.test` and `keycap member add ... bob`: neither
    // has a password.
    let acme = db::orgs::create(
        &app.db.pool,
        "Acme",
        &domain::Email::parse("ann@acme.test").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap()
    .org;
    db::members::add(
        &app.db.pool,
        &acme,
        &domain::Email::parse("bob@acme.test").unwrap(),
        domain::Role::User,
        domain::Money::parse_usd("30").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let link = app
        .state
        .setup_link()
        .await
        .unwrap()
        .expect("nobody can sign in yet");
    let token = link.split("token=").nth(1).unwrap();
    let visitor = app.person();
    // Without an org name, the email must already own one.
    visitor
        .post_anonymous(
            "/setup",
            &[
                ("token", token),
                ("org_name", ""),
                ("email", "eve@evil.test"),
                ("password", PASSWORD),
            ],
        )
        .await
        .expect(400, &["owns no org yet", "value=\"eve@evil.test\""]);
    let ann = app.person();
    ann.post_anonymous(
        "/setup",
        &[
            ("token", token),
            ("org_name", ""),
            ("email", "ann@acme.test"),
            ("password", PASSWORD),
        ],
    )
    .await
    .expect_redirect("/dashboard");
    ann.get("/members")
        .await
        .expect(200, &["Acme", "bob@acme.test"]);
    let orgs: i64 = app
        .db
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM orgs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orgs, 1, "setup made a second org");

    // bob is a member without a password: an invite lets him choose one and keeps his role and
    // budget; no second membership and no second join in the ledger.
    let rows = app.ledger_rows().await;
    let link = ann.invite("bob@acme.test", "owner", "999").await;
    let bob = app.person();
    bob.post_anonymous(
        link.strip_prefix(&app.base).unwrap(),
        &[("password", PASSWORD)],
    )
    .await
    .expect_redirect("/dashboard");
    bob.get("/dashboard")
        .await
        .expect(200, &["$30.00", "bob@acme.test"]);
    bob.get("/vault").await.expect(403, &[]);
    assert_eq!(
        app.ledger_rows().await,
        rows + 1,
        "only the member_invited row"
    );
    // Once he can sign in, inviting him again is refused.
    ann.post(
        "/members/invite",
        &[
            ("email", "bob@acme.test"),
            ("role", "user"),
            ("budget", "1"),
        ],
    )
    .await
    .expect(400, &["already a member"]);
}

/// An owner cancels a pending invite on /members or through the API: its link stops working,
/// it leaves the list, and the ledger says so; only owners may, and only pending invites. An
/// owner's pending invites are cancelled when they are demoted.
#[tokio::test]
async fn owners_cancel_invites_and_a_demoted_owners_invites_end() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let link = ann.invite("bob@acme.test", "user", "10").await;
    let path = link.strip_prefix(&app.base).unwrap().to_string();
    let members = ann.get("/members").await;
    let id = members
        .body
        .split("/members/invites/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    ann.post_follow(&format!("/members/invites/{id}/cancel"), &[])
        .await
        .expect(200, &["Invite cancelled: its link no longer works."]);
    assert!(!ann.get("/members").await.body.contains("bob@acme.test"));
    app.person()
        .get(&path)
        .await
        .expect(409, &["was cancelled"]);
    app.person()
        .post_anonymous(&path, &[("password", PASSWORD)])
        .await
        .expect(409, &["was cancelled"]);
    // Cancelled once: again is "not found", through the API too.
    ann.post_json(&format!("/api/invites/{id}/cancel"), serde_json::json!({}))
        .await
        .expect(404, &["pending invite"]);

    // Dave, a second owner, invites erin and carol; a member cannot cancel one.
    let dave = app.member(&ann, "dave@acme.test", "owner", "0").await;
    let erin_link = dave.invite("erin@acme.test", "user", "5").await;
    dave.invite("carol@acme.test", "user", "5").await;
    let carol_id = dave
        .get("/members")
        .await
        .body
        .split("/members/invites/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_string();
    let frank = app.member(&ann, "frank@acme.test", "user", "0").await;
    frank
        .post_json(
            &format!("/api/invites/{carol_id}/cancel"),
            serde_json::json!({}),
        )
        .await
        .expect(403, &[]);
    ann.post_json(
        &format!("/api/invites/{carol_id}/cancel"),
        serde_json::json!({}),
    )
    .await
    .expect(200, &["carol@acme.test", "\"cancelled\":true"]);
    // Demoting dave ends erin's invite.
    ann.post(
        "/members/role",
        &[("email", "dave@acme.test"), ("role", "user")],
    )
    .await
    .expect_redirect("/members");
    let erin_path = erin_link.strip_prefix(&app.base).unwrap();
    app.person()
        .get(erin_path)
        .await
        .expect(409, &["was cancelled"]);

    let client = app.db.client().await.unwrap();
    let reasons: Vec<String> = client
        .query(
            "SELECT detail->>'email' || ': ' || (detail->>'reason') FROM transactions
             WHERE kind = 'invite_cancelled' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        reasons,
        [
            "bob@acme.test: cancelled",
            "carol@acme.test: cancelled",
            "erin@acme.test: the inviter is no longer an owner"
        ]
    );
}
