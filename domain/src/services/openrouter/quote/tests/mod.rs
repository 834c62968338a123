use super::*;
use crate::services::openrouter::OpenRouterConfig;
use crate::services::openrouter::pricing::UnitPrice;
use crate::services::openrouter::request::SearchAsk;

fn price(prompt: &str, completion: &str) -> ModelPrice {
    ModelPrice::per_token(
        UnitPrice::parse(prompt).unwrap(),
        UnitPrice::parse(completion).unwrap(),
    )
}

fn request(prompt_bytes: u64, max_tokens: Option<u64>) -> ChatRequest {
    ChatRequest {
        model: "m".to_string(),
        fallback_models: Vec::new(),
        stream: false,
        max_tokens,
        choices: 1,
        prompt_bytes,
        image_parts: 0,
        file_parts: 0,
        video_parts: 0,
        web_plugin: None,
        web_tools: Vec::new(),
        max_tool_calls: None,
        pdf_engine: None,
        auto_allowed: Vec::new(),
    }
}

fn nanos(count: i64) -> Money {
    Money::from_nanos(count)
}

fn quote(request: &ChatRequest, price: ModelPrice) -> Quote {
    Quote::priced(request, price, &OpenRouterConfig::default()).unwrap()
}

#[test]
fn worst_case_is_exact_to_the_nanodollar() {
    // 100 bytes x 1000 nanos + 50 tokens x 2000 nanos.
    let simple = quote(&request(100, Some(50)), price("0.000001", "0.000002"));
    assert_eq!(simple.worst_case(50), nanos(200_000));
    assert_eq!(simple.worst_case(0), nanos(100_000));
    // Finer than a nano-dollar per token: 101 x 37.5 + 7 x 150 = 4837.5 nanos, rounded up.
    let fine = quote(&request(101, Some(7)), price("0.0000000375", "0.00000015"));
    assert_eq!(fine.worst_case(7), nanos(4_838));
    let free = quote(&request(1_000, Some(10)), price("0", "0"));
    assert_eq!(free.worst_case(10), Money::ZERO);
}

fn check_worst(request: ChatRequest, price: ModelPrice, expected_nanos: i64) {
    let max_tokens = request.max_tokens.unwrap_or(0);
    assert_eq!(
        quote(&request, price).worst_case(max_tokens),
        nanos(expected_nanos),
        "{request:?}"
    );
}

#[test]
fn worst_case_includes_every_priced_component() {
    let base = price("0.000001", "0.000002");
    let with = |change: fn(&mut ModelPrice)| {
        let mut price = base;
        change(&mut price);
        price
    };
    // A per-request fee of $0.005.
    check_worst(
        request(100, Some(50)),
        with(|p| p.request = UnitPrice::from_picos(5_000_000_000)),
        5_200_000,
    );
    // Reasoning on top of the completion price: 50 x (2000 + 3000).
    check_worst(
        request(100, Some(50)),
        with(|p| p.internal_reasoning = UnitPrice::from_picos(3_000_000)),
        350_000,
    );
    // The dearest input price bounds every prompt byte: 100 x 1250.
    check_worst(
        request(100, Some(50)),
        with(|p| p.input_cache_write = UnitPrice::from_picos(1_250_000)),
        225_000,
    );
    // Two image parts: 2 x ($0.001 + 3000 tokens x 1000).
    check_worst(
        ChatRequest {
            image_parts: 2,
            ..request(100, Some(50))
        },
        with(|p| p.image = UnitPrice::from_picos(1_000_000_000)),
        200_000 + 2 * (1_000_000 + 3_000_000),
    );
    // Web search, with no limits asked: one search (at the $0.015 floor, above the model's
    // $0.01) of five results ($0.004 each, 2,000 tokens each), and two model calls, each
    // reading the prompt and the results and generating a completion.
    check_worst(
        ChatRequest {
            web_plugin: Some(SearchAsk::default()),
            ..request(100, Some(50))
        },
        with(|p| p.web_search = UnitPrice::from_picos(10_000_000_000)),
        2 * (100 + 5 * 2_000) * 1_000 + 2 * 50 * 2_000 + 15_000_000 + 5 * 4_000_000,
    );
    // Three choices triple the completion, not the prompt; one output image per choice.
    check_worst(
        ChatRequest {
            choices: 3,
            ..request(100, Some(50))
        },
        base,
        100_000 + 3 * 100_000,
    );
    check_worst(
        ChatRequest {
            choices: 2,
            ..request(100, Some(50))
        },
        with(|p| p.image_output = UnitPrice::from_picos(40_000_000_000)),
        100_000 + 2 * 100_000 + 2 * 40_000_000,
    );
}

