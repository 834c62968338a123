//! The ledger's guarantees, the budget rules under concurrency, expiry and renewal.

use db::Actor;
use db::keys::NewKey;
use domain::services::Service;
use domain::{Email, Money};
use time::macros::datetime;

use crate::support::{Env, keys_json, seeded, snapshot};

#[tokio::test]
async fn the_ledger_refuses_update_delete_and_truncate() {
    let env = seeded().await;
    let client = env.db.client().await.unwrap();
    for sql in [
        "UPDATE transactions SET amount_nanousd = 1",
        "DELETE FROM transactions",
        "TRUNCATE transactions",
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let message = err
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(
            message.contains("transactions is append-only"),
            "{sql}: {err}"
        );
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn tampering_breaks_the_hash_chain() {
    let env = seeded().await;
    let ok = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        ok.success && ok.stderr.contains("hash chain intact (3 rows)"),
        "{}",
        ok.stderr
    );
    // Only a superuser who switches the trigger off can change a row; the chain shows it.
    let client = env.db.client().await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE transactions DISABLE TRIGGER transactions_no_update;
             UPDATE transactions SET amount_nanousd = amount_nanousd + 1 WHERE seq = 2;
             ALTER TABLE transactions ENABLE TRIGGER transactions_no_update;",
        )
        .await
        .unwrap();
    let broken = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(!broken.success);
    assert!(
        broken.stderr.contains("hash chain broken at row 2"),
        "{}",
        broken.stderr
    );
}

/// `keycap audit head` prints the newest hash; `keycap audit verify --from HASH` checks the
/// chain from it: intact with rows added since, broken by a row changed after it, and failing
/// when the kept row itself was rewritten.
#[tokio::test]
async fn a_kept_head_checks_the_chain_from_it() {
    let env = seeded().await;
    let head = env.keycap.ok(&["audit", "head", "--org", "acme"]).unwrap();
    let (hash, seq) = head.trim().split_once(' ').unwrap();
    assert_eq!((hash.len(), seq), (64, "3"), "{head}");
    env.keycap
        .ok(&["budget", "set", "--org", "acme", "bob@acme.test", "70"])
        .unwrap();
    let verify = |from: &str| {
        env.keycap
            .run(&["audit", "verify", "--org", "acme", "--from", from])
            .unwrap()
    };
    let ok = verify(hash);
    assert!(
        ok.success
            && ok
                .stderr
                .contains("hash chain intact from row 3 (of 4 rows)"),
        "{}",
        ok.stderr
    );
    let tamper = |seq: i64| {
        format!(
            "ALTER TABLE transactions DISABLE TRIGGER transactions_no_update;
             UPDATE transactions SET amount_nanousd = amount_nanousd + 1 WHERE seq = {seq};
             ALTER TABLE transactions ENABLE TRIGGER transactions_no_update;"
        )
    };
    let client = env.db.client().await.unwrap();
    client.batch_execute(&tamper(4)).await.unwrap();
    let broken = verify(hash);
    assert!(
        !broken.success
            && broken
                .stderr
                .contains("hash chain broken at row 4, after the kept hash"),
        "{}",
        broken.stderr
    );
    // The kept row rewritten with a hash to match: no row has the kept hash any more.
    client
        .batch_execute(
            "ALTER TABLE transactions DISABLE TRIGGER transactions_no_update;
             UPDATE transactions SET hash = sha256(hash) WHERE seq = 3;
             ALTER TABLE transactions ENABLE TRIGGER transactions_no_update;",
        )
        .await
        .unwrap();
    let gone = verify(hash);
    assert!(
        !gone.success && gone.stderr.contains("no row of org acme has the kept hash"),
        "{}",
        gone.stderr
    );
    // Bad input says what to give.
    let bad = verify("not-a-hash");
    assert!(
        !bad.success && bad.stderr.contains("give the 64 hex digits"),
        "{}",
        bad.stderr
    );
    let no_org = env.keycap.run(&["audit"]).unwrap();
    assert!(
        !no_org.success && no_org.stderr.contains("--org is required"),
        "{}",
        no_org.stderr
    );
}

/// The seeded org.
async fn acme(env: &Env) -> db::orgs::Org {
    let client = env.db.pool.get().await.unwrap();
    db::orgs::find(&client, "acme").await.unwrap()
}

fn new_key(name: &str, cap: &str) -> NewKey {
    NewKey {
        member: Email::parse("bob@acme.test").unwrap(),
        service: Service::OpenRouter,
        name: name.into(),
        cap: Money::parse_usd(cap).unwrap(),
        expires_at: None,
        model_scope: vec![],
        renew_monthly: false,
        rate_limit_rpm: None,
    }
}

