//! Writing a request's bounds into the body that goes upstream, so that OpenRouter itself
//! keeps the request within what the gateway reserved: the completion limit (and a reasoning
//! budget below it), `provider.max_price` at the prices the reservation used, the web
//! plugin's searches and results, the most tool calls, and a free PDF engine.
//!
//! Only the top level of the body is taken apart, into keys and the raw text of their values;
//! the few small values that change (`provider`, `plugins`, `reasoning`, `thinking`) are read
//! whole, and every other value goes out byte for byte as it came, without building a JSON tree
//! of a body that may hold tens of MiB. Keys come out in sorted order (a repeated key keeps its
//! last value, as JSON parsers do).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::services::Api;
use crate::services::openrouter::pricing::{ModelPrice, UnitPrice};
use crate::services::openrouter::request::RequestError;

/// What the gateway writes into a forwarded body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The completion limit, written into every limit field present (one the client set lower
    /// stays theirs) and the API's own when absent.
    pub max_tokens: Option<u64>,
    /// The prices the reservation used, written as `provider.max_price` (a client's own lower
    /// price stays).
    pub max_price: Option<MaxPrice>,
    /// The web plugin's `max_uses` and `max_results`, written where the request leaves them
    /// out (the plugin is added when web search is on without it).
    pub web_plugin: Option<WebLimits>,
    /// `max_tool_calls`, written when the request has a server-side web tool.
    pub max_tool_calls: Option<u64>,
    /// What every server-side web tool gets where it leaves it out.
    pub web_tools: Option<WebToolLimits>,
    /// The `file-parser` plugin's PDF engine, written when the request has a file part and
    /// names no engine.
    pub pdf_engine: Option<&'static str>,
}

/// The prices `provider.max_price` carries, per token or per unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaxPrice {
    /// Per prompt token (written per million tokens).
    pub prompt: UnitPrice,
    /// Per completion token (written per million tokens).
    pub completion: UnitPrice,
    /// Per request.
    pub request: UnitPrice,
    /// Per input image.
    pub image: UnitPrice,
}

impl MaxPrice {
    /// The prices of `price` that OpenRouter's `max_price` can hold.
    pub fn of(price: &ModelPrice) -> MaxPrice {
        MaxPrice {
            prompt: price.prompt,
            completion: price.completion,
            request: price.request,
            image: price.image,
        }
    }

    /// Each field as OpenRouter reads it: its name, our price in pico-dollars per the
    /// field's unit, and that price as USD text.
    fn fields(&self) -> [(&'static str, u128, String); 4] {
        let per_million = |price: UnitPrice| u128::from(price.picos()) * 1_000_000;
        [
            (
                "prompt",
                per_million(self.prompt),
                usd_text(per_million(self.prompt)),
            ),
            (
                "completion",
                per_million(self.completion),
                usd_text(per_million(self.completion)),
            ),
            (
                "request",
                u128::from(self.request.picos()),
                usd_text(u128::from(self.request.picos())),
            ),
            (
                "image",
                u128::from(self.image.picos()),
                usd_text(u128::from(self.image.picos())),
            ),
        ]
    }
}

/// The web plugin's limits to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebLimits {
    /// `max_uses`: the most searches.
    pub max_uses: u64,
    /// `max_results`: results per search.
    pub max_results: u64,
}

/// The limits written into each server-side web tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebToolLimits {
    /// `max_uses` where the tool has none (a tool's own is never above what was priced).
    pub max_uses: u64,
    /// OpenRouter's tool's `parameters.max_characters` per result, at most this.
    pub max_characters: u64,
}