#[test]
fn worst_case_saturates_instead_of_overflowing() {
    let dear = price("1000000", "1000000");
    let huge = quote(
        &ChatRequest {
            choices: u64::MAX,
            ..request(u64::MAX, Some(u64::MAX))
        },
        dear,
    );
    assert_eq!(huge.worst_case(u64::MAX), Money::from_nanos(i64::MAX));
}

fn check_fit(quote: &Quote, remaining_nanos: i64, expected: Fit) {
    assert_eq!(
        quote.fit(nanos(remaining_nanos)),
        expected,
        "remaining {remaining_nanos}"
    );
}

#[test]
fn fitting_lowers_to_the_largest_affordable_completion() {
    // Fixed part 100,000 nanos, 2,000 nanos per completion token, 50 tokens asked.
    let asked = quote(&request(100, Some(50)), price("0.000001", "0.000002"));
    check_fit(
        &asked,
        1_000_000,
        Fit::AsRequested {
            reserve: nanos(200_000),
        },
    );
    check_fit(
        &asked,
        200_000,
        Fit::AsRequested {
            reserve: nanos(200_000),
        },
    );
    check_fit(
        &asked,
        199_999,
        Fit::Lowered {
            max_tokens: 49,
            reserve: nanos(198_000),
        },
    );
    check_fit(
        &asked,
        150_001,
        Fit::Lowered {
            max_tokens: 25,
            reserve: nanos(150_000),
        },
    );
    // The default minimum completion is 16 tokens.
    check_fit(
        &asked,
        132_000,
        Fit::Lowered {
            max_tokens: 16,
            reserve: nanos(132_000),
        },
    );
    check_fit(
        &asked,
        131_999,
        Fit::Refuse {
            need_at_least: nanos(132_000),
        },
    );
    check_fit(
        &asked,
        0,
        Fit::Refuse {
            need_at_least: nanos(132_000),
        },
    );
    check_fit(
        &asked,
        -5,
        Fit::Refuse {
            need_at_least: nanos(132_000),
        },
    );

    // Asking for fewer tokens than the minimum needs only what is asked.
    let few = quote(&request(100, Some(10)), price("0.000001", "0.000002"));
    check_fit(
        &few,
        120_000,
        Fit::AsRequested {
            reserve: nanos(120_000),
        },
    );
    check_fit(
        &few,
        119_999,
        Fit::Refuse {
            need_at_least: nanos(120_000),
        },
    );
}

#[test]
fn fitting_is_exact_with_subnanodollar_prices() {
    // 37.5 nanos per token and nothing else: k tokens fit exactly when ceil(37.5 k) <= remaining.
    let fine = quote(&request(0, Some(1_000_000)), price("0", "0.0000000375"));
    for remaining in [600, 601, 999, 1_000, 1_013, 123_457, 37_500_000] {
        match fine.fit(nanos(remaining)) {
            Fit::Lowered {
                max_tokens,
                reserve,
            } => {
                assert!(reserve <= nanos(remaining), "remaining {remaining}");
                assert_eq!(reserve, fine.worst_case(max_tokens));
                assert!(
                    fine.worst_case(max_tokens + 1) > nanos(remaining),
                    "remaining {remaining}"
                );
            }
            Fit::AsRequested { reserve } => assert_eq!(reserve, nanos(37_500_000)),
            other => panic!("remaining {remaining}: {other:?}"),
        }
    }
    check_fit(
        &fine,
        1_000,
        Fit::Lowered {
            max_tokens: 26,
            reserve: nanos(975),
        },
    );
    check_fit(
        &fine,
        599,
        Fit::Refuse {
            need_at_least: nanos(600),
        },
    );
}

