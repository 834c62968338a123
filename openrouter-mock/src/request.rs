//! Turning an inference request body into a planned completion: the model,
//! the deterministic token counts, the cost and the fault, before any byte
//! of the answer is written.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::config::{MockConfig, MockModel};
use crate::error::ApiError;
use crate::extras::{BILL_HEADER, Extras};
use crate::faults::{Fault, slow_delay};
use crate::generation::GenerationRecord;
use crate::pricing::{Cost, Prices, nanos_to_usd};
use crate::routing;

/// The header that sets the natural completion length, in tokens.
pub const COMPLETION_TOKENS_HEADER: &str = "x-mock-completion-tokens";

/// The header that keeps a generation out of `GET /generation` (404) for
/// this many milliseconds after it is served.
pub const GENERATION_DELAY_HEADER: &str = "x-mock-generation-delay-ms";

/// The words of every completion, in order, repeating.
const WORDS: [&str; 26] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
];

/// Which inference endpoint was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /chat/completions`.
    Chat,
    /// `POST /completions` (legacy text completions).
    Completions,
    /// `POST /responses` (the OpenAI Responses API).
    Responses,
    /// `POST /messages` (the Anthropic Messages API).
    Messages,
    /// `POST /embeddings`.
    Embeddings,
}

impl Api {
    /// The endpoint's path.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/api/v1/chat/completions",
            Api::Completions => "/api/v1/completions",
            Api::Responses => "/api/v1/responses",
            Api::Messages => "/api/v1/messages",
            Api::Embeddings => "/api/v1/embeddings",
        }
    }

    /// The `api_type` of its generations.
    pub fn api_type(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
            Api::Embeddings => "embeddings",
        }
    }
}

/// A completion decided from its request, before it is answered.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The endpoint called.
    pub api: Api,
    /// `gen-<unix seconds>-<20 alphanumerics>`, also `X-Generation-Id`.
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    /// The model id served.
    pub model: String,
    /// The provider serving it (see `routing`).
    pub provider: &'static str,
    /// The provider's prices.
    pub prices: Prices,
    /// Completion tokens billed per token streamed: model calls x choices (see `extras`).
    pub completion_factor: u64,
    /// Fees beyond tokens, in pico-dollars: searches, OCR pages, further calls' request fees.
    pub fees_picos: u128,
    /// Billed prompt tokens.
    pub prompt_tokens: u64,
    /// The full completion length; a fault may send fewer.
    pub completion_tokens: u64,
    /// `"length"` when `max_tokens` cut the completion short, else `"stop"`.
    pub finish_reason: &'static str,
    /// The request asked for `stream: true`.
    pub stream: bool,
    /// The fault the request asked for.
    pub fault: Option<Fault>,
    /// The `slow` fault's delay; zero otherwise.
    pub delay: Duration,
    /// How long the generation stays out of `GET /generation`.
    pub generation_delay: Duration,
    /// The request's `HTTP-Referer` header.
    pub http_referer: Option<String>,
    /// The request's `User-Agent` header.
    pub user_agent: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// For embeddings: what vectors to answer with.
    pub embedding: Option<EmbeddingAsk>,
}

/// What an embeddings request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingAsk {
    /// How many vectors: one per input.
    pub inputs: usize,
    /// Each vector's length (`dimensions`, default 8).
    pub dimensions: usize,
    /// `encoding_format: "base64"`: little-endian f32s, base64-encoded.
    pub base64: bool,
}

impl EmbeddingAsk {
    fn of(body: &Value) -> Result<EmbeddingAsk, ApiError> {
        let inputs = match body.get("input") {
            Some(Value::Array(items)) if items.iter().all(|item| !item.is_u64()) => items.len(),
            _ => 1,
        };
        let dimensions = match body.get("dimensions").filter(|value| !value.is_null()) {
            Some(value) => usize::try_from(non_negative(value, "dimensions")?)
                .ok()
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| ApiError::bad_request("dimensions must be between 1 and 4096"))?,
            None => 8,
        };
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(format)) if format == "float" => false,
            Some(Value::String(format)) if format == "base64" => true,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "encoding_format must be \"float\" or \"base64\"",
                ));
            }
        };
        Ok(EmbeddingAsk {
            inputs,
            dimensions,
            base64,
        })
    }
}

