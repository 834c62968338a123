//! Reading `GET /api/v1/models` leniently: an element of the wrong shape, a field of the wrong
//! type or an unreadable price makes that one model unpriced, never the whole list unreadable.
//! Fields pricing does not need (descriptions, architecture, parameters) are skipped unbuilt.

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::services::openrouter::pricing::{ModelPrice, UnitPrice};

#[derive(Deserialize)]
pub(super) struct ModelList {
    pub(super) data: Vec<ModelWire>,
}

/// One element of `data`, read leniently: an element of the wrong shape, or a field of the
/// wrong type, becomes an unpriced model instead of an error for the whole list.
#[derive(Default)]
pub(super) struct ModelWire {
    pub(super) id: Option<String>,
    pricing: Value,
    context_length: Value,
    top_provider: Value,
    garbled: Option<&'static str>,
}

impl<'de> Deserialize<'de> for ModelWire {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ModelVisitor)
    }
}

/// The fields of a model entry that pricing reads; the others (descriptions, architecture,
/// supported parameters) are skipped without being built.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum ModelKey {
    Id,
    Pricing,
    ContextLength,
    TopProvider,
    #[serde(other)]
    Other,
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = ModelWire;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a model object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ModelWire, A::Error> {
        let mut model = ModelWire::default();
        while let Some(key) = map.next_key::<ModelKey>()? {
            match key {
                ModelKey::Id => match map.next_value::<Value>()? {
                    Value::String(id) if !id.is_empty() => model.id = Some(id),
                    _ => model.id = None,
                },
                ModelKey::Pricing => model.pricing = map.next_value()?,
                ModelKey::ContextLength => model.context_length = map.next_value()?,
                ModelKey::TopProvider => model.top_provider = map.next_value()?,
                ModelKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(model)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ModelWire, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ModelWire::garbled("a list"))
    }

    visit_scalars!(ModelWire::garbled("a string"); str);
    visit_scalars!(ModelWire::garbled("a number"); f64 u64 i64);
    visit_scalars!(ModelWire::garbled("a boolean"); bool);
    visit_scalars!(ModelWire::garbled("null"); unit);
}

impl ModelWire {
    /// An element that is not an object at all.
    fn garbled(what: &'static str) -> ModelWire {
        ModelWire {
            garbled: Some(what),
            ..ModelWire::default()
        }
    }

    /// The model's price, or why it has none.
    pub(super) fn price(&self) -> Result<ModelPrice, String> {
        if let Some(what) = self.garbled {
            return Err(format!("model entry is {what}, not an object"));
        }
        let Value::Object(pricing) = &self.pricing else {
            return Err("model has no pricing object".to_string());
        };
        let mut fields = PriceFields::default();
        for (name, value) in pricing {
            match name.as_str() {
                "discount" => check_discount(value)?,
                "overrides" => fields.merge_overrides(value)?,
                _ => fields.set(name, value)?,
            }
        }
        let mut price = fields.resolve()?;
        (price.context_length, price.max_completion_tokens) = self.limits();
        Ok(price)
    }

    /// The model's context window and its top provider's completion limit, when listed.
    pub(super) fn limits(&self) -> (Option<u64>, Option<u64>) {
        let top_context = self
            .top_provider
            .get("context_length")
            .and_then(Value::as_u64);
        let context_length = match (self.context_length.as_u64(), top_context) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let max_completion_tokens = self
            .top_provider
            .get("max_completion_tokens")
            .and_then(Value::as_u64);
        (context_length, max_completion_tokens)
    }
}

/// Price components as read, before the optional ones are resolved.
#[derive(Default)]
struct PriceFields {
    prompt: Option<UnitPrice>,
    completion: Option<UnitPrice>,
    input_cache_read: Option<UnitPrice>,
    input_cache_write: Option<UnitPrice>,
    input_cache_write_1h: Option<UnitPrice>,
    rest: ModelPrice,
}

