//! Metering a response as it passes: reading `usage` (with `cost`) from a JSON body or from the
//! usage chunk of a server-sent event stream.
//!
//! One meter serves every API, as their usage objects differ only in names: chat's
//! `prompt_tokens` / `completion_tokens` (with `*_details`), the Responses API's `input_tokens`
//! / `output_tokens` (with `*_details`, and in a stream under `response.completed`'s
//! `response`), and Anthropic's `input_tokens` / `output_tokens` beside
//! `cache_read_input_tokens` and `cache_creation_input_tokens`, which Anthropic counts outside
//! `input_tokens`. An Anthropic stream reports usage twice: `message_start` carries the input
//! and a provisional output count, `message_delta` the final output; the meter merges them and
//! takes only a stream that reached a report after `message_start` as complete.
//!
//! A [`UsageMeter`] only reads the bytes the gateway forwards; it never holds the response back.
//! Its memory is bounded in both modes: a JSON body is kept up to [`JSON_BODY_LIMIT`] and then
//! only its last [`JSON_TAIL_BYTES`] (where OpenRouter puts `usage`); a stream keeps only the
//! line in progress, and of a line longer than [`SSE_LINE_LIMIT`] only its end.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_json::value::RawValue;

use crate::money::Money;
use crate::services::openrouter::metering::sse::SseMeter;
use crate::services::{Api, ResponseMeter};

/// The largest JSON response body parsed whole.
pub const JSON_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// How much of the end of a larger JSON body is kept to find `usage` in.
pub const JSON_TAIL_BYTES: usize = 64 * 1024;
/// The longest event-stream line kept whole (a Responses `response.completed` repeats the whole
/// output: 1 MiB is far beyond any model's longest); of a longer one (a large image in a
/// delta) only the end is kept.
pub const SSE_LINE_LIMIT: usize = 1024 * 1024;

/// Token counts the upstream reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cached and cache-written ones included.
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning tokens included.
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    pub cache_write_tokens: u64,
    /// Completion tokens spent on reasoning.
    pub reasoning_tokens: u64,
}

/// What a meter learned from a whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeterOutcome {
    /// The upstream reported what the request cost.
    Reported {
        /// `usage.cost`, plus `cost_details.upstream_inference_cost` for a BYOK request, whose
        /// provider bills the master key's owner directly.
        cost: Money,
        /// The token counts (zero where not reported).
        usage: Usage,
    },
    /// Token counts without a cost: the charge is computed from the price list.
    TokensOnly {
        /// The token counts.
        usage: Usage,
    },
    /// No usable usage.
    Nothing {
        /// Why.
        reason: NoUsage,
    },
}

/// Why a response yielded no usage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoUsage {
    /// The upstream answered with an error status and no usage: it did no billable work.
    #[error("the upstream answered with status {status} and reported no usage")]
    UpstreamError {
        /// The HTTP status.
        status: u16,
    },
    /// No response arrived (connection failed, or the client left before the upstream
    /// answered). The gateway reports this itself; a meter never does.
    #[error("no response arrived from the upstream")]
    NoResponse,
    /// The upstream reported an error after it had started answering.
    #[error("the upstream reported an error mid-response: {message}")]
    ErrorEvent {
        /// The upstream's message, shortened.
        message: String,
    },
    /// The stream ended before its usage chunk (upstream cut, or the client hung up).
    #[error("the stream ended before its usage was reported")]
    StreamCut,
    /// The JSON body ended before it was complete.
    #[error("the response body ended before it was complete")]
    Incomplete,
    /// The response completed without a usage object.
    #[error("the response completed without reporting usage")]
    NotReported,
    /// An event-stream line past the length limit was skipped, and no usage was found.
    #[error("an event line longer than {limit} bytes was skipped and no usage was found")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A body or usage that could not be read.
    #[error("the response's usage could not be read: {detail}")]
    Malformed {
        /// What the parser said.
        detail: String,
    },
}

/// Reads usage from one response, in JSON or event-stream mode.
#[derive(Debug)]
pub struct UsageMeter {
    status: u16,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Json(JsonMeter),
    Sse(SseMeter),
}

impl UsageMeter {
    /// A meter for a response with this HTTP status and `Content-Type`: event-stream mode for
    /// `text/event-stream`, JSON mode for anything else. It reads any API's usage, and parses
    /// every body whole to find it: see [`for_api`](UsageMeter::for_api) for the quicker way.
    pub fn new(status: u16, content_type: Option<&str>) -> UsageMeter {
        UsageMeter::reading(status, content_type, false)
    }

