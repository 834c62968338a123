//! Service adapters: one module per upstream provider.
//!
//! A [`Service`] names a provider that master keys and sub-keys belong to. Each provider
//! implements [`ServiceAdapter`]: which routes it serves, how the master key is presented
//! upstream, how a request is priced at its worst case before it is forwarded, and how the
//! response is metered as it streams back. [`openrouter`] is the first adapter.
//!
//! The types here are the vocabulary every adapter shares with the gateway: [`Route`], [`Api`],
//! [`CredentialHeader`], [`Fit`] and [`Settlement`].

use std::fmt;

use crate::money::Money;

pub mod openrouter;

pub use openrouter::OpenRouter;

/// A provider whose master keys keycap holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// <https://openrouter.ai>, OpenAI-compatible chat and text completions.
    OpenRouter,
}

/// A service name keycap does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {0:?} is unknown: the supported service is openrouter")]
pub struct UnknownService(pub String);

impl Service {
    /// The name stored in the database and typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::OpenRouter => "openrouter",
        }
    }
}

impl std::str::FromStr for Service {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openrouter" => Ok(Service::OpenRouter),
            _ => Err(UnknownService(s.to_string())),
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider adapter tells the gateway, request by request.
///
/// The trait is generic rather than object-safe: each adapter names its own request, price list,
/// quote and meter types through associated types, so the gateway dispatches once on
/// [`Service`] and then runs monomorphic code with no boxing or virtual calls on the hot path.
/// The flow for one metered request is:
///
/// 1. [`route`](ServiceAdapter::route) says how the path is handled;
/// 2. [`parse_request`](ServiceAdapter::parse_request) reads what pricing needs from the body;
/// 3. [`quote`](ServiceAdapter::quote) prices it against the current price list, and
///    [`fit`](ServiceAdapter::fit) decides, given the key's remaining cap, what to reserve and
///    the body is rewritten with
///    [`bound_request`](ServiceAdapter::bound_request) so the upstream cannot bill past it;
/// 4. the request goes upstream with [`credential_header`](ServiceAdapter::credential_header);
/// 5. [`meter`](ServiceAdapter::meter) sees every response byte, and
///    [`settle`](ServiceAdapter::settle) turns its outcome into the amount to charge;
/// 6. when that is the reservation (the response never said what it cost) and the upstream
///    named the request, the gateway asks the upstream afterwards at
///    [`cost_lookup_path`](ServiceAdapter::cost_lookup_path) and charges what
///    [`looked_up_cost`](ServiceAdapter::looked_up_cost) reads there instead.
pub trait ServiceAdapter {
    /// The upstream's price list, refreshed by the gateway in the background.
    type Prices;
    /// What the adapter reads from a request body to price it.
    type Request;
    /// A priced request: its worst case, kept from reservation until settlement.
    type Quote;
    /// The incremental reader of a response body.
    type Meter: ResponseMeter;
    /// Why a request body was refused before it reached the upstream.
    type RequestError: std::error::Error;
    /// Why a request could not be priced.
    type PriceError: std::error::Error;

    /// The provider this adapter speaks to.
    fn service(&self) -> Service;

    /// How the gateway handles `method` on `path`. `path` may carry a query string, which is
    /// ignored; `method` is the upper-case HTTP method.
    fn route(&self, method: &str, path: &str) -> Route;

    /// The header that carries the master key upstream, replacing the client's own.
    fn credential_header(&self) -> CredentialHeader;

    /// A free `GET` path on the upstream that succeeds only with a valid master key, used to
    /// test a master key before members rely on it.
    fn key_check_path(&self) -> &'static str;

    /// Reads what pricing needs from a request body sent to a route of `api`.
    fn parse_request(&self, api: Api, body: &[u8]) -> Result<Self::Request, Self::RequestError>;

    /// Prices a parsed request with the current price list.
    fn quote(
        &self,
        request: &Self::Request,
        prices: &Self::Prices,
    ) -> Result<Self::Quote, Self::PriceError>;

    /// Decides what to reserve against `remaining`, the key's cap left, and whether the
    /// request must be lowered to fit.
    fn fit(&self, quote: &Self::Quote, remaining: Money) -> Fit;

