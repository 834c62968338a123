use super::*;
use crate::services::ChargeBasis;
use crate::services::openrouter::pricing::UnitPrice;

fn check(method: &str, path: &str, expected: Route) {
    assert_eq!(
        OpenRouter::default().route(method, path),
        expected,
        "{method} {path}"
    );
}

#[test]
fn routes_are_metered_passed_answered_or_refused() {
    check(
        "POST",
        "/api/v1/chat/completions",
        Route::Metered(Api::ChatCompletions),
    );
    check(
        "POST",
        "/api/v1/completions",
        Route::Metered(Api::Completions),
    );
    check(
        "post",
        "/api/v1/chat/completions/",
        Route::Metered(Api::ChatCompletions),
    );
    check("GET", "/api/v1/models", Route::ModelList);
    check(
        "GET",
        "/api/v1/models?supported_parameters=tools",
        Route::ModelList,
    );
    check("POST", "/api/v1/responses", Route::Metered(Api::Responses));
    check("POST", "/api/v1/messages", Route::Metered(Api::Messages));
    check(
        "POST",
        "/api/v1/embeddings",
        Route::Metered(Api::Embeddings),
    );
    check("GET", "/api/v1/embeddings/models", Route::ModelList);
    check("GET", "/api/v1/credits", Route::Local(LocalRoute::Credits));
    check("GET", "/api/v1/generation?id=gen-123", Route::OwnGeneration);
    check("GET", "/api/v1/key", Route::Local(LocalRoute::KeyInfo));
    check("GET", "/api/v1/auth/key", Route::Local(LocalRoute::KeyInfo));

    let wrong = |allowed| Route::Refused(RouteRefusal::WrongMethod { allowed });
    check("GET", "/api/v1/chat/completions", wrong("POST"));
    check("POST", "/api/v1/models", wrong("GET"));
    check("DELETE", "/api/v1/key", wrong("GET"));

    let unknown = Route::Refused(RouteRefusal::UnknownPath);
    for path in [
        "/api/v1/keys",
        "/api/v1/keys/abc",
        "/api/v1/embeddings/other",
        "/api/v1/models/openai/gpt-4o/endpoints",
        "/api/v1/chat/completions/extra",
        "/api/v1//chat/completions",
        "/v1/chat/completions",
        "/API/V1/CHAT/COMPLETIONS",
        "/",
        "",
    ] {
        check("POST", path, unknown);
        check("GET", path, unknown);
    }
}

#[test]
fn the_paths_that_are_never_free_are_metered_or_unserved() {
    let never_free: Vec<_> = never_free_paths().collect();
    assert!(never_free.contains(&"/api/v1/chat/completions"));
    assert!(never_free.contains(&"/api/v1/completions"));
    for path in NEVER_FREE {
        assert_eq!(
            route("POST", path),
            Route::Refused(RouteRefusal::UnknownPath)
        );
        assert!(!routed_paths().any(|routed| routed == *path));
    }
}

#[test]
fn configured_free_paths_pass_through_on_get_only() {
    let adapter = OpenRouter::new(OpenRouterConfig {
        extra_free_paths: FreePaths::parse("/api/v1/providers, /api/v1/models/*").unwrap(),
        ..OpenRouterConfig::default()
    });
    let route = |method, path| adapter.route(method, path);
    assert_eq!(route("GET", "/api/v1/providers"), Route::PassThrough);
    assert_eq!(route("get", "/api/v1/providers/?x=1"), Route::PassThrough);
    assert_eq!(
        route("GET", "/api/v1/models/openai/gpt-4o/endpoints"),
        Route::PassThrough
    );
    assert_eq!(
        route("POST", "/api/v1/providers"),
        Route::Refused(RouteRefusal::WrongMethod { allowed: "GET" })
    );
    // The built-in routes are unchanged, and other paths are still refused.
    assert_eq!(
        route("POST", "/api/v1/chat/completions"),
        Route::Metered(Api::ChatCompletions)
    );
    assert_eq!(route("GET", "/api/v1/models"), Route::ModelList);
    for path in [
        "/api/v1/keys",
        "/api/v1/models/a/",
        "/api/v1/models/../chat/completions",
        "/api/v1/models/%2e%2e/chat/completions",
    ] {
        assert_eq!(
            route("GET", path),
            Route::Refused(RouteRefusal::UnknownPath),
            "{path}"
        );
    }
}

