//! OpenRouter's price list, read from `GET /api/v1/models`.
//!
//! Prices arrive as decimal strings in USD per unit (token, request, image, search) and are often
//! finer than a nano-dollar per token (`"0.0000000375"`), so a [`UnitPrice`] holds pico-dollars
//! (1e-12 USD). Totals are summed in pico-dollars and turned into [`Money`](crate::Money)
//! (nano-dollars) once, rounding up for worst cases.
//!
//! A model whose pricing cannot be read completely is kept as *unpriced*, with the reason, rather
//! than failing the whole list: one odd model must not stop the gateway from pricing the rest.
//! "Completely" is strict on purpose: a price field this module does not understand, with a value
//! other than zero, makes the model unpriced, because a worst case that leaves out a component
//! could let a key pass its cap.

use std::collections::HashMap;

use crate::services::openrouter::pricing::wire::ModelList;

/// Pico-dollars per nano-dollar.
pub const PICOS_PER_NANO: u128 = 1_000;

/// The largest unit price accepted: one million dollars per unit, far above any real price, so
/// that sums of prices times counts stay far inside `u128`.
const MAX_PICOS: u64 = 1_000_000_000_000_000_000;

/// A price per unit (token, request, image or search) in pico-dollars (1e-12 USD).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitPrice(u64);

/// Why a price string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitPriceError {
    /// Not a decimal number.
    #[error("price {0:?} is not a decimal number")]
    Invalid(String),
    /// Below zero; OpenRouter uses `"-1"` for routers whose price depends on the model chosen.
    #[error("price {0:?} is negative (the upstream's mark for a variable price)")]
    Negative(String),
    /// More than a million dollars per unit.
    #[error("price {0:?} is too large")]
    TooLarge(String),
}

impl UnitPrice {
    /// Free.
    pub const ZERO: UnitPrice = UnitPrice(0);

    /// A price from a count of pico-dollars per unit.
    pub const fn from_picos(picos: u64) -> UnitPrice {
        UnitPrice(picos)
    }

    /// The count of pico-dollars per unit.
    pub const fn picos(self) -> u64 {
        self.0
    }

    /// Parses a decimal USD-per-unit string such as `"0.000003"`, `"0.0000000375"` or `"2e-7"`.
    /// Digits finer than a pico-dollar round up, so a price is never understated.
    pub fn parse(text: &str) -> Result<UnitPrice, UnitPriceError> {
        let trimmed = text.trim();
        let invalid = || UnitPriceError::Invalid(trimmed.to_string());
        let too_large = || UnitPriceError::TooLarge(trimmed.to_string());
        let (mantissa, exponent) = match trimmed.find(['e', 'E']) {
            Some(at) => {
                let exponent: i64 = trimmed[at + 1..].parse().map_err(|_| invalid())?;
                if exponent.abs() > 40 {
                    return Err(invalid());
                }
                (&trimmed[..at], exponent)
            }
            None => (trimmed, 0),
        };
        let (negative, mantissa) = match mantissa.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !all_digits(int_part)
            || !all_digits(frac_part)
        {
            return Err(invalid());
        }
        // value = digits * 10^scale pico-dollars.
        let scale = exponent - frac_part.len() as i64 + 12;
        let n_digits = int_part.len() + frac_part.len();
        let n_kept = if scale >= 0 {
            n_digits
        } else {
            n_digits.saturating_sub(usize::try_from(-scale).unwrap_or(usize::MAX))
        };
        let mut picos: u64 = 0;
        let mut round_up = false;
        for (idx, byte) in int_part.bytes().chain(frac_part.bytes()).enumerate() {
            let digit = u64::from(byte - b'0');
            if idx < n_kept {
                picos = picos
                    .checked_mul(10)
                    .and_then(|p| p.checked_add(digit))
                    .ok_or_else(too_large)?;
            } else if digit != 0 {
                round_up = true;
            }
        }
        for _ in 0..scale.max(0) {
            if picos == 0 {
                break;
            }
            picos = picos.checked_mul(10).ok_or_else(too_large)?;
        }
        if round_up {
            picos += 1;
        }
        if picos > MAX_PICOS {
            return Err(too_large());
        }
        if negative && picos != 0 {
            return Err(UnitPriceError::Negative(trimmed.to_string()));
        }
        Ok(UnitPrice(picos))
    }

    /// `count` units at this price, in pico-dollars.
    pub fn times(self, count: u64) -> u128 {
        u128::from(self.0) * u128::from(count)
    }
}

