//! Encryption keys: generation, the key file, and `KEYCAP_ENCRYPTION_KEY`.
//!
//! A key is 32 random bytes written as standard base64. A key file holds one key per line: the
//! first line seals, every line opens (older keys stay below the newest after a rotation).
//! Lines starting with `#` are comments.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// One AES-256 key and its public id (the first 8 bytes of a SHA-256 over it, in hex).
#[derive(Clone)]
pub struct SealingKey {
    id: String,
    bytes: Zeroizing<[u8; 32]>,
}

impl SealingKey {
    /// A key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> SealingKey {
        let mut hasher = Sha256::new();
        hasher.update(b"keycap sealing key id");
        hasher.update(bytes);
        let id = hex::encode(&hasher.finalize()[..8]);
        SealingKey {
            id,
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A key from its base64 text form.
    pub fn from_base64(text: &str) -> Result<SealingKey, LoadError> {
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| LoadError::NotBase64)?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| LoadError::WrongLength(decoded.len()))?;
        Ok(SealingKey::from_bytes(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> SealingKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SealingKey::from_bytes(bytes)
    }

    /// The key's public id, stored beside each ciphertext it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The base64 text form, for writing a key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_slice()))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

/// The newest key, which seals, and older ones, which only open.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<SealingKey>,
}

/// Where the keyring came from, so start-up can say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `KEYCAP_ENCRYPTION_KEY`.
    Environment,
    /// An existing key file.
    File(PathBuf),
    /// Generated now and written to this file (mode 0600).
    Generated(PathBuf),
}

/// A keyring and where it came from.
#[derive(Debug)]
pub struct LoadedKeyring {
    /// The keys.
    pub keyring: Keyring,
    /// Their source.
    pub source: KeySource,
}

/// Why the encryption key could not be loaded. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "encryption key is not base64: write 32 random bytes as standard base64 (e.g. `openssl rand -base64 32`)"
    )]
    NotBase64,
    #[error("encryption key is {0} bytes long, not 32: write 32 random bytes as standard base64")]
    WrongLength(usize),
    #[error("key file {path} holds no key")]
    EmptyFile { path: PathBuf },
    #[error("key file {path}, line {line}: {source}")]
    BadLine {
        path: PathBuf,
        line: usize,
        source: Box<LoadError>,
    },
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write a new key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no encryption key: KEYCAP_ENCRYPTION_KEY is not set and the key file {path} does not exist"
    )]
    Missing { path: PathBuf },
    #[error(
        "key file {path} can be read or written by its group or others (mode {mode:o}): make it private with chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
}

impl Keyring {
    /// A keyring of one fresh key, for tests and first runs.
    pub fn generate() -> Keyring {
        Keyring {
            keys: vec![SealingKey::generate()],
        }
    }

    /// A keyring whose only key is given.
    pub fn single(key: SealingKey) -> Keyring {
        Keyring { keys: vec![key] }
    }

    /// Adds an older key that can still open what it sealed.
    pub fn with_older(mut self, key: SealingKey) -> Keyring {
        self.keys.push(key);
        self
    }

    /// The key that seals.
    pub fn current(&self) -> &SealingKey {
        &self.keys[0]
    }

    /// Every key, newest first.
    pub fn keys(&self) -> &[SealingKey] {
        &self.keys
    }

    pub(crate) fn find(&self, id: &str) -> Option<&SealingKey> {
        self.keys.iter().find(|key| key.id == id)
    }

