//! The node's WireGuard private key: generated once, kept in a file of mode
//! 0600 under the state directory, never logged, never sent anywhere. Only
//! its public half leaves the node (as an annotation).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use trellis_mesh::PublicKey;
use x25519_dalek::StaticSecret;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the private key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the private key file {path} is not a WireGuard key (44 characters of base64): move it away to have a new key generated")]
    Malformed { path: String },
    #[error("writing the private key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A private key. Its Debug output never shows the key.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    pub fn generate() -> Self {
        PrivateKey(StaticSecret::random_from_rng(rand_core::OsRng).to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as the UAPI protocol writes it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    fn from_base64(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?;
        Some(PrivateKey(bytes.try_into().ok()?))
    }

    /// Loads the key at `path`, or generates one there (mode 0600) when the
    /// file does not exist. A key file readable by others is made private.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = Self::from_base64(&text).ok_or(KeyError::Malformed {
                    path: shown.clone(),
                })?;
                let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
                    path: shown.clone(),
                    source,
                })?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %shown, "private key file was readable by others; setting mode 0600");
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|source| KeyError::Write {
                            path: shown.clone(),
                            source,
                        })?;
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let write = || -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let tmp = path.with_extension("tmp");
                    let _ = std::fs::remove_file(&tmp);
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    file.write_all(key.to_base64().as_bytes())?;
                    file.sync_all()?;
                    std::fs::rename(&tmp, path)
                };
                write().map_err(|source| KeyError::Write {
                    path: shown.clone(),
                    source,
                })?;
                tracing::info!(path = %shown, public_key = %key.public_key(), "generated a new WireGuard key");
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: shown,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let path = dir.join("key");
        let first = PrivateKey::load_or_generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = PrivateKey::load_or_generate(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = PrivateKey::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_base64()) && !shown.contains(&key.to_hex()));
    }

    #[test]
    fn public_key_matches_wireguard() {
        // RFC 7748 test vector (Alice).
        let mut sk = [0u8; 32];
        for (i, b) in "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
            .as_bytes()
            .chunks(2)
            .enumerate()
        {
            sk[i] = u8::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
        }
        assert_eq!(
            PrivateKey(sk).public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn a_malformed_key_file_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "garbage").unwrap();
        let err = PrivateKey::load_or_generate(&path).unwrap_err();
        assert!(err.to_string().contains("not a WireGuard key"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
    }

    #[test]
    fn an_open_key_file_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, PrivateKey::generate().to_base64()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        PrivateKey::load_or_generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