impl Completion {
    /// Plans the completion of a parsed request body; 400 for a bad request.
    pub fn plan(
        api: Api,
        config: &MockConfig,
        headers: &HeaderMap,
        body: &Value,
    ) -> Result<Completion, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        let model_id = match body.get("model") {
            Some(Value::String(model_id)) if !model_id.is_empty() => model_id,
            _ => return Err(ApiError::bad_request("No models provided")),
        };
        let (base_id, suffix) = routing::split_suffix(model_id);
        let most = config.bill_most
            || headers
                .get(BILL_HEADER)
                .is_some_and(|value| value.as_bytes() == b"most");
        let routed = match api {
            Api::Embeddings => None,
            _ if base_id == routing::AUTO_ROUTER => {
                Some(routing::auto(config, body, headers, most)?)
            }
            _ => None,
        };
        let model = match (&routed, api) {
            (Some((model, _)), _) => Some(model.clone()),
            (None, Api::Embeddings) => config.find_embedding_model(model_id),
            (None, _) => config
                .find_model(model_id)
                .or_else(|| config.find_model(base_id)),
        };
        // Billing the most, a request with fallbacks is served by the dearest of its models.
        let (model, suffix) = match (&routed, most) {
            (None, true) if api != Api::Embeddings => dearest_fallback(config, body, model, suffix),
            _ => (model, suffix),
        };
        let Some(model) = model else {
            return Err(ApiError::bad_request(format!(
                "{model_id} is not a valid model ID"
            )));
        };
        let fault = Fault::select(headers, model_id)?;
        let listed = Prices::of(&model).map_err(|_| ApiError::internal())?;
        let endpoint = match (routed, api) {
            (Some((_, endpoint)), _) => endpoint,
            (None, Api::Embeddings) => routing::Endpoint {
                provider: "Cheap",
                prices: listed,
            },
            (None, _) => routing::choose(listed, suffix, body, headers, most)?,
        };
        let extras = Extras::of(body, most)?;
        let prices = endpoint.prices;
        let prompt_bytes = match api {
            Api::Chat => chat_prompt_bytes(body)?,
            Api::Completions => legacy_prompt_bytes(body)?,
            Api::Responses => responses_prompt_bytes(body)?,
            Api::Messages => messages_prompt_bytes(body)?,
            Api::Embeddings => embeddings_prompt_bytes(body)?,
        };
        // Normally four bytes of text make a token; billing the most, every byte of what the
        // model reads is one.
        let read_tokens = if most {
            prompt_json_bytes(body)
        } else {
            prompt_bytes.div_ceil(4)
        };
        // Billing the most, a file or video fills the prompt up to the context window (a
        // provider refuses more).
        let per_call = read_tokens.max(1) + extras.prompt_tokens;
        let per_call = if extras.fills_context {
            per_call.max(model.context_length)
        } else {
            per_call
        };
        let prompt_tokens = per_call * extras.calls;
        let natural_tokens = match header_u64(headers, COMPLETION_TOKENS_HEADER)? {
            Some(tokens) => tokens,
            None => u64::from(config.default_completion_tokens),
        };
        let limit = |field: &str| match body.get(field).filter(|value| !value.is_null()) {
            Some(value) => non_negative(value, field).map(Some),
            None => Ok(None),
        };
        let max_tokens = match api {
            Api::Chat | Api::Completions => match limit("max_tokens")? {
                Some(max_tokens) => Some(max_tokens),
                None => limit("max_completion_tokens")?,
            },
            Api::Responses => limit("max_output_tokens")?,
            // Anthropic requires it.
            Api::Messages => Some(
                limit("max_tokens")?
                    .ok_or_else(|| ApiError::bad_request("max_tokens: Field required"))?,
            ),
            Api::Embeddings => Some(0),
        };
        // A reasoning budget must stay below the completion limit (Anthropic's rule, which
        // OpenRouter applies to `reasoning.max_tokens` too).
        let budget = body
            .get("reasoning")
            .and_then(|reasoning| reasoning.get("max_tokens"))
            .or_else(|| {
                body.get("thinking")
                    .and_then(|thinking| thinking.get("budget_tokens"))
            })
            .and_then(Value::as_u64);
        if let (Some(budget), Some(max_tokens)) = (budget, max_tokens)
            && budget >= max_tokens
        {
            return Err(ApiError::bad_request(format!(
                "max_tokens must be greater than the reasoning budget: {max_tokens} is not \
                 greater than {budget}"
            )));
        }
        let natural_tokens = if most {
            max_tokens.unwrap_or(model.max_completion_tokens.unwrap_or(model.context_length))
        } else {
            natural_tokens
        };
        let completion_tokens = max_tokens.map_or(natural_tokens, |max| max.min(natural_tokens));
        // Each model call may generate a whole completion; billing the most, every choice does.
        let choices = match (api, most) {
            (Api::Chat | Api::Completions, true) => {
                let count = |field: &str| body.get(field).and_then(Value::as_u64).unwrap_or(1);
                count("n").max(count("best_of")).max(1)
            }
            _ => 1,
        };
        let completion_factor = extras.calls * choices;
        let fees_picos = extras.fees_picos + u128::from(extras.calls - 1) * prices.request_picos;
        let finish_reason = if completion_tokens < natural_tokens {
            "length"
        } else {
            "stop"
        };
        if !most && per_call + completion_tokens > model.context_length {
            let message = format!(
                "This endpoint's maximum context length is {} tokens. However, you requested \
                 about {} tokens ({prompt_tokens} of text input, {completion_tokens} in the \
                 output). Please reduce the length of either one.",
                model.context_length,
                prompt_tokens + completion_tokens
            );
            return Err(ApiError::bad_request(message).with_error_type("context_length_exceeded"));
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            // Embeddings do not stream.
            Some(Value::Bool(stream)) => *stream && api != Api::Embeddings,
            Some(_) => return Err(ApiError::bad_request("stream must be a boolean")),
        };
        let now = OffsetDateTime::now_utc();
        let suffix: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(20)
            .map(char::from)
            .collect();
        let header_text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Completion {
            api,
            id: format!("gen-{}-{suffix}", now.unix_timestamp()),
            created: now.unix_timestamp(),
            model: model.id,
            provider: endpoint.provider,
            prices,
            completion_factor,
            fees_picos,
            prompt_tokens,
            completion_tokens,
            finish_reason,
            stream,
            fault,
            delay: if fault == Some(Fault::Slow) {
                slow_delay(headers)
            } else {
                Duration::ZERO
            },
            generation_delay: Duration::from_millis(
                header_u64(headers, GENERATION_DELAY_HEADER)?.unwrap_or(0),
            ),
            http_referer: header_text("http-referer"),
            user_agent: header_text(header::USER_AGENT.as_str()),
            started: Instant::now(),
            embedding: match api {
                Api::Embeddings => Some(EmbeddingAsk::of(body)?),
                _ => None,
            },
        })
    }

    /// The text of completion token `token_idx`: a word, preceded by a space
    /// unless it is the first.
    pub fn piece(token_idx: u64) -> String {
        let word = WORDS[usize::try_from(token_idx % 26).unwrap_or_default()];
        if token_idx == 0 {
            word.to_owned()
        } else {
            format!(" {word}")
        }
    }

    /// The whole completion text: `completion_tokens` words.
    pub fn text(&self) -> String {
        (0..self.completion_tokens).map(Completion::piece).collect()
    }

    /// The cost when `completion_tokens` were sent.
    pub fn cost(&self, completion_tokens: u64) -> Cost {
        self.prices.cost_with_fees(
            self.prompt_tokens,
            self.billed_completion(completion_tokens),
            self.fees_picos,
        )
    }

    /// The completion tokens billed when `sent` were streamed: every model call and choice.
    pub fn billed_completion(&self, sent: u64) -> u64 {
        sent * self.completion_factor
    }

    /// The `usage` object for the full completion, in the API's own names; `None` for
    /// `no-usage`.
    pub fn usage_json(&self) -> Option<Value> {
        self.usage_json_after(self.completion_tokens)
    }

    /// The `usage` object after `completion_tokens` were generated; `None` for `no-usage`.
    pub fn usage_json_after(&self, completion_tokens: u64) -> Option<Value> {
        if self.fault == Some(Fault::NoUsage) {
            return None;
        }
        let cost = self.cost(completion_tokens);
        let with_cost = self.fault != Some(Fault::NoCost);
        let cost_json = if with_cost {
            json!(nanos_to_usd(cost.total_nanousd))
        } else {
            Value::Null
        };
        let cost_details = if with_cost {
            json!({
                "upstream_inference_cost": null,
                "upstream_inference_prompt_cost": nanos_to_usd(cost.prompt_nanousd),
                "upstream_inference_completions_cost": nanos_to_usd(cost.completion_nanousd),
            })
        } else {
            Value::Null
        };
        let completion_tokens = self.billed_completion(completion_tokens);
        let (prompt, total) = (self.prompt_tokens, self.prompt_tokens + completion_tokens);
        Some(match self.api {
            Api::Chat | Api::Completions => json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
                "cost": cost_json,
                "is_byok": false,
                "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
                "completion_tokens_details": { "reasoning_tokens": 0, "image_tokens": 0 },
                "cost_details": cost_details,
            }),
            Api::Responses => json!({
                "input_tokens": prompt,
                "input_tokens_details": { "cached_tokens": 0 },
                "output_tokens": completion_tokens,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": total,
                "cost": cost_json,
                "is_byok": false,
                "cost_details": cost_details,
            }),
            Api::Messages => json!({
                "input_tokens": prompt,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": completion_tokens,
                "cost": cost_json,
            }),
            Api::Embeddings => json!({
                "prompt_tokens": prompt,
                "total_tokens": prompt,
                "cost": cost_json,
            }),
        })
    }

    /// The generation record after `completion_tokens` were sent.
    pub fn record(
        &self,
        completion_tokens: u64,
        finish_reason: Option<&'static str>,
        cancelled: bool,
    ) -> GenerationRecord {
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        GenerationRecord {
            id: self.id.clone(),
            provider: self.provider,
            model: self.model.clone(),
            api_type: self.api.api_type(),
            created_at: OffsetDateTime::from_unix_timestamp(self.created)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            available_at: Instant::now() + self.generation_delay,
            streamed: self.stream,
            cancelled,
            finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.billed_completion(completion_tokens),
            cost: self.cost(completion_tokens),
            latency_ms: elapsed_ms,
            generation_time_ms: elapsed_ms,
            http_referer: self.http_referer.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

/// UTF-8 bytes of every message's `content`: a string, or the `text` of
/// each part of an array.
fn chat_prompt_bytes(body: &Value) -> Result<u64, ApiError> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(ApiError::bad_request("messages must be an array"));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    let mut n_bytes = 0;
    for message in messages {
        if !message.is_object() {
            return Err(ApiError::bad_request("each message must be an object"));
        }
        n_bytes += match message.get("content") {
            None | Some(Value::Null) => 0,
            Some(Value::String(content)) => content.len(),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .map(str::len)
                .sum(),
            Some(_) => return Err(ApiError::bad_request("message content must be a string")),
        };
    }
    Ok(u64::try_from(n_bytes).unwrap_or(u64::MAX))
}

/// UTF-8 bytes of a text or a list of content parts: a string, or the `text` of each part.
fn text_bytes(content: &Value, what: &str) -> Result<usize, ApiError> {
    match content {
        Value::Null => Ok(0),
        Value::String(text) => Ok(text.len()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(str::len)
            .sum()),
        _ => Err(ApiError::bad_request(format!(
            "{what} must be a string or an array of content parts"
        ))),
    }
}

/// UTF-8 bytes of `instructions` and of `input`: a string, or items whose `content` is text or
/// parts (and whose `output`, for a function call's result, is text).
fn responses_prompt_bytes(body: &Value) -> Result<u64, ApiError> {
    let mut n_bytes = text_bytes(
        body.get("instructions").unwrap_or(&Value::Null),
        "instructions",
    )?;
    match body.get("input") {
        Some(Value::String(input)) => n_bytes += input.len(),
        Some(Value::Array(items)) => {
            for item in items {
                if !item.is_object() {
                    return Err(ApiError::bad_request("each input item must be an object"));
                }
                n_bytes += text_bytes(item.get("content").unwrap_or(&Value::Null), "content")?;
                n_bytes += item
                    .get("output")
                    .and_then(Value::as_str)
                    .map_or(0, str::len);
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "input must be a string or an array of input items",
            ));
        }
    }
    Ok(u64::try_from(n_bytes).unwrap_or(u64::MAX))
}