    /// Parses a key file's text: one base64 key per line, newest first.
    pub fn parse_key_file(path: &Path, text: &str) -> Result<Keyring, LoadError> {
        let mut keys = Vec::new();
        for (idx, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = SealingKey::from_base64(line).map_err(|source| LoadError::BadLine {
                path: path.to_path_buf(),
                line: idx + 1,
                source: Box::new(source),
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(LoadError::EmptyFile {
                path: path.to_path_buf(),
            });
        }
        Ok(Keyring { keys })
    }

    /// Loads the keyring: from `env_key` (the value of `KEYCAP_ENCRYPTION_KEY`) when set,
    /// else from `key_file` when it exists (refused when its group or others may read or write
    /// it), else, when `generate` allows it, generates a key into `key_file` (mode 0600).
    pub fn load(
        env_key: Option<&str>,
        key_file: &Path,
        generate: bool,
    ) -> Result<LoadedKeyring, LoadError> {
        if let Some(text) = env_key.filter(|t| !t.trim().is_empty()) {
            let keyring = Keyring::parse_key_file(
                Path::new("KEYCAP_ENCRYPTION_KEY"),
                &text.replace(',', "\n"),
            )?;
            return Ok(LoadedKeyring {
                keyring,
                source: KeySource::Environment,
            });
        }
        // One open file: its mode is checked and its text read from the same handle.
        match fs::File::open(key_file) {
            Ok(mut file) => {
                let read_err = |source| LoadError::Read {
                    path: key_file.to_path_buf(),
                    source,
                };
                let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(LoadError::Exposed {
                        path: key_file.to_path_buf(),
                        mode,
                    });
                }
                let mut text = Zeroizing::new(String::new());
                std::io::Read::read_to_string(&mut file, &mut text).map_err(read_err)?;
                let keyring = Keyring::parse_key_file(key_file, &text)?;
                Ok(LoadedKeyring {
                    keyring,
                    source: KeySource::File(key_file.to_path_buf()),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !generate => {
                Err(LoadError::Missing {
                    path: key_file.to_path_buf(),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let keyring = Keyring::generate();
                write_key_file(key_file, &keyring)?;
                Ok(LoadedKeyring {
                    keyring,
                    source: KeySource::Generated(key_file.to_path_buf()),
                })
            }
            Err(source) => Err(LoadError::Read {
                path: key_file.to_path_buf(),
                source,
            }),
        }
    }
}

/// Writes a keyring to a key file with mode 0600, newest key first. The file must not exist.
pub(crate) fn write_key_file(path: &Path, keyring: &Keyring) -> Result<(), LoadError> {
    let write_err = |source| LoadError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    let mut text = Zeroizing::new(String::from(
        "# keycap encryption keys: the first line seals, every line opens. Keep this file secret.\n",
    ));
    for key in keyring.keys() {
        text.push_str(&key.to_base64());
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_private(path: &Path, text: &str) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_and_a_missing_one_made_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.key");
        let err = Keyring::load(None, &path, false).unwrap_err();
        assert!(matches!(err, LoadError::Missing { .. }), "{err}");
        assert!(!path.exists(), "a key was made though not allowed");
        Keyring::load(None, &path, true).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Keyring::load(None, &path, true).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
            assert!(err.contains(&format!("mode {mode:o}")), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        Keyring::load(None, &path, false).unwrap();
    }

    #[test]
    fn generates_a_private_key_file_on_first_run_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/encryption.key");
        let first = Keyring::load(None, &path, true).unwrap();
        assert_eq!(first.source, KeySource::Generated(path.clone()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = Keyring::load(None, &path, true).unwrap();
        assert_eq!(second.source, KeySource::File(path.clone()));
        assert_eq!(first.keyring.current().id(), second.keyring.current().id());
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.key");
        let key = SealingKey::generate();
        let loaded = Keyring::load(Some(&key.to_base64()), &path, true).unwrap();
        assert_eq!(loaded.source, KeySource::Environment);
        assert_eq!(loaded.keyring.current().id(), key.id());
        assert!(
            !path.exists(),
            "no file is written when the environment holds the key"
        );
    }

    #[test]
    fn bad_keys_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let err = Keyring::load(Some("not base64!"), &path, true).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let err = Keyring::load(Some("c2hvcnQ="), &path, true).unwrap_err();
        assert!(err.to_string().contains("5 bytes long, not 32"), "{err}");
        write_private(&path, "# only a comment\n");
        assert!(matches!(
            Keyring::load(None, &path, true),
            Err(LoadError::EmptyFile { .. })
        ));
        write_private(
            &path,
            &format!("{}\ngarbage\n", SealingKey::generate().to_base64().as_str()),
        );
        let err = Keyring::load(None, &path, true).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn key_files_hold_older_keys_below_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (new, old) = (SealingKey::generate(), SealingKey::generate());
        write_private(
            &path,
            &format!(
                "{}\n{}\n",
                new.to_base64().as_str(),
                old.to_base64().as_str()
            ),
        );
        let loaded = Keyring::load(None, &path, true).unwrap();
        assert_eq!(loaded.keyring.current().id(), new.id());
        assert_eq!(loaded.keyring.keys().len(), 2);
        assert!(loaded.keyring.find(old.id()).is_some());
    }

    #[test]
    fn debug_shows_only_the_id() {
        let key = SealingKey::generate();
        let debug = format!("{key:?} {:?}", Keyring::single(key.clone()));
        assert!(!debug.contains(key.to_base64().as_str()));
        assert!(debug.contains(key.id()));
    }
}