/// Everything one model costs, per unit, in pico-dollars, with its token limits.
///
/// Optional cache prices are resolved when parsed: a model that lists no cache-read or
/// cache-write price bills cached tokens at its prompt price.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    /// Per prompt (input) token.
    pub prompt: UnitPrice,
    /// Per completion (output) token.
    pub completion: UnitPrice,
    /// Per request, whatever its size.
    pub request: UnitPrice,
    /// Per input image.
    pub image: UnitPrice,
    /// Per output image.
    pub image_output: UnitPrice,
    /// Per image token.
    pub image_token: UnitPrice,
    /// Per input audio token.
    pub audio: UnitPrice,
    /// Per output audio token.
    pub audio_output: UnitPrice,
    /// Per cached input audio token.
    pub input_audio_cache: UnitPrice,
    /// Per input token read from the provider's cache.
    pub input_cache_read: UnitPrice,
    /// Per input token written to the provider's cache (default TTL).
    pub input_cache_write: UnitPrice,
    /// Per input token written to the provider's cache with a one-hour TTL.
    pub input_cache_write_1h: UnitPrice,
    /// Per reasoning token, on top of the completion price.
    pub internal_reasoning: UnitPrice,
    /// Per web search.
    pub web_search: UnitPrice,
    /// The model's context window in tokens, when known.
    pub context_length: Option<u64>,
    /// The most completion tokens the top provider generates, when known.
    pub max_completion_tokens: Option<u64>,
}

impl ModelPrice {
    /// A model priced per prompt and completion token only.
    pub fn per_token(prompt: UnitPrice, completion: UnitPrice) -> ModelPrice {
        ModelPrice {
            prompt,
            completion,
            input_cache_read: prompt,
            input_cache_write: prompt,
            input_cache_write_1h: prompt,
            ..ModelPrice::default()
        }
    }

    /// The most any one input token can cost: the highest of the prompt, cache and input-audio
    /// prices, since each input token is billed at one of them.
    pub fn input_token_ceiling(&self) -> UnitPrice {
        [
            self.prompt,
            self.input_cache_read,
            self.input_cache_write,
            self.input_cache_write_1h,
            self.audio,
            self.input_audio_cache,
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    /// The most any one output token can cost: the highest of the completion, output-audio and
    /// image-token prices, plus the reasoning price, since a completion token may be a
    /// reasoning token.
    pub fn output_token_ceiling(&self) -> UnitPrice {
        let base = self.completion.max(self.audio_output).max(self.image_token);
        UnitPrice(base.0.saturating_add(self.internal_reasoning.0))
    }

    /// The most the completion may run to when a request sets no `max_tokens`: the top
    /// provider's completion limit, else the context window.
    pub fn completion_limit(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.context_length)
    }

    /// A price at least as high as both, component by component, with the larger limits (an
    /// unknown limit stays unknown). Used for requests that may be routed to any of several
    /// models, and for a model listed twice.
    pub fn envelope(&self, other: &ModelPrice) -> ModelPrice {
        let larger = |a: Option<u64>, b: Option<u64>| Some(a?.max(b?));
        ModelPrice {
            prompt: self.prompt.max(other.prompt),
            completion: self.completion.max(other.completion),
            request: self.request.max(other.request),
            image: self.image.max(other.image),
            image_output: self.image_output.max(other.image_output),
            image_token: self.image_token.max(other.image_token),
            audio: self.audio.max(other.audio),
            audio_output: self.audio_output.max(other.audio_output),
            input_audio_cache: self.input_audio_cache.max(other.input_audio_cache),
            input_cache_read: self.input_cache_read.max(other.input_cache_read),
            input_cache_write: self.input_cache_write.max(other.input_cache_write),
            input_cache_write_1h: self.input_cache_write_1h.max(other.input_cache_write_1h),
            internal_reasoning: self.internal_reasoning.max(other.internal_reasoning),
            web_search: self.web_search.max(other.web_search),
            context_length: larger(self.context_length, other.context_length),
            max_completion_tokens: larger(self.max_completion_tokens, other.max_completion_tokens),
        }
    }
}

/// Prices of every model in the upstream's list, by model id.
#[derive(Clone, Debug, Default)]
pub struct ModelPrices {
    models: HashMap<String, Entry>,
}

#[derive(Clone, Debug)]
enum Entry {
    Priced(ModelPrice),
    /// Why the price cannot be used, and the model's completion limit when listed.
    Unpriced(String, Option<u64>),
}

/// What the price list knows about a model id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriceLookup<'a> {
    /// The model and its full price.
    Priced(&'a ModelPrice),
    /// The model is listed but its price could not be used.
    Unpriced {
        /// Why, for the refusal message and the logs.
        reason: &'a str,
        /// The model's completion limit (its top provider's, else its context window), when
        /// listed.
        limit: Option<u64>,
    },
    /// The model is not in the list.
    Unknown,
}

/// Why a `/models` body could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelsError {
    /// Not JSON, or not the `{"data": [...]}` shape.
    #[error(
        "model list is not the expected {{\"data\": [...]}} JSON ({detail}): check the upstream URL"
    )]
    Malformed {
        /// What the JSON parser said.
        detail: String,
    },
}

