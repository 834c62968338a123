//! Pricing a request at its worst case, fitting it to the budget left, and settling it.
//!
//! All arithmetic is in pico-dollars (`u128`, exact) and rounds up to nano-dollars once per
//! total, so the worst case is never understated.
//!
//! A request may run several model calls: a server-side web tool (or the web plugin on a
//! model that searches natively) runs a search between calls, and each call reads the whole
//! prompt again and may generate a full completion. With `S` searches allowed, there are at
//! most `S + 1` calls. The worst case of a request on a priced model is the sum of:
//!
//! - the per-request fee, per call;
//! - prompt, per call: body bytes x the highest input-token price (prompt, cache read or
//!   write, input audio), since each prompt token costs at most that and there are no more
//!   tokens than bytes, plus what the body does not hold:
//!   - per image part, [`image_prompt_tokens`](OpenRouterConfig::image_prompt_tokens), for an
//!     image sent by URL;
//!   - per web result, [`web_result_tokens`](OpenRouterConfig::web_result_tokens) (written
//!     as the server tool's `max_characters`, as a token is at least a character);
//!   - with a file or video part (a PDF inline or by URL, a video by URL) or a web fetch tool
//!     (whole pages), the model's whole context window, since a prompt never holds more (at [`UNKNOWN_CONTEXT_TOKENS`] for a
//!     model whose window is not listed);
//! - images: the per-image price per image part;
//! - web search: per search, the larger of the model's per-search price and
//!   [`web_search_fee`](OpenRouterConfig::web_search_fee), and per result
//!   [`web_result_fee`](OpenRouterConfig::web_result_fee);
//! - PDF pages, when the request names the `mistral-ocr` engine and the operator allows it:
//!   [`ocr_pages_per_file`](OpenRouterConfig::ocr_pages_per_file) pages per file part at
//!   [`ocr_page_fee`](OpenRouterConfig::ocr_page_fee);
//! - completion, per call and choice: `max_tokens` x (the highest output-token price + the
//!   reasoning price), plus one output image at the per-output-image price.
//!
//! A request that may be routed to several models (`models`, or `openrouter/auto` over its
//! allowed models) is priced at the component-by-component highest of their prices. A request
//! without `max_tokens` is priced at the model's completion limit (the top provider's
//! `max_completion_tokens`, else its context window), and that limit is written into the body
//! that goes upstream, with `provider.max_price` at the prices used, so that OpenRouter itself
//! refuses a dearer provider ([`Bounds`]). The context window is not reduced by the prompt's
//! estimate: bytes overstate tokens, so subtracting them could understate the room left for
//! the completion.

use crate::money::Money;
use crate::services::Fit;
use crate::services::openrouter::OpenRouterConfig;
use crate::services::openrouter::bound::{Bounds, MaxPrice, WebLimits, WebToolLimits};
use crate::services::openrouter::pricing::{ModelPrice, PICOS_PER_NANO, UnitPrice};
use crate::services::openrouter::request::ChatRequest;

/// The completion limit written into a request whose model has no known limit at all.
pub const UNKNOWN_COMPLETION_LIMIT: u64 = 128 * 1024;

/// The prompt a request with a file part is priced at when its model lists no context window:
/// the largest windows offered are about two million tokens.
pub const UNKNOWN_CONTEXT_TOKENS: u64 = 2_000_000;

/// The web plugin's `max_results` when a request leaves it out (OpenRouter's default).
pub const DEFAULT_WEB_RESULTS: u64 = 5;

/// The most tool calls OpenRouter lets one request make (`max_tool_calls`' default and top).
pub const MAX_TOOL_CALLS: u64 = 30;

/// A priced request: what the gateway keeps from reservation to settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// `None` for an unpriced model, which reserves `ceiling` instead.
    price: Option<ModelPrice>,
    ceiling: Money,
    /// Everything but the completion tokens, in pico-dollars.
    fixed_picos: u128,
    /// One more completion token on every choice of every call, in pico-dollars.
    per_token_picos: u128,
    requested_max_tokens: Option<u64>,
    /// The limit written when the request sets none: the model's completion limit.
    default_max_tokens: Option<u64>,
    min_completion_tokens: u64,
    image_parts: u64,
    web_searches: u64,
    /// What is written into the body besides the completion limit.
    bounds: Bounds,
}

