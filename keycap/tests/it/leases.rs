//! Several `keycap gateway` processes on one database, each spending only the leases Postgres
//! granted it: together they never bill past a key's cap, a gateway killed with SIGKILL costs
//! the key at most what its leases held, and Postgres stopped for 30 s under load loses
//! nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use domain::Money;
use openrouter_mock::{MockConfig, MockServer};
use testkit::TestDb;
use testkit::process::{Keycap, Running};

use crate::gateway_support::cheap_reservation;

/// Gateways on one database, in front of one mock that bills every request the most its
/// bounds allow (so a reservation is what a request costs).
struct Fleet {
    pool: db::Pool,
    /// The test database, or a cluster of the test's own (which it can stop).
    _db: Option<TestDb>,
    cluster: Option<db::embedded::Cluster>,
    keycap: Keycap,
    mock: MockServer,
    gateways: Vec<Option<Running>>,
    /// How each gateway is started (its addresses), to start it again.
    commands: Vec<Keycap>,
    bases: Vec<String>,
    http: reqwest::Client,
    /// The proxy the gateways reach the database through, when they do.
    proxy: Option<testkit::chaos::ChaosProxy>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `n` gateways, on a test database, or on a PostgreSQL cluster of the test's own when
    /// `own_cluster` (to stop it).
    async fn start(n: usize, own_cluster: bool) -> Fleet {
        Fleet::start_with(n, own_cluster, false, &[]).await
    }