/// UTF-8 bytes of `system` and of every message's `content` (text or blocks), as Anthropic
/// reads them.
fn messages_prompt_bytes(body: &Value) -> Result<u64, ApiError> {
    let mut n_bytes = text_bytes(body.get("system").unwrap_or(&Value::Null), "system")?;
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(ApiError::bad_request("messages: Field required"));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "messages: at least one message is required",
        ));
    }
    for message in messages {
        n_bytes += text_bytes(message.get("content").unwrap_or(&Value::Null), "content")?;
    }
    Ok(u64::try_from(n_bytes).unwrap_or(u64::MAX))
}

/// UTF-8 bytes of `input`: a string or an array of strings; a list of token ids counts four
/// bytes per token, so it bills one token per id.
fn embeddings_prompt_bytes(body: &Value) -> Result<u64, ApiError> {
    let one = |input: &Value| match input {
        Value::String(text) => Some(text.len()),
        Value::Array(ids) if ids.iter().all(Value::is_u64) => Some(ids.len() * 4),
        _ => None,
    };
    let n_bytes = match body.get("input") {
        Some(Value::Array(inputs)) if inputs.iter().all(|input| !input.is_u64()) => {
            inputs.iter().map(one).sum::<Option<usize>>()
        }
        Some(input) => one(input),
        None => None,
    };
    let n_bytes = n_bytes.ok_or_else(|| {
        ApiError::bad_request("input must be a string, an array of strings, or token ids")
    })?;
    Ok(u64::try_from(n_bytes).unwrap_or(u64::MAX))
}

