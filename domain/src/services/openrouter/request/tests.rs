use super::*;

/// A request as parsed, with the fields most tests vary.
fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        fallback_models: Vec::new(),
        stream: false,
        max_tokens: None,
        choices: 1,
        prompt_bytes: 0,
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

fn check(body: &str, expected: Result<ChatRequest, RequestError>) {
    let expected = expected.map(|mut request| {
        request.prompt_bytes = body.len() as u64;
        request
    });
    assert_eq!(ChatRequest::parse(body.as_bytes()), expected, "body {body}");
}

#[test]
fn reads_the_priced_fields() {
    check(
        r#"{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        Ok(request("openai/gpt-4o")),
    );
    check(
        r#"{"model":"m","stream":true,"max_tokens":50,"temperature":0.2,"messages":[]}"#,
        Ok(ChatRequest {
            stream: true,
            max_tokens: Some(50),
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","max_completion_tokens":70}"#,
        Ok(ChatRequest {
            max_tokens: Some(70),
            ..request("m")
        }),
    );
    // Both limits set: the larger bounds the worst case.
    check(
        r#"{"model":"m","max_tokens":70,"max_completion_tokens":30}"#,
        Ok(ChatRequest {
            max_tokens: Some(70),
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","max_tokens":null,"stream":null}"#,
        Ok(request("m")),
    );
    // A whole number written as a float, as some clients serialize it.
    check(
        r#"{"model":"m","max_tokens":5.0}"#,
        Ok(ChatRequest {
            max_tokens: Some(5),
            ..request("m")
        }),
    );
    check(
        r#"{"model":"a","models":["b","c:online"]}"#,
        Ok(ChatRequest {
            fallback_models: vec!["b".into(), "c:online".into()],
            web_plugin: Some(SearchAsk::default()),
            ..request("a")
        }),
    );
    check(
        r#"{"model":"m","n":3}"#,
        Ok(ChatRequest {
            choices: 3,
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","n":2,"best_of":5}"#,
        Ok(ChatRequest {
            choices: 5,
            ..request("m")
        }),
    );
    check(r#"{"model":"m","prompt":"once upon"}"#, Ok(request("m")));
    check(r#"{"model":"m","prompt":[1,2,3]}"#, Ok(request("m")));
    check(
        r#"{"model":"m","prompt":["a","b","c"],"n":2}"#,
        Ok(ChatRequest {
            choices: 6,
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","prompt":[[1,2],[3]]}"#,
        Ok(ChatRequest {
            choices: 2,
            ..request("m")
        }),
    );
    check("  \n{\"model\":\"m\"}\n", Ok(request("m")));
    check(
        r#"{"model":"m","message":"\"model\":\"other\""}"#,
        Ok(request("m")),
    );
}

#[test]
fn counts_image_parts() {
    let body = r#"{"model":"m","messages":[
        {"role":"system","content":"look"},
        {"role":"user","content":[
            {"type":"text","text":"what is \"image_url\" here?"},
            {"type":"image_url","image_url":{"url":"https://example.com/a.png"}},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"high"}}]},
        {"role":"user","content":[
            {"image_url":{"url":"https://example.com/b.png"}},{"type":"image"}]}]}"#;
    check(
        body,
        Ok(ChatRequest {
            image_parts: 4,
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"image"}]}]}"#,
        Ok(request("m")),
    );
}

#[test]
fn skips_messages_only_when_they_cannot_hold_an_image_part() {
    use super::wire::may_hold_image_parts;
    // The usual body: messages are skipped unread.
    assert!(!may_hold_image_parts(
        r#"{"model":"m","messages":[{"role":"user","content":"h\u00e9llo\n"}]}"#
    ));
    assert!(may_hold_image_parts(r#"{"content":"an image"}"#));
    assert!(may_hold_image_parts(r#"{"content":"\u0041"}"#));
    assert!(may_hold_image_parts(r#"{"content":"ends in \u00"#));
    // A body that is not UTF-8 is never skipped: reading its messages finds the bad byte.
    assert!(matches!(
        ChatRequest::parse(b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xff\"}]}"),
        Err(RequestError::NotJson { .. })
    ));
    // Read as bytes, the rest of the rules hold: an unpriced field is not read (so its bytes
    // are left to the upstream), and anything after the object is refused.
    let body = b"{\"model\":\"m\",\"user\":\"\xff\"}";
    assert_eq!(
        ChatRequest::parse(body),
        Ok(ChatRequest {
            prompt_bytes: body.len() as u64,
            ..request("m")
        })
    );
    assert!(matches!(
        ChatRequest::parse(b"{\"model\":\"m\"} \xff"),
        Err(RequestError::NotJson { .. })
    ));
    // An image marker written with escapes is still counted.
    check(
        r#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"\u0069mage_url","\u0069mage_url":{"url":"https://example.com/a.png"}}]}]}"#,
        Ok(ChatRequest {
            image_parts: 1,
            ..request("m")
        }),
    );
    // Skipped messages are checked for JSON syntax only, as unpriced fields are: what only
    // reading a value finds (here a lone surrogate) is left to the upstream.
    check(
        r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#,
        Ok(request("m")),
    );
    // Skipped messages are still checked for JSON syntax.
    assert!(matches!(
        ChatRequest::parse(br#"{"model":"m","messages":[{"role":"user",}]}"#),
        Err(RequestError::NotJson { .. })
    ));
}

#[test]
fn reads_web_search_and_its_limits() {
    let web = |model: &str, max_uses, max_results| ChatRequest {
        web_plugin: Some(SearchAsk {
            max_uses,
            max_results,
            fetch: false,
        }),
        ..request(model)
    };
    check(r#"{"model":"m:online"}"#, Ok(web("m:online", None, None)));
    check(
        r#"{"model":"m","plugins":[{"id":"web","max_results":3,"max_uses":2}]}"#,
        Ok(web("m", Some(2), Some(3))),
    );
    check(
        r#"{"model":"m","plugins":[{"id":"web","enabled":false}]}"#,
        Ok(request("m")),
    );
    check(
        r#"{"model":"m","plugins":[{"id":"file-parser","pdf":{"engine":"native"}}]}"#,
        Ok(ChatRequest {
            pdf_engine: Some("native".into()),
            ..request("m")
        }),
    );
    check(r#"{"model":"m","plugins":null}"#, Ok(request("m")));
    check(
        r#"{"model":"m","web_search_options":{"search_context_size":"high"}}"#,
        Ok(web("m", None, None)),
    );
    check(
        r#"{"model":"m","max_tool_calls":4,"tools":[{"type":"openrouter:web_search",
             "parameters":{"max_results":7}}]}"#,
        Ok(ChatRequest {
            web_tools: vec![SearchAsk {
                max_uses: None,
                max_results: Some(7),
                fetch: false,
            }],
            max_tool_calls: Some(4),
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2}]}"#,
        Ok(ChatRequest {
            web_tools: vec![SearchAsk {
                max_uses: Some(2),
                max_results: None,
                fetch: false,
            }],
            ..request("m")
        }),
    );
    check(
        r#"{"model":"m","tools":[{"type":"function",
             "function":{"name":"web","parameters":{"type":"object"}}},
             {"name":"client_tool","input_schema":{}}]}"#,
        Ok(request("m")),
    );
    check(
        r#"{"model":"m","plugins":[{"id":"auto-router","allowed_models":["anthropic/*"]}]}"#,
        Ok(ChatRequest {
            auto_allowed: vec!["anthropic/*".into()],
            ..request("m")
        }),
    );
}

#[test]
fn refuses_what_cannot_be_priced() {
    let refused = |body: &str| ChatRequest::parse(body.as_bytes()).unwrap_err();
    assert_eq!(refused(r#"{"model":"@preset/team"}"#), RequestError::Preset);
    assert_eq!(
        refused(r#"{"model":"openai/gpt-4o@preset/team"}"#),
        RequestError::Preset
    );
    assert_eq!(
        refused(r#"{"model":"m","preset":"team"}"#),
        RequestError::Preset
    );
    assert_eq!(
        refused(r#"{"model":"m","plugins":[{"id":"mystery"}]}"#),
        RequestError::UnknownPlugin {
            id: "\"mystery\"".into()
        }
    );
    assert_eq!(
        refused(r#"{"model":"m","tools":[{"type":"code_interpreter"}]}"#),
        RequestError::UnpricedTool {
            kind: "\"code_interpreter\"".into()
        }
    );
    assert!(matches!(
        refused(r#"{"model":"m","plugins":[{"id":"web","max_results":0}]}"#),
        RequestError::InvalidCount {
            field: "max_results",
            ..
        }
    ));
    for bad in [
        r#"{"model":"m","plugins":{"id":"web"}}"#,
        r#"{"model":"m","plugins":[{"id":"web"},{"id":"web","enabled":false}]}"#,
        r#"{"model":"m","plugins":[{"id":"file-parser","pdf":"x"}]}"#,
    ] {
        assert!(
            matches!(refused(bad), RequestError::InvalidField { .. }),
            "{bad}"
        );
    }
    let message = refused(r#"{"model":"m","tools":[{"type":"image_generation"}]}"#).to_string();
    assert!(
        message.contains("image_generation") && message.contains("remove it"),
        "{message}"
    );
}

#[test]
fn refuses_bad_bodies_with_a_reason() {
    let not_json = |body: &str| match ChatRequest::parse(body.as_bytes()) {
        Err(RequestError::NotJson { detail }) => detail,
        other => panic!("{body}: expected NotJson, got {other:?}"),
    };
    for body in [
        "",
        "model=m",
        "{",
        "{\"model\":\"m\",}",
        "{\"model\":\"m\"} trailing",
        "\u{feff}{}",
    ] {
        not_json(body);
    }
    check("[]", Err(RequestError::NotAnObject));
    check("\"text\"", Err(RequestError::NotAnObject));
    check("42", Err(RequestError::NotAnObject));
    check("{}", Err(RequestError::MissingModel));
    check(r#"{"model":null}"#, Err(RequestError::MissingModel));
    check(
        r#"{"model":""}"#,
        Err(RequestError::InvalidModel {
            found: "\"\"".into(),
        }),
    );
    check(
        r#"{"model":"  "}"#,
        Err(RequestError::InvalidModel {
            found: "\"  \"".into(),
        }),
    );
    check(
        r#"{"model":7}"#,
        Err(RequestError::InvalidModel { found: "7".into() }),
    );
    check(
        r#"{"model":"m","models":"n"}"#,
        Err(RequestError::InvalidModels {
            found: "\"n\"".into(),
        }),
    );
    check(
        r#"{"model":"m","models":["n",1]}"#,
        Err(RequestError::InvalidModels { found: "1".into() }),
    );
    check(
        r#"{"model":"m","stream":"yes"}"#,
        Err(RequestError::InvalidStream {
            found: "\"yes\"".into(),
        }),
    );
    let bad_max = |found: &str| {
        Err(RequestError::InvalidMaxTokens {
            field: "max_tokens",
            found: found.into(),
        })
    };
    check(r#"{"model":"m","max_tokens":0}"#, bad_max("0"));
    check(r#"{"model":"m","max_tokens":-5}"#, bad_max("-5"));
    check(r#"{"model":"m","max_tokens":1.5}"#, bad_max("1.5"));
    check(r#"{"model":"m","max_tokens":"100"}"#, bad_max("\"100\""));
    check(r#"{"model":"m","max_tokens":1e30}"#, bad_max("1e+30"));
    check(
        r#"{"model":"m","max_completion_tokens":true}"#,
        Err(RequestError::InvalidMaxTokens {
            field: "max_completion_tokens",
            found: "true".into(),
        }),
    );
    check(
        r#"{"model":"m","n":0}"#,
        Err(RequestError::InvalidCount {
            field: "n",
            found: "0".into(),
        }),
    );
    check(
        r#"{"model":"m","best_of":"2"}"#,
        Err(RequestError::InvalidCount {
            field: "best_of",
            found: "\"2\"".into(),
        }),
    );
    let long = format!(r#"{{"model":["{}"]}}"#, "x".repeat(100));
    match ChatRequest::parse(long.as_bytes()) {
        Err(RequestError::InvalidModel { found }) => {
            assert!(found.len() < 50 && found.ends_with("..."), "{found}")
        }
        other => panic!("expected InvalidModel, got {other:?}"),
    }
}

#[test]
fn refuses_ambiguous_or_misshapen_fields() {
    for body in [
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"m","max_tokens":10,"max_tokens":100000}"#,
        r#"{"model":"m","plugins":{"id":"web"}}"#,
    ] {
        assert!(
            matches!(
                ChatRequest::parse(body.as_bytes()),
                Err(RequestError::InvalidField { .. })
            ),
            "{body}"
        );
    }
}

#[test]
fn error_messages_say_what_to_do() {
    let messages = [
        RequestError::NotJson {
            detail: "EOF".into(),
        }
        .to_string(),
        RequestError::MissingModel.to_string(),
        RequestError::InvalidMaxTokens {
            field: "max_tokens",
            found: "0".into(),
        }
        .to_string(),
    ];
    assert!(messages[0].contains("not valid JSON") && messages[0].contains("send a JSON object"));
    assert!(messages[1].contains("set it to a model id"));
    assert!(
        messages[2].contains("\"max_tokens\" must be a whole number")
            && messages[2].contains("not 0")
    );
}

#[test]
fn each_api_reads_its_own_limit_and_inputs() {
    let parse = |api, body: &str| ChatRequest::parse_as(api, body.as_bytes()).unwrap();
    // Responses: `max_output_tokens`, images in `input`, a web-search tool, one choice.
    let responses = parse(
        Api::Responses,
        r#"{"model":"m","instructions":"be brief","max_output_tokens":300,"max_tokens":9,"n":4,
            "input":[{"role":"user","content":[{"type":"input_text","text":"what is this?"},
                     {"type":"input_image","image_url":"https://example.com/a.png"}]}],
            "tools":[{"type":"web_search_preview"}],"reasoning":{"effort":"high"}}"#,
    );
    assert_eq!(
        responses.max_tokens,
        Some(300),
        "the largest limit field counts"
    );
    assert_eq!((responses.choices, responses.image_parts), (1, 1));
    assert_eq!(responses.web_tools, vec![SearchAsk::default()]);
    assert_eq!(
        parse(Api::Responses, r#"{"model":"m","input":"hi"}"#).max_tokens,
        None
    );
    // Messages: `max_tokens`, images in `messages`, Anthropic's web-search tool.
    let messages = parse(
        Api::Messages,
        r#"{"model":"m","max_tokens":1024,"system":"s","messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}},
            {"type":"text","text":"hi"}]}],
            "tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2}]}"#,
    );
    assert_eq!(messages.max_tokens, Some(1024));
    assert_eq!((messages.choices, messages.image_parts), (1, 1));
    assert_eq!(
        messages.web_tools,
        vec![SearchAsk {
            max_uses: Some(2),
            max_results: None,
            fetch: false,
        }]
    );
    // Embeddings generate nothing.
    let embeddings = parse(Api::Embeddings, r#"{"model":"m","input":["a","b"]}"#);
    assert_eq!((embeddings.max_tokens, embeddings.choices), (Some(0), 0));
    // A bad limit is refused in the API's own field.
    assert_eq!(
        ChatRequest::parse_as(Api::Responses, br#"{"model":"m","max_output_tokens":0}"#),
        Err(RequestError::InvalidMaxTokens {
            field: "max_output_tokens",
            found: "0".into()
        })
    );
}

#[test]
fn counts_file_parts_in_every_api() {
    let parse = |api, body: &str| ChatRequest::parse_as(api, body.as_bytes()).unwrap();
    let chat = parse(
        Api::ChatCompletions,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"read it"},
            {"type":"file","file":{"filename":"a.pdf","file_data":"https://example.com/a.pdf"}}]}]}"#,
    );
    let responses = parse(
        Api::Responses,
        r#"{"model":"m","input":[{"role":"user","content":[
            {"type":"input_file","file_url":"https://example.com/a.pdf"},
            {"type":"input_image","image_url":"https://example.com/a.png"}]}]}"#,
    );
    let messages = parse(
        Api::Messages,
        r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":[
            {"type":"document","source":{"type":"url","url":"https://example.com/a.pdf"}}]}]}"#,
    );
    assert_eq!((chat.file_parts, chat.image_parts), (1, 0));
    assert_eq!((responses.file_parts, responses.image_parts), (1, 1));
    assert_eq!((messages.file_parts, messages.image_parts), (1, 0));
    // The word in text is not a part, whatever the precheck says.
    let text = parse(
        Api::ChatCompletions,
        r#"{"model":"m","messages":[{"role":"user","content":"open the file"}]}"#,
    );
    assert_eq!(text.file_parts, 0);
}

#[test]
fn the_precheck_sees_every_part_marker() {
    use super::wire::may_hold_image_parts;
    for (body, holds) in [
        (
            r#"{"content":"plain words about files and documents"}"#,
            false,
        ),
        (r#"{"type":"file"}"#, true),
        (r#"{"type":"input_file"}"#, true),
        (r#"{"type":"document"}"#, true),
        (r#"{"type":"input_image"}"#, true),
        (r#"{"content":"say \"file\" twice"}"#, false),
        (r#"{"type":"\u0066ile"}"#, true),
    ] {
        assert_eq!(may_hold_image_parts(body), holds, "{body}");
    }
}

#[test]
fn a_part_typed_as_a_file_is_a_file_whatever_else_it_holds() {
    let parts = ChatRequest::parse(
        br#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"file","file":{"file_data":"https://example.com/a.pdf"},"image_url":"x"}]}]}"#,
    )
    .unwrap();
    assert_eq!(parts.file_parts, 1);
}
