use super::*;

fn token_chunk(content: &str) -> String {
    format!(
        r#"data: {{"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o","provider":"OpenAI","choices":[{{"index":0,"delta":{{"role":"assistant","content":"{content}"}},"finish_reason":null}}]}}"#
    ) + "\n\n"
}

const USAGE_CHUNK: &str = r#"data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"openai/gpt-4o","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25,"cost":0.00002,"completion_tokens_details":{"reasoning_tokens":5}}}"#;

fn stream(parts: &[&str]) -> String {
    parts.concat()
}

fn reported_stream() -> MeterOutcome {
    MeterOutcome::Reported {
        cost: Money::from_nanos(20_000),
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 15,
            reasoning_tokens: 5,
            ..Usage::default()
        },
    }
}

#[test]
fn reads_usage_from_an_event_stream() {
    let hello = token_chunk("Hello");
    let usage = format!("{USAGE_CHUNK}\n\n");
    check(
        SSE,
        &stream(&[
            ": OPENROUTER PROCESSING\n\n",
            &hello,
            ": OPENROUTER PROCESSING\n\n",
            &token_chunk(" world"),
            &usage,
            "data: [DONE]\n\n",
        ]),
        reported_stream(),
    );
    // CRLF line endings, no space after the colon, and other fields.
    let crlf = stream(&[
        ": keep-alive\r\n\r\n",
        "event: message\r\nid: 1\r\n",
        &hello.replace('\n', "\r\n"),
        &USAGE_CHUNK.replacen("data: ", "data:", 1),
        "\r\n\r\n",
        "data:[DONE]\r\n\r\n",
    ]);
    check(
        Some("text/event-stream; charset=utf-8"),
        &crlf,
        reported_stream(),
    );
    check(
        Some("Text/Event-Stream"),
        &stream(&[&usage, "data: [DONE]\n"]),
        reported_stream(),
    );
    // Chunks that carry `"usage": null`, and content that spells the keys.
    let nulls = stream(&[
        &token_chunk("usage").replace(
            "\"finish_reason\":null}]",
            "\"finish_reason\":null}],\"usage\":null",
        ),
        &token_chunk("\\\"usage\\\": {\\\"cost\\\": 9}"),
        &token_chunk("error"),
        &usage,
        "data: [DONE]\n\n",
    ]);
    check(SSE, &nulls, reported_stream());
    // Bytes after [DONE] are ignored.
    check(
        SSE,
        &stream(&[
            &usage,
            "data: [DONE]\n\n",
            "data: {\"error\":{\"message\":\"late\"}}\n\n",
        ]),
        reported_stream(),
    );
}

#[test]
fn streams_without_a_usable_cost() {
    let hello = token_chunk("Hello");
    let null_cost = format!(
        "{}\n\n",
        USAGE_CHUNK.replace("\"cost\":0.00002", "\"cost\":null")
    );
    check(
        SSE,
        &stream(&[&hello, &null_cost, "data: [DONE]\n\n"]),
        MeterOutcome::TokensOnly {
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 15,
                reasoning_tokens: 5,
                ..Usage::default()
            },
        },
    );
    check(
        SSE,
        &stream(&[&hello, "data: [DONE]\n\n"]),
        nothing(NoUsage::NotReported),
    );
    check(SSE, &stream(&[&hello, &hello]), nothing(NoUsage::StreamCut));
    check(SSE, &hello[..40], nothing(NoUsage::StreamCut));
    check(SSE, "", nothing(NoUsage::StreamCut));
    check(
        SSE,
        ": OPENROUTER PROCESSING\n\n",
        nothing(NoUsage::StreamCut),
    );
    check_malformed(
        SSE,
        &stream(&[
            &hello,
            "data: {\"usage\":{\"prompt_tokens\":1,\n\n",
            "data: [DONE]\n\n",
        ]),
    );
}

#[test]
fn usage_before_a_cut_still_counts() {
    let hello = token_chunk("Hello");
    check(
        SSE,
        &stream(&[&hello, USAGE_CHUNK, "\n\n"]),
        reported_stream(),
    );
    // The last line lost its newline when the stream was cut.
    check(SSE, &stream(&[&hello, USAGE_CHUNK]), reported_stream());
}

