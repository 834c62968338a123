//! The vault against the OpenRouter mock: test, rotate and revoke, with the ledger rows and the
//! secret never shown again.

use crate::support::App;

#[tokio::test]
async fn master_keys_are_tested_rotated_and_revoked() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let secret = app.master_secret();
    let id = owner.add_master_key("main", &secret).await;
    let vault = owner.get("/vault").await;
    let last_four = &secret[secret.len() - 4..];
    vault.expect(200, &["main", &format!("…{last_four}"), "active"]);
    assert!(
        !vault.body.contains(&secret),
        "the vault page shows the secret"
    );

    owner
        .post_follow(&format!("/vault/{id}/test"), &[])
        .await
        .expect(200, &["the upstream accepted master key"]);
    // A bad new secret is refused and changes nothing.
    let rows = app.ledger_rows().await;
    for bad in ["", "has spaces in it"] {
        owner
            .post(&format!("/vault/{id}/rotate"), &[("secret", bad)])
            .await
            .expect(400, &["rotation refused"]);
    }
    assert_eq!(app.ledger_rows().await, rows);
    owner
        .get("/vault")
        .await
        .expect(200, &[&format!("…{last_four}")]);
    // Rotating to a secret the upstream refuses: the test now says so.
    owner
        .post(
            &format!("/vault/{id}/rotate"),
            &[("secret", "sk-or-v1-wrong-key-9999")],
        )
        .await
        .expect_redirect("/vault?notice=master_key_rotated");
    owner.get("/vault").await.expect(200, &["…9999"]);
    owner
        .post_follow(&format!("/vault/{id}/test"), &[])
        .await
        .expect(200, &["the upstream refused master key", "status 401"]);
    let api = owner
        .post_json(
            &format!("/api/master-keys/{id}/test"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(api.json()["ok"], false);
    owner
        .post(&format!("/vault/{id}/rotate"), &[("secret", &secret)])
        .await
        .expect_redirect("/vault");

    // A member's key depends on it: the revoke page lists it before anything happens.
    owner
        .post(
            "/members/budget",
            &[("email", "ann@acme.test"), ("budget", "20")],
        )
        .await
        .expect_redirect("/members");
    owner.provision("dependent", "2").await;
    owner
        .get(&format!("/vault/{id}/revoke"))
        .await
        .expect(200, &["Sub-keys that depend on it (1)", "dependent"]);
    owner
        .post(&format!("/vault/{id}/revoke"), &[])
        .await
        .expect_redirect("/vault?notice=master_key_revoked");
    owner.get("/vault").await.expect(200, &["revoked"]);
    owner
        .post(&format!("/vault/{id}/revoke"), &[])
        .await
        .expect(409, &["already revoked"]);
    owner
        .post(&format!("/vault/{id}/rotate"), &[("secret", &secret)])
        .await
        .expect(409, &["is revoked"]);

    let audit = owner.get("/audit").await;
    audit.expect(
        200,
        &[
            "master key added",
            "master key rotated",
            "master key revoked",
            "Hash chain verified",
        ],
    );
    assert!(!audit.body.contains(&secret));
    let csv = owner.get("/audit.csv").await;
    csv.expect(200, &["seq,created_at,kind", "master_key_rotated"]);
    assert!(!csv.body.contains(&secret));
    // Nothing stored holds the secret in plaintext.
    let client = app.db.client().await.unwrap();
    let dump: String = client
        .query_one(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM master_keys) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dump.contains(&secret[8..]));
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_not_a_crash() {
    let app =
        App::start_with(|config| config.upstream_base_url = "http://127.0.0.1:9".into()).await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let id = owner.add_master_key("main", &app.master_secret()).await;
    owner
        .post_follow(&format!("/vault/{id}/test"), &[])
        .await
        .expect(200, &["could not be reached"]);
}