/// Ten concurrent $20 keys against a $100 budget: exactly five fit.
#[tokio::test]
async fn concurrent_carving_never_overshoots_the_budget() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let attempts = (0..10).map(|i| {
        let (pool, org) = (env.db.pool.clone(), org.clone());
        tokio::spawn(async move {
            db::keys::create(
                &pool,
                &org,
                &new_key(&format!("k{i}"), "20"),
                Actor::Cli,
                now,
            )
            .await
        })
    });
    let mut n_ok = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => n_ok += 1,
            Err(db::Error::Budget(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(n_ok, 5);
    let total: i64 = keys_json(&env, &["--org", "acme"])
        .iter()
        .map(|k| k["cap_nanousd"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 100_000_000_000);
    let audit = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        audit.stderr.contains("hash chain intact (8 rows)"),
        "{}",
        audit.stderr
    );
}

/// Expiry refunds the unspent cap; a renewing key is carved again next month, or paused.
#[tokio::test]
async fn expiry_and_monthly_renewal() {
    let env = seeded().await;
    let org = acme(&env).await;
    let november = datetime!(2026-11-10 12:00 UTC);
    let mut expiring = new_key("expiring", "30");
    expiring.expires_at = Some(datetime!(2026-11-20 0:00 UTC));
    db::keys::create(&env.db.pool, &org, &expiring, Actor::Cli, november)
        .await
        .unwrap();
    let mut renewing = new_key("renewing", "60");
    renewing.renew_monthly = true;
    let (renewing_key, _) = db::keys::create(&env.db.pool, &org, &renewing, Actor::Cli, november)
        .await
        .unwrap();
    // Some spend on the renewing key.
    let client = env.db.client().await.unwrap();
    client
        .execute(
            "UPDATE key_spends SET spent_nanousd = 7000000000 WHERE api_key_id = $1",
            &[&renewing_key.id],
        )
        .await
        .unwrap();

    // Nothing is due yet.
    let report = db::maintenance::run_due(&env.db.pool, datetime!(2026-11-15 0:00 UTC))
        .await
        .unwrap();
    assert_eq!(report, Default::default());
    // The expiry passes: the key closes and its whole cap comes back to November.
    let report = db::maintenance::run_due(&env.db.pool, datetime!(2026-11-21 0:00 UTC))
        .await
        .unwrap();
    assert_eq!((report.expired, report.renewed), (1, 0));
    let refunds: i64 = client
        .query_one("SELECT coalesce(sum(amount_nanousd),0)::bigint FROM transactions WHERE kind = 'refund'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(refunds, 30_000_000_000);
    // December: the renewing key's spend resets and $60 is carved from December.
    let december = datetime!(2026-12-01 0:05 UTC);
    let report = db::maintenance::run_due(&env.db.pool, december)
        .await
        .unwrap();
    assert_eq!((report.expired, report.renewed, report.paused), (0, 1, 0));
    let row = client
        .query_one(
            "SELECT s.spent_nanousd, k.period_start::text
             FROM api_keys k JOIN key_spends s ON s.api_key_id = k.id WHERE k.id = $1",
            &[&renewing_key.id],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1)),
        (0, "2026-12-01".to_string())
    );
    // Running again changes nothing: renewal is idempotent.
    assert_eq!(
        db::maintenance::run_due(&env.db.pool, december)
            .await
            .unwrap(),
        Default::default()
    );
    // January with the budget lowered below the cap: the key is paused with a reason.
    let email = Email::parse("bob@acme.test").unwrap();
    db::members::set_budget(
        &env.db.pool,
        &org,
        &email,
        Money::from_usd(50),
        Actor::Cli,
        datetime!(2027-01-01 0:00 UTC),
    )
    .await
    .unwrap();
    let report = db::maintenance::run_due(&env.db.pool, datetime!(2027-01-01 0:05 UTC))
        .await
        .unwrap();
    assert_eq!(report.paused, 1);
    let reason: Option<String> = client
        .query_one(
            "SELECT paused_reason FROM api_keys WHERE id = $1",
            &[&renewing_key.id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason
            .unwrap()
            .contains("exceeds the budget left this month ($50.00)")
    );
    // Raising the budget un-pauses it on the next pass.
    db::members::set_budget(
        &env.db.pool,
        &org,
        &email,
        Money::from_usd(100),
        Actor::Cli,
        datetime!(2027-01-01 0:06 UTC),
    )
    .await
    .unwrap();
    let report = db::maintenance::run_due(&env.db.pool, datetime!(2027-01-01 0:10 UTC))
        .await
        .unwrap();
    assert_eq!((report.renewed, report.paused), (1, 0));
}

/// A carve one second before a month ends is dated then, and counts in that month, in its
/// budget check too; one second later the next month starts with the whole budget, and closing
/// the key gives nothing back to it.
#[tokio::test]
async fn a_carve_in_a_months_last_second_counts_in_that_month() {
    let env = seeded().await;
    let org = acme(&env).await;
    let last_second = datetime!(2026-11-30 23:59:59 UTC);
    let december = datetime!(2026-12-01 0:00 UTC);
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let create = async |name: &str, cap: &str, now| {
        db::keys::create(&env.db.pool, &org, &new_key(name, cap), Actor::Cli, now).await
    };
    let (key, _) = create("late", "30", last_second).await.unwrap();
    let client = env.db.client().await.unwrap();
    let dated: time::OffsetDateTime = client
        .query_one(
            "SELECT created_at FROM transactions WHERE api_key_id = $1",
            &[&key.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dated, last_second);
    assert_eq!(bobs_available(&env, &org, last_second).await, usd("70"));
    assert_eq!(bobs_available(&env, &org, december).await, usd("100"));
    // In the same second, the budget check counts it.
    let over = create("over", "70.01", last_second).await.unwrap_err();
    assert!(over.to_string().contains("($70.00)"), "{over}");
    // In December the whole budget fits, and closing November's key refunds nothing to it.
    create("december", "100", december).await.unwrap();
    let revoked = db::keys::revoke(&env.db.pool, &org, &key.prefix, Actor::Cli, december)
        .await
        .unwrap();
    assert_eq!(revoked.refund, Money::ZERO);
    assert_eq!(bobs_available(&env, &org, december).await, Money::ZERO);
    assert_chain_intact(&env);
}

/// A key's refund rows in ledger order: (amount, reason).
async fn refund_rows(env: &Env, key_id: uuid::Uuid) -> Vec<(i64, String)> {
    let client = env.db.client().await.unwrap();
    let rows = client
        .query(
            "SELECT amount_nanousd, detail->>'reason' FROM transactions
             WHERE api_key_id = $1 AND kind = 'refund' ORDER BY seq",
            &[&key_id],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// `keycap audit` finds acme's hash chain intact.
fn assert_chain_intact(env: &Env) {
    let audit = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        audit.stderr.contains("hash chain intact"),
        "{}",
        audit.stderr
    );
}

/// What bob may still carve this month.
async fn bobs_available(env: &Env, org: &db::orgs::Org, now: time::OffsetDateTime) -> Money {
    let client = env.db.pool.get().await.unwrap();
    let bob = db::members::find(&client, org, &Email::parse("bob@acme.test").unwrap())
        .await
        .unwrap();
    db::members::monthly_budget(&client, &bob, domain::MonthWindow::containing(now))
        .await
        .unwrap()
        .available()
}

/// A raise is carved from the member's month and a cut refunded to it; a raise that does not
/// fit, a cap below the spend, the same cap and a closed key are refused and change nothing.
#[tokio::test]
async fn a_cap_change_carves_a_raise_and_refunds_a_cut() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let (key, _) = db::keys::create(&env.db.pool, &org, &new_key("app", "20"), Actor::Cli, now)
        .await
        .unwrap();
    let client = env.db.client().await.unwrap();
    client
        .execute(
            "UPDATE key_spends SET spent_nanousd = 5000000000 WHERE api_key_id = $1",
            &[&key.id],
        )
        .await
        .unwrap();
    let set_cap = async |cap: &str| {
        db::keys::set_cap(&env.db.pool, &org, &key.prefix, usd(cap), Actor::Cli, now).await
    };

    let raised = set_cap("50").await.unwrap();
    assert_eq!(raised.change, domain::CapChange::Carve(usd("30")));
    assert_eq!((raised.old_cap, raised.key.cap), (usd("20"), usd("50")));
    assert_eq!(bobs_available(&env, &org, now).await, usd("50"));

    let before = snapshot(&env.db).await;
    for (cap, refused) in [
        (
            "100.01",
            "raising the cap takes $50.01 from the budget, more than is left this month ($50.00)",
        ),
        ("4.99", "the key has spent $5.00 already"),
        ("0", "a cap must be more than $0.00"),
        ("50", "cap is $50.00 already"),
    ] {
        let err = set_cap(cap).await.unwrap_err().to_string();
        assert!(err.contains(refused), "{cap}: {err}");
    }
    assert_eq!(snapshot(&env.db).await, before);

    let cut = set_cap("8").await.unwrap();
    assert_eq!(cut.change, domain::CapChange::Refund(usd("42")));
    assert_eq!(bobs_available(&env, &org, now).await, usd("92"));
    // Down to the spend exactly: the key can spend nothing more.
    let floor = set_cap("5").await.unwrap();
    assert_eq!(floor.change, domain::CapChange::Refund(usd("3")));
    assert_eq!(floor.key.remaining(), Money::ZERO);

    let revoked = db::keys::revoke(&env.db.pool, &org, &key.prefix, Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.refund, Money::ZERO);
    assert_eq!(bobs_available(&env, &org, now).await, usd("95"));
    let err = set_cap("6").await.unwrap_err().to_string();
    assert!(err.contains("is revoked: its cap cannot change"), "{err}");
    // Past its expiry, before maintenance closes it: refused too.
    let (expired, _) = db::keys::create(&env.db.pool, &org, &new_key("gone", "1"), Actor::Cli, now)
        .await
        .unwrap();
    client
        .execute(
            "UPDATE api_keys SET expires_at = $2 WHERE id = $1",
            &[&expired.id, &(now - time::Duration::seconds(1))],
        )
        .await
        .unwrap();
    let err = db::keys::set_cap(
        &env.db.pool,
        &org,
        &expired.prefix,
        usd("2"),
        Actor::Cli,
        now,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("has expired: its cap cannot change"), "{err}");

    assert_chain_intact(&env);
}

/// A key carved in an earlier month gives back no more than this month carved for it; a key
/// waiting for its monthly renewal takes a new cap without carving, and its renewal carves it.
#[tokio::test]
async fn an_earlier_months_key_gives_back_only_what_this_month_carved() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let last_month = domain::MonthWindow::containing(now).start - time::Duration::days(10);
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let old = new_key("old", "20");
    let (old, _) = db::keys::create(&env.db.pool, &org, &old, Actor::Cli, last_month)
        .await
        .unwrap();
    let mut renewing = new_key("renewing", "70");
    renewing.renew_monthly = true;
    let (renewing, _) = db::keys::create(&env.db.pool, &org, &renewing, Actor::Cli, last_month)
        .await
        .unwrap();
    // Both carves count in the earlier month, and none in this one.
    assert_eq!(bobs_available(&env, &org, last_month).await, usd("10"));
    let start = bobs_available(&env, &org, now).await;
    assert_eq!(start, usd("100"));
    let set_cap = async |key: &db::keys::ApiKey, cap: &str| {
        db::keys::set_cap(&env.db.pool, &org, &key.prefix, usd(cap), Actor::Cli, now).await
    };
    let change = async |key: &db::keys::ApiKey, cap: &str| set_cap(key, cap).await.unwrap().change;

    assert_eq!(
        change(&old, "30").await,
        domain::CapChange::Carve(usd("10"))
    );
    // A cut gives back what this month carved for the key, not its earlier month's cap.
    assert_eq!(
        change(&old, "15").await,
        domain::CapChange::Refund(usd("10"))
    );
    assert_eq!(change(&old, "12").await, domain::CapChange::Neither);
    let revoked = db::keys::revoke(&env.db.pool, &org, &old.prefix, Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.refund, Money::ZERO);
    assert_eq!(bobs_available(&env, &org, now).await, start);

    // A $90 key this month leaves $10, too little for the renewing key's $70.
    db::keys::create(
        &env.db.pool,
        &org,
        &new_key("filler", "90"),
        Actor::Cli,
        now,
    )
    .await
    .unwrap();
    let start = bobs_available(&env, &org, now).await;
    assert_eq!(start, usd("10"));
    // Due for renewal and not renewed yet: gateways still serve it, so its cap waits.
    let due = set_cap(&renewing, "5").await.unwrap_err().to_string();
    assert!(due.contains("is due for its monthly renewal"), "{due}");
    // Paused, as $70 does not fit in $10: any cap, carved only when the key renews.
    let report = db::maintenance::run_due(&env.db.pool, now).await.unwrap();
    assert_eq!((report.renewed, report.paused), (0, 1));
    assert_eq!(change(&renewing, "500").await, domain::CapChange::Neither);
    assert_eq!(change(&renewing, "6").await, domain::CapChange::Neither);
    assert_eq!(bobs_available(&env, &org, now).await, start);
    let report = db::maintenance::run_due(&env.db.pool, now).await.unwrap();
    assert_eq!((report.renewed, report.paused), (1, 0));
    assert_eq!(bobs_available(&env, &org, now).await, usd("4"));
}

/// A cut refunds what was paid above the new cap, except what a gateway's lease still holds
/// (it may spend it): the lease pays for the spend that lands past the new cap, and what comes
/// back unspent is refunded then. Nothing is ever taken back.
#[tokio::test]
async fn a_cut_keeps_back_what_leases_hold_and_refunds_it_when_it_comes_back() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let (org, key, _, _) = key_and_usage(&env, now, 0, 0).await;
    let gateway = leased(&env, key.id, usd("7")).await;
    // $4 spent from the lease: $3 of it still held.
    assert_eq!(spend_from(&env, gateway, &key, usd("4")).await, usd("4"));
    let cut = db::keys::set_cap(&env.db.pool, &org, &key.prefix, usd("5"), Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(cut.change, domain::CapChange::Refund(usd("3")));
    assert_eq!(bobs_available(&env, &org, now).await, usd("93"));
    // $2 lands past the new cap (a request admitted under the old one): the lease paid for it.
    assert_eq!(spend_from(&env, gateway, &key, usd("2")).await, usd("6"));
    assert_eq!(bobs_available(&env, &org, now).await, usd("93"));
    // The lease's last $1 comes back unspent: refunded now.
    give_back(&env, gateway, &key, usd("1"), now).await;
    assert_eq!(bobs_available(&env, &org, now).await, usd("94"));
    // Closed, the key has nothing more to refund: the member paid its spend, once.
    let revoked = db::keys::revoke(&env.db.pool, &org, &key.prefix, Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.refund, Money::ZERO);
    assert_eq!(bobs_available(&env, &org, now).await, usd("94"));
    assert_eq!(
        refund_rows(&env, key.id).await,
        vec![
            (3_000_000_000, "cap lowered".to_string()),
            (
                1_000_000_000,
                "unspent when its lease came back".to_string()
            ),
        ]
    );
    // Every row is dated by the `now` of the change that wrote it.
    let client = env.db.client().await.unwrap();
    let dates: Vec<time::OffsetDateTime> = client
        .query(
            "SELECT DISTINCT created_at FROM transactions WHERE api_key_id = $1",
            &[&key.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(dates, vec![truncate_to_micros(now)]);
    assert_chain_intact(&env);
}

/// A refund when a lease comes back follows the month rule: a key carved in an earlier month
/// gets back only what this month carved for it, net of its refunds this month; and a late
/// refund is judged by the month it is dated in (never before the key's last row), even when
/// the gateway's clock is behind.
#[tokio::test]
async fn a_late_refund_gives_back_only_what_its_month_carved() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let last_month = domain::MonthWindow::containing(now).start - time::Duration::days(10);
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let create = async |name: &str, cap: &str, at| {
        db::keys::create(&env.db.pool, &org, &new_key(name, cap), Actor::Cli, at)
            .await
            .unwrap()
            .0
    };
    let revoke = async |key: &db::keys::ApiKey| {
        db::keys::revoke(&env.db.pool, &org, &key.prefix, Actor::Cli, now)
            .await
            .unwrap()
            .refund
    };
    // Carved last month: nothing comes back to this one, at the close or later.
    let old = create("old", "20", last_month).await;
    let gateway = leased(&env, old.id, usd("5")).await;
    assert_eq!(revoke(&old).await, Money::ZERO);
    give_back(&env, gateway, &old, usd("5"), now).await;
    assert_eq!(bobs_available(&env, &org, now).await, usd("100"));
    // Raised by $10 this month: the close gives back those $10, and the lease then nothing.
    let raised = create("raised", "20", last_month).await;
    let change = db::keys::set_cap(
        &env.db.pool,
        &org,
        &raised.prefix,
        usd("30"),
        Actor::Cli,
        now,
    )
    .await
    .unwrap()
    .change;
    assert_eq!(change, domain::CapChange::Carve(usd("10")));
    let gateway = leased(&env, raised.id, usd("5")).await;
    assert_eq!(revoke(&raised).await, usd("10"));
    give_back(&env, gateway, &raised, usd("5"), now).await;
    assert_eq!(bobs_available(&env, &org, now).await, usd("100"));
    // Carved this month; its gateway's clock says last month: the refund is this month's.
    let fresh = create("fresh", "10", now).await;
    let gateway = leased(&env, fresh.id, usd("4")).await;
    assert_eq!(revoke(&fresh).await, usd("6"));
    give_back(&env, gateway, &fresh, usd("4"), last_month).await;
    assert_eq!(bobs_available(&env, &org, now).await, usd("100"));
    assert_eq!(
        refund_rows(&env, fresh.id).await,
        vec![
            (6_000_000_000, "revoked".to_string()),
            (
                4_000_000_000,
                "unspent when its lease came back".to_string()
            ),
        ]
    );
    assert_chain_intact(&env);
}

/// A live gateway of its own (registered now) holding a lease of `amount` of `key`'s cap.
async fn leased(env: &Env, key: uuid::Uuid, amount: Money) -> uuid::Uuid {
    let client = env.db.pool.get().await.unwrap();
    let gateway = uuid::Uuid::new_v4();
    db::leases::register(&client, gateway, "test")
        .await
        .unwrap();
    let live = std::time::Duration::from_secs(3600);
    let grant = db::leases::grant(&client, key, gateway, amount, amount, live)
        .await
        .unwrap();
    assert_eq!(grant.granted, amount);
    gateway
}

/// Flushes `cost` of `key`'s spend from `gateway`'s lease; the key's spend after a fold.
async fn spend_from(env: &Env, gateway: uuid::Uuid, key: &db::keys::ApiKey, cost: Money) -> Money {
    let mut spend = db::usage::SpendDeltas::of_gateway(gateway);
    spend.push(key.id, cost.nanos());
    db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &spend, &[])
        .await
        .unwrap();
    Money::from_nanos(spent_and_requests(env, key).await.0)
}

/// `gateway` gives `amount` of its lease of `key` back, unspent.
async fn give_back(
    env: &Env,
    gateway: uuid::Uuid,
    key: &db::keys::ApiKey,
    amount: Money,
    now: time::OffsetDateTime,
) {
    let client = env.db.pool.get().await.unwrap();
    let claim = uuid::Uuid::new_v4();
    assert!(
        db::leases::give_back(&client, key.id, gateway, amount, now, claim)
            .await
            .unwrap()
    );
}

/// A raise after a cut carves the cut's band again; spend past the cap then, from no lease, is
/// charged to no one (refunded nor taken back), as on a key that was never cut.
#[tokio::test]
async fn a_raise_after_a_cut_leaves_nothing_to_take_back() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let (org, key, spend, rollups) = key_and_usage(&env, now, 4_000_000_000, 1).await;
    db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &spend, &rollups)
        .await
        .unwrap();
    for (cap, change) in [
        ("5", domain::CapChange::Refund(usd("5"))),
        ("10", domain::CapChange::Carve(usd("5"))),
    ] {
        let changed = db::keys::set_cap(&env.db.pool, &org, &key.prefix, usd(cap), Actor::Cli, now)
            .await
            .unwrap();
        assert_eq!(changed.change, change);
    }
    let mut late = db::usage::SpendDeltas::default();
    late.push(key.id, 7_000_000_000);
    db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &late, &[])
        .await
        .unwrap();
    assert_eq!(spent_and_requests(&env, &key).await.0, 11_000_000_000);
    assert_eq!(bobs_available(&env, &org, now).await, usd("90"));
    let client = env.db.client().await.unwrap();
    let refunds: i64 = client
        .query_one(
            "SELECT count(*) FROM transactions WHERE api_key_id = $1 AND kind = 'refund'",
            &[&key.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refunds, 1, "only the cut's refund");
}