#[test]
fn mid_stream_errors_are_reported() {
    let error = r#"data: {"id":"cmpl-abc123","object":"chat.completion.chunk","created":1234567890,"model":"openai/gpt-4o","provider":"openai","error":{"code":"server_error","message":"Provider disconnected unexpectedly"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#;
    let hello = token_chunk("Hello");
    let expected = nothing(NoUsage::ErrorEvent {
        message: "Provider disconnected unexpectedly".into(),
    });
    check(SSE, &stream(&[&hello, error, "\n\n"]), expected.clone());
    check(
        SSE,
        &stream(&[&hello, error, "\n\n", "data: [DONE]\n\n"]),
        expected,
    );
    check(
        SSE,
        &stream(&[
            &hello,
            "data: {\"error\":{\"code\":429,\"message\":\"Rate limit exceeded\"}}\n\n",
        ]),
        nothing(NoUsage::ErrorEvent {
            message: "Rate limit exceeded".into(),
        }),
    );
    // An error that still comes with usage is charged as reported.
    check(
        SSE,
        &stream(&[error, "\n\n", USAGE_CHUNK, "\n\n"]),
        reported_stream(),
    );
}

#[test]
fn over_long_lines_keep_only_their_tail() {
    let image = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
        "A".repeat(SSE_LINE_LIMIT + 10)
    );
    let usage = format!("{USAGE_CHUNK}\n\n");
    check(
        SSE,
        &stream(&[&token_chunk("a"), &image, &usage, "data: [DONE]\n\n"]),
        reported_stream(),
    );
    check(
        SSE,
        &stream(&[&image, "data: [DONE]\n\n"]),
        nothing(NoUsage::LineTooLong {
            limit: SSE_LINE_LIMIT,
        }),
    );
    check(SSE, &image, nothing(NoUsage::StreamCut));
    // A usage object at the end of an over-long line is read from its tail.
    let long_usage = USAGE_CHUNK.replace(
        "\"choices\":[]",
        &format!("\"pad\":\"{}\",\"choices\":[]", "p".repeat(SSE_LINE_LIMIT)),
    );
    check(
        SSE,
        &stream(&[&long_usage, "\n\ndata: [DONE]\n\n"]),
        reported_stream(),
    );
    // One that starts further from the end than the tail kept is lost; the reservation
    // covers it.
    let early_usage = format!(
        "{},\"pad\":\"{}\"}}",
        USAGE_CHUNK.strip_suffix('}').unwrap(),
        "p".repeat(SSE_LINE_LIMIT)
    );
    check(
        SSE,
        &stream(&[&early_usage, "\n\ndata: [DONE]\n\n"]),
        nothing(NoUsage::LineTooLong {
            limit: SSE_LINE_LIMIT,
        }),
    );
    // A line past the limit that is not a data line is never read.
    check(
        SSE,
        &stream(&[
            &long_usage.replacen("data:", "xdata:", 1),
            "\n\ndata: [DONE]\n\n",
        ]),
        nothing(NoUsage::LineTooLong {
            limit: SSE_LINE_LIMIT,
        }),
    );

    let mut meter = UsageMeter::new(200, SSE);
    for _ in 0..64 {
        meter.feed(&[b'x'; 64 * 1024]);
        if let Mode::Sse(sse) = &meter.mode {
            assert!(sse.buffered() <= SSE_LINE_LIMIT.max(2 * JSON_TAIL_BYTES));
        }
    }
    meter.feed(b"\n");
    meter.feed(USAGE_CHUNK.as_bytes());
    meter.feed(b"\n\ndata: [DONE]\n\n");
    assert_eq!(meter.finish(), reported_stream());
}

#[test]
fn long_streams_meter_the_same_in_any_chunking() {
    let mut body = String::from(": OPENROUTER PROCESSING\n\n");
    for idx in 0..1_000 {
        body.push_str(&token_chunk(&format!("token {idx} ")));
    }
    body.push_str(USAGE_CHUNK);
    body.push_str("\n\ndata: [DONE]\n\n");
    for chunk_size in [1, 7, 100, 4096, 16 * 1024 + 1, body.len()] {
        assert_eq!(
            meter_in_chunks(200, SSE, body.as_bytes(), chunk_size),
            reported_stream(),
            "chunks of {chunk_size}"
        );
    }
}

#[test]
fn a_usage_chunk_with_a_nested_usage_key_reads_the_top_level_one() {
    // The top-level usage comes first; a later `"usage": null` nested in the chunk must not
    // be read in its place.
    let nested = concat!(
        r#"data: {"id":"gen-1","object":"chat.completion.chunk","usage":{"prompt_tokens":10,"#,
        r#""completion_tokens":15,"total_tokens":25,"cost":0.00002,"#,
        r#""completion_tokens_details":{"reasoning_tokens":5}},"#,
        r#""choices":[{"index":0,"delta":{"usage":null}}]}"#,
        "\n\n"
    );
    check(
        SSE,
        &stream(&[&token_chunk("Hello"), nested, "data: [DONE]\n\n"]),
        reported_stream(),
    );
}

