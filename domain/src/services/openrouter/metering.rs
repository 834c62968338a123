//! Metering a response as it passes: reading `usage` (with `cost`) from a JSON body or from the
//! usage chunk of a server-sent event stream.
//!
//! A [`UsageMeter`] only reads the bytes the gateway forwards; it never holds the response back.
//! Its memory is bounded in both modes: a JSON body is kept up to [`JSON_BODY_LIMIT`] and then
//! only its last [`JSON_TAIL_BYTES`] (where OpenRouter puts `usage`); a stream keeps only the
//! line in progress, and drops a line longer than [`SSE_LINE_LIMIT`].

use std::sync::LazyLock;

use memchr::memmem::FinderRev;
use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_json::value::RawValue;

use crate::money::Money;
use crate::services::ResponseMeter;
use crate::services::openrouter::metering::sse::SseMeter;

/// The largest JSON response body parsed whole.
pub const JSON_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// How much of the end of a larger JSON body is kept to find `usage` in.
pub const JSON_TAIL_BYTES: usize = 64 * 1024;
/// The longest event-stream line kept; a longer one (a large image in a delta) is skipped.
pub const SSE_LINE_LIMIT: usize = 256 * 1024;

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
    /// `text/event-stream`, JSON mode for anything else.
    pub fn new(status: u16, content_type: Option<&str>) -> UsageMeter {
        let is_stream = content_type.is_some_and(|value| {
            let mime = value.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("text/event-stream")
        });
        let mode = if is_stream {
            Mode::Sse(SseMeter::default())
        } else {
            Mode::Json(JsonMeter::default())
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
        // Usage sits at the end of the body: find and read just that object, which is much
        // cheaper than parsing the whole response. Only when there is none is the whole body
        // parsed, to tell an error body, a missing usage and a broken body apart.
        let from_tail = usage_in_tail(&self.body);
        if self.tail_only
            || matches!(
                from_tail,
                MeterOutcome::Reported { .. } | MeterOutcome::TokensOnly { .. }
            )
        {
            return from_tail;
        }
        match serde_json::from_slice::<BodyWire>(&self.body) {
            Ok(BodyWire {
                usage: Some(usage), ..
            }) => usage.outcome(),
            Ok(BodyWire {
                error: Some(error), ..
            }) => MeterOutcome::Nothing {
                reason: NoUsage::ErrorEvent {
                    message: error_message(&error),
                },
            },
            Ok(_) => MeterOutcome::Nothing {
                reason: NoUsage::NotReported,
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

/// Finds the last `"usage": {...}` in the tail of a large body. In JSON text a quote inside a
/// string is escaped, so the bytes `"usage"` followed by a colon can only be an object key.
pub(crate) fn usage_in_tail(tail: &[u8]) -> MeterOutcome {
    let mut end = tail.len();
    while let Some(at) = USAGE_FINDER_REV.rfind(&tail[..end]) {
        end = at;
        let Some(value) = after_colon(&tail[at + USAGE_KEY.len()..]) else {
            continue;
        };
        // Read as text when it is UTF-8: the parser then does not check each string (most of
        // them keys) again.
        let usage = match std::str::from_utf8(value) {
            Ok(text) => {
                Option::<UsageWire>::deserialize(&mut serde_json::Deserializer::from_str(text))
            }
            Err(_) => {
                Option::<UsageWire>::deserialize(&mut serde_json::Deserializer::from_slice(value))
            }
        };
        return match usage {
            Ok(Some(usage)) => usage.outcome(),
            Ok(None) => MeterOutcome::Nothing {
                reason: NoUsage::NotReported,
            },
            Err(err) => MeterOutcome::Nothing {
                reason: NoUsage::Malformed {
                    detail: err.to_string(),
                },
            },
        };
    }
    MeterOutcome::Nothing {
        reason: NoUsage::NotReported,
    }
}

/// The key that marks usage, quotes included.
pub(crate) const USAGE_KEY: &[u8] = b"\"usage\"";
/// Searches backwards for [`USAGE_KEY`], built once rather than for every response.
static USAGE_FINDER_REV: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(USAGE_KEY));

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

/// The top level of a JSON response or of one stream chunk; other fields are skipped.
#[derive(Deserialize)]
pub(crate) struct BodyWire<'a> {
    #[serde(default, borrow)]
    pub(crate) usage: Option<UsageWire<'a>>,
    #[serde(default)]
    pub(crate) error: Option<serde_json::Value>,
}

/// `usage` as OpenRouter sends it (schema `ChatUsage`). Costs are kept as the JSON number's
/// own text and read as exact decimals: no float ever holds them.
#[derive(Deserialize)]
pub(crate) struct UsageWire<'a> {
    #[serde(default)]
    prompt_tokens: Option<Count>,
    #[serde(default)]
    completion_tokens: Option<Count>,
    #[serde(default, borrow)]
    cost: Option<&'a RawValue>,
    #[serde(default)]
    is_byok: Option<bool>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
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
    /// The outcome this usage amounts to: a cost when one is reported and readable, else token
    /// counts when both prompt and completion counts are there, else nothing.
    pub(crate) fn outcome(self) -> MeterOutcome {
        // A cost that is not a JSON number makes the usage unreadable, as any other wrong type
        // does (a number out of range is only unusable: the token counts are used instead).
        let upstream = self
            .cost_details
            .as_ref()
            .and_then(|d| d.upstream_inference_cost);
        if self.cost.into_iter().chain(upstream).any(|raw| {
            !raw.get()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit())
        }) {
            return MeterOutcome::Nothing {
                reason: NoUsage::Malformed {
                    detail: "usage.cost is not a number".to_string(),
                },
            };
        }
        let count = |value: Option<Count>| value.map_or(0, |count| count.0);
        let usage = Usage {
            prompt_tokens: count(self.prompt_tokens),
            completion_tokens: count(self.completion_tokens),
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
        };
        let byok_upstream = match (self.is_byok, upstream) {
            (Some(true), Some(upstream)) => reported_cost(upstream),
            _ => Some(Money::ZERO),
        };
        let cost = self
            .cost
            .and_then(reported_cost)
            .and_then(|cost| cost.checked_add(byok_upstream?));
        match cost {
            Some(cost) => MeterOutcome::Reported { cost, usage },
            None if self.prompt_tokens.is_some() && self.completion_tokens.is_some() => {
                MeterOutcome::TokensOnly { usage }
            }
            None => MeterOutcome::Nothing {
                reason: NoUsage::Malformed {
                    detail: "usage has neither a cost nor token counts".to_string(),
                },
            },
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
