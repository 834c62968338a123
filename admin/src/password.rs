//! Passwords: argon2id hashes in PHC string format, computed off the async workers, as many
//! at once as there are cores: each takes argon2's 19 MiB and a core, and unbounded, 500
//! parallel sign-ins took about 10 GB.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Argon2 runs at once, at most.
fn permits() -> std::sync::Arc<tokio::sync::Semaphore> {
    static PERMITS: OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = OnceLock::new();
    PERMITS
        .get_or_init(|| std::sync::Arc::new(tokio::sync::Semaphore::new(cores())))
        .clone()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Argon2 runs in progress now, and the most there have been at once.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Runs `work` on a blocking thread once a permit is free (waiting requests hold no argon2
/// memory).
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    // The permit moves into the blocking work: a request dropped while argon2 runs (its client
    // hung up) does not free it before argon2 ends.
    let permit = permits().acquire_owned().await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let running = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(running, Ordering::SeqCst);
        let out = work();
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        out
    })
    .await
}

/// Hashes a password with argon2id and a fresh salt.
pub async fn hash(password: SecretString) -> Result<String, AppError> {
    bounded(move || {
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
    bounded(move || {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_argon2_runs_at_once_than_cores() {
        let stored = hash(SecretString::from("correct-horse-battery"))
            .await
            .unwrap();
        let cores = cores();
        let checks: Vec<_> = (0..4 * cores + 4)
            .map(|_| {
                let stored = stored.clone();
                tokio::spawn(verify(
                    SecretString::from("correct-horse-battery"),
                    Some(stored),
                ))
            })
            .collect();
        for check in checks {
            assert!(check.await.unwrap().unwrap());
        }
        let peak = PEAK.load(Ordering::SeqCst);
        assert!((1..=cores).contains(&peak), "{peak} at once, {cores} cores");
    }
}
