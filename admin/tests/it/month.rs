//! The month boundary, on the app's own clock: what is carved in a month's last second counts
//! in that month everywhere, and the next second starts a new one.

use time::macros::datetime;

use crate::support::App;

/// The key rows of the ledger: (kind, created_at as text, amount).
async fn key_rows(app: &App) -> Vec<(String, String, i64)> {
    let client = app.db.client().await.unwrap();
    client
        .query(
            "SELECT kind, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
                    amount_nanousd
             FROM transactions WHERE api_key_id IS NOT NULL ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// A carve made one second before a month ends counts in that month: in the ledger, on
/// `/dashboard` and in the budget check. One second later the new month starts whole.
#[tokio::test]
async fn a_carve_in_a_months_last_second_counts_in_that_month() {
    let app = App::start_at(datetime!(2026-11-30 23:59:59 UTC)).await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.add_master_key("main", &app.master_secret()).await;
    let bob = app.member(&ann, "bob@acme.test", "user", "100").await;
    bob.provision("app", "30").await;

    assert_eq!(
        key_rows(&app).await,
        vec![(
            "key_provisioned".to_string(),
            "2026-11-30 23:59:59".to_string(),
            30_000_000_000
        )]
    );
    bob.get("/dashboard").await.expect(
        200,
        &[
            "November 2026",
            r#"id="carved">$30.00<"#,
            r#"id="available">$70.00<"#,
        ],
    );
    // The budget check counts it too: $70 is left in November, not $70.01.
    let store = [
        ("service", "openrouter"),
        ("name", "big"),
        ("cap", "70.01"),
        ("expires", "30d"),
        ("models", ""),
    ];
    bob.post("/store", &store).await.expect(400, &["$70.00"]);

    // One second later it is December: the whole budget is there again.
    app.state.clock.set(datetime!(2026-12-01 0:00 UTC));
    bob.get("/dashboard").await.expect(
        200,
        &[
            "December 2026",
            r#"id="carved">$0.00<"#,
            r#"id="available">$100.00<"#,
        ],
    );
    let (_, token) = bob.provision("december", "100").await;
    assert!(token.starts_with("kc_"), "{token}");
    let rows = key_rows(&app).await;
    assert_eq!(
        rows.last().unwrap().1,
        "2026-12-01 00:00:00",
        "the December carve is dated by the app's clock: {rows:?}"
    );
}

/// A member's month is the same on every page that shows it: `/api/members`, `/api/me`,
/// `/members` and `/dashboard`'s org figures agree on budget, given to keys (carved less
/// refunded), left, and spent (the rollups of this month only).
#[tokio::test]
async fn every_page_shows_the_same_month() {
    const USD: i64 = 1_000_000_000;
    let app = App::start_at(datetime!(2026-11-15 12:00 UTC)).await;
    let ann = app.owner("Acme", "ann@acme.test").await;
    ann.add_master_key("main", &app.master_secret()).await;
    let bob = app.member(&ann, "bob@acme.test", "user", "100").await;
    app.member(&ann, "carol@acme.test", "user", "50").await;
    let (id, _) = bob.provision("app", "30").await;
    bob.post(&format!("/my-keys/{id}/cap"), &[("cap", "20")])
        .await
        .expect_redirect("/my-keys");
    // $4 spent this month, $2 on the last minute of October.
    app.sql(&format!(
        "INSERT INTO usage_rollups (api_key_id, minute, n_requests, cost_nanousd) VALUES
         ('{id}', '2026-11-15 11:00+00', 2, {}), ('{id}', '2026-10-31 23:59+00', 1, {})",
        4 * USD,
        2 * USD
    ))
    .await;

    let members = ann.get("/api/members").await.json();
    let row = |email: &str| {
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["email"] == email)
            .unwrap()
            .clone()
    };
    let bob_row = row("bob@acme.test");
    assert_eq!(
        [
            &bob_row["budget_nanousd"],
            &bob_row["carved_nanousd"],
            &bob_row["available_nanousd"],
            &bob_row["spent_nanousd"],
        ],
        [100 * USD, 20 * USD, 80 * USD, 4 * USD]
            .map(serde_json::Value::from)
            .each_ref()
    );
    let carol_row = row("carol@acme.test");
    assert_eq!(carol_row["available_nanousd"], 50 * USD);
    assert_eq!(carol_row["spent_nanousd"], 0);

    let me = bob.get("/api/me").await.json();
    let current = &me["current_org"];
    assert_eq!(current["carved_nanousd"], 20 * USD);
    assert_eq!(current["available_nanousd"], 80 * USD);
    assert_eq!(current["spent_nanousd"], 4 * USD);

    ann.get("/members")
        .await
        .expect(200, &["bob@acme.test", "$20.00", "$4.00"]);
    ann.get("/dashboard").await.expect(
        200,
        &[
            r#"<span class="label">Budgets</span><span class="value">$150.00<"#,
            r#"<span class="label">Given to keys</span><span class="value">$20.00<"#,
            r#"<span class="label">Spent this month</span><span class="value">$4.00<"#,
        ],
    );
}
