//! Sealing and opening of one secret.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use secrecy::SecretString;
use uuid::Uuid;
use zeroize::Zeroizing;

pub use domain::Sealed;

use crate::keyring::{Keyring, SealingKey};

/// The first byte of every ciphertext this version writes.
pub const CIPHERTEXT_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"keycap master key v1";

/// Why a sealed secret could not be opened. No variant carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "sealed with encryption key {0}, which this keyring does not hold: add it to the key file as an older key"
    )]
    UnknownKey(String),
    #[error("ciphertext version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("ciphertext is malformed")]
    Malformed,
    #[error(
        "ciphertext failed authentication: wrong encryption key, tampered bytes, or moved from another row"
    )]
    Authentication,
    #[error("secret is not valid UTF-8")]
    NotUtf8,
}

impl Keyring {
    /// Seals `plaintext` for the master key `key_id` of org `org_id` with the newest key.
    pub fn seal(&self, org_id: Uuid, key_id: Uuid, plaintext: &str) -> Sealed {
        seal_with(self.current(), org_id, key_id, plaintext)
    }

    /// Opens a sealed secret of the master key `key_id` of org `org_id`.
    pub fn open(
        &self,
        org_id: Uuid,
        key_id: Uuid,
        sealed: &Sealed,
    ) -> Result<SecretString, OpenError> {
        let key = self
            .find(&sealed.sealing_key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.sealing_key_id.clone()))?;
        let (version, body) = sealed
            .ciphertext
            .split_first()
            .ok_or(OpenError::Malformed)?;
        if *version != CIPHERTEXT_VERSION {
            return Err(OpenError::UnsupportedVersion(*version));
        }
        if sealed.nonce.len() != 12 {
            return Err(OpenError::Malformed);
        }
        let aad = associated_data(org_id, key_id);
        let cipher = Aes256Gcm::new(key.bytes().into());
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&sealed.nonce),
                    Payload {
                        msg: body,
                        aad: &aad,
                    },
                )
                .map_err(|_| OpenError::Authentication)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| OpenError::NotUtf8)?;
        Ok(SecretString::from(text.to_string()))
    }

    /// Opens with whatever key sealed it and seals again with the newest key: the step of a
    /// rotation. The plaintext never leaves this function.
    pub fn reseal(&self, org_id: Uuid, key_id: Uuid, sealed: &Sealed) -> Result<Sealed, OpenError> {
        use secrecy::ExposeSecret;
        let secret = self.open(org_id, key_id, sealed)?;
        Ok(self.seal(org_id, key_id, secret.expose_secret()))
    }
}

fn seal_with(key: &SealingKey, org_id: Uuid, key_id: Uuid, plaintext: &str) -> Sealed {
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let aad = associated_data(org_id, key_id);
    let cipher = Aes256Gcm::new(key.bytes().into());
    let body = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad: &aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail below its 64 GiB limit");
    let mut ciphertext = Vec::with_capacity(1 + body.len());
    ciphertext.push(CIPHERTEXT_VERSION);
    ciphertext.extend_from_slice(&body);
    Sealed {
        sealing_key_id: key.id().to_string(),
        nonce: nonce.to_vec(),
        ciphertext,
    }
}

fn associated_data(org_id: Uuid, key_id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 32);
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(org_id.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const SECRET: &str = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn round_trip() {
        let keyring = Keyring::generate();
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = keyring.seal(org, key, SECRET);
        assert_eq!(sealed.ciphertext[0], CIPHERTEXT_VERSION);
        assert!(
            !sealed
                .ciphertext
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes())
        );
        assert_eq!(
            keyring.open(org, key, &sealed).unwrap().expose_secret(),
            SECRET
        );
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let keyring = Keyring::generate();
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let a = keyring.seal(org, key, SECRET);
        let b = keyring.seal(org, key, SECRET);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn wrong_key_fails() {
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = Keyring::generate().seal(org, key, SECRET);
        let other = Keyring::generate();
        assert!(matches!(
            other.open(org, key, &sealed),
            Err(OpenError::UnknownKey(_))
        ));
        // Same id claimed, different key bytes: authentication fails.
        let forged = Sealed {
            sealing_key_id: other.current().id().to_string(),
            ..sealed
        };
        assert_eq!(
            other.open(org, key, &forged).err(),
            Some(OpenError::Authentication)
        );
    }

    #[test]
    fn ciphertext_moved_to_another_row_fails() {
        let keyring = Keyring::generate();
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = keyring.seal(org, key, SECRET);
        assert_eq!(
            keyring.open(Uuid::new_v4(), key, &sealed).err(),
            Some(OpenError::Authentication)
        );
        assert_eq!(
            keyring.open(org, Uuid::new_v4(), &sealed).err(),
            Some(OpenError::Authentication)
        );
    }

    #[test]
    fn tampered_bytes_fail() {
        let keyring = Keyring::generate();
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = keyring.seal(org, key, SECRET);
        for at in 1..sealed.ciphertext.len() {
            let mut tampered = sealed.clone();
            tampered.ciphertext[at] ^= 0x01;
            assert_eq!(
                keyring.open(org, key, &tampered).err(),
                Some(OpenError::Authentication),
                "byte {at}"
            );
        }
        let mut bad_nonce = sealed.clone();
        bad_nonce.nonce[0] ^= 0x80;
        assert_eq!(
            keyring.open(org, key, &bad_nonce).err(),
            Some(OpenError::Authentication)
        );
        let mut bad_version = sealed.clone();
        bad_version.ciphertext[0] = 9;
        assert_eq!(
            keyring.open(org, key, &bad_version).err(),
            Some(OpenError::UnsupportedVersion(9))
        );
        let truncated = Sealed {
            ciphertext: vec![],
            ..sealed
        };
        assert_eq!(
            keyring.open(org, key, &truncated).err(),
            Some(OpenError::Malformed)
        );
    }

    #[test]
    fn rotation_opens_old_and_seals_new() {
        let old = Keyring::generate();
        let (org, key) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed_old = old.seal(org, key, SECRET);
        let rotated = Keyring::generate().with_older(old.current().clone());
        assert_eq!(
            rotated.open(org, key, &sealed_old).unwrap().expose_secret(),
            SECRET
        );
        let resealed = rotated.reseal(org, key, &sealed_old).unwrap();
        assert_eq!(resealed.sealing_key_id, rotated.current().id());
        assert_ne!(resealed.sealing_key_id, sealed_old.sealing_key_id);
        assert_eq!(
            rotated.open(org, key, &resealed).unwrap().expose_secret(),
            SECRET
        );
    }
}