/// A Responses API stream, as OpenRouter sends it: typed events, the usage (with its cost) in
/// `response.completed`'s `response`, whose `"error": null` and earlier `"usage": null` must
/// not be taken for anything.
fn responses_stream(output: &str) -> String {
    let response = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_1","object":"response","created_at":1,"model":"openai/gpt-4o","status":"{status}","error":null,"output":[{{"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{{"type":"output_text","text":"{output}","annotations":[]}}]}}],"usage":{usage},"metadata":{{}}}}"#
        )
    };
    stream(&[
        &format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{}}}\n\n",
            response("in_progress", "null")
        ),
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n",
        &format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{}}}\n\n",
            response(
                "completed",
                r#"{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":15,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":25,"cost":0.00002}"#
            )
        ),
    ])
}

#[test]
fn reads_usage_from_a_responses_stream() {
    not_chat_answers();
    let expected = MeterOutcome::Reported {
        cost: Money::from_nanos(20_000),
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 15,
            cached_tokens: 4,
            reasoning_tokens: 5,
            ..Usage::default()
        },
    };
    check(SSE, &responses_stream("Hi there"), expected.clone());
    // A long output repeated in `response.completed` puts that line past the limit: its usage
    // is still read, from the line's tail.
    let long = responses_stream(&"x".repeat(SSE_LINE_LIMIT + 100));
    check_each_way(200, SSE, &long, |outcome| *outcome == expected);
    // Cut before `response.completed`: nothing usable.
    let cut = responses_stream("Hi");
    let cut = &cut[..cut.find("event: response.completed").unwrap()];
    check(SSE, cut, nothing(NoUsage::StreamCut));
    // `response.failed` carries the error in its `response`.
    let failed = concat!(
        "event: response.failed\n",
        r#"data: {"type":"response.failed","sequence_number":3,"response":{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"Provider disconnected"},"usage":null}}"#,
        "\n\n"
    );
    check(
        SSE,
        failed,
        nothing(NoUsage::ErrorEvent {
            message: "Provider disconnected".into(),
        }),
    );
}

/// An Anthropic Messages stream: input counts in `message_start` (with a provisional output
/// count), the final output count in `message_delta`.
fn anthropic_stream(with_delta: bool) -> String {
    let mut parts = vec![
        "event: message_start\n".to_string(),
        r#"data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"anthropic/claude-sonnet-4","stop_reason":null,"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#.to_string(),
        "\n\nevent: content_block_start\n".to_string(),
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_string(),
        "\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n".to_string(),
        "event: content_block_delta\n".to_string(),
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#.to_string(),
        "\n\n".to_string(),
    ];
    if with_delta {
        parts.extend([
            "event: message_delta\n".to_string(),
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#.to_string(),
            "\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string(),
        ]);
    }
    parts.concat()
}

#[test]
fn an_anthropic_stream_merges_its_start_and_its_delta() {
    not_chat_answers();
    // Anthropic counts cache reads and writes outside `input_tokens`: all three are prompt.
    check(
        SSE,
        &anthropic_stream(true),
        MeterOutcome::TokensOnly {
            usage: Usage {
                prompt_tokens: 130,
                completion_tokens: 15,
                cached_tokens: 100,
                cache_write_tokens: 20,
                reasoning_tokens: 0,
            },
        },
    );
    // Cut after `message_start`: its output count is provisional, so nothing is known.
    check(SSE, &anthropic_stream(false), nothing(NoUsage::StreamCut));
    // An error event mid-stream.
    let overloaded = anthropic_stream(false)
        + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    check(
        SSE,
        &overloaded,
        nothing(NoUsage::ErrorEvent {
            message: "Overloaded".into(),
        }),
    );
    // A cost in the final usage is charged as reported.
    let with_cost = anthropic_stream(true).replace(
        r#""usage":{"output_tokens":15}"#,
        r#""usage":{"output_tokens":15,"cost":0.00042}"#,
    );
    check(
        SSE,
        &with_cost,
        MeterOutcome::Reported {
            cost: Money::from_nanos(420_000),
            usage: Usage {
                prompt_tokens: 130,
                completion_tokens: 15,
                cached_tokens: 100,
                cache_write_tokens: 20,
                reasoning_tokens: 0,
            },
        },
    );
}

