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
fn over_long_lines_are_dropped_not_buffered() {
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
    // A usage chunk inside the over-long line is lost; the reservation covers it.
    let long_usage = USAGE_CHUNK.replace(
        "\"choices\":[]",
        &format!("\"pad\":\"{}\",\"choices\":[]", "p".repeat(SSE_LINE_LIMIT)),
    );
    check(
        SSE,
        &stream(&[&long_usage, "\n\ndata: [DONE]\n\n"]),
        nothing(NoUsage::LineTooLong {
            limit: SSE_LINE_LIMIT,
        }),
    );

    let mut meter = UsageMeter::new(200, SSE);
    for _ in 0..64 {
        meter.feed(&[b'x'; 64 * 1024]);
        if let Mode::Sse(sse) = &meter.mode {
            assert!(sse.buffered() <= SSE_LINE_LIMIT);
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