    /// A meter for a response of `api`. Answers of chat and text completions and embeddings
    /// hold no object the client wrote (their text is in strings), so their one `"usage"`
    /// object is read on its own, without parsing the rest; a Responses answer echoes the
    /// request's tools and metadata, and a Messages answer holds tool inputs, so theirs are
    /// parsed whole, to read only the top-level usage.
    pub fn for_api(api: Api, status: u16, content_type: Option<&str>) -> UsageMeter {
        let no_client_objects = matches!(
            api,
            Api::ChatCompletions | Api::Completions | Api::Embeddings
        );
        UsageMeter::reading(status, content_type, no_client_objects)
    }

    fn reading(status: u16, content_type: Option<&str>, no_client_objects: bool) -> UsageMeter {
        let is_stream = content_type.is_some_and(|value| {
            let mime = value.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("text/event-stream")
        });
        let mode = if is_stream {
            Mode::Sse(SseMeter::new(no_client_objects))
        } else {
            Mode::Json(JsonMeter {
                no_client_objects,
                ..JsonMeter::default()
            })
        };
        UsageMeter { status, mode }
    }

    /// True when the meter reads an event stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.mode, Mode::Sse(_))
    }
}

impl ResponseMeter for UsageMeter {
    type Outcome = MeterOutcome;

    fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Json(meter) => meter.feed(chunk),
            Mode::Sse(meter) => meter.feed(chunk),
        }
    }

    fn finish(self) -> MeterOutcome {
        let outcome = match self.mode {
            Mode::Json(meter) => meter.finish(),
            Mode::Sse(meter) => meter.finish(),
        };
        match outcome {
            MeterOutcome::Nothing { .. } if self.status >= 400 => MeterOutcome::Nothing {
                reason: NoUsage::UpstreamError {
                    status: self.status,
                },
            },
            outcome => outcome,
        }
    }
}

/// A JSON body, kept whole up to [`JSON_BODY_LIMIT`], then only its tail.
#[derive(Debug, Default)]
struct JsonMeter {
    body: Vec<u8>,
    /// True once the body passed the limit and its head was dropped.
    tail_only: bool,
    /// True when the answer can hold no object the client wrote (see [`UsageMeter::for_api`]).
    no_client_objects: bool,
}

impl JsonMeter {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.extend_from_slice(chunk);
        if self.body.len() > JSON_BODY_LIMIT
            || (self.tail_only && self.body.len() > 2 * JSON_TAIL_BYTES)
        {
            let cut = self.body.len() - JSON_TAIL_BYTES;
            self.body.drain(..cut);
            self.body.shrink_to(2 * JSON_TAIL_BYTES);
            self.tail_only = true;
        }
    }

    fn finish(self) -> MeterOutcome {
        // The whole body is parsed, skipping what is not usage, so only the top-level usage (or
        // a Responses event's `response.usage`) is read: the Responses API echoes the request's
        // tool schemas and metadata, and a tool call's input is an object, so a `"usage"` key
        // elsewhere may be the client's. Of a body past the limit only the end is left, read
        // under stricter rules (see `sole_usage`).
        if self.no_client_objects
            && !self.tail_only
            && let Ok(outcome) = sole_usage(&self.body, 1).and_then(|report| report.outcome())
        {
            return outcome;
        }
        if self.tail_only {
            // The same last bytes however the body was cut into chunks.
            let tail = &self.body[self.body.len().saturating_sub(JSON_TAIL_BYTES)..];
            return sole_usage(tail, 1)
                .and_then(|report| report.outcome())
                .unwrap_or_else(|reason| MeterOutcome::Nothing { reason });
        }
        match serde_json::from_slice::<BodyWire>(&self.body) {
            Ok(body) => match body.into_parts() {
                Parts {
                    usage: Some(usage), ..
                } => usage
                    .report()
                    .and_then(|report| report.outcome())
                    .unwrap_or_else(|reason| MeterOutcome::Nothing { reason }),
                Parts {
                    error: Some(error), ..
                } => MeterOutcome::Nothing {
                    reason: NoUsage::ErrorEvent {
                        message: error_message(&error),
                    },
                },
                Parts { .. } => MeterOutcome::Nothing {
                    reason: NoUsage::NotReported,
                },
            },
            Err(err) if err.is_eof() => MeterOutcome::Nothing {
                reason: NoUsage::Incomplete,
            },
            Err(err) => MeterOutcome::Nothing {
                reason: NoUsage::Malformed {
                    detail: err.to_string(),
                },
            },
        }
    }
}