/// A raise after a cut whose refund a lease held back carves only what is not paid for: the
/// member pays the key's spend, once.
#[tokio::test]
async fn a_raise_after_a_cut_held_back_carves_only_what_is_not_paid() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let usd = |text: &str| Money::parse_usd(text).unwrap();
    let (org, key, _, _) = key_and_usage(&env, now, 0, 0).await;
    let gateway = leased(&env, key.id, usd("7")).await;
    assert_eq!(spend_from(&env, gateway, &key, usd("4")).await, usd("4"));
    let set_cap = async |cap: &str| {
        db::keys::set_cap(&env.db.pool, &org, &key.prefix, usd(cap), Actor::Cli, now)
            .await
            .unwrap()
            .change
    };
    // Paid $10, spent $4, $3 held: the cut to $5 refunds $3, and $7 stays paid.
    assert_eq!(set_cap("5").await, domain::CapChange::Refund(usd("3")));
    assert_eq!(spend_from(&env, gateway, &key, usd("3")).await, usd("7"));
    assert_eq!(bobs_available(&env, &org, now).await, usd("93"));
    // $7 paid already: raising the cap to $9 carves $2.
    assert_eq!(set_cap("9").await, domain::CapChange::Carve(usd("2")));
    let revoked = db::keys::revoke(&env.db.pool, &org, &key.prefix, Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.refund, usd("2"));
    assert_eq!(bobs_available(&env, &org, now).await, usd("93"));
}

