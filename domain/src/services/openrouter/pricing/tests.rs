use super::*;

fn check(text: &str, expected: Result<u64, UnitPriceError>) {
    assert_eq!(
        UnitPrice::parse(text).map(UnitPrice::picos),
        expected,
        "price {text:?}"
    );
}

#[test]
fn parses_prices_to_picodollars() {
    check("0", Ok(0));
    check("0.0", Ok(0));
    check("-0", Ok(0));
    check("1", Ok(1_000_000_000_000));
    check("0.000001", Ok(1_000_000));
    check("0.00003", Ok(30_000_000));
    check("0.0000000375", Ok(37_500));
    check("0.000000000001", Ok(1));
    check(" 0.000002 ", Ok(2_000_000));
    check("2e-7", Ok(200_000));
    check("2.5E-6", Ok(2_500_000));
    check("+0.5", Ok(500_000_000_000));
    check(".5", Ok(500_000_000_000));
    check("5.", Ok(5_000_000_000_000));
    check("000.000001", Ok(1_000_000));
    // Finer than a pico-dollar rounds up, never down.
    check("0.0000000000001", Ok(1));
    check("0.0000000000019", Ok(2));
    check("0.0000000000010", Ok(1));
    check("1e-20", Ok(1));
    check("1000000", Ok(MAX_PICOS));
    check("1000001", Err(UnitPriceError::TooLarge("1000001".into())));
    check(
        "99999999999999999999999",
        Err(UnitPriceError::TooLarge("99999999999999999999999".into())),
    );
    check("-1", Err(UnitPriceError::Negative("-1".into())));
    check(
        "-0.000001",
        Err(UnitPriceError::Negative("-0.000001".into())),
    );
    check("", Err(UnitPriceError::Invalid("".into())));
    check(".", Err(UnitPriceError::Invalid(".".into())));
    check("free", Err(UnitPriceError::Invalid("free".into())));
    check("$0.01", Err(UnitPriceError::Invalid("$0.01".into())));
    check("1.2.3", Err(UnitPriceError::Invalid("1.2.3".into())));
    check("1e", Err(UnitPriceError::Invalid("1e".into())));
    check("1e99", Err(UnitPriceError::Invalid("1e99".into())));
    check("NaN", Err(UnitPriceError::Invalid("NaN".into())));
}

fn models(entries: &str) -> ModelPrices {
    ModelPrices::from_models_json(format!("{{\"data\":[{entries}]}}").as_bytes()).unwrap()
}

fn picos(text: &str) -> UnitPrice {
    UnitPrice::parse(text).unwrap()
}

#[test]
fn reads_a_model_list() {
    let prices = models(
        r#"{"id":"openai/gpt-4o","name":"GPT-4o","description":"A \"quoted\" model","created":1,
            "architecture":{"modality":"text+image->text","input_modalities":["text","image"]},
            "pricing":{"prompt":"0.0000025","completion":"0.00001","request":"0","image":"0.003613",
                       "web_search":"0.01","internal_reasoning":"0",
                       "input_cache_read":"0.00000125"},
            "context_length":128000,
            "top_provider":{"context_length":128000,"max_completion_tokens":16384,
                            "is_moderated":true},
            "supported_parameters":["max_tokens","tools"]},
           {"id":"cheap/tiny","pricing":{"prompt":"0.0000000375","completion":"0.00000015"},
            "context_length":32768,
            "top_provider":{"context_length":null,"max_completion_tokens":null}}"#,
    );
    assert_eq!(prices.len(), 2);
    let gpt = prices.get("openai/gpt-4o").unwrap();
    assert_eq!(gpt.prompt, picos("0.0000025"));
    assert_eq!(gpt.completion.picos(), 10_000_000);
    assert_eq!(gpt.image.picos(), 3_613_000_000);
    assert_eq!(gpt.web_search.picos(), 10_000_000_000);
    assert_eq!(gpt.input_cache_read.picos(), 1_250_000);
    // No cache-write price: written tokens are billed at the prompt price.
    assert_eq!(gpt.input_cache_write, gpt.prompt);
    assert_eq!(gpt.input_cache_write_1h, gpt.prompt);
    assert_eq!(
        (gpt.context_length, gpt.max_completion_tokens),
        (Some(128_000), Some(16_384))
    );
    assert_eq!(gpt.completion_limit(), Some(16_384));

    let tiny = prices.get("cheap/tiny").unwrap();
    assert_eq!(tiny.prompt.picos(), 37_500);
    assert_eq!(tiny.input_cache_read, tiny.prompt);
    assert_eq!(
        (tiny.context_length, tiny.max_completion_tokens),
        (Some(32_768), None)
    );
    assert_eq!(tiny.completion_limit(), Some(32_768));
    assert_eq!(prices.unpriced().count(), 0);
}