/// Routing suffixes that pick providers but not prices: `openai/gpt-4o:nitro` is priced as
/// `openai/gpt-4o` when the list has no entry of its own for it.
const ROUTING_SUFFIXES: [&str; 4] = [":online", ":nitro", ":floor", ":exacto"];

/// `model_id` without a routing suffix (`:online`, `:nitro`, `:floor`, `:exacto`), if it has one.
pub fn without_routing_suffix(model_id: &str) -> &str {
    ROUTING_SUFFIXES
        .iter()
        .find_map(|suffix| model_id.strip_suffix(suffix))
        .unwrap_or(model_id)
}

/// Whether `id` matches `pattern`, where each `*` stands for any run of characters
/// (`anthropic/*`, `*/claude-*`).
fn glob_matches(pattern: &str, id: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = id.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl ModelPrices {
    /// Reads the body of `GET /api/v1/models`. Only a body without a `data` list is an error;
    /// a model with unreadable pricing is kept as unpriced and one without an id is skipped.
    pub fn from_models_json(body: &[u8]) -> Result<ModelPrices, ModelsError> {
        let list: ModelList =
            serde_json::from_slice(body).map_err(|err| ModelsError::Malformed {
                detail: err.to_string(),
            })?;
        let mut prices = ModelPrices {
            models: HashMap::with_capacity(list.data.len()),
        };
        for mut model in list.data {
            let Some(id) = model.id.take() else { continue };
            let entry = match model.price() {
                Ok(price) => Entry::Priced(price),
                Err(reason) => {
                    let (context, completion) = model.limits();
                    Entry::Unpriced(reason, completion.or(context))
                }
            };
            prices.insert_entry(id, entry);
        }
        Ok(prices)
    }

    /// Adds another list's models (the embedding models' list), as [`insert`](Self::insert)
    /// does each.
    pub fn extend(&mut self, other: ModelPrices) {
        for (id, entry) in other.models {
            self.insert_entry(id, entry);
        }
    }

    /// Adds or widens a model's price; a model listed twice keeps the higher of each component.
    pub fn insert(&mut self, model_id: impl Into<String>, price: ModelPrice) {
        self.insert_entry(model_id.into(), Entry::Priced(price));
    }

    fn insert_entry(&mut self, model_id: String, entry: Entry) {
        use std::collections::hash_map::Entry as Slot;
        match self.models.entry(model_id) {
            Slot::Vacant(slot) => {
                slot.insert(entry);
            }
            Slot::Occupied(mut slot) => {
                let merged = match (slot.get(), entry) {
                    (Entry::Priced(old), Entry::Priced(new)) => Entry::Priced(old.envelope(&new)),
                    (Entry::Unpriced(reason, limit), _) => Entry::Unpriced(reason.clone(), *limit),
                    (Entry::Priced(_), unpriced) => unpriced,
                };
                slot.insert(merged);
            }
        }
    }

    /// The price of a model, when it is listed and priced.
    pub fn get(&self, model_id: &str) -> Option<&ModelPrice> {
        match self.lookup(model_id) {
            PriceLookup::Priced(price) => Some(price),
            _ => None,
        }
    }

    /// What the list knows about a model id. An id with a routing suffix (`:online`, `:nitro`,
    /// `:floor`, `:exacto`) and no entry of its own is looked up without the suffix.
    pub fn lookup(&self, model_id: &str) -> PriceLookup<'_> {
        let entry = self
            .models
            .get(model_id)
            .or_else(|| self.models.get(without_routing_suffix(model_id)));
        match entry {
            Some(Entry::Priced(price)) => PriceLookup::Priced(price),
            Some(Entry::Unpriced(reason, limit)) => PriceLookup::Unpriced {
                reason,
                limit: *limit,
            },
            None => PriceLookup::Unknown,
        }
    }

    /// The component-by-component highest price of the priced models that `patterns` match
    /// (an exact id, or a pattern such as `author/*` where `*` matches any run; every priced
    /// model when `patterns` is empty), or `None` when none does. Used for `openrouter/auto`,
    /// which may route to any of them.
    pub fn envelope_of(&self, patterns: &[String]) -> Option<ModelPrice> {
        let matches =
            |id: &str| patterns.is_empty() || patterns.iter().any(|p| glob_matches(p, id));
        self.models
            .iter()
            .filter(|(id, _)| matches(id))
            .filter_map(|(_, entry)| match entry {
                Entry::Priced(price) => Some(*price),
                Entry::Unpriced(..) => None,
            })
            .reduce(|all, price| all.envelope(&price))
    }

    /// Number of models listed, priced or not.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is listed (for instance before the first refresh).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The listed models that have no usable price, with the reason, for logs and metrics.
    pub fn unpriced(&self) -> impl Iterator<Item = (&str, &str)> {
        self.models.iter().filter_map(|(id, entry)| match entry {
            Entry::Unpriced(reason, _) => Some((id.as_str(), reason.as_str())),
            Entry::Priced(_) => None,
        })
    }
}

mod wire;

#[cfg(test)]
mod tests;
