//! Settling a quote once the response is over: what to charge, and why.

use crate::money::Money;
use crate::services::openrouter::metering::{MeterOutcome, NoUsage, Usage};
use crate::services::openrouter::quote::{Quote, money_rounded_up};
use crate::services::{ChargeBasis, Settlement};

impl Quote {
    /// The cost of a response from its token counts, for an upstream that reported none: prompt
    /// tokens at the prompt price (cached and cache-written ones at theirs), completion tokens
    /// at the completion price, reasoning tokens at the reasoning price on top, plus the request
    /// fee, the request's images and web search. Rounded up; `None` for an unpriced model.
    pub fn cost_of(&self, usage: &Usage) -> Option<Money> {
        let price = self.price.as_ref()?;
        let uncached = usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens);
        let picos = [
            price.request.times(1),
            price.prompt.times(uncached),
            price.input_cache_read.times(usage.cached_tokens),
            price.input_cache_write.times(usage.cache_write_tokens),
            price.completion.times(usage.completion_tokens),
            price.internal_reasoning.times(usage.reasoning_tokens),
            price.image.times(self.image_parts),
            price.web_search.times(self.web_searches),
        ]
        .into_iter()
        .fold(0u128, u128::saturating_add);
        Some(money_rounded_up(picos))
    }

    /// What to charge once the response is over, given what was reserved and what the meter
    /// learned:
    ///
    /// - a reported cost is charged as reported (never below zero), even past the reservation,
    ///   since that is what the master key paid; `exceeded_reservation` flags it for the logs;
    /// - token counts without a cost are priced with [`cost_of`](Quote::cost_of);
    /// - an error status with no usage charges nothing: the upstream did no billable work;
    /// - anything else (stream cut, client gone, error mid-stream, unreadable usage, or counts
    ///   on an unpriced model) charges the whole reservation, with the reason in `note`.
    pub fn settle(&self, reservation: Money, outcome: &MeterOutcome) -> Settlement {
        let reservation = reservation.at_least_zero();
        let (charge, basis, note) = match outcome {
            MeterOutcome::Reported { cost, .. } => {
                (cost.at_least_zero(), ChargeBasis::Reported, None)
            }
            MeterOutcome::TokensOnly { usage } => match self.cost_of(usage) {
                Some(cost) => (cost, ChargeBasis::Computed, Some(NO_COST.to_string())),
                None => (
                    reservation,
                    ChargeBasis::Reservation,
                    Some(NO_COST_NO_PRICE.to_string()),
                ),
            },
            MeterOutcome::Nothing {
                reason: reason @ NoUsage::UpstreamError { .. },
            } => (
                Money::ZERO,
                ChargeBasis::NotBilled,
                Some(reason.to_string()),
            ),
            MeterOutcome::Nothing { reason } => (
                reservation,
                ChargeBasis::Reservation,
                Some(reason.to_string()),
            ),
        };
        Settlement {
            charge,
            basis,
            exceeded_reservation: charge > reservation,
            note,
        }
    }
}

const NO_COST: &str = "the upstream reported tokens but no cost";
const NO_COST_NO_PRICE: &str =
    "the upstream reported tokens but no cost, and the model has no known price";
