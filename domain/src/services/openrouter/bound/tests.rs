use serde_json::{Value, json};

use super::*;
use crate::services::openrouter::request::ChatRequest;

fn limit(max_tokens: u64) -> Bounds {
    Bounds {
        max_tokens: Some(max_tokens),
        ..Bounds::default()
    }
}

fn bounded(api: Api, body: &str, bounds: &Bounds) -> Value {
    let out = bound_body(api, body.as_bytes(), bounds).unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn check_lowered(body: &str, max_tokens: u64, expected: &str) {
    let expected: Value = serde_json::from_str(expected).unwrap();
    assert_eq!(
        bounded(Api::ChatCompletions, body, &limit(max_tokens)),
        expected,
        "{body}"
    );
}

#[test]
fn writes_the_limit_in_the_body() {
    check_lowered(
        r#"{"model":"m","max_tokens":1000,"messages":[]}"#,
        40,
        r#"{"model":"m","max_tokens":40,"messages":[]}"#,
    );
    check_lowered(r#"{"model":"m"}"#, 40, r#"{"model":"m","max_tokens":40}"#);
    check_lowered(
        r#"{"model":"m","max_completion_tokens":900}"#,
        40,
        r#"{"model":"m","max_completion_tokens":40}"#,
    );
    check_lowered(
        r#"{"model":"m","max_tokens":500,"max_completion_tokens":900}"#,
        40,
        r#"{"model":"m","max_tokens":40,"max_completion_tokens":40}"#,
    );
    // A limit the client set below ours is kept: only the larger one is lowered.
    check_lowered(
        r#"{"model":"m","max_tokens":500,"max_completion_tokens":900}"#,
        700,
        r#"{"model":"m","max_tokens":500,"max_completion_tokens":700}"#,
    );
    check_lowered(
        r#"{"model":"m","max_tokens":100.0,"max_completion_tokens":900}"#,
        700,
        r#"{"model":"m","max_tokens":100,"max_completion_tokens":700}"#,
    );
    check_lowered(
        r#"{"model":"m","max_tokens":null,"temperature":0.7,"stop":["\n"]}"#,
        7,
        r#"{"model":"m","max_tokens":7,"temperature":0.7,"stop":["\n"]}"#,
    );
    // Values other than the limit go out byte for byte: number forms, spacing, escapes.
    let lowered = bound_body(
        Api::ChatCompletions,
        br#"{"temperature":1.50,"model":"m","messages":[{"role":"user","content":"caf\u00e9 \"x\""}], "max_tokens":9}"#,
        &limit(5),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(lowered).unwrap(),
        r#"{"max_tokens":5,"messages":[{"role":"user","content":"caf\u00e9 \"x\""}],"model":"m","temperature":1.50}"#
    );
    let lowered = bound_body(
        Api::ChatCompletions,
        br#"{"model":"m","max_tokens":1000}"#,
        &limit(40),
    )
    .unwrap();
    assert_eq!(ChatRequest::parse(&lowered).unwrap().max_tokens, Some(40));
    assert_eq!(
        bound_body(Api::ChatCompletions, b"[1]", &limit(40)),
        Err(RequestError::NotAnObject)
    );
    assert!(matches!(
        bound_body(Api::ChatCompletions, b"{", &limit(40)),
        Err(RequestError::NotJson { .. })
    ));
}

#[test]
fn each_api_has_its_limit_in_its_own_field() {
    assert_eq!(
        bounded(Api::Responses, r#"{"model":"m","input":"hi"}"#, &limit(40)),
        json!({"model":"m","input":"hi","max_output_tokens":40})
    );
    assert_eq!(
        bounded(
            Api::Responses,
            r#"{"model":"m","max_output_tokens":900}"#,
            &limit(40)
        ),
        json!({"model":"m","max_output_tokens":40})
    );
    assert_eq!(
        bounded(
            Api::Messages,
            r#"{"model":"m","max_tokens":900,"messages":[]}"#,
            &limit(40)
        ),
        json!({"model":"m","max_tokens":40,"messages":[]})
    );
    assert_eq!(
        bounded(Api::Embeddings, r#"{"model":"m","input":"x"}"#, &limit(40)),
        json!({"model":"m","input":"x"})
    );
}

#[test]
fn a_reasoning_budget_stays_below_the_limit() {
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m","max_tokens":8000,"reasoning":{"max_tokens":6000,"exclude":true}}"#,
            &limit(3000)
        ),
        json!({"model":"m","max_tokens":3000,"reasoning":{"max_tokens":2999,"exclude":true}})
    );
    // Below the limit already: left as it is.
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m","reasoning":{"max_tokens":600}}"#,
            &limit(3000)
        ),
        json!({"model":"m","max_tokens":3000,"reasoning":{"max_tokens":600}})
    );
    assert_eq!(
        bounded(
            Api::Messages,
            r#"{"model":"m","max_tokens":8000,"thinking":{"type":"enabled","budget_tokens":4000}}"#,
            &limit(2048)
        ),
        json!({"model":"m","max_tokens":2048,"thinking":{"type":"enabled","budget_tokens":2047}})
    );
}

fn max_price() -> MaxPrice {
    MaxPrice {
        prompt: UnitPrice::from_picos(150_000),
        completion: UnitPrice::from_picos(600_000),
        request: UnitPrice::ZERO,
        image: UnitPrice::from_picos(1_445_000_000),
    }
}