/// Pico-dollars as an exact USD decimal (`150000000000` is `"0.15"`).
fn usd_text(picos: u128) -> String {
    const PICOS_PER_USD: u128 = 1_000_000_000_000;
    let (whole, fraction) = (picos / PICOS_PER_USD, picos % PICOS_PER_USD);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The limit fields every API may read.
const LIMIT_FIELDS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Writes `bounds` into a request body of `api`.
pub fn bound_body(api: Api, body: &[u8], bounds: &Bounds) -> Result<Vec<u8>, RequestError> {
    let object: BTreeMap<Key<'_>, &RawValue> =
        serde_json::from_slice(body).map_err(|err| match err.classify() {
            serde_json::error::Category::Data => RequestError::NotAnObject,
            _ => RequestError::NotJson {
                detail: err.to_string(),
            },
        })?;
    let limit = bounds.max_tokens.filter(|_| api.generates());
    let limit_text = limit.map(|limit| limit.to_string());
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(object.len() + 4);
    for (key, raw) in &object {
        let key: &str = &key.0;
        let changed = match key {
            // A limit the client set lower than ours stays theirs; any other becomes ours.
            field if LIMIT_FIELDS.contains(&field) => {
                limit.map(|limit| lower_count(raw, limit).to_string())
            }
            "reasoning" => limit.and_then(|limit| lowered_budget(raw, "max_tokens", limit)),
            "thinking" => limit.and_then(|limit| lowered_budget(raw, "budget_tokens", limit)),
            "provider" => match &bounds.max_price {
                Some(max_price) => Some(provider_with(read(raw)?, max_price)?),
                None => None,
            },
            "plugins" => plugins_with(read(raw)?, bounds)?,
            "tools" => match bounds.web_tools {
                Some(limits) => Some(tools_with(read(raw)?, limits)),
                None => None,
            },
            "max_tool_calls" => bounds
                .max_tool_calls
                .map(|most| lower_count(raw, most).to_string()),
            _ => None,
        };
        out.push((key, changed.map_or(Cow::Borrowed(raw.get()), Cow::Owned)));
    }
    let absent = |key: &str| !object.contains_key(key);
    if let Some(text) = &limit_text {
        let own_fields: &[&'static str] = match api {
            Api::ChatCompletions | Api::Completions => &["max_tokens", "max_completion_tokens"],
            Api::Responses => &["max_output_tokens"],
            _ => &["max_tokens"],
        };
        if own_fields.iter().all(|field| absent(field)) {
            out.push((own_fields[0], Cow::Owned(text.clone())));
        }
    }
    if let Some(max_price) = &bounds.max_price
        && absent("provider")
    {
        let provider = provider_with(Value::Null, max_price)?;
        out.push(("provider", Cow::Owned(provider)));
    }
    if absent("plugins")
        && let Some(plugins) = plugins_with(Value::Null, bounds)?
    {
        out.push(("plugins", Cow::Owned(plugins)));
    }
    if let Some(most) = bounds.max_tool_calls
        && absent("max_tool_calls")
    {
        out.push(("max_tool_calls", Cow::Owned(most.to_string())));
    }
    let mut body = Vec::with_capacity(body.len() + 256);
    write_object(
        &mut body,
        out.iter().map(|(key, value)| (*key, value.as_ref())),
    );
    Ok(body)
}

/// A key of the body's top level, borrowed from the body unless it holds an escape.
#[derive(serde::Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Writes `{"key":value,...}` from keys and the JSON text of their values.
fn write_object<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push(b'{');
    for (n, (key, value)) in fields.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_key(out, key);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
}

/// Writes `key` as a JSON string: as it is when nothing in it needs escaping (the keys of a
/// request nearly always), else through serde_json.
fn write_key(out: &mut Vec<u8>, key: &str) {
    if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(Value::from(key).to_string().as_bytes());
    }
}

fn read(raw: &RawValue) -> Result<Value, RequestError> {
    serde_json::from_str(raw.get()).map_err(|err| invalid(err.to_string()))
}

/// `raw` (an object with a budget field) with the budget lowered below `limit`, when it is not
/// already: OpenRouter and Anthropic answer 400 to a reasoning budget of at least the
/// completion limit. `None` when nothing changes.
fn lowered_budget(raw: &RawValue, field: &str, limit: u64) -> Option<String> {
    let mut value: Value = serde_json::from_str(raw.get()).ok()?;
    let budget = value.get(field)?.as_u64()?;
    if budget < limit || limit < 2 {
        return None;
    }
    value[field] = Value::from(limit - 1);
    Some(value.to_string())
}

/// A count field lowered to `most` (or set to it when it is not a number).
fn lower_count(raw: &RawValue, most: u64) -> u64 {
    serde_json::from_str::<Value>(raw.get())
        .ok()
        .as_ref()
        .and_then(super::request::whole_number)
        .map_or(most, |count| count.min(most))
}

