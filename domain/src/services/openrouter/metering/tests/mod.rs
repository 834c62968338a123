use super::*;

const JSON: Option<&str> = Some("application/json");
const SSE: Option<&str> = Some("text/event-stream");

thread_local! {
    /// False once a test said its bodies are not chat answers (see [`not_chat_answers`]).
    static CHAT_ANSWERS: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Says the rest of this test's bodies are answers of the Responses or Messages API, which
/// may hold objects the client wrote: only the meter that parses answers whole reads them.
fn not_chat_answers() {
    CHAT_ANSWERS.with(|chat| chat.set(false));
}

/// The meter for this test's bodies: chat's, which reads a lone usage object on its own, or,
/// after [`not_chat_answers`], the one that parses every answer whole.
fn test_meter(status: u16, content_type: Option<&str>) -> UsageMeter {
    if CHAT_ANSWERS.with(std::cell::Cell::get) {
        UsageMeter::for_api(crate::services::Api::ChatCompletions, status, content_type)
    } else {
        UsageMeter::new(status, content_type)
    }
}

/// Meters `body` in chunks of `chunk_size`, with the meter that parses every answer whole and,
/// for chat answers, with chat's too: both must agree.
fn meter_in_chunks(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    chunk_size: usize,
) -> MeterOutcome {
    let run = |mut meter: UsageMeter| {
        for chunk in body.chunks(chunk_size.max(1)) {
            meter.feed(chunk);
        }
        meter.finish()
    };
    let whole = run(UsageMeter::new(status, content_type));
    let quick = run(test_meter(status, content_type));
    assert_eq!(
        whole, quick,
        "chunks of {chunk_size}: the two meters disagree"
    );
    whole
}

/// Meters `body` fed whole, in 1-, 7- and 4096-byte chunks, and split in two at every byte
/// (for bodies small enough), and checks every way gives an outcome that `accept`s.
fn check_each_way(
    status: u16,
    content_type: Option<&str>,
    body: &str,
    accept: impl Fn(&MeterOutcome) -> bool,
) {
    let bytes = body.as_bytes();
    let shown: String = body.chars().take(300).collect();
    for chunk_size in [bytes.len(), 1, 7, 4096] {
        let outcome = meter_in_chunks(status, content_type, bytes, chunk_size);
        assert!(
            accept(&outcome),
            "chunks of {chunk_size}: got {outcome:?} for {shown}"
        );
    }
    if bytes.len() <= 4096 {
        for split in 0..=bytes.len() {
            let mut meter = test_meter(status, content_type);
            meter.feed(&bytes[..split]);
            meter.feed(&bytes[split..]);
            let outcome = meter.finish();
            assert!(
                accept(&outcome),
                "split at {split}: got {outcome:?} for {shown}"
            );
        }
    }
}

fn check_status(status: u16, content_type: Option<&str>, body: &str, expected: MeterOutcome) {
    check_each_way(status, content_type, body, |outcome| *outcome == expected);
}

fn check_malformed(content_type: Option<&str>, body: &str) {
    check_each_way(200, content_type, body, |outcome| {
        matches!(
            outcome,
            MeterOutcome::Nothing {
                reason: NoUsage::Malformed { .. }
            }
        )
    });
}

fn check(content_type: Option<&str>, body: &str, expected: MeterOutcome) {
    check_status(200, content_type, body, expected);
}

fn reported(cost_nanos: i64, prompt_tokens: u64, completion_tokens: u64) -> MeterOutcome {
    MeterOutcome::Reported {
        cost: Money::from_nanos(cost_nanos),
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        },
    }
}

fn nothing(reason: NoUsage) -> MeterOutcome {
    MeterOutcome::Nothing { reason }
}

const COMPLETION: &str = r#"{"id":"gen-1","object":"chat.completion","created":1,"model":"openai/gpt-4o",
"choices":[{"index":0,"message":{"role":"assistant","content":"the \"usage\": {} of \"error\" words"},"finish_reason":"stop"}],
"usage":{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25,"cost":0.00002,
"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":5},
"cost_details":{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0.000008,"upstream_inference_completions_cost":0.000012},
"is_byok":false}}"#;

