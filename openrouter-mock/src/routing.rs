//! Provider routing: each priced model is served by three providers at their own prices, and a
//! request picks one the way OpenRouter does (`provider.order` / `only` / `ignore` / `sort`,
//! the `:nitro`, `:floor` and `:exacto` suffixes), within `provider.max_price`.
//!
//! `GET /models` lists a model at its cheapest provider's price, as OpenRouter's list usually
//! does; `GET /models/{author}/{slug}/endpoints` lists all three. With no preference the
//! cheapest provider serves. When nothing fits the request's `max_price`, the answer is 404, as
//! OpenRouter's is for a request its routing constraints filter to nothing.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::{FAULT_MODEL_PREFIX, MockConfig, MockModel};
use crate::error::ApiError;
use crate::pricing::{Prices, usd_to_picos};
use crate::state::MockState;

/// The header that takes the cheapest provider down for one request, so that routing falls
/// back to a dearer one: `x-mock-provider-down: Cheap`.
pub const PROVIDER_DOWN_HEADER: &str = "x-mock-provider-down";

/// The providers of every priced model: name, price multiple of the listed price, and their
/// rank by throughput and by quality (lower is better).
const PROVIDERS: [(&str, u128, u8, u8); 3] =
    [("Cheap", 1, 3, 3), ("Steady", 2, 2, 1), ("Fast", 3, 1, 2)];

/// The routing suffixes the mock knows; a model id with one is the base model.
pub const SUFFIXES: [&str; 4] = [":nitro", ":floor", ":exacto", ":online"];

/// The provider chosen for a request, with its prices.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The provider's name (`provider_name` of the generation).
    pub provider: &'static str,
    /// Its prices.
    pub prices: Prices,
}

/// The model id without a routing suffix, and the suffix.
pub fn split_suffix(model_id: &str) -> (&str, Option<&str>) {
    for suffix in SUFFIXES {
        if let Some(base) = model_id.strip_suffix(suffix) {
            return (base, Some(suffix));
        }
    }
    (model_id, None)
}

/// Every provider of a model, at its own prices.
pub fn endpoints(listed: Prices) -> Vec<Endpoint> {
    PROVIDERS
        .iter()
        .map(|&(provider, multiple, _, _)| Endpoint {
            provider,
            prices: Prices {
                prompt_picos: listed.prompt_picos * multiple,
                completion_picos: listed.completion_picos * multiple,
                request_picos: listed.request_picos * multiple,
            },
        })
        .collect()
}

/// Picks the provider for a request on a model listed at `listed`; `dearest` picks the
/// dearest one the request allows (the mock's bill-most mode).
pub fn choose(
    listed: Prices,
    suffix: Option<&str>,
    body: &Value,
    headers: &HeaderMap,
    dearest: bool,
) -> Result<Endpoint, ApiError> {
    let provider = body.get("provider").unwrap_or(&Value::Null);
    let names = |field: &str| -> Vec<String> {
        provider
            .get(field)
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (order, only, ignore) = (names("order"), names("only"), names("ignore"));
    let down = headers
        .get(PROVIDER_DOWN_HEADER)
        .and_then(|value| value.to_str().ok());
    let max_price = MaxPrice::of(provider.get("max_price"))?;
    let mut candidates: Vec<(Endpoint, u8, u8)> = endpoints(listed)
        .into_iter()
        .zip(PROVIDERS)
        .filter(|(endpoint, _)| {
            (only.is_empty() || only.iter().any(|name| name == endpoint.provider))
                && !ignore.iter().any(|name| name == endpoint.provider)
                && down != Some(endpoint.provider)
        })
        .map(|(endpoint, (_, _, speed, quality))| (endpoint, speed, quality))
        .collect();
    let sort = provider
        .get("sort")
        .and_then(Value::as_str)
        .or(match suffix {
            Some(":nitro") => Some("throughput"),
            Some(":floor") => Some("price"),
            Some(":exacto") => Some("quality"),
            _ => None,
        });
    match sort {
        Some("throughput" | "latency") => candidates.sort_by_key(|(_, speed, _)| *speed),
        Some("quality") => candidates.sort_by_key(|(_, _, quality)| *quality),
        _ => candidates.sort_by_key(|(endpoint, _, _)| endpoint.prices.prompt_picos),
    }
    if !order.is_empty() {
        let rank = |name: &str| order.iter().position(|o| o == name).unwrap_or(usize::MAX);
        candidates.sort_by_key(|(endpoint, _, _)| rank(endpoint.provider));
        if provider.get("allow_fallbacks") == Some(&Value::Bool(false)) {
            candidates.retain(|(endpoint, _, _)| rank(endpoint.provider) != usize::MAX);
        }
    }
    let mut fitting = candidates
        .into_iter()
        .map(|(endpoint, _, _)| endpoint)
        .filter(|endpoint| max_price.allows(&endpoint.prices));
    let chosen = if dearest {
        fitting.max_by_key(|endpoint| endpoint.prices.completion_picos)
    } else {
        fitting.next()
    };
    chosen.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "No endpoints found that can handle the requested parameters: every provider \
             of this model is filtered out by your routing constraints (max_price)",
        )
    })
}

