//! Who is calling: the `Authorization: Bearer` key mapped to the master key,
//! a key created through `/keys`, or the management key. Every refusal with
//! 401 is counted in [`MockState::n_unauthorized`].

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::state::MockState;

/// The key behind a request that passed authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The configured master (inference) key.
    Master,
    /// A key created through `POST /keys`, named by its hash.
    Created {
        /// The key's hex SHA-256.
        hash: String,
    },
    /// The configured management key.
    Management,
}

/// The hex SHA-256 of a key, which `/keys/{hash}` uses as its name.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The bearer token of the request, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    Some(token)
}

impl MockState {
    /// Accepts the master key and enabled, unexpired created keys: the keys
    /// that may run inference.
    pub(crate) fn authenticate_inference(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let caller = self.authenticate(headers, "No auth credentials found")?;
        match caller {
            Caller::Management => {
                Err(self.refuse("Management keys cannot be used for inference requests"))
            }
            Caller::Created { ref hash } => {
                let now = OffsetDateTime::now_utc();
                match self.key_state(hash) {
                    Some((false, expires_at)) if expires_at.is_none_or(|at| at > now) => Ok(caller),
                    Some((false, _)) => Err(self.refuse("API key has expired")),
                    _ => Err(self.refuse("User not found.")),
                }
            }
            Caller::Master => Ok(caller),
        }
    }

    /// Accepts only the management key: 401 without a known key, 403 with
    /// an inference key.
    pub(crate) fn authenticate_management(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match self.authenticate(headers, "Missing Authentication header")? {
            Caller::Management => Ok(()),
            Caller::Master | Caller::Created { .. } => Err(ApiError::management_only()),
        }
    }

    /// Accepts any known key, as `GET /key` and `GET /generation` do.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        missing_message: &str,
    ) -> Result<Caller, ApiError> {
        let Some(token) = bearer_token(headers) else {
            return Err(self.refuse(missing_message));
        };
        let config = self.config();
        if token == config.master_key {
            return Ok(Caller::Master);
        }
        if token == config.management_key {
            return Ok(Caller::Management);
        }
        let hash = key_hash(token);
        if self.key_state(&hash).is_some() {
            return Ok(Caller::Created { hash });
        }
        Err(self.refuse("User not found."))
    }

    /// Counts one refused attempt and builds its 401.
    fn refuse(&self, message: &str) -> ApiError {
        self.count_unauthorized();
        ApiError::unauthorized(message).with_error_type("authentication")
    }
}
