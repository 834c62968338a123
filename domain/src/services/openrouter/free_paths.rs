//! Extra paths the operator lets through free of charge (`gateway.extra_free_paths`), beyond
//! the built-in `models` and `generation`: `GET` only, with a valid sub-key, never metered.
//! The upstream answers them under the master key, so they show whatever that key may see.
//!
//! An entry is an exact path (`/api/v1/providers`) or a prefix ending in `/*`
//! (`/api/v1/models/*`, which lets through `/api/v1/models/openai/gpt-4o/endpoints`).
//!
//! - No entry may be, lie below or cover a metered path or one of
//!   [`NEVER_FREE`](super::NEVER_FREE) (compared
//!   without regard to case); an entry that is a routed path is refused as pointless.
//! - A request reaches a prefix only through plain segments: letters, digits and `-._~:@`, no
//!   `.` or `..` segment, no `%` escape, no empty segment (so no trailing `/`). An exact path
//!   also matches with one trailing `/`, as the built-in routes do.

use super::{never_free_paths, routed_paths};

/// The configured extra free paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreePaths {
    exact: Vec<String>,
    /// Prefixes, each ending in `/`.
    below: Vec<String>,
}

/// The prefix every OpenRouter API path has.
const API_PREFIX: &str = "/api/v1/";

impl FreePaths {
    /// Reads a comma-separated list (empty: none). The error names the entry and what is
    /// wrong with it.
    pub fn parse(text: &str) -> Result<FreePaths, String> {
        let mut paths = FreePaths::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (path, is_prefix) = match entry.strip_suffix("/*") {
                Some(prefix) => (prefix, true),
                None => (entry, false),
            };
            let rest = match path.strip_prefix(API_PREFIX) {
                Some(rest) => Some(rest),
                // `/api/v1/*`: a prefix with no segment of its own, refused below as covering
                // the metered paths.
                None if is_prefix && format!("{path}/") == API_PREFIX => None,
                None => return Err(format!("{entry:?} must start with {API_PREFIX}")),
            };
            if rest.is_some_and(|rest| !plain_segments(rest)) {
                return Err(format!(
                    "{entry:?} must be plain path segments (letters, digits and -._~:@; no empty, . or .. segment), optionally ending in /*"
                ));
            }
            let lower = path.to_ascii_lowercase();
            for paid in never_free_paths() {
                let reaches = lower == paid
                    || lower.starts_with(&format!("{paid}/"))
                    || lower.starts_with(&format!("{paid}."))
                    || (is_prefix && paid.starts_with(&format!("{lower}/")));
                if reaches {
                    return Err(format!(
                        "{entry:?} reaches {paid}, which costs money or manages keys: it can never be free"
                    ));
                }
            }
            if is_prefix {
                paths.below.push(format!("{path}/"));
            } else {
                if routed_paths().any(|routed| routed == path) {
                    return Err(format!(
                        "{entry:?} is a path the gateway routes itself already"
                    ));
                }
                paths.exact.push(path.to_string());
            }
        }
        Ok(paths)
    }

    /// True when `path` (without its query) is one of the free paths.
    pub fn contains(&self, path: &str) -> bool {
        let exact = path.strip_suffix('/').unwrap_or(path);
        self.exact.iter().any(|free| free == exact)
            || self.below.iter().any(|prefix| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(plain_segments)
            })
    }

    /// True when no extra path is configured.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.below.is_empty()
    }
}

/// `a/b/c`: one or more non-empty segments of letters, digits and `-._~:@`, none `.` or `..`.
fn plain_segments(text: &str) -> bool {
    let plain_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._~:@".contains(&b);
    text.split('/').all(|segment| {
        !segment.is_empty() && segment != "." && segment != ".." && segment.bytes().all(plain_byte)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exact_paths_and_prefixes() {
        let paths = FreePaths::parse(" /api/v1/providers , /api/v1/models/* ,").unwrap();
        assert!(paths.contains("/api/v1/providers"));
        assert!(paths.contains("/api/v1/providers/"));
        assert!(paths.contains("/api/v1/models/openai/gpt-4.1/endpoints"));
        assert!(
            !paths.contains("/api/v1/models"),
            "the prefix itself is not below it"
        );
        assert!(!paths.contains("/api/v1/models/"));
        assert!(
            !paths.contains("/api/v1/providers/x"),
            "an exact path has nothing below"
        );
        assert!(!paths.contains("/api/v1/providers//"));
        assert!(!paths.contains("/api/v1/credits"));
        assert!(FreePaths::parse("").unwrap().is_empty());
        assert!(FreePaths::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn no_spelling_of_another_path_passes_a_prefix() {
        let paths = FreePaths::parse("/api/v1/models/*").unwrap();
        for path in [
            "/api/v1/models/../chat/completions",
            "/api/v1/models/./x",
            "/api/v1/models/%2e%2e/chat/completions",
            "/api/v1/models/a%2Fb",
            "/api/v1/models//chat/completions",
            "/api/v1/models/a/",
            "/api/v1/models/a\\..\\b",
            "/api/v1/models/a b",
            "/API/V1/MODELS/a",
        ] {
            assert!(!paths.contains(path), "{path}");
        }
    }

    #[test]
    fn refuses_entries_that_are_not_plain_or_reach_paid_paths() {
        for (entry, says) in [
            ("/v1/providers", "must start with /api/v1/"),
            ("api/v1/providers", "must start with /api/v1/"),
            ("/api/v1", "must start with /api/v1/"),
            ("/api/v1/", "plain path segments"),
            ("/api/v1//*", "plain path segments"),
            ("/api/v1/a/", "plain path segments"),
            ("/api/v1/a/../chat/completions", "plain path segments"),
            ("/api/v1/a%2e", "plain path segments"),
            ("/api/v1/providers?x=1", "plain path segments"),
            ("/api/v1/a/*/b", "plain path segments"),
            ("/api/v1/*", "reaches /api/v1/chat/completions"),
            ("/api/v1/chat/*", "reaches /api/v1/chat/completions"),
            (
                "/api/v1/chat/completions",
                "reaches /api/v1/chat/completions",
            ),
            (
                "/api/v1/chat/completions/*",
                "reaches /api/v1/chat/completions",
            ),
            ("/api/v1/completions/x", "reaches /api/v1/completions"),
            (
                "/api/v1/chat/completions.json",
                "reaches /api/v1/chat/completions",
            ),
            (
                "/api/v1/Chat/Completions",
                "reaches /api/v1/chat/completions",
            ),
            ("/api/v1/embeddings", "reaches /api/v1/embeddings"),
            ("/api/v1/responses/*", "reaches /api/v1/responses"),
            ("/api/v1/keys/abc", "reaches /api/v1/keys"),
            ("/api/v1/models", "routes itself already"),
            ("/api/v1/key", "routes itself already"),
        ] {
            let err = FreePaths::parse(entry).unwrap_err();
            assert!(err.contains(says), "{entry}: {err}");
        }
        // Below a free built-in route is fine (a model's endpoints).
        assert!(FreePaths::parse("/api/v1/models/*,/api/v1/generation/x").is_ok());
    }
}
