//! `POST /embeddings`'s answer: deterministic vectors, as floats or base64 little-endian f32s,
//! and `usage` with its cost.

use base64::Engine;
use serde_json::{Value, json};

use crate::request::{Completion, EmbeddingAsk};

/// The whole answer; embeddings do not stream.
pub fn body(completion: &Completion, ask: EmbeddingAsk) -> Value {
    let data: Vec<Value> = (0..ask.inputs)
        .map(|index| {
            let vector = vector(index, ask.dimensions);
            let embedding = if ask.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "embedding": embedding, "index": index })
        })
        .collect();
    let mut body = json!({
        "id": completion.id,
        "object": "list",
        "model": completion.model,
        "provider": "Mock",
        "data": data,
    });
    if let (Some(usage), Some(body)) = (completion.usage_json(), body.as_object_mut()) {
        body.insert("usage".to_owned(), usage);
    }
    body
}

/// Input `index`'s vector: small fractions exact in an f32.
fn vector(index: usize, dimensions: usize) -> Vec<f32> {
    (0..dimensions)
        .map(|d| ((index * 31 + d * 7) % 64) as f32 / 64.0 - 0.5)
        .collect()
}
