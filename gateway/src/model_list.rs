//! A model list (`GET /api/v1/models`, `/api/v1/embeddings/models`) cut to the models a key
//! may use, since apps show that list to people. Only a key limited to some models has its
//! list cut; the body is then held whole (at most [`MAX_LIST_BYTES`]) and rewritten at its end.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The largest model list the gateway cuts; OpenRouter's whole list is a few MiB.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct ListWire<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ModelId<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
}

/// The list in `body` with only the models whose id is in `scope`, each written as it came;
/// other top-level fields are dropped. A body that is not a `{"data": [...]}` list becomes an
/// empty list: nothing outside the scope is shown.
pub fn cut_to_scope(body: &[u8], scope: &[String]) -> Vec<u8> {
    let Ok(list) = serde_json::from_slice::<ListWire>(body) else {
        return br#"{"data":[]}"#.to_vec();
    };
    let mut out = Vec::with_capacity(body.len().min(1024 * 1024));
    out.extend_from_slice(br#"{"data":["#);
    let mut first = true;
    for model in list.data {
        let in_scope = serde_json::from_str::<ModelId>(model.get())
            .ok()
            .and_then(|model| model.id)
            .is_some_and(|id| scope.iter().any(|allowed| *allowed == id));
        if in_scope {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(model.get().as_bytes());
        }
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_models_in_scope() {
        let scope = vec!["a/one".to_string(), "c/three".to_string()];
        let body = br#"{"data":[{"id":"a/one","pricing":{"prompt":"0.1"}},{"id":"b/two"},
            {"id":"c\/three","x":[1,2]},{"name":"no id"},7]}"#;
        assert_eq!(
            String::from_utf8(cut_to_scope(body, &scope)).unwrap(),
            r#"{"data":[{"id":"a/one","pricing":{"prompt":"0.1"}},{"id":"c\/three","x":[1,2]}]}"#
        );
        assert_eq!(cut_to_scope(b"not json", &scope), br#"{"data":[]}"#);
    }
}
