//! Password-reset links: an owner makes one for a member; it works once, until it expires or a
//! newer one replaces it, and using it ends the member's sessions. An owner cannot make one for
//! someone who also belongs to an org the owner does not own.

use crate::support::{App, PASSWORD};

const NEW_PASSWORD: &str = "a-brand-new-password";

/// The count of ledger rows of `kind`.
async fn ledger_count(app: &App, kind: &str) -> i64 {
    let client = app.db.client().await.unwrap();
    client
        .query_one(
            "SELECT count(*) FROM transactions WHERE kind = $1",
            &[&kind],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_owner_makes_a_single_use_reset_link_that_ends_the_members_sessions() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    let bob = app.member(&ann, "bob@acme.test", "user", "10").await;
    bob.get("/dashboard").await.expect(200, &[]);

    // A member cannot make one, not even for themselves through the owners' route.
    bob.post("/members/password-reset", &[("email", "ann@acme.test")])
        .await
        .expect(403, &[]);
    let page = ann
        .post("/members/password-reset", &[("email", "bob@acme.test")])
        .await;
    page.expect(200, &["Password reset link made for bob@acme.test"]);
    let link = page.secret("reset-link");
    let path = link.strip_prefix(&app.base).unwrap().to_string();
    assert_eq!(ledger_count(&app, "password_reset_issued").await, 1);

    let stranger = app.person();
    stranger
        .get(&path)
        .await
        .expect(200, &["Choose a new password", "bob@acme.test", "Acme"]);
    stranger
        .post_anonymous(&path, &[("password", "short")])
        .await
        .expect(400, &["at least 10 characters"]);
    stranger
        .post_anonymous(&path, &[("password", NEW_PASSWORD)])
        .await
        .expect_redirect("/dashboard?notice=password_reset");
    assert_eq!(ledger_count(&app, "password_reset_used").await, 1);

    // Used once: it works no more, Bob's old session ended, and only the new password signs in.
    // (From the browser now signed in, whose session does not get in the way.)
    stranger
        .post_anonymous(&path, &[("password", "yet-another-password")])
        .await
        .expect(409, &["already used"]);
    bob.get("/dashboard").await.expect_redirect("/login");
    let login = |password: &'static str| {
        let person = app.person();
        async move {
            person
                .post_anonymous(
                    "/login",
                    &[("email", "bob@acme.test"), ("password", password)],
                )
                .await
        }
    };
    login(PASSWORD).await.expect(401, &[]);
    login(NEW_PASSWORD).await.expect_redirect("/dashboard");
    app.person()
        .get("/reset/not-a-real-token")
        .await
        .expect(404, &["not valid"]);
}

/// A newer link, or the member changing their password, cancels a link; and links expire.
#[tokio::test]
async fn a_newer_link_replaces_the_older_one_and_links_expire() {
    let start = time::OffsetDateTime::now_utc();
    let app = App::start_at(start).await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    app.member(&ann, "bob@acme.test", "user", "10").await;
    let issue = || async {
        let page = ann
            .post("/members/password-reset", &[("email", "bob@acme.test")])
            .await;
        page.expect(200, &[]);
        let link = page.secret("reset-link");
        link.strip_prefix(&app.base).unwrap().to_string()
    };
    let first = issue().await;
    let second = issue().await;
    app.person()
        .get(&first)
        .await
        .expect(409, &["was cancelled"]);
    app.person().get(&second).await.expect(200, &[]);
    // Bob changing his own password cancels the link made for him.
    let bob = app.person();
    bob.post_anonymous(
        "/login",
        &[("email", "bob@acme.test"), ("password", PASSWORD)],
    )
    .await
    .expect_redirect("/dashboard");
    bob.post(
        "/account/password",
        &[
            ("current", PASSWORD),
            ("new_password", NEW_PASSWORD),
            ("confirm", NEW_PASSWORD),
        ],
    )
    .await
    .expect_redirect("/account");
    app.person()
        .get(&second)
        .await
        .expect(409, &["was cancelled"]);
    let third = issue().await;
    // A day later (admin.password_reset_hours = 24), it has expired, and sets nothing.
    app.state.clock.set(start + time::Duration::hours(25));
    app.person()
        .post_anonymous(&third, &[("password", NEW_PASSWORD)])
        .await
        .expect(409, &["expired"]);
    assert_eq!(ledger_count(&app, "password_reset_used").await, 0);
}

