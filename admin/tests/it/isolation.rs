//! Two orgs on one keycap: nothing of one is visible or changeable from the other.

use crate::support::{App, PASSWORD, Person};

/// Sets up org Beta with owner bea (signed in) and member bert, each with a key.
async fn second_org(app: &App) -> (Person, String, String) {
    db::orgs::create(
        &app.db.pool,
        "Beta",
        &domain::Email::parse("bea@beta.test").unwrap(),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    // Beta's owner bea was made on the command line and has no password; bert joins Beta as
    // an owner through an invite made the same way, and signs in with it.
    let client = app.db.client().await.unwrap();
    let beta_id: uuid::Uuid = client
        .query_one("SELECT id FROM orgs WHERE name = 'Beta'", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);
    let beta = db::orgs::Org {
        id: beta_id,
        name: "Beta".into(),
    };
    let token = format!("beta-{}", uuid::Uuid::new_v4());
    db::invites::create(
        &app.db.pool,
        &beta,
        &db::invites::NewInvite {
            email: domain::Email::parse("bert@beta.test").unwrap(),
            role: domain::Role::Owner,
            monthly_budget: domain::Money::parse_usd("30").unwrap(),
            token_hash: domain::token::hash_token(&token),
            expires_at: time::OffsetDateTime::now_utc() + time::Duration::days(1),
        },
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let bert = app.person();
    bert.post_anonymous(&format!("/invite/{token}"), &[("password", PASSWORD)])
        .await
        .expect_redirect("/dashboard");
    let master = bert.add_master_key("beta-main", &app.master_secret()).await;
    let (key, _) = bert.provision("beta-key", "3").await;
    (bert, master, key)
}

#[tokio::test]
async fn an_owner_sees_and_changes_nothing_of_another_org() {
    let app = App::start().await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.add_master_key("acme-main", &app.master_secret()).await;
    let (ann_key, _) = ann.provision_after_budget(&app, "acme-key").await;
    let (bert, beta_master, beta_key) = second_org(&app).await;

    for path in [
        "/dashboard",
        "/my-keys",
        "/members",
        "/audit",
        "/vault",
        "/audit.csv",
    ] {
        let page = ann.get(path).await;
        page.expect(200, &[]);
        for secret in [
            "Beta",
            "bert@beta.test",
            "beta-key",
            "beta-main",
            "bea@beta.test",
        ] {
            assert!(
                !page.body.contains(secret),
                "{path} shows {secret:?}: {}",
                page.body
            );
        }
    }
    for path in [
        "/api/keys?all=true",
        "/api/members",
        "/api/master-keys",
        "/api/audit",
        "/api/me",
    ] {
        let page = ann.get(path).await;
        page.expect(200, &[]);
        assert!(!page.body.contains("beta"), "{path} leaks: {}", page.body);
    }
    let rows_before = app.ledger_rows().await;
    // Acting on the other org's things by id: not found, and nothing changes.
    ann.post(&format!("/my-keys/{beta_key}/revoke"), &[])
        .await
        .expect(404, &[]);
    ann.post(&format!("/vault/{beta_master}/revoke"), &[])
        .await
        .expect(404, &[]);
    ann.get(&format!("/vault/{beta_master}/revoke"))
        .await
        .expect(404, &[]);
    ann.post(&format!("/vault/{beta_master}/test"), &[])
        .await
        .expect(404, &[]);
    // A test result in the address names a key of the viewer's own org, or nothing at all.
    let forged = ann
        .get(&format!("/vault?tested={beta_master}&result=ok"))
        .await;
    forged.expect(200, &[]);
    assert!(!forged.body.contains("accepted"), "{}", forged.body);
    ann.post(
        &format!("/vault/{beta_master}/rotate"),
        &[("secret", "sk-or-v1-stolen")],
    )
    .await
    .expect(404, &[]);
    ann.post(
        "/members/budget",
        &[("email", "bert@beta.test"), ("budget", "999")],
    )
    .await
    .expect(404, &[]);
    ann.post("/members/remove", &[("email", "bert@beta.test")])
        .await
        .expect(404, &[]);
    ann.post_json(
        &format!("/api/keys/{beta_key}/revoke"),
        serde_json::json!({}),
    )
    .await
    .expect(404, &[]);
    assert_eq!(app.ledger_rows().await, rows_before);
    // And the other way round.
    bert.post(&format!("/my-keys/{ann_key}/revoke"), &[])
        .await
        .expect(404, &[]);
    let beta_audit = bert.get("/audit").await;
    assert!(!beta_audit.body.contains("acme"), "{}", beta_audit.body);
    assert_eq!(app.ledger_rows().await, rows_before);
}