#[test]
fn the_master_key_goes_in_a_bearer_header() {
    let header = OpenRouter::default().credential_header();
    assert_eq!(header.name, "authorization");
    assert_eq!(header.value_for("sk-or-v1-0123"), "Bearer sk-or-v1-0123");
    assert_eq!(OpenRouter::default().service(), Service::OpenRouter);
    assert_eq!(KEY_CHECK_PATH, "/api/v1/key");
}

/// Runs one request through the adapter as the gateway would, with `remaining` left on the key.
fn run<A: ServiceAdapter>(
    adapter: &A,
    prices: &A::Prices,
    body: &[u8],
    remaining: Money,
    response: (&str, &[u8]),
) -> (Fit, Option<Vec<u8>>, Option<Settlement>) {
    let request = adapter
        .parse_request(Api::ChatCompletions, body)
        .expect("request parses");
    let quote = adapter.quote(&request, prices).expect("request is priced");
    let fit = adapter.fit(&quote, remaining);
    let reserve = match fit {
        Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => reserve,
        Fit::Refuse { .. } => return (fit, None, None),
    };
    let forwarded = adapter
        .bound_request(Api::ChatCompletions, &quote, &fit, body)
        .expect("body is bounded");
    let mut meter = adapter.meter(Api::ChatCompletions, 200, Some(response.0));
    for chunk in response.1.chunks(5) {
        meter.feed(chunk);
    }
    let settlement = adapter.settle(&quote, reserve, &meter.finish());
    (fit, Some(forwarded), Some(settlement))
}

#[test]
fn a_request_runs_from_parse_to_settlement() {
    let adapter = OpenRouter::default();
    let prices = ModelPrices::from_models_json(
        br#"{"data":[{"id":"openai/gpt-4o-mini",
             "pricing":{"prompt":"0.000001","completion":"0.000002"},"context_length":128000,
             "top_provider":{"max_completion_tokens":16384}}]}"#,
    )
    .unwrap();
    let body = concat!(
        r#"{"model":"openai/gpt-4o-mini","max_tokens":50,"stream":true,"#,
        r#""messages":[{"role":"user","content":"hi"}]}"#
    )
    .as_bytes();
    let fixed = body.len() as i64 * 1_000;
    let stream = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,",
        "\"cost\":0.000011}}\n\ndata: [DONE]\n\n"
    )
    .as_bytes();

    let (fit, forwarded, settled) = run(
        &adapter,
        &prices,
        body,
        Money::from_usd(1),
        ("text/event-stream", stream),
    );
    assert_eq!(
        fit,
        Fit::AsRequested {
            reserve: Money::from_nanos(fixed + 50 * 2_000)
        }
    );
    // The body goes upstream with its limit and the prices reserved for as `max_price`.
    let forwarded: serde_json::Value = serde_json::from_slice(&forwarded.unwrap()).unwrap();
    assert_eq!(forwarded["max_tokens"], 50);
    assert_eq!(
        forwarded["provider"]["max_price"],
        serde_json::json!({"prompt":1,"completion":2,"request":0,"image":0})
    );
    let settled = settled.unwrap();
    assert_eq!(
        (settled.charge, settled.basis),
        (Money::from_nanos(11_000), ChargeBasis::Reported)
    );
    assert!(!settled.exceeded_reservation);

    // Room for 20 tokens only: the body is rewritten and the reservation shrinks.
    let tight = Money::from_nanos(fixed + 20 * 2_000);
    let (fit, forwarded, _) = run(
        &adapter,
        &prices,
        body,
        tight,
        ("text/event-stream", stream),
    );
    assert_eq!(
        fit,
        Fit::Lowered {
            max_tokens: 20,
            reserve: tight
        }
    );
    let forwarded = forwarded.unwrap();
    assert_eq!(ChatRequest::parse(&forwarded).unwrap().max_tokens, Some(20));

    let (fit, _, settled) = run(
        &adapter,
        &prices,
        body,
        Money::from_nanos(fixed),
        ("text/event-stream", stream),
    );
    assert_eq!(
        fit,
        Fit::Refuse {
            need_at_least: Money::from_nanos(fixed + 16 * 2_000)
        }
    );
    assert_eq!(settled, None);

    // A stream cut before its usage charges the whole reservation.
    let cut = &stream[..60];
    let (_, _, settled) = run(
        &adapter,
        &prices,
        body,
        Money::from_usd(1),
        ("text/event-stream", cut),
    );
    let settled = settled.unwrap();
    assert_eq!(
        (settled.charge, settled.basis),
        (
            Money::from_nanos(fixed + 50 * 2_000),
            ChargeBasis::Reservation
        )
    );
}

