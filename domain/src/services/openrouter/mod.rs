//! The OpenRouter adapter: <https://openrouter.ai/api/v1>.
//!
//! - [`pricing`]: the model list's prices, in pico-dollars per unit;
//! - [`request`]: what a completion request asks for that decides its price;
//! - [`quote`]: the worst case, fitting it to the budget left, and settling;
//! - [`bound`]: writing the request's bounds into the body that goes upstream;
//! - [`metering`]: reading `usage` and `cost` from JSON and event-stream responses;
//! - [`free_paths`]: extra paths the operator lets through unmetered.

/// Implements a serde visitor's scalar `visit_*` methods, each returning `$value`:
/// `visit_scalars!(0; bool i64 u64 f64 str unit)`. The wire readers use it to accept any JSON
/// value where only some shapes matter.
macro_rules! visit_scalars {
    ($value:expr; $($kind:ident)*) => { $( visit_scalars!(@one $value; $kind); )* };
    (@one $value:expr; bool) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($value) }
    };
    (@one $value:expr; i64) => {
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@one $value:expr; u64) => {
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@one $value:expr; f64) => {
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($value) }
    };
    (@one $value:expr; str) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($value) }
    };
    (@one $value:expr; unit) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> { Ok($value) }
    };
}

pub mod bound;
pub mod free_paths;
pub mod generation;
pub mod metering;
pub mod pricing;
pub mod quote;
pub mod request;

pub use bound::Bounds;
pub use free_paths::FreePaths;
pub use metering::{MeterOutcome, NoUsage, Usage, UsageMeter};
pub use pricing::{ModelPrice, ModelPrices, ModelsError, PriceLookup, UnitPrice};
pub use quote::{PriceError, Quote};
pub use request::{ChatRequest, RequestError};

use crate::money::Money;
use crate::services::{
    Api, CredentialHeader, Fit, LocalRoute, ResponseMeter, Route, RouteRefusal, Service,
    ServiceAdapter, Settlement,
};

/// Settings of the OpenRouter adapter, from the gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRouterConfig {
    /// What to reserve for a request on a model with no known price; `None` refuses such
    /// requests.
    pub unpriced_ceiling: Option<Money>,
    /// The smallest completion worth forwarding when `max_tokens` must be lowered to fit the
    /// budget; below it the request is refused. A request asking for fewer tokens needs only
    /// what it asks for.
    pub min_completion_tokens: u64,
    /// Prompt tokens allowed per image part, for images sent by URL, whose tokens are not in
    /// the body. The largest per-image counts of current vision models are near 2,000.
    pub image_prompt_tokens: u64,
    /// Prompt tokens allowed per web search result.
    pub web_result_tokens: u64,
    /// The most searches one request may ask for (the web plugin's `max_uses`,
    /// `max_tool_calls` with a server-side web tool); a request asking for more is refused.
    /// One asking for none is held to one search, written into its body.
    pub max_web_searches: u64,
    /// The most results per search a request may ask for (`max_results`).
    pub max_web_results: u64,
    /// Reserved per search, when the model's own per-search price is lower (OpenRouter's
    /// dearest search engine mode is $0.015 a search).
    pub web_search_fee: Money,
    /// Reserved per search result: OpenRouter's plugin page gives $4 per 1,000 results (its
    /// newer pricing, $0.007 a search with ten results and $0.001 per result beyond, is lower).
    pub web_result_fee: Money,
    /// Pages reserved per file part when a request names the per-page `mistral-ocr` PDF
    /// engine; 0 refuses such requests, as a file's pages are not known before it is parsed.
    pub ocr_pages_per_file: u64,
    /// Reserved per page for `mistral-ocr` ($2 per 1,000 pages).
    pub ocr_page_fee: Money,
    /// `GET` paths passed through free of charge, beyond the built-in ones.
    pub extra_free_paths: FreePaths,
}

impl Default for OpenRouterConfig {
    fn default() -> Self {
        OpenRouterConfig {
            unpriced_ceiling: None,
            min_completion_tokens: 16,
            image_prompt_tokens: 3_000,
            web_result_tokens: 2_000,
            max_web_searches: 5,
            max_web_results: 25,
            web_search_fee: Money::from_nanos(15_000_000),
            web_result_fee: Money::from_nanos(4_000_000),
            ocr_pages_per_file: 0,
            ocr_page_fee: Money::from_nanos(2_000_000),
            extra_free_paths: FreePaths::default(),
        }
    }
}