/// The `provider` object with `max_price` at our prices, or the client's own where lower. Our
/// prices are written as exact decimal numbers (never through a float).
fn provider_with(provider: Value, max_price: &MaxPrice) -> Result<String, RequestError> {
    if provider.is_null() {
        // No preferences of the client's: only ours (the common case, written directly).
        let mut prices = Vec::with_capacity(96);
        write_object(
            &mut prices,
            max_price
                .fields()
                .iter()
                .map(|(field, _, text)| (*field, text.as_str())),
        );
        let mut out = Vec::with_capacity(prices.len() + 16);
        let prices = String::from_utf8(prices).unwrap_or_default();
        write_object(&mut out, std::iter::once(("max_price", prices.as_str())));
        return Ok(String::from_utf8(out).unwrap_or_default());
    }
    let mut provider = match provider {
        Value::Object(provider) => provider,
        Value::Null => Map::new(),
        _ => return Err(invalid("\"provider\" must be an object".into())),
    };
    let mut prices = match provider.remove("max_price") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(prices)) => prices,
        Some(_) => return Err(invalid("\"provider.max_price\" must be an object".into())),
    };
    let mut ours = Vec::new();
    for (field, picos, text) in max_price.fields() {
        let theirs = match prices.get(field) {
            None | Some(Value::Null) => None,
            Some(value) => {
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    _ => String::new(),
                };
                let price = UnitPrice::parse(&text).map_err(|_| {
                    invalid(format!(
                        "\"provider.max_price.{field}\" must be a price in USD, not {value}"
                    ))
                })?;
                Some(u128::from(price.picos()))
            }
        };
        if theirs.is_none_or(|theirs| theirs > picos) {
            prices.remove(field);
            ours.push((field, text));
        }
    }
    let kept: Vec<(String, String)> = prices
        .iter()
        .map(|(field, value)| (field.clone(), value.to_string()))
        .collect();
    let mut price_text = Vec::new();
    write_object(
        &mut price_text,
        kept.iter()
            .map(|(field, value)| (field.as_str(), value.as_str()))
            .chain(ours.iter().map(|(field, text)| (*field, text.as_str()))),
    );
    let price_text = String::from_utf8(price_text).unwrap_or_default();
    let others: Vec<(String, String)> = provider
        .iter()
        .map(|(field, value)| (field.clone(), value.to_string()))
        .collect();
    let mut out = Vec::new();
    write_object(
        &mut out,
        others
            .iter()
            .map(|(field, value)| (field.as_str(), value.as_str()))
            .chain(std::iter::once(("max_price", price_text.as_str()))),
    );
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// The `plugins` list with the web plugin's limits and the PDF engine written where the
/// request leaves them out (adding the plugins when absent); `None` when there is nothing to
/// write.
fn plugins_with(plugins: Value, bounds: &Bounds) -> Result<Option<String>, RequestError> {
    if bounds.web_plugin.is_none() && bounds.pdf_engine.is_none() {
        return Ok(None);
    }
    let mut plugins = match plugins {
        Value::Array(plugins) => plugins,
        Value::Null => Vec::new(),
        _ => return Err(invalid("\"plugins\" must be a list".into())),
    };
    // The request's own plugin of that id (the parser refuses two), turned on: the bounds
    // were priced for the feature it serves.
    let position = |plugins: &mut Vec<Value>, id: &str| {
        let at = plugins
            .iter()
            .position(|plugin| plugin.get("id").and_then(Value::as_str) == Some(id));
        let at = at.unwrap_or_else(|| {
            plugins.push(serde_json::json!({ "id": id }));
            plugins.len() - 1
        });
        if let Value::Object(plugin) = &mut plugins[at] {
            plugin.remove("enabled");
        }
        at
    };
    if let Some(web) = bounds.web_plugin {
        let at = position(&mut plugins, "web");
        if let Value::Object(plugin) = &mut plugins[at] {
            plugin.insert("max_uses".into(), Value::from(web.max_uses));
            plugin.insert("max_results".into(), Value::from(web.max_results));
        }
    }
    if let Some(engine) = bounds.pdf_engine {
        let at = position(&mut plugins, "file-parser");
        if let Value::Object(plugin) = &mut plugins[at] {
            let pdf = plugin
                .entry("pdf")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(pdf) = pdf {
                pdf.entry("engine").or_insert_with(|| Value::from(engine));
            }
        }
    }
    Ok(Some(Value::Array(plugins).to_string()))
}

/// The `tools` list with each server-side web tool's `max_uses` written where it has none,
/// and OpenRouter's tool's results held to `max_characters`.
fn tools_with(tools: Value, limits: WebToolLimits) -> String {
    let mut tools = tools;
    if let Value::Array(list) = &mut tools {
        for tool in list {
            let Value::Object(tool) = tool else { continue };
            let kind = tool
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if !(kind.contains("web_search") || kind.contains("web_fetch")) {
                continue;
            }
            if kind.starts_with("openrouter:") {
                let parameters = tool
                    .entry("parameters")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(parameters) = parameters {
                    parameters
                        .entry("max_uses")
                        .or_insert(Value::from(limits.max_uses));
                    let characters = parameters
                        .get("max_characters")
                        .and_then(Value::as_u64)
                        .map_or(limits.max_characters, |asked| {
                            asked.min(limits.max_characters)
                        });
                    parameters.insert("max_characters".into(), Value::from(characters));
                }
            } else if tool.get("max_uses").is_none_or(Value::is_null) {
                tool.insert("max_uses".into(), Value::from(limits.max_uses));
            }
        }
    }
    tools.to_string()
}

fn invalid(detail: String) -> RequestError {
    RequestError::InvalidField { detail }
}

#[cfg(test)]
mod tests;
