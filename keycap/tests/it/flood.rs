//! A flood of made-up tokens: each costs the database a share of a query, only once and only
//! within the gateway's cap on lookups in flight, on a pool of its own, so real keys and the
//! admin app keep working. (How much it slows a real key is measured in benches/load/flood.sh, not here.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::gateway_support::start_with_env;

fn made_up_token() -> String {
    let random: [u8; 24] = std::array::from_fn(|_| rand::random());
    format!("kc_{}", hex::encode(random))
}

/// Lookups of one token at once are one lookup; lookups of many tokens at once are one query;
/// and no more tokens than the cap are looked up at once, the rest refused at once rather than
/// queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_are_merged_and_capped() {
    let env = crate::support::seeded().await;
    let runtime = tokio::runtime::Handle::current();
    // A pool of one connection, held by the test until every lookup is waiting: they can only
    // have been merged.
    let pool = db::connect(&env.db.url, 1).unwrap();
    let held = pool.get().await.unwrap();
    let merged = Arc::new(gateway::lookups::Lookups::new(pool.clone(), 4));
    let hash = domain::token::hash_token(&made_up_token());
    let same: Vec<_> = (0..50)
        .map(|_| {
            let (lookups, runtime) = (Arc::clone(&merged), runtime.clone());
            tokio::spawn(async move { lookups.find(hash, &runtime, |_| {}).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(held);
    for lookup in same {
        assert!(matches!(lookup.await.unwrap(), Ok(None)));
    }
    assert_eq!(
        merged.queries(),
        1,
        "50 lookups of one token ran as one query"
    );

    // Lookups of many tokens at once wait together, and are one query (or two: the first
    // token's may start before the others wait); a real key among them is found.
    let real = env.keycap.bobs_key("real", "5", &[]).unwrap();
    let real = domain::token::hash_token(&real);
    let batched = Arc::new(gateway::lookups::Lookups::new(pool.clone(), 64));
    let held = pool.get().await.unwrap();
    let hashes: Vec<[u8; 32]> = (0..49)
        .map(|_| domain::token::hash_token(&made_up_token()))
        .chain([real])
        .collect();
    let lookups: Vec<_> = hashes
        .iter()
        .map(|&hash| {
            let (lookups, runtime) = (Arc::clone(&batched), runtime.clone());
            tokio::spawn(async move { lookups.find(hash, &runtime, |_| {}).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(held);
    for (lookup, hash) in lookups.into_iter().zip(&hashes) {
        match lookup.await.unwrap() {
            Ok(Some(key)) => assert!(*hash == real && key.name == "real"),
            Ok(None) => assert!(*hash != real, "the real key was not found"),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&batched.queries()),
        "50 tokens took {} queries",
        batched.queries()
    );
    assert_eq!(batched.peak(), 50);

    let capped = Arc::new(gateway::lookups::Lookups::new(env.db.pool.clone(), 4));
    let many: Vec<_> = (0..200)
        .map(|_| {
            let (lookups, runtime) = (Arc::clone(&capped), runtime.clone());
            let hash = domain::token::hash_token(&made_up_token());
            tokio::spawn(async move { lookups.find(hash, &runtime, |_| {}).await })
        })
        .collect();
    let (mut unknown, mut busy) = (0, 0);
    for lookup in many {
        match lookup.await.unwrap() {
            Ok(None) => unknown += 1,
            Err(gateway::state::LookupError::Busy) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        capped.peak() <= 4,
        "{} tokens were looked up at once",
        capped.peak()
    );
    assert_eq!(unknown + busy, 200);
    assert!(unknown >= 4, "{unknown} answered");
}

/// A lookup whose request gives up while another request of the same token waits: the second
/// asks again, and gets the key, though both wait in one query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_given_up_leaves_the_next_its_answer() {
    let env = crate::support::seeded().await;
    let runtime = tokio::runtime::Handle::current();
    let real = domain::token::hash_token(&env.keycap.bobs_key("real", "5", &[]).unwrap());
    let pool = db::connect(&env.db.url, 1).unwrap();
    let held = pool.get().await.unwrap();
    let lookups = Arc::new(gateway::lookups::Lookups::new(pool.clone(), 64));
    let find = |hash| {
        let (lookups, runtime) = (Arc::clone(&lookups), runtime.clone());
        tokio::spawn(async move { lookups.find(hash, &runtime, |_| {}).await })
    };
    let pause = || tokio::time::sleep(Duration::from_millis(200));
    // The one query task takes this token and waits for the connection; what follows waits
    // for its next query.
    let first = find(domain::token::hash_token(&made_up_token()));
    pause().await;
    let gives_up = find(real);
    pause().await;
    let waits = find(real);
    pause().await;
    gives_up.abort();
    pause().await;
    drop(held);
    assert!(matches!(first.await.unwrap(), Ok(None)));
    match waits.await.unwrap() {
        Ok(Some(key)) => assert_eq!(key.name, "real"),
        other => panic!("the waiting request got {other:?}"),
    }
    assert_eq!(lookups.queries(), 2);
}

/// Made-up tokens from 64 clients at once for 10 s: a real key in use keeps being served, the
/// admin app answers, every made-up token is refused (401, or 503 when the lookups are at
/// their cap), and no more lookups than the cap ever ran at once.
/// The lookup pool's connections have the database cut a statement off after the pool's
/// statement timeout, so a lookup the gateway gave up on does not run on; other pools have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_connection_stops_a_statement_past_its_timeout() {
    let env = crate::support::seeded().await;
    let lookups =
        db::connect_with_statement_timeout(&env.db.url, 1, Duration::from_millis(200)).unwrap();
    let client = lookups.get().await.unwrap();
    let show = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(show.get::<_, String>(0), "200ms");
    // (Not under .ci/at-dates: there, a Postgres run under libfaketime with its clock moved
    // ahead does not fire the statement timeout; the plain run checks it, as in
    // admin/tests/it/usage.rs.)
    if std::env::var_os("FAKETIME").is_none() {
        let err = client.execute("SELECT pg_sleep(5)", &[]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err}"
        );
        // The connection is still good for the next statement.
        client.execute("SELECT 1", &[]).await.unwrap();
    }

    let other = db::connect(&env.db.url, 1).unwrap();
    let show = other
        .get()
        .await
        .unwrap()
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(show.get::<_, String>(0), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_tokens_leaves_real_keys_and_the_admin_app_working() {
    let gw = start_with_env(&[
        ("KEYCAP_GATEWAY__MAX_LOOKUPS_IN_FLIGHT", "8"),
        ("KEYCAP_GATEWAY__LOOKUP_CONNECTIONS", "2"),
    ])
    .await;
    let token = gw.key("5", &[]);
    let admin = gw
        .logs()
        .split("admin on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .expect("keycap up prints the admin address")
        .to_string();
    let body = json!({"model": "mock/cheap", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    // The real key is in use before the flood (a key first seen during one may be refused
    // with 503 while the lookups are at their cap, like the made-up tokens).
    assert_eq!(gw.chat(&token, &body).send().await.unwrap().status(), 200);
    let until = Instant::now() + Duration::from_secs(10);
    let (refused, busy) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flooders: Vec<_> = (0..64)
        .map(|_| {
            let (http, url) = (
                gw.http.clone(),
                format!("{}/api/v1/chat/completions", gw.base),
            );
            let (refused, busy, body) = (Arc::clone(&refused), Arc::clone(&busy), body.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let answer = http
                        .post(&url)
                        .bearer_auth(made_up_token())
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    match answer.status().as_u16() {
                        401 => refused.fetch_add(1, Ordering::Relaxed),
                        503 => {
                            let text = answer.text().await.unwrap();
                            assert!(text.contains("too many unknown keys"), "{text}");
                            busy.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("a made-up token got {other}"),
                    };
                }
            })
        })
        .collect();
    let mut served = 0;
    while Instant::now() < until {
        let answer = gw.chat(&token, &body).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
        served += 1;
        let page = gw.http.get(format!("{admin}/login")).send().await.unwrap();
        assert_eq!(page.status(), 200);
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }
    assert!(served > 0);
    let metrics = gw.metrics_text().await;
    let peak: i64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("gateway_key_lookups_in_flight_peak "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the peak is in the metrics");
    assert!((1..=8).contains(&peak), "{peak} lookups ran at once");
    assert!(refused.load(Ordering::Relaxed) > 0);
    eprintln!(
        "real key: {served} served; made-up tokens: {} refused as unknown, {} as busy; peak {peak}",
        refused.load(Ordering::Relaxed),
        busy.load(Ordering::Relaxed)
    );
}

/// Reads one HTTP/1.1 answer (with a `content-length`) from `stream`; returns its status.
async fn read_answer(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.unwrap();
    status
}

/// A refused request with a small body leaves its connection open: the client's next request
/// goes on it (so a flood of refusals costs no new connection each). One whose body is larger
/// than the gateway drains, or sent in chunks, is answered and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_its_connection_for_the_next() {
    use tokio::io::AsyncWriteExt;
    let gw = start_with_env(&[]).await;
    let token = gw.key("1", &[]);
    let address = gw.base.trim_start_matches("http://").to_string();
    let request = |token: &str, body: &str, close: bool| {
        format!(
            "POST /api/v1/chat/completions HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    let chat = json!({"model": "mock/cheap", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 3})
    .to_string();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    for _ in 0..3 {
        let refused = request(&made_up_token(), &chat, false);
        stream
            .get_mut()
            .write_all(refused.as_bytes())
            .await
            .unwrap();
        assert_eq!(read_answer(&mut stream).await, 401);
    }
    stream
        .get_mut()
        .write_all(request(&token, &chat, true).as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut stream).await, 200);

    // A body over 16 KiB is not drained: the answer, then the end of the connection.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(20 * 1024));
    let answer = answer_then_close(&address, &request(&made_up_token(), &big, false)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Nor is a chunked one, even a real key's whose chunk is malformed: what follows it is
    // never read as a next request.
    let chunked = format!(
        "POST /api/v1/chat/completions HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n\
         GET /api/v1/models HTTP/1.1\r\nHost: {address}\r\n\r\n"
    );
    let answer = answer_then_close(&address, &chunked).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.matches("HTTP/1.1").count() == 1,
        "{answer}"
    );
}

/// Sends `request` on a new connection and reads until the gateway closes it (within 10 s).
async fn answer_then_close(address: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after the answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