fn check_unpriced(entry: &str, reason_contains: &str) {
    let prices = models(entry);
    match prices.lookup("m") {
        PriceLookup::Unpriced { reason, .. } => {
            assert!(
                reason.contains(reason_contains),
                "{entry}: reason {reason:?}"
            )
        }
        other => panic!("{entry}: expected unpriced, got {other:?}"),
    }
    assert_eq!(prices.get("m"), None);
    assert_eq!(prices.unpriced().count(), 1);
}

#[test]
fn garbled_pricing_makes_a_model_unpriced() {
    check_unpriced(r#"{"id":"m"}"#, "no pricing");
    check_unpriced(r#"{"id":"m","pricing":null}"#, "no pricing");
    check_unpriced(r#"{"id":"m","pricing":"cheap"}"#, "no pricing");
    check_unpriced(
        r#"{"id":"m","pricing":{"completion":"0.1"}}"#,
        "no prompt price",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0.1"}}"#,
        "no completion price",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":null,"completion":"0.1"}}"#,
        "no prompt price",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"-1","completion":"-1"}}"#,
        "negative",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"abc","completion":"0"}}"#,
        "not a decimal",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","request":true}}"#,
        "not a price",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","image":{}}}"#,
        "not a price",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","video":"0.01"}}"#,
        "not understood",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","discount":-0.5}}"#,
        "discount",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","discount":"lots"}}"#,
        "discount",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","overrides":7}}"#,
        "overrides",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","overrides":[1]}}"#,
        "override",
    );
    check_unpriced(
        r#"{"id":"m","pricing":{"prompt":"0","completion":"0","overrides":[{"prompt":"x"}]}}"#,
        "not a decimal",
    );
}

#[test]
fn tolerated_pricing_quirks() {
    let prices = models(
        r#"{"id":"numbers","pricing":{"prompt":0.000001,"completion":2e-6,"audio":null}},
           {"id":"extra-free","pricing":{"prompt":"0.000001","completion":"0.000002","video":"0"}},
           {"id":"discounted",
            "pricing":{"prompt":"0.000001","completion":"0.000002","discount":0.25}},
           {"id":"long-prompts","pricing":{"prompt":"0.00000125","completion":"0.00001",
              "overrides":[{"min_prompt_tokens":200000,
                            "prompt":"0.0000025","completion":"0.000015"},
                           {"pricing":{"input_cache_read":"0.000001"}}]}}"#,
    );
    assert_eq!(prices.get("numbers").unwrap().completion.picos(), 2_000_000);
    assert_eq!(prices.get("extra-free").unwrap().prompt.picos(), 1_000_000);
    // A discount only lowers the price: the worst case ignores it.
    assert_eq!(prices.get("discounted").unwrap().prompt.picos(), 1_000_000);
    // Overrides are folded in at their highest, whatever their condition.
    let long = prices.get("long-prompts").unwrap();
    assert_eq!(
        (long.prompt.picos(), long.completion.picos()),
        (2_500_000, 15_000_000)
    );
    assert_eq!(long.input_cache_read.picos(), 1_000_000);
}

#[test]
fn odd_entries_do_not_spoil_the_list() {
    let prices = models(
        r#"7, "text", null, [1,2], {"name":"no id","pricing":{"prompt":"0","completion":"0"}},
           {"id":"","pricing":{"prompt":"0","completion":"0"}},
           {"id":42,"pricing":{"prompt":"0","completion":"0"}},
           {"id":"ok","pricing":{"prompt":"0.000001","completion":"0.000002"},
            "context_length":"big","top_provider":"x"}"#,
    );
    assert_eq!(prices.len(), 1);
    let ok = prices.get("ok").unwrap();
    assert_eq!((ok.context_length, ok.max_completion_tokens), (None, None));
}