    /// As [`Fleet::start`], the gateways reaching the database through a proxy the test can
    /// cut when `proxied`, and with `extra` environment.
    async fn start_with(
        n: usize,
        own_cluster: bool,
        proxied: bool,
        extra: &[(&str, &str)],
    ) -> Fleet {
        let mock = openrouter_mock::spawn(MockConfig {
            bill_most: true,
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (test_db, cluster, url) = if own_cluster {
            let cluster = db::embedded::Cluster::in_folder(&dir.path().join("pg")).unwrap();
            let started = cluster.clone();
            tokio::task::spawn_blocking(move || started.ensure_running())
                .await
                .unwrap()
                .unwrap();
            let url = cluster.url(db::embedded::DATABASE);
            (None, Some(cluster), url)
        } else {
            let test_db = TestDb::new().await.unwrap();
            let url = test_db.url.clone();
            (Some(test_db), None, url)
        };
        let proxy = match proxied {
            true => Some(testkit::chaos::ChaosProxy::start(&url).await.unwrap()),
            false => None,
        };
        let gateways_url = proxy.as_ref().map_or(url.clone(), |proxy| proxy.url());
        let keycap = Keycap::new(Path::new(env!("CARGO_BIN_EXE_keycap")), &url, dir.path())
            .env("KEYCAP_OPENROUTER__BASE_URL", &mock.base_url())
            .env("KEYCAP_GATEWAY__FLUSH_INTERVAL_MS", "100")
            .env("KEYCAP_GATEWAY__GRACE_PERIOD_SECONDS", "1")
            .env("KEYCAP_GATEWAY__LEASE_HEARTBEAT_MS", "200")
            .env("KEYCAP_GATEWAY__LEASE_LAPSE_MS", "2000")
            .env("KEYCAP_GATEWAY__LEASE_MIN_SLICE_USD", "0.001")
            .envs(extra);
        crate::support::seed_acme(&keycap, &mock.state().config().master_key);
        let mut gateways = Vec::new();
        let mut commands = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..n {
            let port = testkit::free_port();
            let process = keycap
                .with_database_url(&gateways_url)
                .env("KEYCAP_GATEWAY__LISTEN", &format!("127.0.0.1:{port}"))
                .env(
                    "KEYCAP_METRICS__LISTEN",
                    &format!("127.0.0.1:{}", testkit::free_port()),
                );
            gateways.push(Some(start_gateway(&process)));
            commands.push(process);
            bases.push(format!("http://127.0.0.1:{port}"));
        }
        Fleet {
            pool: db::connect(&url, 4).unwrap(),
            _db: test_db,
            cluster,
            keycap,
            mock,
            gateways,
            commands,
            bases,
            http: reqwest::Client::new(),
            proxy,
            _dir: dir,
        }
    }

    fn key(&self, cap: Money) -> String {
        let cap = cap.decimal_usd();
        self.keycap.bobs_key("app", &cap, &[]).unwrap()
    }

    /// Sends one request through gateway `i`; the status, or `None` when the connection failed
    /// (a killed gateway).
    fn send(
        &self,
        i: usize,
        token: &str,
        body: &serde_json::Value,
    ) -> tokio::task::JoinHandle<Option<u16>> {
        let request = self
            .http
            .post(format!("{}/api/v1/chat/completions", self.bases[i]))
            .bearer_auth(token)
            .json(body);
        tokio::spawn(async move {
            let response = request.send().await.ok()?;
            let status = response.status().as_u16();
            let text = response.text().await.ok()?;
            // 402 past the cap; 503 while other gateways hold what the request needs (near
            // the cap), or while the database is unreachable and the gateway's lease does not
            // cover the request.
            let expected = match status {
                200 | 402 => true,
                503 => {
                    text.contains("other gateways hold")
                        || text.contains("cannot reach its database")
                }
                _ => false,
            };
            assert!(expected, "unexpected {status}: {text}");
            Some(status)
        })
    }

    /// Stops every live gateway with SIGTERM (each flushes and gives its leases back).
    fn stop_all(&mut self) {
        for gateway in self.gateways.iter_mut().filter_map(Option::take) {
            let mut gateway = gateway;
            let status = gateway.terminate(Duration::from_secs(30)).unwrap();
            assert!(status.success(), "{status}: {}", gateway.stderr_text());
        }
    }

    /// Stops gateway `i` with SIGTERM and starts it again on the same addresses.
    fn restart(&mut self, i: usize) {
        let mut running = self.gateways[i].take().unwrap();
        let status = running.terminate(Duration::from_secs(30)).unwrap();
        assert!(status.success(), "{status}: {}", running.stderr_text());
        self.gateways[i] = Some(start_gateway(&self.commands[i]));
    }

    /// The minute of the database's clock.
    async fn db_minute(&self) -> f64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT extract(epoch FROM date_trunc('minute', clock_timestamp()))::float8",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn spent_in_db(&self, token: &str) -> Money {
        crate::gateway_support::spent_in(&self.pool, token).await
    }

    async fn leases_left(&self) -> i64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT count(*) FROM key_leases WHERE held_nanousd > 0",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn reclaimed(&self) -> Money {
        let client = self.pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT coalesce(sum(amount_nanousd), 0)::bigint FROM transactions
                 WHERE kind = 'lease_reclaimed'",
                &[],
            )
            .await
            .unwrap();
        Money::from_nanos(row.get(0))
    }

    /// Sends one request through gateway `i`; the status (200 or 429, anything else fails).
    fn rate_limited_send(
        &self,
        i: usize,
        token: &str,
        body: &serde_json::Value,
    ) -> tokio::task::JoinHandle<u16> {
        let request = self
            .http
            .post(format!("{}/api/v1/chat/completions", self.bases[i]))
            .bearer_auth(token)
            .json(body);
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert!(matches!(status, 200 | 429), "unexpected {status}: {text}");
            status
        })
    }

    fn billed(&self) -> Money {
        Money::from_nanos(self.mock.state().total_usage_nanousd() as i64)
    }
}

impl Drop for Fleet {
    /// A cluster of the test's own is stopped with it.
    fn drop(&mut self) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.stop();
        }
    }
}

fn start_gateway(process: &Keycap) -> Running {
    let running = process
        .spawn(
            &["gateway"],
            "gateway listening on",
            Duration::from_secs(60),
        )
        .unwrap();
    running
        .wait_for("loaded upstream prices", Duration::from_secs(30))
        .unwrap();
    running
}