fn per_token(prompt: &str, completion: &str) -> ModelPrice {
    ModelPrice::per_token(
        UnitPrice::parse(prompt).unwrap(),
        UnitPrice::parse(completion).unwrap(),
    )
}

/// A request for model `m` with a `prompt_bytes` body.
fn asked(prompt_bytes: u64, max_tokens: Option<u64>) -> ChatRequest {
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

fn check_fit(quote: &Quote, remaining_nanos: i64, expected: Fit) {
    let remaining = Money::from_nanos(remaining_nanos);
    assert_eq!(
        quote.fit(remaining),
        expected,
        "remaining {remaining_nanos}"
    );
}

fn prices() -> ModelPrices {
    let mut prices = ModelPrices::default();
    prices.insert("cheap", per_token("0.000001", "0.000002"));
    prices.insert("dear", per_token("0.000003", "0.000001"));
    prices
}

#[test]
fn quotes_come_from_the_price_list() {
    let adapter = OpenRouter::default();
    let cheap = adapter
        .quote(
            &ChatRequest {
                model: "cheap".into(),
                ..asked(100, Some(50))
            },
            &prices(),
        )
        .unwrap();
    assert_eq!(cheap.worst_case(50), Money::from_nanos(200_000));
    // Fallbacks are priced at the dearest of each component: 100 x 3000 + 50 x 2000.
    let routed = ChatRequest {
        model: "cheap".into(),
        fallback_models: vec!["dear".into()],
        ..asked(100, Some(50))
    };
    assert_eq!(
        adapter.quote(&routed, &prices()).unwrap().worst_case(50),
        Money::from_nanos(400_000)
    );
    let unknown = ChatRequest {
        model: "cheap".into(),
        fallback_models: vec!["nope".into()],
        ..asked(100, Some(50))
    };
    assert_eq!(
        adapter.quote(&unknown, &prices()),
        Err(PriceError::UnknownModel {
            model: "nope".into()
        })
    );
}

#[test]
fn unpriced_models_reserve_the_ceiling_or_are_refused() {
    let mut list = ModelPrices::from_models_json(
        br#"{"data":[{"id":"router","pricing":{"prompt":"-1","completion":"-1"}}]}"#,
    )
    .unwrap();
    list.insert("cheap", per_token("0.000001", "0.000002"));
    let ask = |model: &str| ChatRequest {
        model: model.into(),
        ..asked(100, Some(50))
    };

    let strict = OpenRouter::default();
    match strict.quote(&ask("router"), &list) {
        Err(err @ PriceError::Unpriced { .. }) => {
            let message = err.to_string();
            assert!(
                message.contains("\"router\"") && message.contains("negative"),
                "{message}"
            );
            assert!(message.contains("per-request ceiling"), "{message}");
        }
        other => panic!("expected unpriced, got {other:?}"),
    }
    assert_eq!(
        strict.quote(&ask("gone"), &list),
        Err(PriceError::UnknownModel {
            model: "gone".into()
        })
    );

    let ceiling = Money::from_nanos(50_000_000);
    let lenient = OpenRouter::new(OpenRouterConfig {
        unpriced_ceiling: Some(ceiling),
        ..OpenRouterConfig::default()
    });
    let quote = lenient.quote(&ask("router"), &list).unwrap();
    assert!(!quote.is_priced());
    assert_eq!(quote.worst_case(1_000_000), ceiling);
    check_fit(&quote, 50_000_000, Fit::AsRequested { reserve: ceiling });
    check_fit(
        &quote,
        49_999_999,
        Fit::Refuse {
            need_at_least: ceiling,
        },
    );
    // The ceiling covers listed models without a price, never an id the list does not have
    // (a typo, an unknown suffix), which is refused whatever the settings.
    assert_eq!(
        lenient.quote(&ask("gone"), &list),
        Err(PriceError::UnknownModel {
            model: "gone".into()
        })
    );
    assert!(lenient.quote(&ask("cheap"), &list).unwrap().is_priced());
}

#[test]
fn hot_path_types_cross_threads() {
    fn shared<T: Send + Sync>() {}
    fn moved<T: Send>() {}
    shared::<ModelPrices>();
    shared::<Quote>();
    shared::<OpenRouter>();
    moved::<UsageMeter>();
    moved::<MeterOutcome>();
}

#[test]
fn every_routed_model_and_feature_is_priced_or_refused() {
    let mut list = ModelPrices::default();
    let cheap = ModelPrice {
        context_length: Some(1_000),
        max_completion_tokens: Some(100),
        ..per_token("0.000001", "0.000002")
    };
    let dear = ModelPrice {
        context_length: Some(2_000),
        max_completion_tokens: Some(200),
        ..per_token("0.000004", "0.000008")
    };
    list.insert("a/cheap", cheap);
    list.insert("b/dear", dear);
    let adapter = OpenRouter::default();
    let parse = |body: &str| ChatRequest::parse(body.as_bytes()).unwrap();
    let worst = |body: &str| {
        let request = parse(body);
        let quote = adapter.quote(&request, &list).unwrap();
        let Fit::AsRequested { reserve } = quote.fit(Money::from_usd(100)) else {
            panic!("{body} does not fit");
        };
        (
            reserve.nanos(),
            quote.bounds(&quote.fit(Money::from_usd(100))),
        )
    };
    // The auto router is priced at the highest of the models it may choose, and its limit
    // and max_price follow.
    let body = r#"{"model":"openrouter/auto"}"#;
    let (reserve, bounds) = worst(body);
    assert_eq!(reserve, body.len() as i64 * 4_000 + 200 * 8_000);
    assert_eq!(bounds.max_tokens, Some(200));
    let body =
        r#"{"model":"openrouter/auto","plugins":[{"id":"auto-router","allowed_models":["a/*"]}]}"#;
    assert_eq!(worst(body).0, body.len() as i64 * 1_000 + 100 * 2_000);
    let none = parse(
        r#"{"model":"openrouter/auto","plugins":[{"id":"auto-router","allowed_models":["z/*"]}]}"#,
    );
    assert!(matches!(
        adapter.quote(&none, &list),
        Err(PriceError::NoAutoModel { .. })
    ));
    // A file or a video by URL: the prompt is priced at the context window, and a file with
    // no engine named gets the free one written.
    let body = r#"{"model":"a/cheap","max_tokens":10,"messages":[{"role":"user","content":[
        {"type":"video_url","video_url":{"url":"https://example.com/v.mp4"}}]}]}"#;
    assert_eq!(worst(body).0, 1_000 * 1_000 + 10 * 2_000);
    let audio = r#"{"model":"a/cheap","max_tokens":10,"messages":[{"role":"user","content":[
        {"type":"audio_url","audio_url":{"url":"https://example.com/a.mp3"}}]}]}"#;
    assert_eq!(worst(audio).0, 1_000 * 1_000 + 10 * 2_000);
    let inline = r#"{"model":"a/cheap","max_tokens":10,"messages":[{"role":"user","content":[
        {"type":"input_audio","input_audio":{"data":"ZkxhQw==","format":"flac"}}]}]}"#;
    assert_eq!(worst(inline).0, 1_000 * 1_000 + 10 * 2_000);
    let body = r#"{"model":"a/cheap","max_tokens":10,"messages":[{"role":"user","content":[
        {"type":"file","file":{"filename":"a.pdf","file_data":"https://example.com/a.pdf"}}]}]}"#;
    let (reserve, bounds) = worst(body);
    assert_eq!(reserve, 1_000 * 1_000 + 10 * 2_000);
    assert_eq!(bounds.pdf_engine, Some("cloudflare-ai"));
    // The per-page engine is refused unless an operator bounds the pages.
    let ocr = parse(&body.replace(
        r#""max_tokens":10,"#,
        r#""max_tokens":10,"plugins":[{"id":"file-parser","pdf":{"engine":"mistral-ocr"}}],"#,
    ));
    let refused = adapter.quote(&ocr, &list).unwrap_err().to_string();
    assert!(refused.contains("ocr_pages_per_file"), "{refused}");
    let paged = OpenRouter::new(OpenRouterConfig {
        ocr_pages_per_file: 50,
        ..OpenRouterConfig::default()
    });
    let quote = paged.quote(&ocr, &list).unwrap();
    assert_eq!(
        quote.worst_case(10),
        Money::from_nanos(1_000 * 1_000 + 10 * 2_000 + 50 * 2_000_000)
    );
    // Web search limits past the operator's are refused; a server tool's calls multiply the
    // model calls.
    for body in [
        r#"{"model":"a/cheap","plugins":[{"id":"web","max_results":26}]}"#,
        r#"{"model":"a/cheap","plugins":[{"id":"web","max_uses":6}]}"#,
        r#"{"model":"a/cheap","max_tool_calls":6,"tools":[{"type":"openrouter:web_search"}]}"#,
    ] {
        let refused = adapter.quote(&parse(body), &list).unwrap_err().to_string();
        assert!(refused.contains("at most"), "{body}: {refused}");
    }
    let body = r#"{"model":"a/cheap","max_tokens":10,"max_tool_calls":2,
        "tools":[{"type":"openrouter:web_search","parameters":{"max_results":3}}]}"#;
    let (reserve, bounds) = worst(body);
    let prompt = body.len() as i64 + 2 * 3 * 2_000;
    assert_eq!(
        reserve,
        3 * (prompt * 1_000 + 10 * 2_000) + 2 * 15_000_000 + 6 * 4_000_000
    );
    assert_eq!(bounds.max_tool_calls, Some(2));
}