/// Reads the one usage object of `bytes` without parsing the rest, when it can only be the
/// answer's own: it must be the only `"usage"` key in `bytes`, and what follows it must close
/// exactly the objects it may sit in (`levels`: 1 for a body's top level; 1 or 2 for an event
/// line, whose usage may be a Responses event's `response.usage`), with nothing in between but
/// fields whose values hold no object (`"provider":"p"`, `"metadata":{}`). In JSON text a quote
/// inside a string is escaped, so the bytes `"usage"` followed by a colon can only be a key.
///
/// Two uses: the end of a body (or event line) too long to keep whole, where nesting cannot be
/// seen otherwise (anything else is unreadable, and the request is charged its reservation);
/// and, with `levels` 1, an answer that holds no object the client wrote, read quickly (on
/// `Err`, the caller parses it whole).
pub(crate) fn sole_usage(bytes: &[u8], levels: usize) -> Result<UsageReport, NoUsage> {
    let unreadable = |detail: &str| NoUsage::Malformed {
        detail: format!("the usage cannot be told from what the client sent: {detail}"),
    };
    let mut values = USAGE_FINDER
        .find_iter(bytes)
        .filter_map(|at| after_colon(&bytes[at + USAGE_KEY.len()..]));
    let Some(value) = values.next() else {
        return Err(NoUsage::NotReported);
    };
    if values.next().is_some() {
        return Err(unreadable("several usage objects"));
    }
    let Some((raw, rest)) = next_value(value) else {
        return Err(unreadable("an unreadable usage object"));
    };
    if !(1..=levels).contains(&objects_closed(rest).unwrap_or(0)) {
        return Err(unreadable("a usage object below the top level"));
    }
    match Option::<UsageWire>::deserialize(&mut serde_json::Deserializer::from_str(raw)) {
        Ok(Some(usage)) => usage.report(),
        Ok(None) => Err(NoUsage::NotReported),
        Err(err) => Err(NoUsage::Malformed {
            detail: err.to_string(),
        }),
    }
}

/// How many objects `rest` closes, when it is only `}`s and fields whose values hold no object
/// or list (`,"provider":"p"`, `,"metadata":{}`); `None` for anything else.
fn objects_closed(mut rest: &[u8]) -> Option<usize> {
    let mut closed = 0;
    loop {
        rest = rest.trim_ascii_start();
        match rest.split_first() {
            None => return Some(closed),
            Some((b'}', after)) => {
                closed += 1;
                rest = after;
            }
            Some((b',', after)) => {
                let (key, after) = next_value(after)?;
                let (value, after) = next_value(after_colon(after)?)?;
                let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
                let holds_nothing =
                    !value.starts_with(['{', '[']) || compact == "{}" || compact == "[]";
                if !key.starts_with('"') || !holds_nothing {
                    return None;
                }
                rest = after;
            }
            Some(_) => return None,
        }
    }
}

/// The first JSON value in `bytes`, as text, and the bytes after it.
fn next_value(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<&RawValue>();
    let value = values.next()?.ok()?;
    Some((value.get(), &bytes[values.byte_offset()..]))
}

/// The key that marks usage, quotes included.
pub(crate) const USAGE_KEY: &[u8] = b"\"usage\"";
/// Searches for [`USAGE_KEY`], built once rather than for every response.
pub(crate) static USAGE_FINDER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(USAGE_KEY));

/// The bytes after optional whitespace, a colon and optional whitespace; `None` without a colon.
pub(crate) fn after_colon(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.trim_ascii_start().strip_prefix(b":")?;
    Some(rest.trim_ascii_start())
}