/// UTF-8 bytes of `prompt`: a string or an array of strings.
fn legacy_prompt_bytes(body: &Value) -> Result<u64, ApiError> {
    let n_bytes = match body.get("prompt") {
        Some(Value::String(prompt)) => prompt.len(),
        Some(Value::Array(prompts)) if prompts.iter().all(Value::is_string) => {
            prompts.iter().filter_map(Value::as_str).map(str::len).sum()
        }
        _ => {
            return Err(ApiError::bad_request(
                "prompt must be a string or an array of strings",
            ));
        }
    };
    Ok(u64::try_from(n_bytes).unwrap_or(u64::MAX))
}

fn non_negative(value: &Value, field: &str) -> Result<u64, ApiError> {
    value
        .as_u64()
        .ok_or_else(|| ApiError::bad_request(format!("{field} must be a non-negative integer")))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
    {
        Some(number) => Ok(Some(number)),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{name} must be an integer"),
        )),
    }
}

/// Bytes of what the model reads (the messages, input, prompt, system prompt, instructions and
/// tools, as JSON): the most prompt tokens a tokenizer can make of them.
fn prompt_json_bytes(body: &Value) -> u64 {
    [
        "messages",
        "input",
        "prompt",
        "system",
        "instructions",
        "tools",
    ]
    .iter()
    .filter_map(|field| body.get(*field))
    .map(|value| value.to_string().len() as u64)
    .sum()
}

/// The dearest (by listed completion price) of the request's model and its `models` fallbacks
/// that the mock knows, with its routing suffix.
fn dearest_fallback<'a>(
    config: &MockConfig,
    body: &'a Value,
    model: Option<MockModel>,
    suffix: Option<&'a str>,
) -> (Option<MockModel>, Option<&'a str>) {
    let mut best = (model, suffix);
    let price = |model: &Option<MockModel>| {
        model
            .as_ref()
            .and_then(|model| Prices::of(model).ok())
            .map_or(0, |prices| prices.completion_picos)
    };
    let fallbacks = body.get("models").and_then(Value::as_array);
    for id in fallbacks.into_iter().flatten().filter_map(Value::as_str) {
        let (base, suffix) = routing::split_suffix(id);
        let candidate = config.find_model(id).or_else(|| config.find_model(base));
        if price(&candidate) > price(&best.0) {
            best = (candidate, suffix);
        }
    }
    best
}