/// The auto router's id: it picks a model among those its `auto-router` plugin's
/// `allowed_models` match (every model by default), listed with the price `-1`.
pub const AUTO_ROUTER: &str = "openrouter/auto";

/// The model and provider `openrouter/auto` picks: the cheapest that fits, or, billing the
/// most, the dearest.
pub fn auto(
    config: &MockConfig,
    body: &Value,
    headers: &HeaderMap,
    dearest: bool,
) -> Result<(MockModel, Endpoint), ApiError> {
    let allowed: Vec<String> = body
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|plugins| {
            plugins
                .iter()
                .find(|plugin| plugin.get("id").and_then(Value::as_str) == Some("auto-router"))
        })
        .and_then(|plugin| plugin.get("allowed_models"))
        .and_then(Value::as_array)
        .map(|models| {
            models
                .iter()
                .filter_map(|model| model.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let matches = |id: &str| {
        allowed.is_empty()
            || allowed
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => id.starts_with(prefix),
                    None => pattern == id,
                })
    };
    let mut picks = Vec::new();
    for model in &config.models {
        if model.id.starts_with(FAULT_MODEL_PREFIX) || !matches(&model.id) {
            continue;
        }
        let Ok(listed) = Prices::of(model) else {
            continue;
        };
        if let Ok(endpoint) = choose(listed, None, body, headers, dearest) {
            picks.push((model.clone(), endpoint));
        }
    }
    let key = |(_, endpoint): &(MockModel, Endpoint)| {
        (
            endpoint.prices.completion_picos,
            endpoint.prices.prompt_picos,
        )
    };
    let pick = if dearest {
        picks.into_iter().max_by_key(key)
    } else {
        picks.into_iter().min_by_key(key)
    };
    pick.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "No models match your request and model restrictions",
        )
    })
}

/// `provider.max_price`: prompt and completion in USD per million tokens, request in USD.
#[derive(Debug, Default)]
struct MaxPrice {
    prompt_per_million: Option<u128>,
    completion_per_million: Option<u128>,
    request: Option<u128>,
}

impl MaxPrice {
    fn of(value: Option<&Value>) -> Result<MaxPrice, ApiError> {
        let Some(Value::Object(fields)) = value else {
            return Ok(MaxPrice::default());
        };
        let read = |field: &str| -> Result<Option<u128>, ApiError> {
            let text = match fields.get(field) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) => number.to_string(),
                Some(_) => String::new(),
            };
            usd_to_picos(&text).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("provider.max_price.{field} must be a number"))
            })
        };
        Ok(MaxPrice {
            prompt_per_million: read("prompt")?,
            completion_per_million: read("completion")?,
            request: read("request")?,
        })
    }

    fn allows(&self, prices: &Prices) -> bool {
        let within = |most: Option<u128>, price: u128| most.is_none_or(|most| price <= most);
        within(self.prompt_per_million, prices.prompt_picos * 1_000_000)
            && within(
                self.completion_per_million,
                prices.completion_picos * 1_000_000,
            )
            && within(self.request, prices.request_picos)
    }
}

/// `GET /models/{author}/{slug}/endpoints`: the model's providers and their prices.
pub async fn list_endpoints(
    State(state): State<MockState>,
    Path((author, slug)): Path<(String, String)>,
) -> Response {
    let id = format!("{author}/{slug}");
    let Some(model) = state.config().find_model(&id) else {
        return ApiError::new(StatusCode::NOT_FOUND, "Model not found").into_response();
    };
    let Ok(listed) = Prices::of(&model) else {
        return ApiError::internal().into_response();
    };
    Json(json!({ "data": {
        "id": model.id,
        "name": model.id,
        "endpoints": endpoints(listed).iter().map(|endpoint| endpoint_json(&model, endpoint)).collect::<Vec<_>>(),
    }}))
    .into_response()
}

fn endpoint_json(model: &MockModel, endpoint: &Endpoint) -> Value {
    let usd = |picos: u128| crate::pricing::picos_to_usd_text(picos);
    json!({
        "name": format!("{} | {}", endpoint.provider, model.id),
        "provider_name": endpoint.provider,
        "context_length": model.context_length,
        "max_completion_tokens": model.max_completion_tokens,
        "pricing": {
            "prompt": usd(endpoint.prices.prompt_picos),
            "completion": usd(endpoint.prices.completion_picos),
            "request": usd(endpoint.prices.request_picos),
            "image": "0",
        },
        "status": 0,
    })
}