/// A renewal pass skips a member whose membership is locked elsewhere (a cap change or a
/// removal, which lock the membership before its keys), instead of waiting with the keys
/// locked, and renews the key on a later pass.
#[tokio::test]
async fn renewal_skips_a_locked_membership_until_the_next_pass() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let last_month = domain::MonthWindow::containing(now).start - time::Duration::days(10);
    let mut renewing = new_key("renewing", "20");
    renewing.renew_monthly = true;
    db::keys::create(&env.db.pool, &org, &renewing, Actor::Cli, last_month)
        .await
        .unwrap();
    let mut holder = env.db.client().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
         WHERE u.email = 'bob@acme.test' FOR NO KEY UPDATE OF m",
        &[],
    )
    .await
    .unwrap();
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        db::maintenance::run_due(&env.db.pool, now),
    )
    .await
    .expect("the renewal pass waited for the locked membership")
    .unwrap();
    assert_eq!(
        (report.renewed, report.paused, report.renewals_deferred),
        (0, 0, 1)
    );
    tx.rollback().await.unwrap();
    let report = db::maintenance::run_due(&env.db.pool, now).await.unwrap();
    assert_eq!(
        (report.renewed, report.paused, report.renewals_deferred),
        (1, 0, 0)
    );
}

/// Raises racing new keys for one member's budget never carve more than it holds.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_raises_and_new_keys_never_overshoot_the_budget() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let (key, _) = db::keys::create(&env.db.pool, &org, &new_key("app", "10"), Actor::Cli, now)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (pool, org, prefix) = (env.db.pool.clone(), org.clone(), key.prefix.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Each raise asks for $25 more than the cap it finds.
                let client = pool.get().await.unwrap();
                let cap = db::keys::find_by_id(&client, key.id)
                    .await
                    .unwrap()
                    .unwrap()
                    .cap;
                drop(client);
                let cap = cap.saturating_add(Money::from_usd(25));
                db::keys::set_cap(&pool, &org, &prefix, cap, Actor::Cli, now)
                    .await
                    .map(|_| ())
            } else {
                db::keys::create(
                    &pool,
                    &org,
                    &new_key(&format!("k{i}"), "25"),
                    Actor::Cli,
                    now,
                )
                .await
                .map(|_| ())
            }
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) | Err(db::Error::Budget(_)) | Err(db::Error::Conflict(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    let total: i64 = keys_json(&env, &["--org", "acme"])
        .iter()
        .map(|k| k["cap_nanousd"].as_i64().unwrap())
        .sum();
    assert!(total <= 100_000_000_000, "carved {total}");
    assert_eq!(
        Money::from_usd(100).saturating_sub(Money::from_nanos(total)),
        bobs_available(&env, &org, now).await
    );
    assert_chain_intact(&env);
}

/// A $10 key of bob's in acme, and one flush's worth of its usage at `now`: `cost` of spend
/// and one rollup row of `n_requests` requests.
async fn key_and_usage(
    env: &Env,
    now: time::OffsetDateTime,
    cost: i64,
    n_requests: i64,
) -> (
    db::orgs::Org,
    db::keys::ApiKey,
    db::usage::SpendDeltas,
    Vec<db::usage::UsageDelta>,
) {
    let org = acme(env).await;
    let (key, _token) =
        db::keys::create(&env.db.pool, &org, &new_key("app", "10"), Actor::Cli, now)
            .await
            .unwrap();
    let mut spend = db::usage::SpendDeltas::default();
    spend.push(key.id, cost);
    let rollups = vec![db::usage::UsageDelta {
        api_key_id: key.id,
        minute: now,
        model: "openai/gpt-4o-mini".into(),
        n_requests,
        prompt_tokens: 10 * n_requests,
        completion_tokens: 20 * n_requests,
        cost_nanousd: cost,
    }];
    (org, key, spend, rollups)
}

/// `at` as Postgres stores it.
fn truncate_to_micros(at: time::OffsetDateTime) -> time::OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap()
}