    /// Rewrites a body of `api` so the upstream can bill no more than what `fit` reserved for
    /// `quote`: its completion limit, and whatever else the provider lets a request bound
    /// (prices, searches, tool calls). Every admitted request goes upstream through it.
    fn bound_request(
        &self,
        api: Api,
        quote: &Self::Quote,
        fit: &Fit,
        body: &[u8],
    ) -> Result<Vec<u8>, Self::RequestError>;

    /// A fresh meter for a response of `api` with this HTTP status and `Content-Type`.
    fn meter(&self, api: Api, status: u16, content_type: Option<&str>) -> Self::Meter;

    /// What to charge once the response is over.
    fn settle(
        &self,
        quote: &Self::Quote,
        reservation: Money,
        outcome: &<Self::Meter as ResponseMeter>::Outcome,
    ) -> Settlement;

    /// The upstream path (and query) to `GET`, under the master key, for what the upstream
    /// billed the request it named `id` (a generation, a job): asked when a request ended
    /// without a reported cost. `None` when the upstream cannot say, or `id` is not one of its.
    fn cost_lookup_path(&self, id: &str) -> Option<String>;

    /// What the answer from [`cost_lookup_path`](ServiceAdapter::cost_lookup_path) says the
    /// upstream billed for `quote`'s request, named `id` (a job's seconds at its price, say);
    /// `None` when it does not say yet, or says it of another id.
    fn looked_up_cost(&self, quote: &Self::Quote, id: &str, answer: &[u8]) -> Option<Money>;
}

/// Reads a response body as it passes, without holding it back.
pub trait ResponseMeter {
    /// What the meter learned once the body is over.
    type Outcome;

    /// Sees the next chunk of the body, in order.
    fn feed(&mut self, chunk: &[u8]);

    /// Ends the body (complete, cut, or abandoned by the client) and reports what was learned.
    fn finish(self) -> Self::Outcome;
}

/// How the gateway handles one request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Costs money: reserve the worst case, forward, meter the response and settle. The [`Api`]
    /// says how the body is read and the errors are shaped.
    Metered(Api),
    /// Forwarded with the master key, free of charge and not metered.
    PassThrough,
    /// A free list of models, forwarded; for a key limited to some models, the answer is cut
    /// to those.
    ModelList,
    /// A free look-up of one generation by its `id`, forwarded only when the calling key made
    /// that generation.
    OwnGeneration,
    /// Answered by the gateway itself from the sub-key's own records; never forwarded.
    Local(LocalRoute),
    /// Not served: refused without an upstream call.
    Refused(RouteRefusal),
}

/// A route the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRoute {
    /// Information on the calling key (cap, usage, remaining), in the upstream's shape.
    KeyInfo,
    /// The calling key's credits: its cap as the total, its spend as the usage.
    Credits,
}

/// The API a metered route speaks: how its request is read, priced and lowered, and the shape
/// its clients expect errors in. Responses of every API are metered by the same meter, which
/// knows each one's usage fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI's chat completions (`messages`, `max_tokens` / `max_completion_tokens`, `n`).
    ChatCompletions,
    /// Legacy text completions (`prompt`, `max_tokens`, `n`, `best_of`).
    Completions,
    /// OpenAI's Responses API (`input`, `instructions`, `max_output_tokens`).
    Responses,
    /// Anthropic's Messages API (`messages`, `system`, `max_tokens`), with Anthropic's errors.
    Messages,
    /// Embeddings (`input`): priced from the input alone, as nothing is generated.
    Embeddings,
}

/// The shape of an error body a client of an API parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// OpenRouter's (OpenAI's): `{"error":{"code":402,"message":...}}`.
    OpenAi,
    /// Anthropic's: `{"type":"error","error":{"type":"invalid_request_error","message":...}}`.
    Anthropic,
}

impl Api {
    /// The error shape this API's clients parse.
    pub fn error_shape(self) -> ErrorShape {
        match self {
            Api::Messages => ErrorShape::Anthropic,
            _ => ErrorShape::OpenAi,
        }
    }

    /// True for an API that generates tokens, whose request has a completion limit.
    pub fn generates(self) -> bool {
        self != Api::Embeddings
    }
}

/// Why a route is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteRefusal {
    /// The gateway does not serve this path for this service.
    #[error(
        "this path is not served through keycap: use the chat completions, completions, \
         responses, messages or embeddings routes"
    )]
    UnknownPath,
    /// The path exists but not for this method.
    #[error("this path accepts only {allowed}: resend the request with that method")]
    WrongMethod {
        /// The one method the path accepts.
        allowed: &'static str,
    },
}