impl PriceFields {
    /// Records one pricing field; a field seen again (from an override) keeps the higher price.
    fn set(&mut self, name: &str, value: &Value) -> Result<(), String> {
        let price = match value {
            Value::Null => return Ok(()),
            Value::String(text) => UnitPrice::parse(text),
            Value::Number(number) => UnitPrice::parse(&number.to_string()),
            other => return Err(format!("pricing field {name:?} is {other}, not a price")),
        }
        .map_err(|err| format!("pricing field {name:?}: {err}"))?;
        let raise = |slot: &mut UnitPrice| *slot = (*slot).max(price);
        let raise_option =
            |slot: &mut Option<UnitPrice>| *slot = Some(slot.unwrap_or_default().max(price));
        match name {
            "prompt" => raise_option(&mut self.prompt),
            "completion" => raise_option(&mut self.completion),
            "input_cache_read" => raise_option(&mut self.input_cache_read),
            "input_cache_write" => raise_option(&mut self.input_cache_write),
            "input_cache_write_1h" => raise_option(&mut self.input_cache_write_1h),
            "request" => raise(&mut self.rest.request),
            "image" => raise(&mut self.rest.image),
            "image_output" => raise(&mut self.rest.image_output),
            "image_token" => raise(&mut self.rest.image_token),
            "audio" => raise(&mut self.rest.audio),
            "audio_output" => raise(&mut self.rest.audio_output),
            "input_audio_cache" => raise(&mut self.rest.input_audio_cache),
            "internal_reasoning" => raise(&mut self.rest.internal_reasoning),
            "web_search" => raise(&mut self.rest.web_search),
            _ if price == UnitPrice::ZERO => {}
            _ => {
                return Err(format!(
                    "pricing field {name:?} is not understood by keycap"
                ));
            }
        }
        Ok(())
    }

    /// Conditional prices (for long prompts, or a time window) are folded in at their highest,
    /// whatever their condition: the worst case must hold whichever applies. Condition fields
    /// are skipped; price fields may sit in the override itself or in its `pricing` object.
    fn merge_overrides(&mut self, overrides: &Value) -> Result<(), String> {
        let list = match overrides {
            Value::Null => return Ok(()),
            Value::Array(list) => list.as_slice(),
            single @ Value::Object(_) => std::slice::from_ref(single),
            other => return Err(format!("pricing overrides are {other}, not a list")),
        };
        for item in list {
            let Value::Object(fields) = item else {
                return Err("a pricing override is not an object".to_string());
            };
            for (name, value) in fields {
                if name == "pricing" {
                    self.merge_overrides(value)?;
                } else if KNOWN_PRICES.contains(&name.as_str()) {
                    self.set(name, value)?;
                }
            }
        }
        Ok(())
    }

    fn resolve(self) -> Result<ModelPrice, String> {
        let prompt = self.prompt.ok_or("model has no prompt price")?;
        let completion = self.completion.ok_or("model has no completion price")?;
        let input_cache_write = self.input_cache_write.unwrap_or(prompt);
        Ok(ModelPrice {
            prompt,
            completion,
            input_cache_read: self.input_cache_read.unwrap_or(prompt),
            input_cache_write,
            input_cache_write_1h: self.input_cache_write_1h.unwrap_or(input_cache_write),
            ..self.rest
        })
    }
}

const KNOWN_PRICES: [&str; 14] = [
    "prompt",
    "completion",
    "request",
    "image",
    "image_output",
    "image_token",
    "audio",
    "audio_output",
    "input_audio_cache",
    "input_cache_read",
    "input_cache_write",
    "input_cache_write_1h",
    "internal_reasoning",
    "web_search",
];

/// A discount in `[0, 1)` only lowers prices, so the worst case ignores it. Anything else is a
/// surcharge or garbage, and the model is unpriced.
fn check_discount(value: &Value) -> Result<(), String> {
    let ratio = match value {
        Value::Null => return Ok(()),
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    match ratio {
        Some(ratio) if (0.0..1.0).contains(&ratio) => Ok(()),
        _ => Err(format!(
            "pricing discount {value} is not a ratio from 0 to 1"
        )),
    }
}
