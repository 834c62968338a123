//! Exact cost arithmetic for every default model, in JSON and in streams.

use openrouter_mock::{MockConfig, MockModel};
use serde_json::{Value, json};

use crate::{Mock, assert_usd, chat_body, sse_data};

/// 40 bytes of content: 10 prompt tokens.
const FORTY_BYTES: &str = "0123456789012345678901234567890123456789";

struct Case {
    model: &'static str,
    prompt_nanousd: u64,
    completion_nanousd: u64,
    total_nanousd: u64,
}

/// 10 prompt tokens and 5 completion tokens on each default model.
const CASES: [Case; 5] = [
    Case {
        model: "mock/cheap",
        prompt_nanousd: 10_000,
        completion_nanousd: 10_000,
        total_nanousd: 20_000,
    },
    Case {
        model: "openai/gpt-4o-mini",
        prompt_nanousd: 1_500,
        completion_nanousd: 3_000,
        total_nanousd: 4_500,
    },
    Case {
        model: "mock/with-request-fee",
        prompt_nanousd: 10_000,
        completion_nanousd: 10_000,
        total_nanousd: 120_000,
    },
    Case {
        model: "mock/free:free",
        prompt_nanousd: 0,
        completion_nanousd: 0,
        total_nanousd: 0,
    },
    Case {
        model: "mock/fault-slow",
        prompt_nanousd: 10_000,
        completion_nanousd: 10_000,
        total_nanousd: 20_000,
    },
];

#[tokio::test]
async fn json_cost_is_exact_for_every_default_model() {
    let mock = Mock::start().await;
    let mut expected_total = 0;
    for case in CASES {
        let (status, _, text) = mock
            .chat_text(&chat_body(case.model, FORTY_BYTES, Some(5)))
            .await;
        assert_eq!(status, 200, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert_eq!(body["usage"]["completion_tokens"], 5);
        assert_usd(&text, "cost", case.total_nanousd);
        assert_usd(&text, "upstream_inference_prompt_cost", case.prompt_nanousd);
        assert_usd(
            &text,
            "upstream_inference_completions_cost",
            case.completion_nanousd,
        );
        expected_total += case.total_nanousd;
    }
    assert_eq!(mock.server.state().total_usage_nanousd(), expected_total);
}

#[tokio::test]
async fn stream_cost_is_exact_for_every_default_model() {
    let mock = Mock::start().await;
    for case in CASES {
        let mut body = chat_body(case.model, FORTY_BYTES, Some(5));
        body["stream"] = json!(true);
        let (status, _, text) = mock.chat_text(&body).await;
        assert_eq!(status, 200, "{text}");
        let data = sse_data(&text);
        let usage_line = &data[data.len() - 2];
        assert_usd(usage_line, "cost", case.total_nanousd);
        assert_usd(
            usage_line,
            "upstream_inference_prompt_cost",
            case.prompt_nanousd,
        );
        assert_usd(
            usage_line,
            "upstream_inference_completions_cost",
            case.completion_nanousd,
        );
    }
}

#[tokio::test]
async fn account_totals_add_up_exactly() {
    let mock = Mock::start().await;
    // gpt-4o-mini: 7 prompt tokens (28 bytes) and 13 completion tokens.
    for _ in 0..3 {
        let (status, _, text) = mock
            .chat_text(&chat_body("openai/gpt-4o-mini", &"y".repeat(28), Some(13)))
            .await;
        assert_eq!(status, 200);
        assert_usd(&text, "cost", 7 * 150 + 13 * 600);
    }
    let text = mock
        .get("/key", &mock.master_key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "usage", 3 * 8_850);
    let text = mock
        .get("/credits", &mock.management_key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_usd(&text, "total_usage", 3 * 8_850);
    assert_usd(&text, "total_credits", 100_000_000_000);
}

#[tokio::test]
async fn prices_finer_than_a_nano_dollar_round_half_up() {
    let mut fine = MockModel::new("x/fine", "0.0000000004", "0.0000000015", "0");
    fine.context_length = 1_000;
    let config = MockConfig {
        models: vec![fine],
        ..Default::default()
    };
    let mock = Mock::with_config(config).await;
    // 3 prompt tokens x 0.4 nano = 1.2; 3 completion tokens x 1.5 nano = 4.5;
    // total 5.7 -> 6, each part rounded on its own: 1 and 5.
    let (status, _, text) = mock
        .chat_text(&chat_body("x/fine", "twelve bytes", Some(3)))
        .await;
    assert_eq!(status, 200, "{text}");
    assert_usd(&text, "cost", 6);
    assert_usd(&text, "upstream_inference_prompt_cost", 1);
    assert_usd(&text, "upstream_inference_completions_cost", 5);
}