/// The key's spend row and its rollups' request count, after a fold; the usage by model,
/// written by the same flushes, has the rollups' requests and cost.
async fn spent_and_requests(env: &Env, key: &db::keys::ApiKey) -> (i64, i64) {
    let client = env.db.pool.get().await.unwrap();
    db::usage::fold(&client).await.unwrap();
    let row = client
        .query_one(
            "SELECT k.spent_nanousd,
                    (SELECT coalesce(sum(n_requests), 0)::bigint FROM usage_rollups WHERE api_key_id = k.api_key_id),
                    (SELECT coalesce(sum(cost_nanousd), 0)::bigint FROM usage_rollups WHERE api_key_id = k.api_key_id),
                    (SELECT coalesce(sum(n_requests), 0)::bigint FROM usage_by_model WHERE api_key_id = k.api_key_id),
                    (SELECT coalesce(sum(cost_nanousd), 0)::bigint FROM usage_by_model WHERE api_key_id = k.api_key_id)
             FROM key_spends k WHERE k.api_key_id = $1",
            &[&key.id],
        )
        .await
        .unwrap();
    let (rollups, by_model): ((i64, i64), (i64, i64)) =
        ((row.get(1), row.get(2)), (row.get(3), row.get(4)));
    assert_eq!(
        by_model, rollups,
        "usage by model (requests, cost) differs from the rollups"
    );
    (row.get(0), row.get(1))
}

/// A flush retried under its id after a lost reply (it had committed) adds nothing again; a new
/// flush adds its own deltas; maintenance forgets claims after a week; spend for a key the
/// database does not have is reported by the fold, not dropped silently.
#[tokio::test]
async fn a_flush_retried_under_its_id_is_applied_once() {
    use db::usage::{Flushed, Folded, SpendDeltas};

    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let (_org, key, spend, rollups) = key_and_usage(&env, now, 1_500, 3).await;
    let id = uuid::Uuid::new_v4();
    let first = db::usage::flush(&env.db.pool, id, &spend, &rollups).await;
    assert_eq!(first.unwrap(), Flushed::Applied);
    assert_eq!(spent_and_requests(&env, &key).await, (1_500, 3));
    // The same flush again, as after a reply lost on a dropped connection.
    let retry = db::usage::flush(&env.db.pool, id, &spend, &rollups).await;
    assert_eq!(retry.unwrap(), Flushed::AlreadyApplied);
    assert_eq!(spent_and_requests(&env, &key).await, (1_500, 3));
    // The next flush has its own id.
    let next = db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &spend, &rollups).await;
    assert_eq!(next.unwrap(), Flushed::Applied);
    assert_eq!(spent_and_requests(&env, &key).await, (3_000, 6));

    // A lease give-back's claim (migration 0023) is forgotten after a week too.
    let give_back = uuid::Uuid::new_v4();
    env.db
        .pool
        .get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO lease_give_backs (id) VALUES ($1)",
            &[&give_back],
        )
        .await
        .unwrap();

    let report = db::maintenance::run_due(&env.db.pool, now + time::Duration::days(8))
        .await
        .unwrap();
    assert_eq!(report.flush_claims_deleted, 2);
    assert_eq!(report.give_back_claims_deleted, 1);

    // Spend for a key the database does not have is applied for the others and reported.
    let mut spend = SpendDeltas::default();
    spend.push(key.id, 10);
    spend.push(uuid::Uuid::new_v4(), 700);
    let flushed = db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &spend, &[]).await;
    assert_eq!(flushed.unwrap(), Flushed::Applied);
    let client = env.db.pool.get().await.unwrap();
    assert_eq!(
        db::usage::fold(&client).await.unwrap(),
        Folded {
            n_keys: 1,
            unmatched_keys: 1,
            unmatched_nanousd: 700
        }
    );
    assert_eq!(spent_and_requests(&env, &key).await, (3_010, 6));
}