#[test]
fn a_body_without_a_data_list_is_an_error() {
    for body in [
        &b"not json"[..],
        b"[]",
        b"{}",
        b"{\"data\":{}}",
        b"{\"data\":[]",
        b"",
    ] {
        assert!(
            matches!(
                ModelPrices::from_models_json(body),
                Err(ModelsError::Malformed { .. })
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(
        ModelPrices::from_models_json(b"{\"data\":[]}")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_model_listed_twice_keeps_the_higher_prices() {
    let prices = models(
        r#"{"id":"m","pricing":{"prompt":"0.000001","completion":"0.000004"},"context_length":1000},
           {"id":"m","pricing":{"prompt":"0.000003","completion":"0.000002"},
            "context_length":2000}"#,
    );
    let m = prices.get("m").unwrap();
    assert_eq!(
        (m.prompt.picos(), m.completion.picos()),
        (3_000_000, 4_000_000)
    );
    assert_eq!(m.context_length, Some(2_000));
    let spoiled = models(
        r#"{"id":"m","pricing":{"prompt":"0.000001","completion":"0.000004"}},
           {"id":"m","pricing":{}}"#,
    );
    assert_eq!(spoiled.get("m"), None);
}

#[test]
fn routing_suffixes_fall_back_to_the_base_model() {
    let prices = models(
        r#"{"id":"a/b","pricing":{"prompt":"0.000001","completion":"0.000002"}},
           {"id":"a/b:free","pricing":{"prompt":"0","completion":"0"}}"#,
    );
    let base = prices.get("a/b").copied();
    for id in ["a/b:online", "a/b:nitro", "a/b:floor", "a/b:exacto"] {
        assert_eq!(prices.get(id).copied(), base, "{id}");
    }
    assert_eq!(prices.get("a/b:free").unwrap().prompt, UnitPrice::ZERO);
    assert_eq!(prices.lookup("a/b:thinking"), PriceLookup::Unknown);
    assert_eq!(prices.lookup("c/d:online"), PriceLookup::Unknown);
}

#[test]
fn token_ceilings_take_the_dearest_component() {
    let mut price = ModelPrice::per_token(picos("0.000001"), picos("0.000002"));
    price.input_cache_write = picos("0.00000125");
    price.audio = picos("0.000004");
    price.internal_reasoning = picos("0.000003");
    price.audio_output = picos("0.000008");
    assert_eq!(price.input_token_ceiling().picos(), 4_000_000);
    assert_eq!(price.output_token_ceiling().picos(), 11_000_000);
}

#[test]
fn envelopes_are_at_least_both() {
    let mut a = ModelPrice::per_token(picos("0.000001"), picos("0.000004"));
    a.context_length = Some(8_000);
    a.max_completion_tokens = Some(1_000);
    let mut b = ModelPrice::per_token(picos("0.000003"), picos("0.000002"));
    b.request = picos("0.01");
    b.context_length = Some(16_000);
    let both = a.envelope(&b);
    assert_eq!(
        (both.prompt.picos(), both.completion.picos()),
        (3_000_000, 4_000_000)
    );
    assert_eq!(both.request.picos(), 10_000_000_000);
    assert_eq!(
        (both.context_length, both.max_completion_tokens),
        (Some(16_000), None)
    );
}

#[test]
fn globs_match_runs() {
    for (pattern, id, matches) in [
        ("anthropic/*", "anthropic/claude-sonnet-4", true),
        ("anthropic/*", "openai/gpt-4o", false),
        ("*/*", "openai/gpt-4o", true),
        ("*/claude-*", "anthropic/claude-sonnet-4", true),
        ("*/claude-*", "anthropic/opus", false),
        ("openai/gpt-4o", "openai/gpt-4o", true),
        ("openai/gpt-4o", "openai/gpt-4o-mini", false),
        ("*-mini", "openai/gpt-4o-mini", true),
    ] {
        assert_eq!(super::glob_matches(pattern, id), matches, "{pattern} {id}");
    }
}
