//! [`Sealed`]: a secret as the vault seals it and the database stores it. The vault makes and
//! opens it; the database only moves its bytes, so both share this one type.

/// A sealed secret as it is stored: the sealing key's id, the nonce and the versioned
/// ciphertext (tag included). `Debug` shows neither nonce nor ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the encryption key that sealed it.
    pub sealing_key_id: String,
    /// The 96-bit nonce, fresh for every seal.
    pub nonce: Vec<u8>,
    /// The vault's ciphertext version byte followed by the AES-256-GCM ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("sealing_key_id", &self.sealing_key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}