/// Spend flushed to the journal and not folded yet is the key's spend all the same: revoking
/// folds first and refunds only the cap left.
#[tokio::test]
async fn revoking_counts_spend_still_in_the_journal() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let (org, key, spend, rollups) = key_and_usage(&env, now, 1_500, 1).await;
    db::usage::flush(&env.db.pool, uuid::Uuid::new_v4(), &spend, &rollups)
        .await
        .unwrap();
    let client = env.db.client().await.unwrap();
    let in_row = |client: tokio_postgres::Client| async move {
        let row = client
            .query_one(
                "SELECT (SELECT spent_nanousd FROM key_spends WHERE api_key_id = $1),
                        (SELECT count(*) FROM spend_journal)",
                &[&key.id],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1), client)
    };
    let (spent, journal_rows, client) = in_row(client).await;
    assert_eq!(
        (spent, journal_rows),
        (0, 1),
        "the flush went to the journal"
    );
    let revoked = db::keys::revoke(&env.db.pool, &org, &key.id.to_string(), Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.key.spent, Money::from_nanos(1_500));
    assert_eq!(revoked.refund, Money::from_nanos(10_000_000_000 - 1_500));
    let (spent, journal_rows, client) = in_row(client).await;
    assert_eq!((spent, journal_rows), (1_500, 0));
    let refunds: i64 = client
        .query_one(
            "SELECT sum(amount_nanousd)::bigint FROM transactions
             WHERE api_key_id = $1 AND kind = 'refund'",
            &[&key.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refunds, 10_000_000_000 - 1_500);
}

/// Flushes (from a gateway's leases), folds and revokes running at once: every delta reaches
/// its key's spend row exactly once, nothing deadlocks, and each revoked key's refunds (the
/// revoke's, which keeps back what the lease holds, and the lease's when it comes back) come
/// to its cap less all it spent.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_flushes_folds_and_revokes_keep_every_nanodollar() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let org = acme(&env).await;
    let mut keys = Vec::new();
    for i in 0..4 {
        let (key, _token) = db::keys::create(
            &env.db.pool,
            &org,
            &new_key(&format!("k{i}"), "1"),
            Actor::Cli,
            now,
        )
        .await
        .unwrap();
        keys.push(key);
    }
    let gateway = leased(&env, keys[0].id, Money::from_usd(1)).await;
    for key in &keys[1..] {
        let client = env.db.pool.get().await.unwrap();
        let live = std::time::Duration::from_secs(3600);
        let whole = Money::from_usd(1);
        let grant = db::leases::grant(&client, key.id, gateway, whole, whole, live)
            .await
            .unwrap();
        assert_eq!(grant.granted, whole);
    }
    let keys: Vec<uuid::Uuid> = keys.iter().map(|key| key.id).collect();
    let is_flush = |i: i64| !matches!(i % 12, 0 | 5 | 6);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48_i64 {
        let (pool, org, keys) = (env.db.pool.clone(), org.clone(), keys.clone());
        tasks.spawn(async move {
            match i % 12 {
                0 | 6 => {
                    let client = pool.get().await.unwrap();
                    db::usage::fold(&client).await.unwrap();
                }
                5 => {
                    let key = keys[usize::try_from(i / 12).unwrap()].to_string();
                    db::keys::revoke(&pool, &org, &key, Actor::Cli, now)
                        .await
                        .unwrap();
                }
                _ => {
                    let mut spend = db::usage::SpendDeltas::of_gateway(gateway);
                    let mut rollups = Vec::new();
                    for &key in &keys {
                        spend.push(key, 1_000 + i);
                        rollups.push(db::usage::UsageDelta {
                            api_key_id: key,
                            minute: now,
                            model: "openai/gpt-4o-mini".into(),
                            n_requests: 1,
                            prompt_tokens: 1,
                            completion_tokens: 1,
                            cost_nanousd: 1_000 + i,
                        });
                    }
                    db::usage::flush(&pool, uuid::Uuid::new_v4(), &spend, &rollups)
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let spent: i64 = (0..48).filter(|&i| is_flush(i)).map(|i| 1_000 + i).sum();
    let n_flushes = (0..48).filter(|&i| is_flush(i)).count() as i64;
    let client = env.db.pool.get().await.unwrap();
    db::usage::fold(&client).await.unwrap();
    // The gateway gives back what it did not spend.
    for &key in &keys {
        let claim = uuid::Uuid::new_v4();
        let unspent = Money::from_nanos(1_000_000_000 - spent);
        db::leases::give_back(&client, key, gateway, unspent, now, claim)
            .await
            .unwrap();
    }
    for key in keys {
        let row = client
            .query_one(
                "SELECT s.spent_nanousd,
                        (SELECT sum(n_requests)::bigint FROM usage_rollups WHERE api_key_id = $1),
                        (SELECT sum(amount_nanousd)::bigint FROM transactions
                         WHERE api_key_id = $1 AND kind = 'refund')
                 FROM key_spends s WHERE s.api_key_id = $1",
                &[&key],
            )
            .await
            .unwrap();
        let found: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            found,
            (spent, n_flushes, 1_000_000_000 - spent),
            "key {key}"
        );
    }
}

/// A revoke while a flush is still open does not wait for it: the refund is the cap less the
/// spend committed so far and what the gateway's lease holds, the flush's spend comes out of
/// the lease after the key closed, and what the lease did not spend is refunded when it comes
/// back. Neither deadlocks. The flush is held open by a test trigger on its rollup rows, after
/// its journal row is written.
#[tokio::test(flavor = "multi_thread")]
async fn spend_flushed_during_a_revoke_comes_out_of_what_its_lease_held() {
    let env = seeded().await;
    let now = time::OffsetDateTime::now_utc();
    let (org, key, lease_less, rollups) = key_and_usage(&env, now, 1_500, 1).await;
    let gateway = leased(&env, key.id, Money::from_usd(4)).await;
    let mut spend = db::usage::SpendDeltas::of_gateway(gateway);
    spend.push(key.id, 1_500);
    drop(lease_less);
    env.db
        .client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE FUNCTION test_slow_flush() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
             CREATE TRIGGER \"AAA_test_slow_flush\" AFTER INSERT ON usage_rollups
                 FOR EACH ROW EXECUTE FUNCTION test_slow_flush();",
        )
        .await
        .unwrap();
    let pool = env.db.pool.clone();
    let flush = tokio::spawn(async move {
        db::usage::flush(&pool, uuid::Uuid::new_v4(), &spend, &rollups).await
    });
    // Revoke once the flush is asleep in the test trigger.
    let watcher = env.db.client().await.unwrap();
    for _ in 0..500 {
        let asleep = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event = 'PgSleep' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        if asleep.get::<_, i64>(0) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let revoked = db::keys::revoke(&env.db.pool, &org, &key.id.to_string(), Actor::Cli, now)
        .await
        .unwrap();
    assert_eq!(revoked.key.spent, Money::ZERO);
    assert_eq!(revoked.refund, Money::from_usd(6));
    assert_eq!(flush.await.unwrap().unwrap(), db::usage::Flushed::Applied);
    assert_eq!(spent_and_requests(&env, &key).await, (1_500, 1));
    give_back(
        &env,
        gateway,
        &key,
        Money::from_nanos(4_000_000_000 - 1_500),
        now,
    )
    .await;
    assert_eq!(
        refund_rows(&env, key.id).await,
        vec![
            (6_000_000_000, "revoked".to_string()),
            (
                4_000_000_000 - 1_500,
                "unspent when its lease came back".to_string()
            )
        ]
    );
    assert_eq!(
        bobs_available(&env, &org, now).await,
        Money::from_nanos(100_000_000_000 - 1_500)
    );
}

/// An org, a member and a master key, for migration tests that insert rows in SQL.
const ORG_MEMBER_AND_MASTER_KEY: &str = "INSERT INTO orgs (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'acme');
     INSERT INTO users (id, email) VALUES ('00000000-0000-0000-0000-000000000002', 'u@acme.example');
     INSERT INTO memberships (id, org_id, user_id, role, monthly_budget_nanousd)
     VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000001',
             '00000000-0000-0000-0000-000000000002', 'user', 1000000);
     INSERT INTO master_keys (id, org_id, service, name, ciphertext, nonce, sealing_key_id, last_four)
     VALUES ('00000000-0000-0000-0000-000000000004', '00000000-0000-0000-0000-000000000001',
             'openrouter', 'or', '\\x00', '\\x000000000000000000000000', 'k1', 'abcd');";

/// Makes a schema `before_<number>` the session's own and applies every migration before
/// `migration` in it; returns `migration`'s index in `db::MIGRATIONS`.
async fn schema_before(client: &tokio_postgres::Client, migration: &str) -> usize {
    let at = db::MIGRATIONS
        .iter()
        .position(|(name, _)| *name == migration)
        .unwrap_or_else(|| panic!("migration {migration} is listed"));
    let schema = format!("before_{}", &migration[..4]);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; SET search_path TO {schema}"
        ))
        .await
        .unwrap();
    for (_, sql) in &db::MIGRATIONS[..at] {
        client.batch_execute(sql).await.unwrap();
    }
    at
}