/// The header that carries a master key to the upstream.
///
/// The adapter names the header and the scheme but never holds the key: the gateway composes
/// the value from the decrypted key it keeps, so plaintext stays out of `domain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialHeader {
    /// Header name, lower case as HTTP/2 sends it (`authorization`).
    pub name: &'static str,
    /// What precedes the key in the value (`Bearer `).
    pub value_prefix: &'static str,
}

impl CredentialHeader {
    /// The header value for `master_key`. The caller owns the result and should wipe it after
    /// use, as it holds the plaintext key.
    pub fn value_for(&self, master_key: &str) -> String {
        let mut value = String::with_capacity(self.value_prefix.len() + master_key.len());
        value.push_str(self.value_prefix);
        value.push_str(master_key);
        value
    }
}

/// What the budget left allows a request to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Forward the request's own completion limit (or the model's, when it sets none),
    /// reserving its worst case.
    AsRequested {
        /// The worst-case cost to reserve.
        reserve: Money,
    },
    /// Forward with `max_tokens` lowered (or set) to the largest count the budget can pay for.
    Lowered {
        /// The completion limit to write into the body.
        max_tokens: u64,
        /// The worst-case cost at that limit, to reserve.
        reserve: Money,
    },
    /// Not even a minimal request fits: refuse without an upstream call.
    Refuse {
        /// The least the key would need left for a minimal request.
        need_at_least: Money,
    },
}

/// What to charge for a finished request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The amount to add to the key's spend; never negative.
    pub charge: Money,
    /// Where the amount came from.
    pub basis: ChargeBasis,
    /// True when the charge is more than what was reserved. Only an upstream that reports more
    /// than the worst case (a misreport, or a price change mid-request) can cause this; the
    /// charge is still the reported cost, since that is what the master key paid, and the
    /// gateway logs and counts the event.
    pub exceeded_reservation: bool,
    /// Why the basis was chosen when it is not the reported cost, for the usage record.
    pub note: Option<String>,
}

impl Settlement {
    /// The part of `reservation` to give back to the key: what was reserved beyond the charge.
    pub fn release(&self, reservation: Money) -> Money {
        reservation.saturating_sub(self.charge).at_least_zero()
    }
}

/// Where a settled charge came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChargeBasis {
    /// The upstream reported the cost.
    Reported,
    /// No cost was reported: computed from the reported token counts and the price list.
    Computed,
    /// Nothing usable was reported (stream cut, client hung up, error mid-stream): the whole
    /// reservation is charged.
    Reservation,
    /// Nothing was reported in the response, and the upstream said afterwards what it billed.
    Reconciled,
    /// The upstream refused the request before doing any work: nothing is charged.
    NotBilled,
}

impl ChargeBasis {
    /// A short stable name, fit for a metric label or a database column.
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeBasis::Reported => "reported",
            ChargeBasis::Computed => "computed",
            ChargeBasis::Reservation => "reservation",
            ChargeBasis::Reconciled => "reconciled",
            ChargeBasis::NotBilled => "not_billed",
        }
    }
}

impl fmt::Display for ChargeBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_round_trip_their_names() {
        for (text, expected) in [
            ("openrouter", Ok(Service::OpenRouter)),
            (" OpenRouter ", Ok(Service::OpenRouter)),
        ] {
            assert_eq!(text.parse::<Service>(), expected, "{text:?}");
        }
        assert_eq!("s3".parse::<Service>(), Err(UnknownService("s3".into())));
        assert_eq!(Service::OpenRouter.to_string(), "openrouter");
    }

    #[test]
    fn credential_values_prefix_the_key() {
        let header = CredentialHeader {
            name: "authorization",
            value_prefix: "Bearer ",
        };
        assert_eq!(header.value_for("sk-or-v1-abc"), "Bearer sk-or-v1-abc");
    }

    #[test]
    fn release_gives_back_the_unspent_reservation() {
        let settled = |charge| Settlement {
            charge: Money::from_nanos(charge),
            basis: ChargeBasis::Reported,
            exceeded_reservation: false,
            note: None,
        };
        assert_eq!(
            settled(300).release(Money::from_nanos(1_000)),
            Money::from_nanos(700)
        );
        assert_eq!(
            settled(1_200).release(Money::from_nanos(1_000)),
            Money::ZERO
        );
    }
}
