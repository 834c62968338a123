//! The audit page: pagination, filters, CSV, and the chain status when a row is tampered with.

use crate::support::App;

#[tokio::test]
async fn the_ledger_pages_filters_exports_and_shows_a_broken_chain() {
    let app = App::start().await;
    let owner = app.owner("Acme", "ann@acme.test").await;
    let org = db::orgs::find(&app.db.pool.get().await.unwrap(), "Acme")
        .await
        .unwrap();
    let ann = domain::Email::parse("ann@acme.test").unwrap();
    for cents in 1..=60 {
        let budget = domain::Money::from_nanos(cents * 10_000_000);
        db::members::set_budget(
            &app.db.pool,
            &org,
            &ann,
            budget,
            db::Actor::Cli,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    }
    // 61 rows: org_created and 60 budget changes. The first page holds the newest 50.
    let first = owner.get("/audit").await;
    first.expect(
        200,
        &[
            "Hash chain verified: all 61 entries are intact",
            "id=\"older\"",
        ],
    );
    assert_eq!(first.body.matches("<tr><td>").count(), 50, "{}", first.body);
    assert!(first.body.contains("<tr><td>61</td>"));
    assert!(!first.body.contains("<tr><td>11</td>"));
    let older = first
        .body
        .split("id=\"older\"")
        .next()
        .unwrap()
        .rsplit("href=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
        .replace("&#38;", "&");
    let second = owner.get(&older).await;
    second.expect(200, &["<tr><td>11</td>", "<tr><td>1</td>", "org created"]);
    assert!(!second.body.contains("id=\"older\""));
    assert_eq!(second.body.matches("<tr><td>").count(), 11);

    // Filters: by kind, and by a date range that holds nothing.
    let created = owner.get("/audit?kind=org_created").await;
    assert_eq!(
        created.body.matches("<tr><td>").count(),
        1,
        "{}",
        created.body
    );
    let empty = owner.get("/audit?from=2001-01-01&to=2001-01-31").await;
    empty.expect(200, &["Nothing yet."]);
    let csv = owner.get("/audit.csv?kind=budget_set").await;
    csv.expect(200, &["seq,created_at,kind"]);
    assert_eq!(csv.body.lines().count(), 61, "header and 60 rows");
    assert!(
        csv.body
            .lines()
            .skip(1)
            .all(|line| line.contains(",budget_set,"))
    );

    // Each view checks the rows after the last view's newest one; a row added since is
    // checked, and so is a row changed after it.
    let checkpoint = || async {
        let client = app.db.client().await.unwrap();
        client
            .query_one("SELECT seq FROM audit_checkpoints", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let seen = checkpoint().await;
    db::members::set_budget(
        &app.db.pool,
        &org,
        &ann,
        domain::Money::from_usd(12),
        db::Actor::Cli,
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    owner.get("/audit").await.expect(
        200,
        &[&format!("entries from {seen} on checked now"), "chain ok"],
    );
    // A row changed behind keycap's back (triggers off, as only a superuser could) after the
    // checkpoint shows as a broken chain on the next view.
    let tamper = |seq: i64| {
        format!(
            "ALTER TABLE transactions DISABLE TRIGGER transactions_no_update;
             UPDATE transactions SET amount_nanousd = amount_nanousd + 1 WHERE seq = {seq};
             ALTER TABLE transactions ENABLE TRIGGER transactions_no_update;"
        )
    };
    let newest = checkpoint().await;
    app.sql(&tamper(newest)).await;
    owner.get("/audit").await.expect(
        200,
        &[
            &format!("Hash chain broken at entry {newest}"),
            "chain broken",
        ],
    );
    // One changed before the checkpoint shows when the whole chain is next checked: within
    // a day of the last whole check (here, a day is made to have passed).
    app.sql(&tamper(30)).await;
    app.sql("UPDATE audit_checkpoints SET whole_checked_at = now() - interval '25 hours'")
        .await;
    owner
        .get("/audit")
        .await
        .expect(200, &["Hash chain broken at entry 30", "chain broken"]);
}