/// Why a request could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// The model is not in the upstream's model list.
    #[error(
        "model {model:?} is not in OpenRouter's model list: \
         check the model id at https://openrouter.ai/models"
    )]
    UnknownModel {
        /// The model id as sent.
        model: String,
    },
    /// The auto router's allowed models match no priced model.
    #[error(
        "openrouter/auto may route to no priced model: its allowed_models {patterns:?} match \
         none in OpenRouter's model list"
    )]
    NoAutoModel {
        /// The allowed models as sent.
        patterns: Vec<String>,
    },
    /// A request asks for more than the operator allows, or for a feature whose cost has no
    /// bound.
    #[error("{0}")]
    Unbounded(String),
    /// The model is listed but its price cannot be used.
    #[error(
        "model {model:?} has no usable price ({reason}): choose another model, \
         or ask an operator to set a per-request ceiling for unpriced models"
    )]
    Unpriced {
        /// The model id as sent.
        model: String,
        /// Why its price cannot be used.
        reason: String,
    },
}

impl Quote {
    /// Prices `request` at `price` (the model's, or the envelope of several).
    pub fn priced(
        request: &ChatRequest,
        price: ModelPrice,
        config: &OpenRouterConfig,
    ) -> Result<Quote, PriceError> {
        let web = WebAllowance::of(request, config)?;
        let ocr_pages = match request.pdf_engine.as_deref() {
            _ if request.file_parts == 0 => 0,
            None | Some("native" | "cloudflare-ai" | "pdf-text") => 0,
            Some("mistral-ocr") if config.ocr_pages_per_file > 0 => {
                request.file_parts.saturating_mul(config.ocr_pages_per_file)
            }
            Some("mistral-ocr") => {
                return Err(PriceError::Unbounded(
                    "the file-parser engine \"mistral-ocr\" is billed per page, and a file's \
                     pages are not known before it is parsed: use \"cloudflare-ai\" (free) or \
                     \"native\", or ask an operator to set openrouter.ocr_pages_per_file"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(PriceError::Unbounded(format!(
                    "the file-parser engine {other:?} is not known to keycap: use \
                     \"cloudflare-ai\", \"native\" or \"mistral-ocr\""
                )));
            }
        };
        let input = price.input_token_ceiling();
        let calls = web.searches.saturating_add(1);
        let prompt_tokens = request
            .prompt_bytes
            .saturating_add(
                request
                    .image_parts
                    .saturating_mul(config.image_prompt_tokens),
            )
            .saturating_add(web.results.saturating_mul(config.web_result_tokens));
        let prompt_tokens = if request.file_parts > 0 || request.video_parts > 0 || web.fetches {
            let window = price.context_length.filter(|&tokens| tokens > 0);
            prompt_tokens.max(window.unwrap_or(UNKNOWN_CONTEXT_TOKENS))
        } else {
            prompt_tokens
        };
        let search_fee = price.web_search.max(picos_of(config.web_search_fee));
        let per_call = [
            price.request.times(1),
            input.times(prompt_tokens),
            price.image_output.times(request.choices),
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        let fixed_picos = [
            per_call.saturating_mul(u128::from(calls)),
            price.image.times(request.image_parts),
            search_fee.times(web.searches),
            picos_of(config.web_result_fee).times(web.results),
            picos_of(config.ocr_page_fee).times(ocr_pages),
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        let per_token_picos = price
            .output_token_ceiling()
            .times(request.choices)
            .saturating_mul(u128::from(calls));
        let unset_pdf_engine = request.file_parts > 0 && request.pdf_engine.is_none();
        Ok(Quote {
            price: Some(price),
            ceiling: Money::ZERO,
            fixed_picos,
            per_token_picos,
            requested_max_tokens: request.max_tokens,
            default_max_tokens: price.completion_limit(),
            min_completion_tokens: config.min_completion_tokens.max(1),
            image_parts: request.image_parts,
            web_searches: web.searches,
            bounds: Bounds {
                max_tokens: None,
                max_price: Some(MaxPrice::of(&price)),
                web_plugin: web.plugin,
                max_tool_calls: web.tool_calls,
                web_tools: web.tool_calls.map(|_| WebToolLimits {
                    max_uses: 1,
                    max_characters: config.web_result_tokens,
                }),
                pdf_engine: unset_pdf_engine.then_some(FREE_PDF_ENGINE),
            },
        })
    }

    /// What to write into the body that goes upstream, given the fit chosen: the completion
    /// limit reserved for (the request's own, the model's when it sets none, or the lowered
    /// one) and the rest of the request's bounds.
    pub fn bounds(&self, fit: &Fit) -> Bounds {
        let max_tokens = match fit {
            Fit::Lowered { max_tokens, .. } => Some(*max_tokens),
            _ => self
                .requested_max_tokens
                .or(self.default_max_tokens)
                .or(Some(UNKNOWN_COMPLETION_LIMIT)),
        };
        Bounds {
            max_tokens,
            ..self.bounds.clone()
        }
    }

    /// A quote for a listed model with no usable price: it reserves `ceiling`, whatever the
    /// request, and writes the request's completion limit, or the model's (`limit`).
    pub fn ceiling(ceiling: Money, request: &ChatRequest, limit: Option<u64>) -> Quote {
        Quote {
            price: None,
            ceiling: ceiling.at_least_zero(),
            fixed_picos: 0,
            per_token_picos: 0,
            requested_max_tokens: request.max_tokens,
            default_max_tokens: limit,
            min_completion_tokens: 1,
            image_parts: 0,
            web_searches: 0,
            bounds: Bounds::default(),
        }
    }

    /// True when the quote comes from the price list rather than the ceiling for unpriced models.
    pub fn is_priced(&self) -> bool {
        self.price.is_some()
    }

    /// The worst-case cost with at most `max_tokens` completion tokens per choice.
    pub fn worst_case(&self, max_tokens: u64) -> Money {
        if self.price.is_none() {
            return self.ceiling;
        }
        let completion = self.per_token_picos.saturating_mul(u128::from(max_tokens));
        money_rounded_up(self.fixed_picos.saturating_add(completion))
    }

    /// The most completion tokens per choice whose worst case fits in `remaining`, or `None`
    /// when not even the rest of the request does.
    pub fn affordable_tokens(&self, remaining: Money) -> Option<u64> {
        let capacity = u128::try_from(remaining.nanos()).ok()? * PICOS_PER_NANO;
        let room = capacity.checked_sub(self.fixed_picos)?;
        if self.per_token_picos == 0 {
            return Some(u64::MAX);
        }
        Some(u64::try_from(room / self.per_token_picos).unwrap_or(u64::MAX))
    }

    /// Decides what to reserve against `remaining`, the key's cap left:
    ///
    /// - the request's own worst case when it fits;
    /// - otherwise `max_tokens` lowered to the largest count whose worst case fits, as long as
    ///   that is at least the minimum completion
    ///   ([`min_completion_tokens`](OpenRouterConfig::min_completion_tokens), or the request's
    ///   own smaller `max_tokens`);
    /// - otherwise a refusal that names what a minimal request needs.
    ///
    /// A request without `max_tokens` on a model with no known limit is always lowered, so the
    /// upstream is bound by what was reserved. An unpriced model reserves the ceiling or is
    /// refused.
    pub fn fit(&self, remaining: Money) -> Fit {
        if self.price.is_none() {
            return if self.ceiling <= remaining {
                Fit::AsRequested {
                    reserve: self.ceiling,
                }
            } else {
                Fit::Refuse {
                    need_at_least: self.ceiling,
                }
            };
        }
        let (target, must_write) = match self.requested_max_tokens.or(self.default_max_tokens) {
            Some(max_tokens) => (max_tokens, false),
            None => (UNKNOWN_COMPLETION_LIMIT, true),
        };
        let full = self.worst_case(target);
        if !must_write && full <= remaining {
            return Fit::AsRequested { reserve: full };
        }
        let minimum = self.min_completion_tokens.min(target);
        match self
            .affordable_tokens(remaining)
            .map(|tokens| tokens.min(target))
        {
            Some(max_tokens) if max_tokens >= minimum => Fit::Lowered {
                max_tokens,
                reserve: self.worst_case(max_tokens),
            },
            _ => Fit::Refuse {
                need_at_least: self.worst_case(minimum),
            },
        }
    }
}

/// The PDF engine written into a request with a file part that names none: free, and on every
/// model. OpenRouter's own default is the model's native reading where it has one, else
/// `mistral-ocr`, billed per page.
pub const FREE_PDF_ENGINE: &str = "cloudflare-ai";

/// Money as pico-dollars per unit.
fn picos_of(money: Money) -> UnitPrice {
    let picos = u128::try_from(money.nanos().max(0)).unwrap_or(0) * PICOS_PER_NANO;
    UnitPrice::from_picos(u64::try_from(picos).unwrap_or(u64::MAX))
}

/// The searches and results a request may run, and the limits written to hold it to them.
struct WebAllowance {
    searches: u64,
    results: u64,
    plugin: Option<WebLimits>,
    tool_calls: Option<u64>,
    /// A fetch tool may read whole pages: the prompt is priced at the context window.
    fetches: bool,
}

impl WebAllowance {
    fn of(request: &ChatRequest, config: &OpenRouterConfig) -> Result<WebAllowance, PriceError> {
        let too_many = |what: &str, asked: u64, most: u64| {
            PriceError::Unbounded(format!(
                "{what} is {asked}, more than the {most} keycap allows per request: \
                 ask for at most {most}"
            ))
        };
        let results_of = |asked: Option<u64>| match asked {
            Some(asked) if asked > config.max_web_results => Err(too_many(
                "a web search's max_results",
                asked,
                config.max_web_results,
            )),
            asked => Ok(asked.unwrap_or(DEFAULT_WEB_RESULTS)),
        };
        // A count of searches (one unless asked), at most the operator's.
        let searches_of = |what: &str, asked: Option<u64>| match asked {
            Some(asked) if asked > config.max_web_searches => {
                Err(too_many(what, asked, config.max_web_searches))
            }
            asked => Ok(asked.unwrap_or(1)),
        };
        let mut allowance = WebAllowance {
            searches: 0,
            results: 0,
            plugin: None,
            tool_calls: None,
            fetches: false,
        };
        if let Some(ask) = request.web_plugin {
            let max_uses = searches_of("the web plugin's max_uses", ask.max_uses)?;
            let max_results = results_of(ask.max_results)?;
            allowance.searches = max_uses;
            allowance.results = max_uses.saturating_mul(max_results);
            allowance.plugin = Some(WebLimits {
                max_uses,
                max_results,
            });
        }
        if !request.web_tools.is_empty() {
            let calls = searches_of("max_tool_calls", request.max_tool_calls)?.min(MAX_TOOL_CALLS);
            // Each tool's own `max_uses` (written as 1 where absent) and `max_tool_calls` both
            // bound the searches, but an upstream may keep only one of them (Anthropic's own
            // tools know nothing of `max_tool_calls`): the larger of the two is reserved.
            let (mut uses, mut most_results) = (0u64, 0);
            for tool in &request.web_tools {
                let tool_uses = searches_of("a web tool's max_uses", tool.max_uses)?;
                uses = uses.saturating_add(tool_uses);
                most_results = most_results.max(results_of(tool.max_results)?);
                allowance.fetches |= tool.fetch;
            }
            let searches = calls.max(uses);
            allowance.searches = allowance.searches.saturating_add(searches);
            allowance.results = allowance
                .results
                .saturating_add(searches.saturating_mul(most_results));
            allowance.tool_calls = Some(calls);
        }
        Ok(allowance)
    }
}

/// Pico-dollars to money, rounding up to the next nano-dollar and clamping at the largest amount.
fn money_rounded_up(picos: u128) -> Money {
    let nanos = picos.div_ceil(PICOS_PER_NANO);
    Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

mod settle;

#[cfg(test)]
mod tests;
