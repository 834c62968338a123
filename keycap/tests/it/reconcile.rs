//! Reconciliation: a request that ends without a reported cost (here, clients hanging up
//! mid-stream) is charged what the upstream says it billed (`GET /api/v1/generation`), not
//! its reservation, with a `usage_reconciled` ledger row; when the upstream never says, the
//! reservation stands.

use std::time::{Duration, Instant};

use domain::Money;
use futures_util::future::join_all;
use serde_json::json;

use crate::gateway::first_chunk_of_slow_stream;
use crate::gateway_support::{Gateway, cheap_reservation, start, start_with_env};

fn streamed(max_tokens: u64) -> serde_json::Value {
    json!({"model": "mock/cheap", "max_tokens": max_tokens, "stream": true,
        "messages": [{"role": "user", "content": "Tell me about budgets."}]})
}

/// Waits until the mock has settled `n` generations; returns what it has billed in all.
async fn billed_once_settled(gw: &Gateway, n: usize) -> Money {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.mock.state().n_generations() < n {
        assert!(
            Instant::now() < deadline,
            "the mock settled too few generations"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Money::from_nanos(i64::try_from(gw.mock.state().total_usage_nanousd()).unwrap())
}

/// The `usage_reconciled` ledger rows of `token`'s key: (amount, detail).
async fn reconciled_rows(gw: &Gateway, token: &str) -> Vec<(i64, serde_json::Value)> {
    let client = gw.db.pool.get().await.unwrap();
    let hash = domain::token::hash_token(token).to_vec();
    client
        .query(
            "SELECT t.amount_nanousd, t.detail FROM transactions t
             JOIN api_keys k ON k.id = t.api_key_id
             WHERE k.token_hash = $1 AND t.kind = 'usage_reconciled' ORDER BY t.seq",
            &[&hash],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_hang_up_mid_stream_are_charged_what_the_upstream_billed() {
    let gw = start().await;
    // Room for the eight reservations and no more: they are held until the upstream says.
    let body = streamed(40);
    let reservation = cheap_reservation(&body, 40);
    let cap = reservation.saturating_mul(8);
    let token = gw.key(&cap.to_string().replace('$', ""), &[]);
    let streams =
        join_all((0..8).map(|_| first_chunk_of_slow_stream(&gw, &token, &body, 200))).await;
    assert_eq!(
        gw.mock.state().total_usage_nanousd(),
        0,
        "nothing finished yet"
    );
    drop(streams);
    // The upstream bills each the tokens it had sent when the gateway hung up on it.
    let billed = billed_once_settled(&gw, 8).await;
    assert!(
        Money::ZERO < billed && billed < cap,
        "billed {billed} of {cap}"
    );
    gw.wait_for_spent(&token, billed).await;

    // One ledger row per request: what it got back, and the generation asked about.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = reconciled_rows(&gw, &token).await;
        if rows.len() == 8 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), 8, "{rows:?}");
    let mut returned = 0;
    for (amount, detail) in &rows {
        assert_eq!(detail["reserved_nanousd"], reservation.nanos(), "{detail}");
        let row_billed = detail["billed_nanousd"].as_i64().unwrap();
        assert_eq!(*amount, reservation.nanos() - row_billed, "{detail}");
        assert!(
            detail["generation_id"]
                .as_str()
                .unwrap()
                .starts_with("gen-")
        );
        returned += amount;
    }
    assert_eq!(returned, cap.nanos() - billed.nanos());

    let metrics = gw.metrics_text().await;
    for line in [
        "gateway_settlements_total{basis=\"reconciled\"} 8".to_string(),
        "gateway_reconciliations_total{outcome=\"billed\"} 8".to_string(),
        format!("gateway_reconciled_nanousd_total {returned}"),
        "gateway_reconciliations_pending 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(
        gw.logs().contains("asking the upstream what it billed"),
        "{}",
        gw.logs()
    );
    // The rows keep the org's hash chain whole.
    gw.assert_audit_chain_intact();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reservation_is_held_while_waiting_and_the_rest_comes_back() {
    let gw = start().await;
    let body = streamed(40);
    let reservation = cheap_reservation(&body, 40);
    let token = gw.key(&reservation.to_string().replace('$', ""), &[]);
    let small = json!({"model": "mock/cheap", "max_tokens": 5,
        "messages": [{"role": "user", "content": "Hi."}]});
    let stream = first_chunk_of_slow_stream(&gw, &token, &body, 200).await;
    drop(stream);
    gw.wait_for_metric("gateway_reconciliations_pending 1")
        .await;
    // Waiting: the whole reservation is still held, so nothing else fits.
    let response = gw.chat(&token, &small).send().await.unwrap();
    assert_eq!(response.status(), 402);
    // Reconciled: what the upstream did not bill is the key's again.
    let billed = billed_once_settled(&gw, 1).await;
    gw.wait_for_spent(&token, billed).await;
    let response = gw.chat(&token, &small).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_upstream_never_says_the_reservation_is_charged() {
    let gw = start_with_env(&[
        ("KEYCAP_OPENROUTER__RECONCILE_ATTEMPTS", "3"),
        ("KEYCAP_OPENROUTER__RECONCILE_DELAY_MS", "50"),
    ])
    .await;
    let token = gw.key("1", &[]);
    let body = streamed(40);
    // The generation's stats are not ready for an hour: every question gets 404.
    let response = gw
        .chat(&token, &body)
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "200")
        .header(openrouter_mock::GENERATION_DELAY_HEADER, "3600000")
        .send()
        .await
        .unwrap();
    let mut stream = Box::pin(response.bytes_stream());
    futures_util::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    gw.wait_for_spent(&token, cheap_reservation(&body, 40))
        .await;
    let metrics = gw.metrics_text().await;
    for line in [
        "gateway_settlements_total{basis=\"reservation\"} 1",
        "gateway_reconciliations_total{outcome=\"unknown\"} 1",
        "gateway_reconciliations_pending 0",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }
    assert!(reconciled_rows(&gw, &token).await.is_empty());
    assert!(
        gw.logs().contains("the upstream never said what it billed"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_stopped_while_waiting_charges_the_reservation_before_its_last_flush() {
    let mut gw = start_with_env(&[
        ("KEYCAP_OPENROUTER__RECONCILE_DELAY_MS", "60000"),
        ("KEYCAP_OPENROUTER__RECONCILE_ATTEMPTS", "1"),
    ])
    .await;
    let token = gw.key("1", &[]);
    let body = streamed(40);
    let stream = first_chunk_of_slow_stream(&gw, &token, &body, 200).await;
    drop(stream);
    gw.wait_for_metric("gateway_reconciliations_pending 1")
        .await;
    // Nothing is charged while the upstream is being asked: the reservation is held.
    assert_eq!(gw.spent_in_db(&token).await, Money::ZERO);
    gw.stop();
    assert_eq!(gw.spent_in_db(&token).await, cheap_reservation(&body, 40));
}

/// A client that gives up before the upstream's answer header arrives: pingora closes the
/// upstream connection, no generation id ever arrives, so there is nothing to ask about, and
/// the reservation is charged (the mock, whose answer was never written, bills nothing; the
/// real upstream may bill a generation that runs on, never more than the reservation).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_gives_up_before_the_answer_header_is_charged_its_reservation() {
    let gw = start().await;
    let token = gw.key("1", &[]);
    let body = json!({"model": "mock/cheap", "max_tokens": 40,
        "messages": [{"role": "user", "content": "Tell me about budgets."}]});
    // The upstream answers after 500 ms; the client gives up after 100.
    let sent = gw
        .chat(&token, &body)
        .header("x-mock-fault", "slow")
        .header("x-mock-delay-ms", "500")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(sent.is_err(), "the client should have given up");
    gw.wait_for_spent(&token, cheap_reservation(&body, 40))
        .await;
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("gateway_settlements_total{basis=\"reservation\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("gateway_reconciliations_total{"),
        "{metrics}"
    );
}