/// Bob is a member of Acme and owns Beta: Acme's owner, who could use any link she makes, must
/// not be able to take over Bob's account, and with it Beta. The command line can.
#[tokio::test]
async fn an_owner_cannot_reset_someone_who_belongs_to_an_org_they_do_not_own() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    app.member(&ann, "bob@acme.test", "user", "10").await;
    // A link Ann makes while she owns every org of Bob's...
    let page = ann
        .post("/members/password-reset", &[("email", "bob@acme.test")])
        .await;
    page.expect(200, &[]);
    let early = page.secret("reset-link");
    let early = early.strip_prefix(&app.base).unwrap().to_string();
    let bob_email = domain::Email::parse("bob@acme.test").unwrap();
    let now = time::OffsetDateTime::now_utc();
    db::orgs::create(&app.db.pool, "Beta", &bob_email, db::Actor::Cli, now)
        .await
        .unwrap();
    // ...stops working once he belongs to one she does not own.
    app.person()
        .post_anonymous(&early, &[("password", NEW_PASSWORD)])
        .await
        .expect(409, &["can no longer reset this account"]);
    let before = app.ledger_rows().await;
    ann.post("/members/password-reset", &[("email", "bob@acme.test")])
        .await
        .expect(409, &["also belongs to an org you do not own"]);
    ann.post_json(
        "/api/members/password-reset",
        serde_json::json!({"email": "bob@acme.test"}),
    )
    .await
    .expect(409, &["also belongs to an org you do not own"]);
    ann.post("/members/password-reset", &[("email", "nobody@acme.test")])
        .await
        .expect(404, &["not found"]);
    assert_eq!(app.ledger_rows().await, before, "refusals write nothing");

    // A member added on the command line (no password yet) gets a link from the command line's
    // side (db, as `keycap member reset-link` calls it), and sets a password with it.
    let carol = domain::Email::parse("carol@acme.test").unwrap();
    let acme = db::orgs::find(&app.db.pool.get().await.unwrap(), "Acme")
        .await
        .unwrap();
    db::members::add(
        &app.db.pool,
        &acme,
        &carol,
        domain::Role::User,
        domain::Money::ZERO,
        db::Actor::Cli,
        now,
    )
    .await
    .unwrap();
    let token = domain::token::random_secret();
    db::password_resets::issue(
        &app.db.pool,
        &acme,
        &carol,
        &domain::token::hash_token(&token),
        now + time::Duration::hours(1),
        db::Actor::Cli,
        now,
    )
    .await
    .unwrap();
    app.person()
        .post_anonymous(&format!("/reset/{token}"), &[("password", NEW_PASSWORD)])
        .await
        .expect_redirect("/dashboard?notice=password_reset");
    // The API gives an owner the link once, for a member they may reset.
    let answer = ann
        .post_json(
            "/api/members/password-reset",
            serde_json::json!({"email": "carol@acme.test"}),
        )
        .await;
    answer.expect(201, &[]);
    let link = answer.json()["link"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{}/reset/", app.base)), "{link}");
    // Removing the member ends their links.
    ann.post("/members/remove", &[("email", "carol@acme.test")])
        .await
        .expect_redirect("/members");
    let path = link.strip_prefix(&app.base).unwrap().to_string();
    app.person()
        .get(&path)
        .await
        .expect(409, &["was cancelled"]);
}