fn body() -> serde_json::Value {
    serde_json::json!({"model": "mock/cheap", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Tell me about budgets."}]})
}

/// Three gateways serve one key whose cap pays for 100 requests: 600 requests at once, spread
/// over them, bill at most the cap, at least 90 are served, and once they stop the key's
/// recorded spend is what was billed, to the nano-dollar, with no lease left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_one_key_never_bill_past_its_cap() {
    let mut fleet = Fleet::start(3, false).await;
    let body = body();
    let per_request = cheap_reservation(&body, 50);
    let cap = Money::from_nanos(per_request.nanos() * 100);
    let token = fleet.key(cap);
    let requests: Vec<_> = (0..600)
        .map(|i| (i % 3, fleet.send(i % 3, &token, &body)))
        .collect();
    let mut served = [0; 3];
    for (i, request) in requests {
        match request.await.unwrap() {
            Some(200) => served[i] += 1,
            status => assert!(matches!(status, Some(402 | 503)), "{status:?}"),
        }
    }
    let n_served: usize = served.iter().sum();
    let billed = fleet.billed();
    assert!(billed <= cap, "billed {billed} past the cap {cap}");
    assert!(
        n_served >= 90,
        "only {n_served} of the cap's 100 requests were served"
    );
    assert!(
        served.iter().all(|&n| n > 0),
        "a gateway served none: {served:?}"
    );
    assert_eq!(fleet.mock.state().n_inference_requests(), n_served as u64);
    fleet.stop_all();
    assert_eq!(fleet.spent_in_db(&token).await, billed);
    assert_eq!(
        fleet.leases_left().await,
        0,
        "a stopped gateway gave every lease back"
    );
}

/// One of three gateways is killed with SIGKILL under load. The upstream has billed at most the
/// cap; once a live gateway has reclaimed the dead one's leases, the key's recorded spend is at
/// least what was billed and at most that plus what the reclaim charged (the ledger's
/// `lease_reclaimed` rows), which is what ARCHITECTURE.md says a crash may cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_costs_the_key_at_most_its_leases() {
    let mut fleet = Fleet::start(3, false).await;
    let body = body();
    let per_request = cheap_reservation(&body, 50);
    let cap = Money::from_nanos(per_request.nanos() * 100);
    let token = fleet.key(cap);
    // Load on all three, in waves, until the cap refuses everything; the second gateway dies
    // after the first waves.
    let mut wave = 0;
    loop {
        let requests: Vec<_> = (0..30).map(|i| fleet.send(i % 3, &token, &body)).collect();
        if wave == 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(fleet.gateways[1].take());
        }
        let mut n_ok = 0;
        for request in requests {
            if request.await.unwrap() == Some(200) {
                n_ok += 1;
            }
        }
        wave += 1;
        if n_ok == 0 && wave > 3 {
            break;
        }
        assert!(wave < 100, "the key was never refused");
    }
    let billed = fleet.billed();
    assert!(billed <= cap, "billed {billed} past the cap {cap}");
    // A live gateway reclaims the dead one's leases once its heartbeat lapses (2 s here).
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.reclaimed().await == Money::ZERO {
        assert!(
            Instant::now() < deadline,
            "the dead gateway's leases were never reclaimed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.stop_all();
    let spent = fleet.spent_in_db(&token).await;
    let reclaimed = fleet.reclaimed().await;
    assert!(
        spent >= billed,
        "recorded {spent} but the upstream billed {billed}"
    );
    assert!(
        spent.saturating_sub(reclaimed) <= billed,
        "recorded {spent}, of which {reclaimed} reclaimed, but billed only {billed}"
    );
    assert!(spent <= cap, "recorded {spent} past the cap {cap}");
    assert_eq!(fleet.leases_left().await, 0);
    let audit = fleet.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        audit.stderr.contains("hash chain intact"),
        "{}",
        audit.stderr
    );
}

