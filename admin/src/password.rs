//! Passwords: argon2id hashes in PHC string format, computed off the async workers.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use secrecy::{ExposeSecret, SecretString};

use crate::error::AppError;

/// The shortest password accepted.
pub const MIN_CHARS: usize = 10;
/// The longest password accepted (argon2 would take longer ones, but nobody types them).
pub const MAX_CHARS: usize = 256;

/// Why a new password is refused, or `None` when it is acceptable.
pub fn problem(password: &str) -> Option<String> {
    let n_chars = password.chars().count();
    if n_chars < MIN_CHARS {
        Some(format!("use at least {MIN_CHARS} characters"))
    } else if n_chars > MAX_CHARS {
        Some(format!("use at most {MAX_CHARS} characters"))
    } else {
        None
    }
}

/// Hashes a password with argon2id and a fresh salt.
pub async fn hash(password: SecretString) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|err| AppError::Internal(format!("hashing a password: {err}")))
    })
    .await
    .map_err(|err| AppError::Internal(format!("hashing a password: {err}")))?
}

/// Checks a password against a stored hash. A malformed stored hash counts as a mismatch.
pub async fn verify(password: SecretString, stored: Option<String>) -> Result<bool, AppError> {
    tokio::task::spawn_blocking(move || {
        // With no stored hash, verify against a hash nobody knows the password of, so that
        // unknown and known addresses take the same time.
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| dummy_hash().to_string());
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        matches && known
    })
    .await
    .map_err(|err| AppError::Internal(format!("checking a password: {err}")))
}

/// The argon2id hash of a random password nobody knows, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let password = domain::token::random_secret();
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .unwrap_or_default()
    })
}