#[test]
fn web_tools_suffixed_routers_and_the_ceiling_are_bounded() {
    let mut list = ModelPrices::from_models_json(
        br#"{"data":[{"id":"router","pricing":{"prompt":"-1","completion":"-1"}},
                     {"id":"openrouter/auto","pricing":{"prompt":"-1","completion":"-1"}}]}"#,
    )
    .unwrap();
    list.insert(
        "a/cheap",
        ModelPrice {
            context_length: Some(1_000),
            max_completion_tokens: Some(100),
            ..per_token("0.000001", "0.000002")
        },
    );
    let lenient = OpenRouter::new(OpenRouterConfig {
        unpriced_ceiling: Some(Money::from_nanos(50_000_000)),
        ..OpenRouterConfig::default()
    });
    let parse = |body: &str| ChatRequest::parse(body.as_bytes()).unwrap();
    // A suffixed auto router is still the auto router: priced, never the ceiling.
    let auto = lenient
        .quote(&parse(r#"{"model":"openrouter/auto:nitro"}"#), &list)
        .unwrap();
    assert!(auto.is_priced());
    // The ceiling covers a plain request only.
    assert!(
        !lenient
            .quote(&parse(r#"{"model":"router"}"#), &list)
            .unwrap()
            .is_priced()
    );
    for body in [
        r#"{"model":"router","models":["a/cheap"]}"#,
        r#"{"model":"router:online"}"#,
        r#"{"model":"router","n":2}"#,
    ] {
        let refused = lenient.quote(&parse(body), &list).unwrap_err().to_string();
        assert!(refused.contains("plain request"), "{body}: {refused}");
    }
    // A web tool's own max_uses counts when above max_tool_calls; a fetch tool prices the
    // prompt at the context window.
    let quote = |body: &str| lenient.quote(&parse(body), &list).unwrap();
    let body = r#"{"model":"a/cheap","max_tokens":10,"tools":[{"type":"web_search_20250305","name":"s","max_uses":3}]}"#;
    let prompt = body.len() as u64 + 3 * 5 * 2_000;
    assert_eq!(
        quote(body).worst_case(10).nanos() as u64,
        4 * (prompt * 1_000 + 10 * 2_000) + 3 * 15_000_000 + 15 * 4_000_000
    );
    let body =
        r#"{"model":"a/cheap","max_tokens":10,"tools":[{"type":"web_fetch_20250910","name":"f"}]}"#;
    // (Here the results' allowance is above the window, so it stands.)
    let prompt = (body.len() as u64 + 5 * 2_000).max(1_000);
    assert_eq!(
        quote(body).worst_case(10).nanos() as u64,
        2 * (prompt * 1_000 + 10 * 2_000) + 15_000_000 + 5 * 4_000_000
    );
    let refused = lenient
        .quote(
            &parse(r#"{"model":"a/cheap","tools":[{"type":"web_search_20250305","max_uses":9}]}"#),
            &list,
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("max_uses is 9"), "{refused}");
}
