//! Sub-key tokens: `kc_` followed by 48 hex digits (192 random bits).
//!
//! A token is shown once; the database keeps only its SHA-256 hash and a short display prefix.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every sub-key token starts with this.
pub const TOKEN_PREFIX: &str = "kc_";
const RANDOM_BYTES: usize = 24;
const DISPLAY_CHARS: usize = 8;

/// A sub-key token in plaintext. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyToken(String);

/// Why a string is not a sub-key token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("key does not start with kc_: use a keycap sub-key")]
    WrongPrefix,
    #[error("key has the wrong length or characters: copy the whole sub-key")]
    Malformed,
}

impl ApiKeyToken {
    /// A fresh random token.
    pub fn generate() -> ApiKeyToken {
        let mut bytes = [0u8; RANDOM_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        ApiKeyToken(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
    }

    /// Checks the shape of a token presented by a client.
    pub fn parse(text: &str) -> Result<ApiKeyToken, TokenError> {
        check_shape(text)?;
        Ok(ApiKeyToken(text.to_string()))
    }

    /// The plaintext, to be shown exactly once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 hash under which the token is stored and looked up.
    pub fn hash(&self) -> [u8; 32] {
        hash_token(&self.0)
    }

    /// The short prefix shown in lists (`kc_1a2b3c4d`).
    pub fn display_prefix(&self) -> String {
        self.0
            .chars()
            .take(TOKEN_PREFIX.len() + DISPLAY_CHARS)
            .collect()
    }
}

/// Checks the shape of a presented token without copying it: `kc_` and 48 lower-case hex
/// digits.
pub fn check_shape(text: &str) -> Result<(), TokenError> {
    let Some(body) = text.strip_prefix(TOKEN_PREFIX) else {
        return Err(TokenError::WrongPrefix);
    };
    // Every byte is checked, without an early exit: the loop is then cheap to vectorise, and it
    // runs on every request.
    let all_lower_hex = body.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b))
    });
    if body.len() != RANDOM_BYTES * 2 || !all_lower_hex {
        return Err(TokenError::Malformed);
    }
    Ok(())
}

/// 256 random bits as 64 hex digits: the secret of a session, an invite link, a setup link or
/// an admin token. Like a sub-key token, only its [`hash_token`] is ever stored.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Every admin token (the JSON API's) starts with this.
pub const ADMIN_TOKEN_PREFIX: &str = "kca_";
/// Every metrics token (`GET /metrics` only) starts with this: a prefix of its own, so that
/// nothing that takes admin tokens ever looks one up.
pub const METRICS_TOKEN_PREFIX: &str = "kcm_";

/// A new admin or metrics token (`prefix` and a [`random_secret`]), and its display prefix.
pub fn admin_token(prefix: &str) -> (String, String) {
    let token = format!("{prefix}{}", random_secret());
    let display = token.chars().take(12).collect();
    (token, display)
}

/// SHA-256 of a presented token string, valid or not.
pub fn hash_token(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl fmt::Debug for ApiKeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyToken({}…)", self.display_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = ApiKeyToken::generate();
        let b = ApiKeyToken::generate();
        assert_ne!(a, b);
        assert_eq!(ApiKeyToken::parse(a.expose()), Ok(a.clone()));
        assert_eq!(a.display_prefix().len(), 11);
        assert!(a.expose().starts_with(&a.display_prefix()));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn rejects_malformed_tokens() {
        let cases = [
            ("sk-or-v1-abc", TokenError::WrongPrefix),
            ("kc_", TokenError::Malformed),
            ("kc_zz", TokenError::Malformed),
            (
                "kc_ABCDEF0123456789abcdef0123456789abcdef0123456789",
                TokenError::Malformed,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(ApiKeyToken::parse(text), Err(expected), "{text}");
        }
        // The right length, with one bad byte anywhere (every byte is checked).
        let good = "0123456789abcdef".repeat(3);
        for at in [0, 23, 47] {
            for bad in ["g", "G", "/", ":", "`", "-", " "] {
                let text = format!("kc_{}{bad}{}", &good[..at], &good[at + 1..]);
                assert_eq!(
                    ApiKeyToken::parse(&text),
                    Err(TokenError::Malformed),
                    "{text}"
                );
            }
        }
        assert!(ApiKeyToken::parse(&format!("kc_{good}")).is_ok());
    }

    #[test]
    fn debug_redacts() {
        let token = ApiKeyToken::generate();
        let debug = format!("{token:?}");
        assert!(!debug.contains(token.expose()));
    }
}