#[test]
fn reads_usage_from_a_json_body() {
    check(
        JSON,
        COMPLETION,
        MeterOutcome::Reported {
            cost: Money::from_nanos(20_000),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 15,
                cached_tokens: 2,
                reasoning_tokens: 5,
                cache_write_tokens: 0,
            },
        },
    );
    check(
        Some("application/json; charset=utf-8"),
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.0015}}"#,
        reported(1_500_000, 1, 2),
    );
    check(
        None,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.0012}}"#,
        reported(1_200_000, 1, 2),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":1e-10}}"#,
        reported(0, 1, 2),
    );
    check(
        JSON,
        r#"{"usage":{"cost":0.5}}"#,
        reported(500_000_000, 0, 0),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":12.0,"completion_tokens":3.2,"cost":0}}"#,
        reported(0, 12, 4),
    );
    // BYOK: the provider bills the master key's owner directly, on top of OpenRouter's fee.
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.0001,"is_byok":true,"cost_details":{"upstream_inference_cost":0.001}}}"#,
        reported(1_100_000, 1, 2),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.0001,"is_byok":false,"cost_details":{"upstream_inference_cost":0.001}}}"#,
        reported(100_000, 1, 2),
    );
    // Bytes that are not UTF-8 after the usage (read as bytes, not as text) do not hide it.
    let body =
        b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"cost\":0.0015},\"x\":\"\xff\"}";
    for chunk_size in [body.len(), 1, 7] {
        assert_eq!(
            meter_in_chunks(200, JSON, body, chunk_size),
            reported(1_500_000, 1, 2)
        );
    }
}

#[test]
fn json_bodies_without_a_usable_cost() {
    let tokens = |prompt_tokens, completion_tokens| MeterOutcome::TokensOnly {
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        },
    };
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":10,"completion_tokens":15,"cost":null}}"#,
        tokens(10, 15),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":10,"completion_tokens":15}}"#,
        tokens(10, 15),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":10,"completion_tokens":15,"cost":1e300}}"#,
        tokens(10, 15),
    );
    // Read from the number's text: far below a nano-dollar is zero, not unreadable.
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":4e-40}}"#,
        reported(0, 1, 2),
    );
    check(
        JSON,
        r#"{"id":"gen-1","choices":[]}"#,
        nothing(NoUsage::NotReported),
    );
    check(JSON, r#"{"usage":null}"#, nothing(NoUsage::NotReported));
    check(
        JSON,
        r#"{"usage":{"completion_tokens":15}}"#,
        nothing(NoUsage::Malformed {
            detail: "usage has neither a cost nor token counts".into(),
        }),
    );
    check(
        JSON,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.1"#,
        nothing(NoUsage::Incomplete),
    );
    check(JSON, "", nothing(NoUsage::Incomplete));
    for body in [
        "<html>502 Bad Gateway</html>",
        r#"{"usage":{"cost":"0.1"}}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":"0.1"}}"#,
        r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":1,"is_byok":true,"cost_details":{"upstream_inference_cost":true}}}"#,
        "[1,2]",
    ] {
        check_malformed(JSON, body);
    }
    check(
        JSON,
        r#"{"error":{"code":"server_error","message":"Provider disconnected"}}"#,
        nothing(NoUsage::ErrorEvent {
            message: "Provider disconnected".into(),
        }),
    );
}

#[test]
fn error_statuses_without_usage_are_upstream_errors() {
    let insufficient = r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#;
    check_status(
        402,
        JSON,
        insufficient,
        nothing(NoUsage::UpstreamError { status: 402 }),
    );
    check_status(
        503,
        Some("text/plain"),
        "no provider",
        nothing(NoUsage::UpstreamError { status: 503 }),
    );
    check_status(
        429,
        SSE,
        "",
        nothing(NoUsage::UpstreamError { status: 429 }),
    );
    // Usage reported with an error status is still charged.
    check_status(
        400,
        JSON,
        r#"{"usage":{"cost":0.001}}"#,
        reported(1_000_000, 0, 0),
    );
}

