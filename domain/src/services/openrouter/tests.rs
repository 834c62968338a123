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
    let (reserve, forwarded) = match fit {
        Fit::AsRequested { reserve } => (reserve, None),
        Fit::Lowered {
            max_tokens,
            reserve,
        } => (
            reserve,
            Some(
                adapter
                    .lower_max_tokens(Api::ChatCompletions, body, max_tokens)
                    .expect("body lowers"),
            ),
        ),
        Fit::Refuse { .. } => return (fit, None, None),
    };
    let mut meter = adapter.meter(Api::ChatCompletions, 200, Some(response.0));
    for chunk in response.1.chunks(5) {
        meter.feed(chunk);
    }
    let settlement = adapter.settle(&quote, reserve, &meter.finish());
    (fit, forwarded, Some(settlement))
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
    assert_eq!(forwarded, None);
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
        web_search: false,
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
    for model in ["router", "gone"] {
        let quote = lenient.quote(&ask(model), &list).unwrap();
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
    }
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
