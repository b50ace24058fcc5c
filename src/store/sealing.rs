//! Secrets at rest: webhook signing secrets, ed25519 signing keys, the accounts' HS256
//! user-token secrets and the server's own secrets are stored encrypted (XChaCha20-
//! Poly1305, a random nonce per value) with a key the operator supplies
//! (`REELAY_SECRET_KEY`, `--secret-key-file`) or, without one, a key generated once and
//! kept in a `0600` file beside the database. A copy of the database alone (a backup, a
//! `pg_dump`) does not reveal them.
//!
//! A sealed value is `enc1:` + base64(nonce ‖ ciphertext). A value without that prefix
//! is one stored before encryption: it reads as it is, and is sealed when the store opens.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Result, StoreError};

/// The start of a sealed value.
const SEALED: &str = "enc1:";
/// The file name of a generated key, in the database's directory.
pub const KEY_FILE: &str = "secret.key";
/// Bytes of nonce before the ciphertext.
const NONCE_BYTES: usize = 24;

/// Where the key comes from.
#[derive(Debug, Clone, Default)]
pub enum SecretKey {
    /// Given (`REELAY_SECRET_KEY`): the base64 (or hex) of 32 bytes.
    Given(String),
    /// A file holding it; generated there if the file does not exist.
    File(PathBuf),
    /// Generated once and kept in `secret.key` beside the database (a SQLite file's
    /// directory; with PostgreSQL `./reelay-data/`).
    #[default]
    BesideDatabase,
    /// For commands that never read or write a secret (`reelay migrate`): no key is
    /// loaded or made, and stored secrets are left as they are.
    Unused,
}

/// Encrypts and decrypts stored secrets with the server's key.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Loads (or first generates) the key `source` names; `database_dir` is where a
    /// SQLite database lives.
    pub fn load(source: &SecretKey, database_dir: Option<&Path>) -> Result<Sealer> {
        let key = match source {
            SecretKey::Given(text) => parse_key(text).ok_or_else(|| {
                StoreError::SecretKey(
                    "REELAY_SECRET_KEY must be 32 bytes in base64 (44 characters) or hex (64)"
                        .into(),
                )
            })?,
            SecretKey::File(path) => key_file(path)?,
            SecretKey::BesideDatabase => {
                let dir = database_dir.unwrap_or(Path::new("reelay-data"));
                key_file(&dir.join(KEY_FILE))?
            }
            // Never used to seal or open anything.
            SecretKey::Unused => rand::random(),
        };
        Ok(Sealer::new(&key))
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        // Encrypting a short value in memory cannot fail.
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!("{SEALED}{}", BASE64.encode(sealed))
    }

    /// The plain value of a stored one (sealed, or stored before encryption).
    pub fn open(&self, stored: &str) -> Result<String> {
        let Some(encoded) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_owned());
        };
        let wrong = || {
            StoreError::SecretKey(
                "a stored secret does not decrypt: the server's key (REELAY_SECRET_KEY, \
                 --secret-key-file or secret.key beside the database) is not the one it was \
                 stored with"
                    .into(),
            )
        };
        let bytes = BASE64.decode(encoded).map_err(|_| wrong())?;
        if bytes.len() < NONCE_BYTES {
            return Err(wrong());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| wrong())?;
        String::from_utf8(plain).map_err(|_| wrong())
    }

    pub fn open_optional(&self, stored: Option<String>) -> Result<Option<String>> {
        stored.map(|value| self.open(&value)).transpose()
    }

    /// Whether a stored value is sealed already.
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED)
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = match text.len() {
        64 => (0..32)
            .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?,
        _ => BASE64.decode(text).ok()?,
    };
    bytes.try_into().ok()
}

/// Reads the key in `path`, or generates one there (readable by this user only).
fn key_file(path: &Path) -> Result<[u8; 32]> {
    let failed = |error: std::io::Error| {
        StoreError::SecretKey(format!("the key file {}: {error}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(&text).ok_or_else(|| {
            StoreError::SecretKey(format!(
                "the key file {} must hold 32 bytes in base64 or hex",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(failed)?;
            }
            let key: [u8; 32] = rand::random();
            // Written whole under another name, then linked into place: a process
            // starting at the same time reads the whole key or makes its own link fail.
            let temporary = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)
                .and_then(|mut file| {
                    file.write_all(format!("{}\n", BASE64.encode(key)).as_bytes())?;
                    file.sync_all()
                })
                .and_then(|()| std::fs::hard_link(&temporary, path));
            let _ = std::fs::remove_file(&temporary);
            match written {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "generated the key that encrypts stored secrets");
                    Ok(key)
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => key_file(path),
                Err(error) => Err(failed(error)),
            }
        }
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_key_only() {
        let sealer = Sealer::new(&[7; 32]);
        let sealed = sealer.seal("whsec_abc");
        assert!(Sealer::is_sealed(&sealed));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(sealed, sealer.seal("whsec_abc"), "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed).unwrap(), "whsec_abc");
        assert_eq!(sealer.open("whsec_plain").unwrap(), "whsec_plain");
        assert!(Sealer::new(&[8; 32]).open(&sealed).is_err());
        assert!(sealer.open("enc1:AAAA").is_err());
    }

    #[test]
    fn keys_are_read_in_base64_or_hex_and_generated_once() {
        assert_eq!(parse_key(&BASE64.encode([1u8; 32])), Some([1; 32]));
        assert_eq!(parse_key(&"01".repeat(32)), Some([1; 32]));
        assert_eq!(parse_key("short"), None);
        let dir = std::env::temp_dir().join(format!("reelay-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join(KEY_FILE);
        let first = key_file(&path).unwrap();
        assert_eq!(key_file(&path).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