/// Migration 0008 moves each key's spend from `api_keys` to `key_spends`: every amount arrives,
/// `closed` follows `closed_at`, and keys made afterwards get their row (and `closed` keeps up).
/// The migrations up to 0007 run in a schema of their own, with rows the old shape allowed.
#[tokio::test]
async fn moving_spend_to_key_spends_keeps_every_keys_spend() {
    let db = testkit::TestDb::new().await.unwrap();
    let client = db.client().await.unwrap();
    let last = &db::MIGRATIONS[schema_before(&client, "0008_key_spends").await];
    client
        .batch_execute(&format!(
            "{ORG_MEMBER_AND_MASTER_KEY}
             INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash,
                                   prefix, cap_nanousd, spent_nanousd, period_start, closed_at, close_reason)
             SELECT ('00000000-0000-0000-0000-0000000001' || lpad(i::text, 2, '0'))::uuid,
                    '00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000003',
                    '00000000-0000-0000-0000-000000000004', 'openrouter', 'k' || i,
                    sha256(convert_to(i::text, 'UTF8')), 'kc_' || i, 1000, i * 7, current_date,
                    CASE WHEN i = 3 THEN now() END, CASE WHEN i = 3 THEN 'revoked' END
             FROM generate_series(1, 3) AS i;",
        ))
        .await
        .unwrap();
    client.batch_execute(last.1).await.unwrap();

    let spends = |client: tokio_postgres::Client| async move {
        let rows = client
            .query(
                "SELECT k.name, s.spent_nanousd, s.closed
                 FROM api_keys k JOIN key_spends s ON s.api_key_id = k.id ORDER BY k.name",
                &[],
            )
            .await
            .unwrap();
        let spends: Vec<(String, i64, bool)> = rows
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        (client, spends)
    };
    let (client, moved) = spends(client).await;
    assert_eq!(
        moved,
        [
            ("k1".to_string(), 7, false),
            ("k2".to_string(), 14, false),
            ("k3".to_string(), 21, true)
        ]
    );
    let old_column = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns
             WHERE table_schema = 'before_0008' AND table_name = 'api_keys'
               AND column_name = 'spent_nanousd'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(old_column.get::<_, i64>(0), 0);

    // A key made afterwards gets its row; closing it is mirrored.
    client
        .batch_execute(
            "INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash,
                                   prefix, cap_nanousd, period_start)
             VALUES ('00000000-0000-0000-0000-000000000199', '00000000-0000-0000-0000-000000000001',
                     '00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000004',
                     'openrouter', 'k4', sha256(convert_to('4', 'UTF8')), 'kc_4', 1000, current_date);
             UPDATE api_keys SET closed_at = now(), close_reason = 'expired' WHERE name = 'k2';",
        )
        .await
        .unwrap();
    let (_client, after) = spends(client).await;
    assert_eq!(
        after,
        [
            ("k1".to_string(), 7, false),
            ("k2".to_string(), 14, true),
            ("k3".to_string(), 21, true),
            ("k4".to_string(), 0, false)
        ]
    );
}

/// The gateway's refresh gets the changed keys it asks for and no others, and nothing that
/// changed before `since`.
#[tokio::test]
async fn changed_since_keeps_only_the_wanted_keys() {
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let (key, _token) =
            db::keys::create(&env.db.pool, &org, &new_key(name, "1"), Actor::Cli, now)
                .await
                .unwrap();
        ids.push(key.id);
    }
    let client = env.db.pool.get().await.unwrap();
    let before = db::keys::database_now(&client).await.unwrap() - time::Duration::minutes(1);

    let mut offered = Vec::new();
    let mut changed = Vec::new();
    let read_at = db::keys::database_now(&client).await.unwrap();
    db::keys::changed_since(
        &client,
        before,
        |id, changed_at| {
            offered.push((id, changed_at));
            (id != ids[1]).then_some(id)
        },
        |id, key| {
            assert_eq!(id, key.id);
            changed.push(key);
        },
    )
    .await
    .unwrap();
    let mut got: Vec<_> = changed.iter().map(|key| key.id).collect();
    got.sort();
    let mut want = vec![ids[0], ids[2]];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(changed.iter().find(|k| k.id == ids[0]).unwrap().name, "a");
    // Each wanted key was offered with its own row's changed_at; the unwanted one was offered too.
    for key in &changed {
        assert!(offered.contains(&(key.id, key.changed_at)), "{offered:?}");
    }
    assert!(offered.iter().any(|(id, _)| *id == ids[1]));

    let mut later = Vec::new();
    db::keys::changed_since(&client, read_at, |_, _| Some(()), |(), key| later.push(key))
        .await
        .unwrap();
    assert!(later.is_empty(), "{later:?}");
}

/// A key's new period (a renewal) is announced twice, the renewal first, then the change as
/// for any other (migration 0010); other changes once. The gateway's listener relies on that
/// order to keep renewals in their own lane.
#[tokio::test]
async fn a_renewal_is_announced_just_before_its_change() {
    use db::notify::Change;
    let env = seeded().await;
    let org = acme(&env).await;
    let now = time::OffsetDateTime::now_utc();
    let (key, _token) = db::keys::create(&env.db.pool, &org, &new_key("a", "1"), Actor::Cli, now)
        .await
        .unwrap();
    let mut changes = db::notify::listen(&env.db.url).await.unwrap();
    let client = env.db.pool.get().await.unwrap();
    async fn next(changes: &mut tokio::sync::mpsc::UnboundedReceiver<Change>) -> Option<Change> {
        tokio::time::timeout(std::time::Duration::from_secs(5), changes.recv())
            .await
            .expect("a notice within 5 s")
    }

    let set = async |change: &str| {
        let sql = format!("UPDATE api_keys SET {change} WHERE id = $1");
        client.execute(&sql, &[&key.id]).await.unwrap();
    };

    set("period_start = period_start - 1").await;
    assert_eq!(next(&mut changes).await, Some(Change::Renewed(key.id)));
    assert_eq!(next(&mut changes).await, Some(Change::ApiKey(key.id)));

    set("cap_nanousd = cap_nanousd + 1").await;
    assert_eq!(next(&mut changes).await, Some(Change::ApiKey(key.id)));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), changes.recv())
            .await
            .is_err(),
        "a change that is not a renewal is announced once"
    );
}