/// An `error` value's message, shortened for the usage record.
pub(crate) fn error_message(error: &serde_json::Value) -> String {
    const LIMIT: usize = 200;
    let text = match error.get("message").and_then(serde_json::Value::as_str) {
        Some(message) => message.to_string(),
        None => match error {
            serde_json::Value::String(message) => message.clone(),
            other => other.to_string(),
        },
    };
    match text.char_indices().nth(LIMIT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

/// The top level of a JSON response or of one stream chunk; other fields are skipped. The usage
/// and error of a Responses API event sit in its `response`, and those of Anthropic's
/// `message_start` in its `message`.
#[derive(Deserialize)]
pub(crate) struct BodyWire<'a> {
    #[serde(default, borrow)]
    usage: Option<UsageWire<'a>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default, borrow)]
    response: Lenient<InnerWire<'a>>,
    #[serde(default, borrow)]
    message: Lenient<InnerWire<'a>>,
}

/// The usage and error of a `response` or `message` object.
#[derive(Deserialize)]
struct InnerWire<'a> {
    #[serde(default, borrow)]
    usage: Option<UsageWire<'a>>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// What a body or event says about usage and errors.
pub(crate) struct Parts<'a> {
    pub(crate) usage: Option<UsageWire<'a>>,
    pub(crate) error: Option<serde_json::Value>,
    /// True when the usage is an Anthropic `message_start`'s (in its `message`), whose output
    /// count a later `message_delta` replaces.
    pub(crate) provisional: bool,
}

impl<'a> BodyWire<'a> {
    /// The usage and the error, from the top level or else from `response` or `message`.
    pub(crate) fn into_parts(self) -> Parts<'a> {
        let (mut usage, mut error) = (self.usage, self.error);
        let mut provisional = false;
        if let Some(inner) = self.response.0 {
            usage = usage.or(inner.usage);
            error = error.or(inner.error);
        }
        if let Some(inner) = self.message.0 {
            if usage.is_none() && inner.usage.is_some() {
                usage = inner.usage;
                provisional = true;
            }
            error = error.or(inner.error);
        }
        Parts {
            usage,
            error,
            provisional,
        }
    }
}

/// An object read as `T`; any other value (a string, a list) is skipped as absent, so a field
/// of an unexpected shape does not make the body unreadable.
pub(crate) struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|inner| Lenient(Some(inner)))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient<T>, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Lenient(None))
    }

    visit_scalars!(Lenient(None); bool i64 u64 f64 str unit);
}

/// `usage` as OpenRouter sends it: chat's names (schema `ChatUsage`), the Responses API's, and
/// Anthropic's. Costs are kept as the JSON number's own text and read as exact decimals: no
/// float ever holds them.
#[derive(Deserialize)]
pub(crate) struct UsageWire<'a> {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: Option<Count>,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: Option<Count>,
    /// Anthropic: prompt tokens read from the cache, not counted in `input_tokens`.
    #[serde(default)]
    cache_read_input_tokens: Option<Count>,
    /// Anthropic: prompt tokens written to the cache, not counted in `input_tokens`.
    #[serde(default)]
    cache_creation_input_tokens: Option<Count>,
    #[serde(default, borrow)]
    cost: Option<&'a RawValue>,
    #[serde(default)]
    is_byok: Option<bool>,
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default, alias = "output_tokens_details")]
    completion_tokens_details: Option<CompletionDetails>,
    #[serde(default, borrow)]
    cost_details: Option<CostDetails<'a>>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<Count>,
    #[serde(default)]
    cache_write_tokens: Option<Count>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<Count>,
}

#[derive(Deserialize)]
struct CostDetails<'a> {
    #[serde(default, borrow)]
    upstream_inference_cost: Option<&'a RawValue>,
}

/// A reported cost in dollars, from its JSON text (`0.0015`, `4.4e-5`), rounded to nano-dollars;
/// `None` for anything but a number in range (`null`, a string).
fn reported_cost(raw: &RawValue) -> Option<Money> {
    Money::from_usd_str(raw.get()).ok()
}