/// PostgreSQL is stopped for 30 s under load on three gateways: they serve only what their
/// leases hold (the upstream bills at most the cap), and once it is started again every
/// nano-dollar they settled meanwhile reaches it, and no gateway was taken for dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_serves_within_the_leases_and_loses_nothing() {
    let mut fleet = Fleet::start(3, true).await;
    let body = body();
    let per_request = cheap_reservation(&body, 50);
    let cap = Money::from_nanos(per_request.nanos() * 100);
    let token = fleet.key(cap);
    // Some traffic first, so that every gateway holds a lease.
    for i in 0..30 {
        assert_eq!(fleet.send(i % 3, &token, &body).await.unwrap(), Some(200));
    }
    let cluster = fleet.cluster.clone().unwrap();
    let stopping = cluster.clone();
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap()
        .unwrap();
    let cut_at = Instant::now();
    let mut served_during = 0;
    while cut_at.elapsed() < Duration::from_secs(30) {
        let requests: Vec<_> = (0..9).map(|i| fleet.send(i % 3, &token, &body)).collect();
        for request in requests {
            if request.await.unwrap() == Some(200) {
                served_during += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let billed_during = fleet.billed();
    assert!(
        billed_during <= cap,
        "billed {billed_during} past the cap {cap}"
    );
    assert!(served_during > 0, "nothing was served from the leases held");
    tokio::task::spawn_blocking(move || cluster.ensure_running())
        .await
        .unwrap()
        .unwrap();
    // Once it is back, everything settled reaches Postgres.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.spent_in_db(&token).await != fleet.billed() {
        assert!(
            Instant::now() < deadline,
            "spend settled during the outage never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.stop_all();
    assert_eq!(fleet.spent_in_db(&token).await, fleet.billed());
    assert!(fleet.billed() <= cap);
    assert_eq!(
        fleet.reclaimed().await,
        Money::ZERO,
        "no live gateway was taken for dead"
    );
}

/// A key's requests per minute hold over three gateways together, and across a restart: 30
/// requests spread over them in one minute get 10 answers and 20 refusals, and a gateway
/// started again within the minute refuses the key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_over_three_gateways_and_across_a_restart() {
    let mut fleet = Fleet::start(3, false).await;
    let body = body();
    // The limit counts per minute of the database's clock: an attempt that straddles two
    // minutes proves nothing, and is made again with a new key.
    for _attempt in 0..3 {
        let token = fleet.keycap.bobs_key("app", "5", &["--rpm", "10"]).unwrap();
        let minute = fleet.db_minute().await;
        let requests: Vec<_> = (0..30)
            .map(|i| fleet.rate_limited_send(i % 3, &token, &body))
            .collect();
        let mut statuses = Vec::new();
        for request in requests {
            statuses.push(request.await.unwrap());
        }
        fleet.restart(0);
        let mut after_restart = Vec::new();
        for _ in 0..5 {
            after_restart.push(fleet.rate_limited_send(0, &token, &body).await.unwrap());
        }
        if fleet.db_minute().await != minute {
            continue;
        }
        let served = statuses.iter().filter(|&&s| s == 200).count();
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        assert_eq!((served, limited), (10, 20), "{statuses:?}");
        assert_eq!(after_restart, vec![429; 5]);
        return;
    }
    panic!("three attempts each straddled a minute");
}

/// The money of leases, statement by statement: grants never pass the cap however many
/// gateways ask; a gateway's flushed spend leaves its lease at the fold; a reclaim charges what
/// a silent gateway's lease still holds, with its ledger row; spend that gateway flushes later
/// is counted against that charge, not twice; and what it then gives back unspent is given
/// back to the key, so the key's spend ends equal to what was spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_keep_spent_plus_held_within_the_cap_and_reclaims_charge_exactly() {
    use db::leases::{give_back, grant, held, reclaim, register};
    let env = crate::support::seeded().await;
    let (key, token) = bobs_key(&env, &[]).await;
    let client = env.db.pool.get().await.unwrap();
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    register(&client, a, "a").await.unwrap();
    register(&client, b, "b").await.unwrap();
    let usd = |cents: i64| Money::from_nanos(cents * 10_000_000);
    let live = Duration::from_secs(60);
    let now = time::OffsetDateTime::now_utc();
    let spent = || crate::gateway_support::spent_in(&env.db.pool, &token);
    let flush = |gateway, cost| flush_within(&env.db.pool, gateway, key, cost);

    // Two live gateways share what is left: one grant takes at most half, unless it needs more.
    let first = grant(&client, key, a, usd(1), usd(90), live).await.unwrap();
    assert_eq!(first.granted, usd(50));
    let second = grant(&client, key, b, usd(1), usd(90), live).await.unwrap();
    assert_eq!(second.granted, usd(25));
    let third = grant(&client, key, b, usd(40), usd(40), live)
        .await
        .unwrap();
    assert_eq!((third.granted, third.left), (usd(25), Money::ZERO));
    assert_eq!(third.others_hold, usd(50));
    assert_eq!(held(&client, key).await.unwrap(), usd(100));

    // A spends 30 and flushes it: after the fold it is spent, and no longer held.
    flush(a, usd(30)).await;
    assert_eq!(spent().await, usd(30));
    assert_eq!(held(&client, key).await.unwrap(), usd(70));
    // Nothing left to grant: spent + held is the cap.
    let none = grant(&client, key, b, usd(1), usd(1), live).await.unwrap();
    assert_eq!(none.granted, Money::ZERO);

    // A falls silent; a reclaim charges its 20 still held.
    fall_silent(&client, a).await;
    assert_eq!(reclaim(&client, live, now).await.unwrap(), 1);
    assert_eq!(spent().await, usd(50));
    assert_eq!(held(&client, key).await.unwrap(), usd(50));
    let charged: i64 = client
        .query_one(
            "SELECT sum(amount_nanousd)::bigint FROM transactions WHERE kind = 'lease_reclaimed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(Money::from_nanos(charged), usd(20));

    // A was alive after all: it flushes 5 more (already charged, so not counted again), and
    // gives back the 15 it did not spend.
    flush(a, usd(5)).await;
    assert_eq!(spent().await, usd(50));
    let claim = uuid::Uuid::new_v4;
    assert!(
        give_back(&client, key, a, usd(15), now, claim())
            .await
            .unwrap()
    );
    assert_eq!(spent().await, usd(35), "A spent 35 in all");
    let net: i64 = client
        .query_one(
            "SELECT sum(amount_nanousd)::bigint FROM transactions WHERE kind = 'lease_reclaimed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        Money::from_nanos(net),
        usd(5),
        "the ledger keeps the 5 the reclaim charged for"
    );
    // B gives back 20 of its 50, and sends that give-back again under its claim (as after a
    // lost answer): it applies once. Then the other 30; the key has 65 left for anyone.
    let b_claim = claim();
    assert!(
        give_back(&client, key, b, usd(20), now, b_claim)
            .await
            .unwrap()
    );
    assert!(
        !give_back(&client, key, b, usd(20), now, b_claim)
            .await
            .unwrap()
    );
    assert_eq!(held(&client, key).await.unwrap(), usd(30));
    assert!(
        give_back(&client, key, b, usd(30), now, claim())
            .await
            .unwrap()
    );
    let again = grant(&client, key, b, usd(65), usd(65), live)
        .await
        .unwrap();
    assert_eq!((again.granted, again.closed), (usd(65), None));
    // Revoked: a grant says why there is nothing, for a gateway that has not heard yet.
    env.keycap
        .ok(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    let closed = grant(&client, key, b, usd(1), usd(1), live).await.unwrap();
    assert_eq!(
        (closed.granted, closed.closed.as_deref()),
        (Money::ZERO, Some("revoked"))
    );
    let audit = env.keycap.run(&["audit", "--org", "acme"]).unwrap();
    assert!(
        audit.stderr.contains("hash chain intact"),
        "{}",
        audit.stderr
    );
}

/// A reclaim's charge stays in the period it was made in: after a renewal, spend the
/// reclaimed gateway flushes from its reclaimed slice is counted against that charge, not again
/// in the new period (where its lease holds nothing for it), and what it gives back unspent is
/// not taken off the new period's spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaims_charge_stays_in_its_period_after_a_renewal() {
    use db::leases::{give_back, grant, held, reclaim, register};
    let env = crate::support::seeded().await;
    let (key, token) = bobs_key(&env, &["--renew-monthly"]).await;
    let client = env.db.pool.get().await.unwrap();
    let a = uuid::Uuid::new_v4();
    register(&client, a, "a").await.unwrap();
    let usd = |cents: i64| Money::from_nanos(cents * 10_000_000);
    let now = time::OffsetDateTime::now_utc();
    let spent = || crate::gateway_support::spent_in(&env.db.pool, &token);
    grant(&client, key, a, usd(40), usd(40), Duration::from_secs(60))
        .await
        .unwrap();
    fall_silent(&client, a).await;
    assert_eq!(
        reclaim(&client, Duration::from_secs(60), now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(spent().await, usd(40));
    // The month turns: the key is renewed, its spend starts again from zero.
    let next_month = {
        let first = now.date().replace_day(1).unwrap();
        let next = first.checked_add(time::Duration::days(32)).unwrap();
        next.replace_day(1).unwrap().midnight().assume_utc() + time::Duration::hours(1)
    };
    db::maintenance::renew_due(&env.db.pool, next_month)
        .await
        .unwrap();
    assert_eq!(spent().await, Money::ZERO);
    // A flushes 5 it settled from the reclaimed lease: the ended period paid for it, so the new
    // period's spend and leases are as they were, and the whole new cap is still there to grant.
    flush_within(&env.db.pool, a, key, usd(5)).await;
    assert_eq!(spent().await, Money::ZERO);
    assert_eq!(held(&client, key).await.unwrap(), Money::ZERO);
    // It gives back 30 unspent: nothing is taken off the new period.
    give_back(&client, key, a, usd(30), next_month, uuid::Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(spent().await, Money::ZERO);
    // A is granted 10 in the new period and flushes 8: 5 of it is the rest of the reclaimed
    // slice (40, less 5 spent and 30 given back), 3 is the new period's, out of its new lease.
    let live = Duration::from_secs(60);
    grant(&client, key, a, usd(10), usd(10), live)
        .await
        .unwrap();
    flush_within(&env.db.pool, a, key, usd(8)).await;
    assert_eq!(spent().await, usd(3));
    assert_eq!(held(&client, key).await.unwrap(), usd(7));
    let b = uuid::Uuid::new_v4();
    register(&client, b, "b").await.unwrap();
    let rest = grant(&client, key, b, usd(90), usd(90), live)
        .await
        .unwrap();
    assert_eq!((rest.granted, rest.left), (usd(90), Money::ZERO));
}

/// A gateway reclaimed before, granted a lease since (its heartbeat failing while its other
/// connections still work), is reclaimed again when it falls silent: what it holds is charged,
/// not left held by a dead gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_gateway_granted_a_lease_since_is_reclaimed_again() {
    use db::leases::{grant, held, reclaim, register};
    let env = crate::support::seeded().await;
    let (key, token) = bobs_key(&env, &[]).await;
    let client = env.db.pool.get().await.unwrap();
    let a = uuid::Uuid::new_v4();
    register(&client, a, "a").await.unwrap();
    let usd = |cents: i64| Money::from_nanos(cents * 10_000_000);
    let (live, now) = (Duration::from_secs(60), time::OffsetDateTime::now_utc());
    grant(&client, key, a, usd(40), usd(40), live)
        .await
        .unwrap();
    fall_silent(&client, a).await;
    assert_eq!(reclaim(&client, live, now).await.unwrap(), 1);
    grant(&client, key, a, usd(20), usd(20), live)
        .await
        .unwrap();
    fall_silent(&client, a).await;
    assert_eq!(reclaim(&client, live, now).await.unwrap(), 1);
    assert_eq!(
        crate::gateway_support::spent_in(&env.db.pool, &token).await,
        usd(60)
    );
    assert_eq!(held(&client, key).await.unwrap(), Money::ZERO);
}

/// A key revoked while a gateway holds a lease of it is refunded all but the lease. If that
/// gateway is then reclaimed, and was alive after all, what it gives back unspent leaves the
/// reclaim's charge and is refunded, closed key or not: the member pays what was spent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_keys_reclaim_charge_is_refunded_when_its_gateway_gives_back() {
    use db::leases::{give_back, grant, reclaim, register};
    let env = crate::support::seeded().await;
    let (key, token) = bobs_key(&env, &[]).await;
    let client = env.db.pool.get().await.unwrap();
    let a = uuid::Uuid::new_v4();
    register(&client, a, "a").await.unwrap();
    let usd = |cents: i64| Money::from_nanos(cents * 10_000_000);
    let (live, now) = (Duration::from_secs(60), time::OffsetDateTime::now_utc());
    grant(&client, key, a, usd(40), usd(40), live)
        .await
        .unwrap();
    env.keycap
        .ok(&["key", "revoke", "--org", "acme", &token[..11]])
        .unwrap();
    let refunds = async || -> Vec<i64> {
        client
            .query(
                "SELECT amount_nanousd FROM transactions
                  WHERE api_key_id = $1 AND kind = 'refund' ORDER BY seq",
                &[&key],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    assert_eq!(refunds().await, vec![usd(60).nanos()], "all but the lease");
    // A falls silent and is reclaimed: its 40 is charged as spent.
    fall_silent(&client, a).await;
    assert_eq!(reclaim(&client, live, now).await.unwrap(), 1);
    let spent = || crate::gateway_support::spent_in(&env.db.pool, &token);
    assert_eq!(spent().await, usd(40));
    // A was alive: it flushes the 10 it spent (inside the charge) and gives back 30.
    flush_within(&env.db.pool, a, key, usd(10)).await;
    assert_eq!(spent().await, usd(40));
    let claim = uuid::Uuid::new_v4();
    assert!(
        give_back(&client, key, a, usd(30), now, claim)
            .await
            .unwrap()
    );
    assert_eq!(spent().await, usd(10));
    assert_eq!(refunds().await, vec![usd(60).nanos(), usd(30).nanos()]);
    assert_eq!(
        crate::support::bobs_available_listed(&env.keycap),
        Money::from_usd(100).nanos() - usd(10).nanos(),
        "bob's $100 less the 10 spent"
    );
}

/// A give-back that commits while the gateway's connection drops, so the gateway never hears
/// the answer, is not spent again: the gateway keeps the slice unusable and sends the
/// give-back again under its claim, which applies nothing. Spent to its cap through that
/// gateway afterwards, the key bills at most its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_whose_answer_is_lost_is_not_spent_again() {
    let body = body();
    let per_request = cheap_reservation(&body, 50);
    // Slices of 10 requests; an idle key's slice goes back after 2.5 s (time enough for the
    // test to hold the key's spend row first).
    let slice = Money::from_nanos(per_request.nanos() * 10).decimal_usd();
    let mut fleet = Fleet::start_with(
        1,
        false,
        true,
        &[
            ("KEYCAP_GATEWAY__LEASE_MIN_SLICE_USD", &slice),
            ("KEYCAP_GATEWAY__LEASE_IDLE_MS", "2500"),
        ],
    )
    .await;
    let cap = Money::from_nanos(per_request.nanos() * 20);
    let token = fleet.key(cap);
    let hash = domain::token::hash_token(&token).to_vec();
    let mut blocker = fleet.pool.get().await.unwrap();
    let key: uuid::Uuid = blocker
        .query_one("SELECT id FROM api_keys WHERE token_hash = $1", &[&hash])
        .await
        .unwrap()
        .get(0);
    assert_eq!(fleet.send(0, &token, &body).await.unwrap(), Some(200));
    let held = |client: &db::Pool| {
        let client = client.clone();
        async move {
            let client = client.get().await.unwrap();
            db::leases::held(&client, key).await.unwrap()
        }
    };
    assert!(held(&fleet.pool).await > Money::ZERO);

    // The key's spend row is held, so the idle give-back waits for it inside Postgres; then
    // the gateway's connection is cut, and the give-back goes on and commits without anyone
    // to answer.
    let holding = blocker.transaction().await.unwrap();
    holding
        .execute(
            "SELECT 1 FROM key_spends WHERE api_key_id = $1 FOR UPDATE",
            &[&key],
        )
        .await
        .unwrap();
    let watcher = fleet.pool.get().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE query LIKE 'SELECT lease_give_back(%' AND wait_event_type = 'Lock'
                    AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no give-back waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = fleet.proxy.as_ref().unwrap();
    proxy.cut();
    let gateway = fleet.gateways[0].as_ref().unwrap();
    gateway
        .wait_for("a lease give-back got no answer", Duration::from_secs(20))
        .unwrap();
    let before = held(&fleet.pool).await;
    holding.rollback().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let claims: i64 = watcher
            .query_one("SELECT count(*) FROM lease_give_backs", &[])
            .await
            .unwrap()
            .get(0);
        if claims == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the give-back never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = held(&fleet.pool).await;
    assert!(after < before, "held {before}, then {after}");
    proxy.restore();

    // Spent to its cap through the gateway: it served the first request, then only what
    // Postgres grants it now.
    let mut served = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match fleet.send(0, &token, &body).await.unwrap() {
            Some(200) => served += 1,
            Some(402) => break,
            // The database just came back.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        assert!(Instant::now() < deadline, "the key never reached its cap");
    }
    fleet.stop_all();
    let billed = fleet.billed();
    assert!(
        billed <= cap,
        "billed {billed} past the cap {cap} ({served} requests served)"
    );
    assert_eq!(fleet.spent_in_db(&token).await, billed);
    assert_eq!(fleet.leases_left().await, 0);
}

/// A new key of bob's with a cap of $1 (and `extra` flags of `keycap key create`): its id and
/// token.
async fn bobs_key(env: &crate::support::Env, extra: &[&str]) -> (uuid::Uuid, String) {
    let token = env.keycap.bobs_key("app", "1", extra).unwrap();
    let client = env.db.pool.get().await.unwrap();
    let hash = domain::token::hash_token(&token).to_vec();
    let id = client
        .query_one("SELECT id FROM api_keys WHERE token_hash = $1", &[&hash])
        .await
        .unwrap()
        .get(0);
    (id, token)
}

/// `gateway`'s last heartbeat an hour ago, so a reclaim finds it dead.
async fn fall_silent(client: &impl db::GenericClient, gateway: uuid::Uuid) {
    client
        .execute(
            "UPDATE gateways SET heartbeat_at = now() - interval '1 hour' WHERE id = $1",
            &[&gateway],
        )
        .await
        .unwrap();
}

/// Flushes `cost` of `key`'s spend, as settled within `gateway`'s lease.
async fn flush_within(pool: &db::Pool, gateway: uuid::Uuid, key: uuid::Uuid, cost: Money) {
    let mut spend = db::usage::SpendDeltas::of_gateway(gateway);
    spend.push(key, cost.nanos());
    db::usage::flush(pool, uuid::Uuid::new_v4(), &spend, &[])
        .await
        .unwrap();
}
