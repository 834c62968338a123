use super::*;
use crate::services::ChargeBasis;
use crate::services::openrouter::metering::{MeterOutcome, NoUsage, Usage};

#[test]
fn cost_from_tokens_prices_each_kind() {
    let mut model = price("0.000001", "0.000002");
    model.input_cache_read = UnitPrice::from_picos(100_000);
    model.input_cache_write = UnitPrice::from_picos(1_250_000);
    model.internal_reasoning = UnitPrice::from_picos(500_000);
    model.request = UnitPrice::from_picos(7_000);
    let quote = quote(&request(100, Some(50)), model);
    let check = |usage: Usage, expected: i64| {
        assert_eq!(quote.cost_of(&usage), Some(nanos(expected)), "{usage:?}")
    };
    check(Usage::default(), 7);
    check(
        Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Usage::default()
        },
        7 + 10_000 + 10_000,
    );
    check(
        Usage {
            prompt_tokens: 100,
            cached_tokens: 60,
            cache_write_tokens: 20,
            completion_tokens: 5,
            reasoning_tokens: 4,
        },
        7 + 20 * 1_000 + 60 * 100 + 20 * 1_250 + 5 * 2_000 + 4 * 500,
    );
    // Counts that do not add up never go below zero.
    check(
        Usage {
            prompt_tokens: 5,
            cached_tokens: 60,
            ..Usage::default()
        },
        7 + 6_000,
    );
    assert_eq!(
        Quote::ceiling(
            nanos(1),
            &ChatRequest::parse(br#"{"model":"m"}"#).unwrap(),
            None
        )
        .cost_of(&Usage::default()),
        None
    );
}

fn check_settle(
    quote: &Quote,
    reservation: i64,
    outcome: MeterOutcome,
    charge: i64,
    basis: ChargeBasis,
    exceeded: bool,
) {
    let settled = quote.settle(nanos(reservation), &outcome);
    assert_eq!(
        (settled.charge, settled.basis, settled.exceeded_reservation),
        (nanos(charge), basis, exceeded),
        "{outcome:?}"
    );
    assert_eq!(
        settled.note.is_none(),
        basis == ChargeBasis::Reported,
        "{outcome:?}"
    );
}

#[test]
fn settling_charges_what_was_reported_or_the_reservation() {
    let priced = quote(&request(100, Some(50)), price("0.000001", "0.000002"));
    let usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        ..Usage::default()
    };
    let reported = |cost| MeterOutcome::Reported {
        cost: nanos(cost),
        usage,
    };
    let nothing = |reason| MeterOutcome::Nothing { reason };
    check_settle(
        &priced,
        200_000,
        reported(20_000),
        20_000,
        ChargeBasis::Reported,
        false,
    );
    check_settle(
        &priced,
        200_000,
        reported(200_000),
        200_000,
        ChargeBasis::Reported,
        false,
    );
    check_settle(
        &priced,
        200_000,
        reported(250_000),
        250_000,
        ChargeBasis::Reported,
        true,
    );
    check_settle(
        &priced,
        200_000,
        reported(-5),
        0,
        ChargeBasis::Reported,
        false,
    );
    check_settle(
        &priced,
        200_000,
        MeterOutcome::TokensOnly { usage },
        20_000,
        ChargeBasis::Computed,
        false,
    );
    check_settle(
        &priced,
        200_000,
        nothing(NoUsage::StreamCut),
        200_000,
        ChargeBasis::Reservation,
        false,
    );
    check_settle(
        &priced,
        200_000,
        nothing(NoUsage::NoResponse),
        200_000,
        ChargeBasis::Reservation,
        false,
    );
    check_settle(
        &priced,
        200_000,
        nothing(NoUsage::ErrorEvent {
            message: "provider disconnected".into(),
        }),
        200_000,
        ChargeBasis::Reservation,
        false,
    );
    check_settle(
        &priced,
        200_000,
        nothing(NoUsage::UpstreamError { status: 429 }),
        0,
        ChargeBasis::NotBilled,
        false,
    );
    check_settle(
        &priced,
        -3,
        nothing(NoUsage::StreamCut),
        0,
        ChargeBasis::Reservation,
        false,
    );

    let unpriced = Quote::ceiling(
        nanos(50_000),
        &ChatRequest::parse(br#"{"model":"m"}"#).unwrap(),
        None,
    );
    check_settle(
        &unpriced,
        50_000,
        MeterOutcome::TokensOnly { usage },
        50_000,
        ChargeBasis::Reservation,
        false,
    );
    check_settle(
        &unpriced,
        50_000,
        reported(1_234),
        1_234,
        ChargeBasis::Reported,
        false,
    );

    let cut = priced.settle(nanos(200_000), &nothing(NoUsage::StreamCut));
    assert_eq!(
        cut.note.as_deref(),
        Some("the stream ended before its usage was reported")
    );
    assert_eq!(cut.release(nanos(200_000)), Money::ZERO);
    let settled = priced.settle(nanos(200_000), &reported(20_000));
    assert_eq!(settled.release(nanos(200_000)), nanos(180_000));
}