impl UsageWire<'_> {
    /// What this usage object reports, or why it is unreadable: a cost that is not a JSON
    /// number makes it so, as any other wrong type does (a number out of range is only
    /// unusable: the token counts are used instead).
    pub(crate) fn report(self) -> Result<UsageReport, NoUsage> {
        let upstream = self
            .cost_details
            .as_ref()
            .and_then(|d| d.upstream_inference_cost);
        if self.cost.into_iter().chain(upstream).any(|raw| {
            !raw.get()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        }) {
            return Err(NoUsage::Malformed {
                detail: "usage.cost is not a number".to_string(),
            });
        }
        let byok_upstream = match (self.is_byok, upstream) {
            (Some(true), Some(upstream)) => reported_cost(upstream),
            _ => Some(Money::ZERO),
        };
        let count = |value: Option<Count>| value.map(|count| count.0);
        Ok(UsageReport {
            prompt_tokens: count(self.prompt_tokens),
            completion_tokens: count(self.completion_tokens),
            cache_read_input_tokens: count(self.cache_read_input_tokens),
            cache_creation_input_tokens: count(self.cache_creation_input_tokens),
            cached_tokens: count(
                self.prompt_tokens_details
                    .as_ref()
                    .and_then(|d| d.cached_tokens),
            ),
            cache_write_tokens: count(
                self.prompt_tokens_details
                    .as_ref()
                    .and_then(|d| d.cache_write_tokens),
            ),
            reasoning_tokens: count(
                self.completion_tokens_details
                    .and_then(|d| d.reasoning_tokens),
            ),
            cost: self
                .cost
                .and_then(reported_cost)
                .and_then(|cost| cost.checked_add(byok_upstream?)),
        })
    }
}

/// What one or more usage objects of a response reported; `None` where a field was absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UsageReport {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    cache_write_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    /// `cost`, plus the upstream's cost for a BYOK request; `None` when absent or unusable.
    cost: Option<Money>,
}

impl UsageReport {
    /// This report updated by a later one of the same response: each count the later one has
    /// replaces this one's (Anthropic's counts are running totals), and its cost, or its lack
    /// of one, replaces this one's: an earlier cost may be for less than the final counts.
    pub(crate) fn merge(self, later: UsageReport) -> UsageReport {
        UsageReport {
            prompt_tokens: later.prompt_tokens.or(self.prompt_tokens),
            completion_tokens: later.completion_tokens.or(self.completion_tokens),
            cache_read_input_tokens: later
                .cache_read_input_tokens
                .or(self.cache_read_input_tokens),
            cache_creation_input_tokens: later
                .cache_creation_input_tokens
                .or(self.cache_creation_input_tokens),
            cached_tokens: later.cached_tokens.or(self.cached_tokens),
            cache_write_tokens: later.cache_write_tokens.or(self.cache_write_tokens),
            reasoning_tokens: later.reasoning_tokens.or(self.reasoning_tokens),
            cost: later.cost,
        }
    }

    /// The outcome this report amounts to: a cost when one is reported and readable, else
    /// token counts when both prompt and completion counts are there; else why not.
    pub(crate) fn outcome(&self) -> Result<MeterOutcome, NoUsage> {
        let n = |count: Option<u64>| count.unwrap_or(0);
        let (cache_read, cache_creation) = (
            n(self.cache_read_input_tokens),
            n(self.cache_creation_input_tokens),
        );
        let usage = Usage {
            prompt_tokens: n(self.prompt_tokens)
                .saturating_add(cache_read)
                .saturating_add(cache_creation),
            completion_tokens: n(self.completion_tokens),
            cached_tokens: n(self.cached_tokens).saturating_add(cache_read),
            cache_write_tokens: n(self.cache_write_tokens).saturating_add(cache_creation),
            reasoning_tokens: n(self.reasoning_tokens),
        };
        match self.cost {
            Some(cost) => Ok(MeterOutcome::Reported { cost, usage }),
            None if self.prompt_tokens.is_some() && self.completion_tokens.is_some() => {
                Ok(MeterOutcome::TokensOnly { usage })
            }
            None => Err(NoUsage::Malformed {
                detail: "usage has neither a cost nor token counts".to_string(),
            }),
        }
    }
}

/// A token count, accepting a whole number, or a float rounded up, as some providers send.
#[derive(Clone, Copy)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl Visitor<'_> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a token count")
    }

    fn visit_u64<E: de::Error>(self, count: u64) -> Result<Count, E> {
        Ok(Count(count))
    }

    fn visit_i64<E: de::Error>(self, count: i64) -> Result<Count, E> {
        Ok(Count(u64::try_from(count).unwrap_or(0)))
    }

    fn visit_f64<E: de::Error>(self, count: f64) -> Result<Count, E> {
        if !count.is_finite() || count < 0.0 {
            return Ok(Count(0));
        }
        // A float count is rounded up; `as` saturates at u64::MAX.
        Ok(Count(count.ceil() as u64))
    }
}

mod sse;

#[cfg(test)]
mod tests;