/// The OpenRouter service adapter.
#[derive(Debug, Clone, Default)]
pub struct OpenRouter {
    config: OpenRouterConfig,
}

/// How to check that a master key works: `GET` this path with the key; any key may call it.
pub const KEY_CHECK_PATH: &str = "/api/v1/key";

impl OpenRouter {
    /// An adapter with these settings.
    pub fn new(config: OpenRouterConfig) -> OpenRouter {
        OpenRouter { config }
    }

    /// The adapter's settings.
    pub fn config(&self) -> &OpenRouterConfig {
        &self.config
    }

    /// Prices a request with the current price list. Every model the upstream may route the
    /// request to must be listed: `openrouter/auto` is priced at the highest of the models it
    /// may choose. A listed model without a usable price reserves the configured ceiling, or,
    /// without one, is refused; a model not listed is always refused.
    pub fn quote(&self, request: &ChatRequest, prices: &ModelPrices) -> Result<Quote, PriceError> {
        let mut envelope: Option<ModelPrice> = None;
        let routed_widely = !request.fallback_models.is_empty()
            || request.choices > 1
            || request.web_plugin.is_some()
            || !request.web_tools.is_empty()
            || request.file_parts > 0
            || request.video_parts > 0;
        for model in std::iter::once(&request.model).chain(&request.fallback_models) {
            let base = pricing::without_routing_suffix(model);
            let price = if AUTO_ROUTERS.contains(&base) {
                prices.envelope_of(&request.auto_allowed).ok_or_else(|| {
                    PriceError::NoAutoModel {
                        patterns: request.auto_allowed.clone(),
                    }
                })?
            } else {
                match prices.lookup(model) {
                    PriceLookup::Priced(price) => *price,
                    // The ceiling stands for one plain request on one model: with fallbacks,
                    // several choices, searches or files, its bounds could not be written.
                    PriceLookup::Unpriced { reason, limit } => {
                        return match self.config.unpriced_ceiling {
                            Some(ceiling) if !routed_widely => {
                                Ok(Quote::ceiling(ceiling, request, limit))
                            }
                            Some(_) => Err(PriceError::Unbounded(format!(
                                "model {model:?} has no usable price, and the per-request \
                                 ceiling for such models covers only a plain request: send \
                                 it without fallback models, several choices, web search, \
                                 files or videos"
                            ))),
                            None => Err(PriceError::Unpriced {
                                model: model.clone(),
                                reason: reason.to_string(),
                            }),
                        };
                    }
                    PriceLookup::Unknown => {
                        return Err(PriceError::UnknownModel {
                            model: model.clone(),
                        });
                    }
                }
            };
            envelope = Some(envelope.map_or(price, |seen| seen.envelope(&price)));
        }
        match envelope {
            Some(price) => Quote::priced(request, price, &self.config),
            // The loop always sees `request.model`, so this is unreachable; refuse to be safe.
            None => Err(PriceError::UnknownModel {
                model: request.model.clone(),
            }),
        }
    }
}

/// The routers that pick a model for the request: priced at the highest of the models they may
/// choose (those their `auto-router` plugin's `allowed_models` match, else every listed one).
pub const AUTO_ROUTERS: [&str; 2] = ["openrouter/auto", "openrouter/auto-beta"];

/// The route table: each path the gateway serves, how, and for which method.
const ROUTES: &[(&str, Route, &str)] = &[
    (
        "/api/v1/chat/completions",
        Route::Metered(Api::ChatCompletions),
        "POST",
    ),
    (
        "/api/v1/completions",
        Route::Metered(Api::Completions),
        "POST",
    ),
    ("/api/v1/responses", Route::Metered(Api::Responses), "POST"),
    ("/api/v1/messages", Route::Metered(Api::Messages), "POST"),
    (
        "/api/v1/embeddings",
        Route::Metered(Api::Embeddings),
        "POST",
    ),
    ("/api/v1/models", Route::ModelList, "GET"),
    ("/api/v1/embeddings/models", Route::ModelList, "GET"),
    ("/api/v1/generation", Route::OwnGeneration, "GET"),
    ("/api/v1/key", Route::Local(LocalRoute::KeyInfo), "GET"),
    ("/api/v1/auth/key", Route::Local(LocalRoute::KeyInfo), "GET"),
    ("/api/v1/credits", Route::Local(LocalRoute::Credits), "GET"),
];