#[test]
fn a_usage_object_the_client_put_in_the_answer_is_never_read() {
    not_chat_answers();
    // The Responses API echoes the request's tools, whose schemas the client writes: a fake
    // usage inside one is not the response's.
    let fake = r#"{"type":"object","properties":{},"usage":{"cost":0,"input_tokens":0,"output_tokens":0}}"#;
    let completed = |usage: &str| {
        format!(
            "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"r\",\"tools\":[{{\"type\":\"function\",\"name\":\"f\",\"parameters\":{fake}}}],\"usage\":{usage},\"metadata\":{{\"usage\":{{\"cost\":0}}}}}}}}\n\n"
        )
    };
    check(
        SSE,
        &completed(r#"{"input_tokens":10,"output_tokens":15,"cost":0.00002}"#),
        MeterOutcome::Reported {
            cost: Money::from_nanos(20_000),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 15,
                ..Usage::default()
            },
        },
    );
    check(SSE, &completed("null"), nothing(NoUsage::StreamCut));
    // The same past the line limit, where only the end is read: the only usage left is the
    // client's, three objects deep, and is refused: the reservation is charged.
    let pad = "p".repeat(SSE_LINE_LIMIT);
    let long = format!(
        "data: {{\"type\":\"response.completed\",\"response\":{{\"usage\":{{\"cost\":0.00002,\"input_tokens\":1,\"output_tokens\":1}},\"pad\":\"{pad}\",\"metadata\":{{\"usage\":{{\"cost\":0,\"input_tokens\":0,\"output_tokens\":0}}}}}}}}\n\ndata: [DONE]\n\n"
    );
    check_malformed(SSE, &long);
}

#[test]
fn an_anthropic_start_never_settles_the_answer() {
    not_chat_answers();
    // A cost in `message_start` is for the input alone: once `message_delta` comes without
    // one, the tokens are priced.
    let with_start_cost = anthropic_stream(true).replace(
        r#""output_tokens":1}}}"#,
        r#""output_tokens":1,"cost":0.00001}}}"#,
    );
    assert!(with_start_cost.contains("0.00001"));
    check(
        SSE,
        &with_start_cost,
        MeterOutcome::TokensOnly {
            usage: Usage {
                prompt_tokens: 130,
                completion_tokens: 15,
                cached_tokens: 100,
                cache_write_tokens: 20,
                reasoning_tokens: 0,
            },
        },
    );
    // A stop sequence that reads "message_start" is only a string.
    let echoed = anthropic_stream(true).replace(
        r#""stop_sequence":null},"usage""#,
        r#""stop_sequence":"message_start"},"usage""#,
    );
    assert!(echoed.contains(r#""stop_sequence":"message_start""#));
    check_each_way(
        200,
        SSE,
        &echoed,
        |outcome| matches!(outcome, MeterOutcome::TokensOnly { usage } if usage.completion_tokens == 15),
    );
}

#[test]
fn a_later_usage_without_a_cost_is_priced_from_its_counts() {
    // Two final reports: the first with a cost, the last with more tokens and none. The first
    // cost is not for the last counts.
    let first =
        r#"data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"cost":0.00001}}"#;
    let last = r#"data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":15}}"#;
    check(
        SSE,
        &format!("{first}\n\n{last}\n\ndata: [DONE]\n\n"),
        MeterOutcome::TokensOnly {
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 15,
                ..Usage::default()
            },
        },
    );
    // A last usage that cannot be read leaves nothing trusted: the reservation is charged.
    let broken = r#"data: {"choices":[],"usage":{"prompt_tokens":"many"}}"#;
    check_malformed(SSE, &format!("{first}\n\n{broken}\n\ndata: [DONE]\n\n"));
}

#[test]
fn a_chat_stream_echoing_the_request_is_never_read_from_the_echo() {
    // OpenRouter's `debug.echo_upstream_body` sends the request, tool schemas and all, in a
    // first chunk: a usage object planted there is not the answer's, even if the stream is cut
    // before the real one.
    let echo = r#"data: {"id":"gen-1","choices":[],"debug":{"echo_upstream_body":{"tools":[{"type":"function","function":{"name":"f","parameters":{"usage":{"cost":0,"prompt_tokens":0,"completion_tokens":0}}}}]}}}"#;
    check(
        SSE,
        &format!("{echo}\n\n{}", token_chunk("a")),
        nothing(NoUsage::StreamCut),
    );
    check(
        SSE,
        &format!(
            "{echo}\n\n{}{USAGE_CHUNK}\n\ndata: [DONE]\n\n",
            token_chunk("a")
        ),
        reported_stream(),
    );
}
