//! Probes for load balancers and orchestrators, answered by the gateway itself on its proxy
//! listener, with no key and never forwarded: `GET /livez` (the process answers requests) and
//! `GET /readyz` (it can serve them: the upstream's prices are loaded, or an unpriced ceiling
//! makes them unnecessary). A database outage does not make a gateway unready: it goes on
//! serving the keys it holds within their caps (ARCHITECTURE.md, "When Postgres is
//! unreachable"). The probes are public: they say nothing about keys or the database (the
//! metrics listener does).

use bytes::Bytes;
use serde_json::json;

use crate::state::Gateway;

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

/// The probe a request is, if it is one: `GET` or `HEAD` of `/livez` or `/readyz` (a query is
/// ignored).
pub fn probe(method: &str, path: &str) -> Option<Probe> {
    if method != "GET" && method != "HEAD" {
        return None;
    }
    match path.split_once('?').map_or(path, |(path, _)| path) {
        "/livez" => Some(Probe::Live),
        "/readyz" => Some(Probe::Ready),
        _ => None,
    }
}

/// The status and JSON body that answer `probe`.
pub fn answer(probe: Probe, gateway: &Gateway) -> (u16, Bytes) {
    match probe {
        Probe::Live => (200, Bytes::from_static(b"{\"live\":true}")),
        Probe::Ready => {
            let prices_loaded = !gateway.prices.get().is_empty();
            let ready = prices_loaded || gateway.config.openrouter.unpriced_ceiling.is_some();
            let body = json!({ "ready": ready, "prices_loaded": prices_loaded });
            (if ready { 200 } else { 503 }, Bytes::from(body.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_the_two_paths_are_probes() {
        assert_eq!(probe("GET", "/livez"), Some(Probe::Live));
        assert_eq!(probe("HEAD", "/readyz?verbose=1"), Some(Probe::Ready));
        assert_eq!(probe("POST", "/readyz"), None);
        assert_eq!(probe("GET", "/api/v1/livez"), None);
        assert_eq!(probe("GET", "/livez/"), None);
    }
}
