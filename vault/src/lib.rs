//! The vault: AES-256-GCM sealing of master API keys, and loading of the encryption key.
//!
//! `vault` owns every plaintext secret keycap holds: the encryption keys ([`Keyring`]) and the
//! opened master keys ([`secrecy::SecretString`], zeroized on drop, redacted in `Debug`). It
//! depends only on `domain`; the database stores the [`Sealed`] parts as bytes and never sees a
//! plaintext.
//!
//! Each seal uses a fresh random 96-bit nonce and binds the row it belongs to (org id and
//! master-key id) as associated data, so a ciphertext copied into another row fails to open.
//! Each ciphertext records the id of the encryption key that sealed it, so keys can be rotated:
//! the keyring seals with its newest key and opens with any key it knows.

mod keyring;
mod seal;

pub use keyring::{KeySource, Keyring, LoadError, LoadedKeyring, SealingKey};
pub use seal::{CIPHERTEXT_VERSION, OpenError, Sealed};

/// The last four characters of a secret: all that is ever shown of a master key again.
pub fn last_four(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_four_is_at_most_four_characters() {
        assert_eq!(super::last_four("sk-or-v1-abcd1234"), "1234");
        assert_eq!(super::last_four("ab"), "ab");
        assert_eq!(super::last_four("xé€12"), "é€12");
    }
}
