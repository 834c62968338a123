//! Integration tests: a real mock server on 127.0.0.1:0 driven over HTTP.

mod account;
mod auth;
mod chat;
mod completions;
mod cost;
mod faults;
mod generation;
mod keys;
mod limits;
mod models;
mod routing;
mod stream;

use openrouter_mock::{MockConfig, MockServer};
use reqwest::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

/// A running mock and a client for it.
pub struct Mock {
    pub server: MockServer,
    pub client: Client,
}

impl Mock {
    pub async fn start() -> Mock {
        Mock::with_config(MockConfig::default()).await
    }

    pub async fn with_config(config: MockConfig) -> Mock {
        let server = openrouter_mock::spawn(config).await.expect("mock starts");
        Mock {
            server,
            client: Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.server.base_url())
    }

    pub fn master_key(&self) -> String {
        self.server.state().config().master_key.clone()
    }

    pub fn management_key(&self) -> String {
        self.server.state().config().management_key.clone()
    }

    pub fn get(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn post(&self, path: &str, key: &str) -> RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key)
    }

    /// `POST /chat/completions` with the master key.
    pub fn chat(&self, body: &Value) -> RequestBuilder {
        self.post("/chat/completions", &self.master_key())
            .json(body)
    }

    /// A chat completion with the master key, returned as status, headers
    /// and body text.
    pub async fn chat_text(&self, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
        into_parts(self.chat(body).send().await.expect("mock answers")).await
    }
}

pub async fn into_parts(response: Response) -> (u16, reqwest::header::HeaderMap, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body is text");
    (status, headers, text)
}

/// A chat request whose single message has `content`.
pub fn chat_body(model: &str, content: &str, max_tokens: Option<u64>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{ "role": "user", "content": content }],
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// The payloads of the `data:` lines of an SSE body, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The JSON chunks of an SSE body, without `[DONE]`.
pub fn sse_chunks(text: &str) -> Vec<Value> {
    sse_data(text)
        .iter()
        .filter(|data| data.as_str() != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("chunk is JSON"))
        .collect()
}

/// The literal text of the first number written after `"field":`.
pub fn raw_number(text: &str, field: &str) -> String {
    let pattern = format!("\"{field}\":");
    let start = text
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {field} in {text}"));
    text[start + pattern.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect()
}

/// Parses a JSON number of USD exactly into nano-dollars; panics when it
/// is not a whole number of nano-dollars.
pub fn exact_nanos(number: &str) -> u64 {
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (
            mantissa,
            exponent.parse::<i32>().expect("exponent is an integer"),
        ),
        None => (number, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: u128 = format!("{int_part}{frac_part}").parse().expect("digits");
    let scale = 9 + exponent - i32::try_from(frac_part.len()).expect("short fraction");
    if scale >= 0 {
        u64::try_from(digits * 10u128.pow(scale.unsigned_abs())).expect("fits u64")
    } else {
        let divisor = 10u128.pow(scale.unsigned_abs());
        assert_eq!(
            digits % divisor,
            0,
            "{number} is not a whole number of nano-dollars"
        );
        u64::try_from(digits / divisor).expect("fits u64")
    }
}

/// Checks that the `field` number in `text` is exactly `expected_nanos`,
/// both as printed and through an f64.
pub fn assert_usd(text: &str, field: &str, expected_nanos: u64) {
    let number = raw_number(text, field);
    assert_eq!(
        exact_nanos(&number),
        expected_nanos,
        "{field} printed as {number}"
    );
    let as_float: f64 = number.parse().expect("number is an f64");
    assert_eq!((as_float * 1e9).round() as u64, expected_nanos);
}

#[test]
fn exact_nanos_parses_every_spelling() {
    assert_eq!(exact_nanos("0.00002"), 20_000);
    assert_eq!(exact_nanos("2e-5"), 20_000);
    assert_eq!(exact_nanos("1.5e-7"), 150);
    assert_eq!(exact_nanos("1e-9"), 1);
    assert_eq!(exact_nanos("0"), 0);
    assert_eq!(exact_nanos("1.0"), 1_000_000_000);
}