#[test]
fn large_json_bodies_keep_only_their_tail() {
    let filler = "x".repeat(5 * 1024 * 1024);
    let body = format!(
        r#"{{"choices":[{{"message":{{"content":"{filler}"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":4,"cost":0.25}},"provider":"p"}}"#
    );
    for chunk_size in [16 * 1024, 1024 * 1024 + 3, body.len()] {
        assert_eq!(
            meter_in_chunks(200, JSON, body.as_bytes(), chunk_size),
            reported(250_000_000, 3, 4),
            "chunks of {chunk_size}"
        );
    }
    let mut meter = UsageMeter::new(200, JSON);
    for chunk in body.as_bytes().chunks(64 * 1024) {
        meter.feed(chunk);
        if let Mode::Json(json) = &meter.mode {
            assert!(json.body.len() <= JSON_BODY_LIMIT + 64 * 1024);
        }
    }
    let without = format!(r#"{{"choices":[{{"message":{{"content":"{filler}"}}}}]}}"#);
    assert_eq!(
        meter_in_chunks(200, JSON, without.as_bytes(), 1 << 20),
        nothing(NoUsage::NotReported)
    );
    let null_usage = format!(r#"{{"c":"{filler}","usage":null}}"#);
    assert_eq!(
        meter_in_chunks(200, JSON, null_usage.as_bytes(), 1 << 20),
        nothing(NoUsage::NotReported)
    );
}

#[test]
fn the_meter_picks_its_mode_from_the_content_type() {
    let cases = [
        (Some("text/event-stream"), true),
        (Some("text/event-stream;charset=UTF-8"), true),
        (Some(" TEXT/EVENT-STREAM "), true),
        (Some("application/json"), false),
        (Some("text/event-streaming"), false),
        (Some(""), false),
        (None, false),
    ];
    for (content_type, is_stream) in cases {
        assert_eq!(
            UsageMeter::new(200, content_type).is_stream(),
            is_stream,
            "{content_type:?}"
        );
    }
}

#[test]
fn reported_floats_convert_exactly() {
    let cases = [
        (0.00002, 20_000),
        (0.0015, 1_500_000),
        (0.0012, 1_200_000),
        (0.000_000_001, 1),
        (0.123_456_789_4, 123_456_789),
        (1.5, 1_500_000_000),
        (0.0, 0),
    ];
    for (cost, nanos) in cases {
        let body =
            format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":1,"cost":{cost}}}}}"#);
        assert_eq!(
            meter_in_chunks(200, JSON, body.as_bytes(), 5),
            reported(nanos, 1, 1),
            "cost {cost}"
        );
    }
}

mod stream;

#[test]
fn a_json_body_is_charged_its_top_level_usage_only() {
    not_chat_answers();
    // An Anthropic tool call's input is an object the model writes and the client can steer.
    let body = |usage: &str| {
        format!(
            r#"{{"type":"message","content":[{{"type":"tool_use","name":"f","input":{{"usage":{{"cost":0,"input_tokens":0,"output_tokens":0}}}}}}]{usage}}}"#
        )
    };
    check_status(
        200,
        JSON,
        &body(r#","usage":{"input_tokens":3,"output_tokens":4,"cost":0.25}"#),
        reported(250_000_000, 3, 4),
    );
    check_status(200, JSON, &body(""), nothing(NoUsage::NotReported));
}

#[test]
fn the_end_of_a_large_body_is_read_only_at_its_top_level() {
    not_chat_answers();
    // A Responses body past the limit: its real usage is out of the tail, and the only one left
    // is in `metadata`, one object below the top level: not read.
    let pad = "p".repeat(JSON_BODY_LIMIT);
    let body = format!(
        r#"{{"object":"response","usage":{{"input_tokens":1,"output_tokens":1,"cost":0.25}},"instructions":"{pad}","metadata":{{"usage":{{"cost":0,"input_tokens":0,"output_tokens":0}}}}}}"#
    );
    for chunk_size in [16 * 1024, 1024 * 1024 + 3, body.len()] {
        let outcome = meter_in_chunks(200, JSON, body.as_bytes(), chunk_size);
        assert!(
            matches!(
                outcome,
                MeterOutcome::Nothing {
                    reason: NoUsage::Malformed { .. }
                }
            ),
            "chunks of {chunk_size}: {outcome:?}"
        );
    }
}

#[test]
fn only_chat_like_answers_have_their_usage_read_on_its_own() {
    use crate::services::Api;
    // A usage object in a tool's input, and none at the top level: no usage, for every API
    // whose answers may hold what the client wrote.
    let body =
        br#"{"type":"message","content":[{"type":"tool_use","input":{"usage":{"cost":0}}}]}"#;
    for api in [Api::Responses, Api::Messages] {
        let mut meter = UsageMeter::for_api(api, 200, JSON);
        meter.feed(body);
        assert_eq!(meter.finish(), nothing(NoUsage::NotReported), "{api:?}");
    }
}