/// Upstream paths that cost money or manage keys, beyond the metered routes: the gateway does
/// not serve them, and no extra free path may be, lie below or cover one.
pub const NEVER_FREE: &[&str] = &["/api/v1/keys"];

/// Every path the route table serves.
pub fn routed_paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|(path, _, _)| *path)
}

/// The metered paths and [`NEVER_FREE`]: what no extra free path may reach.
pub fn never_free_paths() -> impl Iterator<Item = &'static str> {
    ROUTES
        .iter()
        .filter(|(_, route, _)| matches!(route, Route::Metered(_)))
        .map(|(path, _, _)| *path)
        .chain(NEVER_FREE.iter().copied())
}

/// Looks a path up in the route table; `path` may carry a query string.
pub fn route(method: &str, path: &str) -> Route {
    let path = route_path(path);
    let Some(&(_, route, allowed)) = ROUTES.iter().find(|(routed, _, _)| *routed == path) else {
        return Route::Refused(RouteRefusal::UnknownPath);
    };
    if method.eq_ignore_ascii_case(allowed) {
        route
    } else {
        Route::Refused(RouteRefusal::WrongMethod { allowed })
    }
}

/// The path as routes are matched: without its query and one trailing `/`.
fn route_path(path: &str) -> &str {
    let path = without_query(path);
    path.strip_suffix('/').unwrap_or(path)
}

/// `path` up to its `?`, if any.
fn without_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _query)| path)
}

impl ServiceAdapter for OpenRouter {
    type Prices = ModelPrices;
    type Request = ChatRequest;
    type Quote = Quote;
    type Meter = UsageMeter;
    type RequestError = RequestError;
    type PriceError = PriceError;

    fn service(&self) -> Service {
        Service::OpenRouter
    }

    fn route(&self, method: &str, path: &str) -> Route {
        match route(method, path) {
            Route::Refused(RouteRefusal::UnknownPath)
                if self.config.extra_free_paths.contains(without_query(path)) =>
            {
                if method.eq_ignore_ascii_case("GET") {
                    Route::PassThrough
                } else {
                    Route::Refused(RouteRefusal::WrongMethod { allowed: "GET" })
                }
            }
            routed => routed,
        }
    }

    fn credential_header(&self) -> CredentialHeader {
        CredentialHeader {
            name: "authorization",
            value_prefix: "Bearer ",
        }
    }

    fn key_check_path(&self) -> &'static str {
        KEY_CHECK_PATH
    }

    fn parse_request(&self, api: Api, body: &[u8]) -> Result<ChatRequest, RequestError> {
        ChatRequest::parse_as(api, body)
    }

    fn quote(&self, request: &ChatRequest, prices: &ModelPrices) -> Result<Quote, PriceError> {
        OpenRouter::quote(self, request, prices)
    }

    fn fit(&self, quote: &Quote, remaining: Money) -> Fit {
        quote.fit(remaining)
    }

    fn bound_request(
        &self,
        api: Api,
        quote: &Quote,
        fit: &Fit,
        body: &[u8],
    ) -> Result<Vec<u8>, RequestError> {
        bound::bound_body(api, body, &quote.bounds(fit))
    }

    fn meter(&self, api: Api, status: u16, content_type: Option<&str>) -> UsageMeter {
        UsageMeter::for_api(api, status, content_type)
    }

    fn settle(
        &self,
        quote: &Quote,
        reservation: Money,
        outcome: &<UsageMeter as ResponseMeter>::Outcome,
    ) -> Settlement {
        quote.settle(reservation, outcome)
    }

    fn cost_lookup_path(&self, id: &str) -> Option<String> {
        generation::lookup_path(id)
    }

    fn looked_up_cost(&self, _quote: &Quote, id: &str, answer: &[u8]) -> Option<Money> {
        generation::billed(id, answer)
    }
}

#[cfg(test)]
mod tests;
