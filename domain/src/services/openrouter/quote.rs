//! Pricing a request at its worst case, fitting it to the budget left, and settling it.
//!
//! All arithmetic is in pico-dollars (`u128`, exact) and rounds up to nano-dollars once per
//! total, so the worst case is never understated.
//!
//! The worst case of a request on a priced model is the sum of:
//!
//! - the per-request fee;
//! - prompt: body bytes x the highest input-token price (prompt, cache read or write, input
//!   audio), since each prompt token costs at most that and there are no more tokens than bytes;
//! - images: per image part, the per-image price plus
//!   [`image_prompt_tokens`](OpenRouterConfig::image_prompt_tokens) at the input-token ceiling,
//!   for images sent by URL whose tokens are not in the body;
//! - files: a request with a file part (a PDF inline or by URL) may have more prompt tokens
//!   than bytes, but never more than the model's context window: its prompt is priced at the
//!   larger of the two (at [`UNKNOWN_CONTEXT_TOKENS`] for a model whose window is not listed);
//! - web search, when the request turns it on: one search at the per-search price plus
//!   [`web_prompt_tokens`](OpenRouterConfig::web_prompt_tokens) of search results added to the
//!   prompt;
//! - completion: per choice, `max_tokens` x (the highest output-token price + the reasoning
//!   price), plus one output image at the per-output-image price.
//!
//! A request that may be routed to several models (`models`) is priced at the
//! component-by-component highest of their prices. A request without `max_tokens` is priced at
//! the model's completion limit (the top provider's `max_completion_tokens`, else its context
//! window). The context window is not reduced by the prompt's estimate: bytes overstate tokens,
//! so subtracting them could understate the room left for the completion.

use crate::money::Money;
use crate::services::Fit;
use crate::services::openrouter::OpenRouterConfig;
use crate::services::openrouter::pricing::{ModelPrice, PICOS_PER_NANO};
use crate::services::openrouter::request::ChatRequest;

/// The completion limit written into a request whose model has no known limit at all.
pub const UNKNOWN_COMPLETION_LIMIT: u64 = 128 * 1024;

/// The prompt a request with a file part is priced at when its model lists no context window:
/// the largest windows offered are about two million tokens.
pub const UNKNOWN_CONTEXT_TOKENS: u64 = 2_000_000;

/// A priced request: what the gateway keeps from reservation to settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// `None` for an unpriced model, which reserves `ceiling` instead.
    price: Option<ModelPrice>,
    ceiling: Money,
    /// Everything but the completion tokens, in pico-dollars.
    fixed_picos: u128,
    /// One more completion token on every choice, in pico-dollars.
    per_token_picos: u128,
    requested_max_tokens: Option<u64>,
    min_completion_tokens: u64,
    image_parts: u64,
    web_searches: u64,
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
    pub fn priced(request: &ChatRequest, price: ModelPrice, config: &OpenRouterConfig) -> Quote {
        let input = price.input_token_ceiling();
        let web_searches = u64::from(request.web_search);
        let prompt_tokens = request
            .prompt_bytes
            .saturating_add(
                request
                    .image_parts
                    .saturating_mul(config.image_prompt_tokens),
            )
            .saturating_add(web_searches.saturating_mul(config.web_prompt_tokens));
        let prompt_tokens = if request.file_parts > 0 {
            let window = price.context_length.filter(|&tokens| tokens > 0);
            prompt_tokens.max(window.unwrap_or(UNKNOWN_CONTEXT_TOKENS))
        } else {
            prompt_tokens
        };
        let fixed_picos = [
            price.request.times(1),
            input.times(prompt_tokens),
            price.image.times(request.image_parts),
            price.web_search.times(web_searches),
            price.image_output.times(request.choices),
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        Quote {
            price: Some(price),
            ceiling: Money::ZERO,
            fixed_picos,
            per_token_picos: price.output_token_ceiling().times(request.choices),
            requested_max_tokens: request.max_tokens.or(price.completion_limit()),
            min_completion_tokens: config.min_completion_tokens.max(1),
            image_parts: request.image_parts,
            web_searches,
        }
    }

    /// A quote for a model with no known price: it reserves `ceiling`, whatever the request.
    pub fn ceiling(ceiling: Money) -> Quote {
        Quote {
            price: None,
            ceiling: ceiling.at_least_zero(),
            fixed_picos: 0,
            per_token_picos: 0,
            requested_max_tokens: None,
            min_completion_tokens: 1,
            image_parts: 0,
            web_searches: 0,
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
        let (target, must_write) = match self.requested_max_tokens {
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

/// Pico-dollars to money, rounding up to the next nano-dollar and clamping at the largest amount.
fn money_rounded_up(picos: u128) -> Money {
    let nanos = picos.div_ceil(PICOS_PER_NANO);
    Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

mod settle;

#[cfg(test)]
mod tests;
