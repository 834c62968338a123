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
