//! The gateway's per-request work, without network or database: hashing the presented sub-key,
//! reading and pricing a request, metering a JSON response and a long event stream, and reading
//! the upstream's model list (a background refresh, but a large one).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use domain::Money;
use domain::services::openrouter::{ChatRequest, MeterOutcome, ModelPrices, OpenRouter};
use domain::services::{Api, ResponseMeter, ServiceAdapter};
use domain::token::hash_token;

fn token_hash(c: &mut Criterion) {
    let token = format!("kc_{}", "0123456789abcdef".repeat(3));
    c.bench_function("token_hash", |b| b.iter(|| hash_token(black_box(&token))));
}

/// A chat request of about 1.3 KiB: a system prompt, a few turns (the last with an image when
/// `with_image`, else with a second text part), and a tool.
fn chat_body(with_image: bool) -> Vec<u8> {
    let turn = "Explain how a budget-enforcing proxy reserves the worst case of a request. ";
    let turn = turn.repeat(4);
    let last_part = if with_image {
        r#"{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}"#
    } else {
        r#"{"type":"text","text":"And how does it settle afterwards?"}"#
    };
    format!(
        r#"{{"model":"openai/gpt-4o-mini","stream":true,"max_tokens":512,"temperature":0.3,
        "messages":[{{"role":"system","content":"You are terse."}},
          {{"role":"user","content":"{turn}"}},{{"role":"assistant","content":"{turn}"}},
          {{"role":"user","content":[{{"type":"text","text":"{turn}"}},
            {last_part}]}}],
        "tools":[{{"type":"function","function":{{"name":"lookup","description":"Find a page",
          "parameters":{{"type":"object","properties":{{"q":{{"type":"string"}}}}}}}}}}]}}"#
    )
    .into_bytes()
}

/// A `/models` body of `n_models` entries shaped like OpenRouter's.
fn models_body(n_models: usize) -> Vec<u8> {
    let description = "A capable general model with long context, tool use and vision. ";
    let description = description.repeat(5);
    let mut body = String::from(r#"{"data":["#);
    for idx in 0..n_models {
        if idx > 0 {
            body.push(',');
        }
        let (vendor, price) = (idx % 40, 10 + idx % 90);
        body.push_str(&format!(
            r#"{{"id":"vendor{vendor}/model-{idx}","canonical_slug":"vendor{vendor}/model-{idx}-2025",
            "name":"Vendor {vendor}: Model {idx}","created":1750000000,
            "description":"{description}","context_length":131072,
            "architecture":{{"modality":"text+image->text","input_modalities":["text","image"],
              "output_modalities":["text"],"tokenizer":"Other","instruct_type":null}},
            "pricing":{{"prompt":"0.0000000{price}","completion":"0.000000{price}5","request":"0",
              "image":"0.0001","web_search":"0.004","internal_reasoning":"0",
              "input_cache_read":"0.00000001"}},
            "top_provider":{{"context_length":131072,"max_completion_tokens":16384,
              "is_moderated":false}},
            "per_request_limits":null,
            "supported_parameters":["max_tokens","temperature","top_p","tools","tool_choice","stop",
              "seed","response_format"],
            "default_parameters":{{"temperature":null}}}}"#
        ));
    }
    body.push_str("]}");
    body.into_bytes()
}

fn request_pricing(c: &mut Criterion) {
    let adapter = OpenRouter::default();
    let mut prices = ModelPrices::from_models_json(&models_body(300)).expect("model list parses");
    let mini = ModelPrices::from_models_json(
        br#"{"data":[{"id":"openai/gpt-4o-mini","context_length":128000,
            "pricing":{"prompt":"0.00000015","completion":"0.0000006"}}]}"#,
    )
    .expect("price parses");
    let mini_price = *mini.get("openai/gpt-4o-mini").expect("model is priced");
    prices.insert("openai/gpt-4o-mini", mini_price);
    let remaining = Money::from_usd(5);
    let mut group = c.benchmark_group("request");
    // With an image part, `messages` is read part by part; without one (the usual request) it
    // is skipped unread.
    for (name, with_image) in [("parse_quote_fit", true), ("parse_quote_fit_text", false)] {
        let body = chat_body(with_image);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = ChatRequest::parse(black_box(&body)).expect("request parses");
                let quote = adapter.quote(&request, &prices).expect("request is priced");
                adapter.fit(&quote, black_box(remaining))
            })
        });
    }
    group.finish();
}

fn meter(content_type: &str, body: &[u8], chunk_size: usize) -> MeterOutcome {
    let mut meter = OpenRouter::default().meter(Api::ChatCompletions, 200, Some(content_type));
    for chunk in body.chunks(chunk_size) {
        meter.feed(chunk);
    }
    meter.finish()
}

/// A chat completion of about 1 KiB.
fn json_body() -> Vec<u8> {
    let content = "A reply of moderate length that says something useful about budgets. ";
    let content = content.repeat(9);
    format!(
        r#"{{"id":"gen-1","object":"chat.completion","created":1750000000,
        "model":"openai/gpt-4o-mini","provider":"OpenAI",
        "choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},
          "finish_reason":"stop","native_finish_reason":"stop"}}],
        "usage":{{"prompt_tokens":120,"completion_tokens":140,"total_tokens":260,
          "cost":0.0001026,"is_byok":false,
          "prompt_tokens_details":{{"cached_tokens":0}},
          "completion_tokens_details":{{"reasoning_tokens":0}},
          "cost_details":{{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0.000018,
            "upstream_inference_completions_cost":0.0000846}}}}}}"#
    )
    .into_bytes()
}

/// A stream of 1,000 token chunks, a usage chunk and `[DONE]`.
fn sse_body() -> Vec<u8> {
    let mut sse = String::from(": OPENROUTER PROCESSING\n\n");
    for idx in 0..1_000 {
        sse.push_str(&format!(
            concat!(
                r#"data: {{"id":"gen-1","object":"chat.completion.chunk","created":1750000000,"#,
                r#""model":"openai/gpt-4o-mini","provider":"OpenAI","choices":[{{"index":0,"#,
                r#""delta":{{"role":"assistant","content":" token{idx}"}},"#,
                r#""finish_reason":null,"native_finish_reason":null}}]}}"#,
                "\n\n"
            ),
            idx = idx
        ));
    }
    sse.push_str(concat!(
        r#"data: {"id":"gen-1","object":"chat.completion.chunk","created":1750000000,"#,
        r#""model":"openai/gpt-4o-mini","choices":[],"usage":{"prompt_tokens":120,"#,
        r#""completion_tokens":1000,"total_tokens":1120,"cost":0.000618}}"#,
        "\n\ndata: [DONE]\n\n"
    ));
    sse.into_bytes()
}

fn metering(c: &mut Criterion) {
    let json = json_body();
    let sse = sse_body();
    let mut group = c.benchmark_group("meter");
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("json_1k", |b| {
        b.iter(|| meter("application/json", black_box(&json), json.len()))
    });
    group.throughput(Throughput::Bytes(sse.len() as u64));
    group.bench_function("sse_1000_chunks", |b| {
        b.iter(|| meter("text/event-stream", black_box(&sse), 4096))
    });
    group.finish();
}

fn model_list(c: &mut Criterion) {
    let body = models_body(300);
    let mut group = c.benchmark_group("models");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_300", |b| {
        b.iter(|| ModelPrices::from_models_json(black_box(&body)).expect("model list parses"))
    });
    group.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = token_hash, request_pricing, metering, model_list
}
criterion_main!(hot_path);
