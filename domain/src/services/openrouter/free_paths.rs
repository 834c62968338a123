//! Extra paths the operator lets through free of charge (`gateway.extra_free_paths`), beyond
//! the built-in `models` and `generation`: `GET` only, with a valid sub-key, never metered.
//!
//! An entry is an exact path (`/api/v1/providers`) or a prefix ending in `/*`
//! (`/api/v1/models/*`, which lets through `/api/v1/models/openai/gpt-4o/endpoints`). No entry
//! may be, or cover, a path the gateway routes itself, and a request reaches a prefix only
//! through plain segments (letters, digits and `-._~:@`; no `.` or `..` segment, no `%`
//! escape, no empty segment): no spelling of a metered path can pass as a free one.

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
    /// Reads a comma-separated list (empty: none). `routed` are the paths the gateway routes
    /// itself, which no entry may be or cover. The error names the entry and what is wrong.
    pub fn parse(text: &str, routed: &[&str]) -> Result<FreePaths, String> {
        let mut paths = FreePaths::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (path, is_prefix) = match entry.strip_suffix("/*") {
                Some(prefix) => (prefix, true),
                None => (entry, false),
            };
            let rest = match path.strip_prefix(API_PREFIX) {
                Some(rest) => Some(rest),
                // `/api/v1/*`: a prefix with no segment of its own, refused below as covering
                // every routed path.
                None if is_prefix && format!("{path}/") == API_PREFIX => None,
                None => return Err(format!("{entry:?} must start with {API_PREFIX}")),
            };
            if rest.is_some_and(|rest| !plain_segments(rest)) {
                return Err(format!(
                    "{entry:?} must be plain path segments (letters, digits, -._~:@), optionally ending in /*"
                ));
            }
            if is_prefix {
                let prefix = format!("{path}/");
                if let Some(covered) = routed.iter().find(|r| r.starts_with(&prefix)) {
                    return Err(format!(
                        "{entry:?} covers {covered}, which the gateway routes itself"
                    ));
                }
                paths.below.push(prefix);
            } else {
                if routed.contains(&path) {
                    return Err(format!("{entry:?} is a path the gateway routes itself"));
                }
                paths.exact.push(path.to_string());
            }
        }
        Ok(paths)
    }

    /// True when `path` (without its query) is one of the free paths.
    pub fn contains(&self, path: &str) -> bool {
        self.exact.iter().any(|exact| exact == path)
            || self.below.iter().any(|prefix| {
                path.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| !rest.is_empty() && plain_segments(rest))
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

    const ROUTED: &[&str] = &["/api/v1/chat/completions", "/api/v1/models", "/api/v1/key"];

    #[test]
    fn reads_exact_paths_and_prefixes() {
        let paths = FreePaths::parse(" /api/v1/providers , /api/v1/models/* ,", ROUTED).unwrap();
        assert!(paths.contains("/api/v1/providers"));
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
        assert!(!paths.contains("/api/v1/credits"));
        assert!(FreePaths::parse("", ROUTED).unwrap().is_empty());
        assert!(FreePaths::parse(" , ", ROUTED).unwrap().is_empty());
    }

    #[test]
    fn no_spelling_of_another_path_passes_a_prefix() {
        let paths = FreePaths::parse("/api/v1/models/*", ROUTED).unwrap();
        for path in [
            "/api/v1/models/../chat/completions",
            "/api/v1/models/./x",
            "/api/v1/models/%2e%2e/chat/completions",
            "/api/v1/models/a%2Fb",
            "/api/v1/models//chat/completions",
            "/api/v1/models/a/",
            "/api/v1/models/a\\..\\b",
            "/api/v1/models/a b",
        ] {
            assert!(!paths.contains(path), "{path}");
        }
    }

    #[test]
    fn refuses_entries_that_are_not_plain_or_cover_routed_paths() {
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
            ("/api/v1/*", "covers /api/v1/chat/completions"),
            ("/api/v1/chat/*", "covers /api/v1/chat/completions"),
            ("/api/v1/models", "routes itself"),
            ("/api/v1/key", "routes itself"),
        ] {
            let err = FreePaths::parse(entry, ROUTED).unwrap_err();
            assert!(err.contains(says), "{entry}: {err}");
        }
    }
}