#[test]
fn writes_the_reserved_prices_as_max_price() {
    let bounds = Bounds {
        max_price: Some(max_price()),
        ..limit(40)
    };
    // Exact decimals, per million tokens for prompt and completion, per unit for the rest.
    let out = bound_body(Api::ChatCompletions, br#"{"model":"m"}"#, &bounds).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(
            r#""max_price":{"prompt":0.15,"completion":0.6,"request":0,"image":0.001445}"#
        ),
        "{text}"
    );
    // A client's own routing stays; its lower price stays, a higher one is lowered.
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m","provider":{"order":["a"],"max_price":{"prompt":0.1,"completion":"5","audio":1}}}"#,
            &bounds
        ),
        json!({"model":"m","max_tokens":40,"provider":{"order":["a"],"max_price":{
            "prompt":0.1,"audio":1,"completion":0.6,"request":0,"image":0.001445}}})
    );
    for bad in [
        r#"{"model":"m","provider":"cheap"}"#,
        r#"{"model":"m","provider":{"max_price":3}}"#,
        r#"{"model":"m","provider":{"max_price":{"prompt":"lots"}}}"#,
    ] {
        assert!(
            matches!(
                bound_body(Api::ChatCompletions, bad.as_bytes(), &bounds),
                Err(RequestError::InvalidField { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn writes_search_limits_tool_calls_and_the_pdf_engine() {
    let bounds = Bounds {
        web_plugin: Some(WebLimits {
            max_uses: 1,
            max_results: 5,
        }),
        pdf_engine: Some("cloudflare-ai"),
        ..limit(40)
    };
    // Web search turned on without the plugin (a `:online` model): the plugin is added.
    assert_eq!(
        bounded(Api::ChatCompletions, r#"{"model":"m:online"}"#, &bounds),
        json!({"model":"m:online","max_tokens":40,"plugins":[
            {"id":"web","max_uses":1,"max_results":5},
            {"id":"file-parser","pdf":{"engine":"cloudflare-ai"}}]})
    );
    // A plugin present gets the limits; a named engine stays.
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m","plugins":[{"id":"web","max_results":5,"engine":"exa"},
                {"id":"file-parser","pdf":{"engine":"native"}}]}"#,
            &bounds
        ),
        json!({"model":"m","max_tokens":40,"plugins":[
            {"id":"web","max_uses":1,"max_results":5,"engine":"exa"},
            {"id":"file-parser","pdf":{"engine":"native"}}]})
    );
    let tools = Bounds {
        max_tool_calls: Some(2),
        ..limit(40)
    };
    assert_eq!(
        bounded(
            Api::Responses,
            r#"{"model":"m","max_tool_calls":30}"#,
            &tools
        ),
        json!({"model":"m","max_output_tokens":40,"max_tool_calls":2})
    );
    assert_eq!(
        bounded(Api::Responses, r#"{"model":"m"}"#, &tools),
        json!({"model":"m","max_output_tokens":40,"max_tool_calls":2})
    );
}

#[test]
fn usd_text_is_exact() {
    for (picos, text) in [
        (0, "0"),
        (1, "0.000000000001"),
        (150_000_000_000, "0.15"),
        (37_500_000, "0.0000375"),
        (2_000_000_000_000, "2"),
        (12_345_678_000_000_000, "12345.678"),
    ] {
        assert_eq!(usd_text(picos), text);
    }
}

#[test]
fn web_tools_get_their_limits_and_disabled_plugins_are_turned_on() {
    let bounds = Bounds {
        web_tools: Some(WebToolLimits {
            max_uses: 1,
            max_characters: 2_000,
        }),
        ..limit(40)
    };
    assert_eq!(
        bounded(
            Api::Messages,
            r#"{"model":"m","max_tokens":90,"tools":[
                {"type":"web_search_20250305","name":"web_search"},
                {"type":"web_fetch_20250910","name":"web_fetch","max_uses":2},
                {"name":"client","input_schema":{}}]}"#,
            &bounds
        ),
        json!({"model":"m","max_tokens":40,"tools":[
            {"type":"web_search_20250305","name":"web_search","max_uses":1},
            {"type":"web_fetch_20250910","name":"web_fetch","max_uses":2},
            {"name":"client","input_schema":{}}]})
    );
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m","tools":[{"type":"openrouter:web_search",
                "parameters":{"max_characters":90000,"max_results":3}}]}"#,
            &bounds
        ),
        json!({"model":"m","max_tokens":40,"tools":[{"type":"openrouter:web_search",
            "parameters":{"max_characters":2000,"max_results":3,"max_uses":1}}]})
    );
    // A disabled plugin the bounds are for is turned on, not duplicated.
    let web = Bounds {
        web_plugin: Some(WebLimits {
            max_uses: 1,
            max_results: 5,
        }),
        ..limit(40)
    };
    assert_eq!(
        bounded(
            Api::ChatCompletions,
            r#"{"model":"m:online","plugins":[{"id":"web","enabled":false}],"provider":null}"#,
            &Bounds {
                max_price: Some(max_price()),
                ..web
            }
        ),
        json!({"model":"m:online","max_tokens":40,
            "plugins":[{"id":"web","max_uses":1,"max_results":5}],
            "provider":{"max_price":{"prompt":0.15,"completion":0.6,"request":0,"image":0.001445}}})
    );
}

#[test]
fn keys_with_escapes_are_read_and_written_as_json() {
    // An escaped key is the key it spells; a key that needs escaping goes out escaped.
    check_lowered(
        r#"{"model":"m","max\u005ftokens":1000,"a\"b\\c":1,"é\n":2}"#,
        40,
        r#"{"model":"m","max_tokens":40,"a\"b\\c":1,"é\n":2}"#,
    );
    let out = bound_body(Api::ChatCompletions, br#"{"model":"m","q\"":1}"#, &limit(5)).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"model":"m","q\"":1,"max_tokens":5}"#
    );
}