/// Migration 0011 gives each key what was paid for it in its period and the room its refunds
/// leave, from the ledger, and a trigger on the ledger keeps both: a cut's refund lowers what
/// was paid and adds room, a raise's carve adds to what was paid and takes room, a take-back
/// moves room back to paid, a renewal starts over. The migrations up to 0010 run in a schema of
/// their own; the ledger rows are written in SQL.
#[tokio::test]
async fn what_was_paid_and_the_refund_room_follow_the_ledger() {
    let db = testkit::TestDb::new().await.unwrap();
    let client = db.client().await.unwrap();
    let at = schema_before(&client, "0011_cap_take_back").await;
    let key_id = |i: i64| format!("00000000-0000-0000-0000-0000000001{i:02}");
    let ledger = |i: i64, kind: &str, amount: i64| {
        format!(
            "INSERT INTO transactions (org_id, kind, membership_id, api_key_id, amount_nanousd,
                                       prev_hash, hash)
             VALUES ('00000000-0000-0000-0000-000000000001', '{kind}',
                     '00000000-0000-0000-0000-000000000003', '{}', {amount}, '', '');",
            key_id(i)
        )
    };
    let spend = |i: i64, spent: i64| {
        format!(
            "UPDATE key_spends SET spent_nanousd = {spent} WHERE api_key_id = '{}';",
            key_id(i)
        )
    };
    let mut setup = ORG_MEMBER_AND_MASTER_KEY.to_string();
    for i in 1..=3 {
        setup += &format!(
            "INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash,
                                   prefix, cap_nanousd, period_start)
             VALUES ('{}', '00000000-0000-0000-0000-000000000001',
                     '00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000004',
                     'openrouter', 'k{i}', sha256(convert_to('{i}', 'UTF8')), 'kc_{i}', 1000, current_date);",
            key_id(i)
        );
    }
    // k1 provisioned; k2 provisioned, closed with 400 spent (600 refunded), 100 of it taken
    // back since; k3 inserted without ledger rows.
    setup += &ledger(1, "key_provisioned", 1000);
    setup += &ledger(2, "key_provisioned", 1000);
    setup += &spend(2, 500);
    setup += "UPDATE api_keys SET closed_at = now(), close_reason = 'revoked' WHERE name = 'k2';";
    setup += &ledger(2, "refund", 600);
    setup += &ledger(2, "refund", -100);
    client.batch_execute(&setup).await.unwrap();
    client.batch_execute(db::MIGRATIONS[at].1).await.unwrap();
    let paid_and_room = async |i: i64| {
        let row = client
            .query_one(
                "SELECT paid_nanousd, refund_room_nanousd FROM key_spends
                 WHERE api_key_id = $1::text::uuid",
                &[&key_id(i)],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    assert_eq!(paid_and_room(1).await, (1000, 0));
    assert_eq!(paid_and_room(2).await, (500, 500));
    assert_eq!(paid_and_room(3).await, (1000, 0));

    let steps = [
        // Cut to 600, refunding 400.
        (
            "UPDATE api_keys SET cap_nanousd = 600 WHERE name = 'k1';".to_string()
                + &ledger(1, "key_cap_changed", 0)
                + &ledger(1, "refund", 400),
            (600, 400),
        ),
        // Spend up to what was paid is not taken back; past it, it is.
        (spend(1, 600), (600, 400)),
        (spend(1, 700), (700, 300)),
        // Raised to 750: the take-back paid for 100 of it already, so 50 is carved.
        (
            "UPDATE api_keys SET cap_nanousd = 750 WHERE name = 'k1';".to_string()
                + &ledger(1, "key_cap_changed", 50),
            (750, 250),
        ),
        // Renewed: a new period, carved whole.
        (spend(1, 0) + &ledger(1, "key_renewed", 750), (750, 0)),
        // Past what was paid with no room: nothing is taken back.
        (spend(1, 800), (750, 0)),
    ];
    for (sql, expected) in steps {
        client.batch_execute(&sql).await.unwrap();
        assert_eq!(paid_and_room(1).await, expected, "after {sql}");
    }
    // Closed k2: late spend is taken back from its room, no more.
    client.batch_execute(&spend(2, 1900)).await.unwrap();
    assert_eq!(paid_and_room(2).await, (1000, 0));
    let amounts: Vec<i64> = client
        .query(
            "SELECT amount_nanousd FROM transactions WHERE kind = 'refund' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(amounts, [600, -100, 400, -100, -500]);
}

/// Migration 0013 counts the rollups written before it in `usage_by_model`, per key and UTC
/// month, under the model '' (the usage metrics' "unknown"). The migrations up to 0012 run in a
/// schema of their own.
#[tokio::test]
async fn usage_before_models_were_kept_is_counted_by_month() {
    let db = testkit::TestDb::new().await.unwrap();
    let client = db.client().await.unwrap();
    let at = schema_before(&client, "0013_usage_metrics_and_alerts").await;
    client
        .batch_execute(&format!(
            "{ORG_MEMBER_AND_MASTER_KEY}
             INSERT INTO api_keys (id, org_id, membership_id, master_key_id, service, name, token_hash,
                                   prefix, cap_nanousd, period_start)
             VALUES ('00000000-0000-0000-0000-000000000101', '00000000-0000-0000-0000-000000000001',
                     '00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000004',
                     'openrouter', 'k1', sha256(convert_to('1', 'UTF8')), 'kc_1', 1000, current_date);
             INSERT INTO usage_rollups (api_key_id, minute, n_requests, prompt_tokens, completion_tokens, cost_nanousd)
             VALUES ('00000000-0000-0000-0000-000000000101', '2026-11-30 23:59:00+00', 2, 10, 20, 700),
                    ('00000000-0000-0000-0000-000000000101', '2026-11-01 00:00:00+00', 1, 1, 1, 5),
                    ('00000000-0000-0000-0000-000000000101', '2026-12-01 00:00:00+00', 3, 30, 60, 900);"
        ))
        .await
        .unwrap();
    client.batch_execute(db::MIGRATIONS[at].1).await.unwrap();
    let rows: Vec<(String, String, i64, i64)> = client
        .query(
            "SELECT month::text, model, n_requests, cost_nanousd FROM usage_by_model ORDER BY month",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(
        rows,
        [
            ("2026-11-01".to_string(), String::new(), 3, 705),
            ("2026-12-01".to_string(), String::new(), 3, 900)
        ]
    );
}