#[test]
fn a_request_without_max_tokens_is_bounded_by_the_model() {
    let mut limited = price("0.000001", "0.000002");
    limited.context_length = Some(8_000);
    limited.max_completion_tokens = Some(1_000);
    let open = quote(&request(100, None), limited);
    // The top provider's completion limit: 100,000 + 1,000 x 2,000.
    check_fit(
        &open,
        3_000_000,
        Fit::AsRequested {
            reserve: nanos(2_100_000),
        },
    );
    check_fit(
        &open,
        1_000_000,
        Fit::Lowered {
            max_tokens: 450,
            reserve: nanos(1_000_000),
        },
    );

    limited.max_completion_tokens = None;
    let by_context = quote(&request(100, None), limited);
    check_fit(
        &by_context,
        100_000_000,
        Fit::AsRequested {
            reserve: nanos(16_100_000),
        },
    );

    // No limit known at all: the limit is always written, so the upstream stays bound.
    let unbounded = quote(&request(100, None), price("0.000001", "0.000002"));
    let reserve = unbounded.worst_case(UNKNOWN_COMPLETION_LIMIT);
    check_fit(
        &unbounded,
        i64::MAX,
        Fit::Lowered {
            max_tokens: UNKNOWN_COMPLETION_LIMIT,
            reserve,
        },
    );
    check_fit(
        &unbounded,
        300_000,
        Fit::Lowered {
            max_tokens: 100,
            reserve: nanos(300_000),
        },
    );
    let free = quote(&request(100, None), price("0", "0"));
    check_fit(
        &free,
        0,
        Fit::Lowered {
            max_tokens: UNKNOWN_COMPLETION_LIMIT,
            reserve: Money::ZERO,
        },
    );
}

#[test]
fn the_minimum_completion_is_configurable() {
    let config = OpenRouterConfig {
        min_completion_tokens: 1,
        ..OpenRouterConfig::default()
    };
    let asked = Quote::priced(
        &request(100, Some(50)),
        price("0.000001", "0.000002"),
        &config,
    )
    .unwrap();
    check_fit(
        &asked,
        102_000,
        Fit::Lowered {
            max_tokens: 1,
            reserve: nanos(102_000),
        },
    );
    check_fit(
        &asked,
        101_999,
        Fit::Refuse {
            need_at_least: nanos(102_000),
        },
    );
}

mod settle;

#[test]
fn a_file_part_prices_the_prompt_at_the_context_window() {
    let mut windowed = price("0.000001", "0.000002");
    windowed.context_length = Some(100_000);
    let with_file = ChatRequest {
        file_parts: 1,
        ..request(1_000, Some(10))
    };
    // 100,000 prompt tokens x 1,000 nanos + 10 x 2,000.
    assert_eq!(
        quote(&with_file, windowed).worst_case(10),
        nanos(100_020_000)
    );
    // A body larger than the window is still priced by its bytes.
    let large = ChatRequest {
        file_parts: 1,
        ..request(200_000, Some(10))
    };
    assert_eq!(quote(&large, windowed).worst_case(10), nanos(200_020_000));
    // No listed window: the largest offered.
    let unknown = price("0.000001", "0.000002");
    assert_eq!(
        quote(&with_file, unknown).worst_case(0),
        nanos(UNKNOWN_CONTEXT_TOKENS as i64 * 1_000)
    );
    // Without a file part, the bytes bound the prompt.
    assert_eq!(
        quote(&request(1_000, Some(10)), windowed).worst_case(10),
        nanos(1_020_000)
    );
}
