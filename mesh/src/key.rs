//! WireGuard public keys: 32 bytes, written as standard padded base64 (44
//! characters), as `wg` prints them.

use std::fmt;
use std::str::FromStr;

use base64::Engine;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error(
        "{0:?} is not a WireGuard key: expected 44 characters of base64 (as `wg pubkey` prints)"
    )]
    Malformed(String),
}

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The key as lowercase hex, as the UAPI protocol writes keys.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form of the UAPI protocol.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Malformed(text.to_string());
        if text.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(PublicKey(key))
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if trimmed.len() != 44 {
            return Err(KeyError::Malformed(text.to_string()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .map_err(|_| KeyError::Malformed(text.to_string()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Malformed(text.to_string()))?;
        Ok(PublicKey(key))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A WireGuard preshared key (32 bytes). Its `Debug` never shows the key:
/// plans and observations are logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PresharedKey(pub [u8; 32]);

impl PresharedKey {
    /// Parses the base64 form `wg genpsk` prints.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        PublicKey::from_str(text).map(|k| PresharedKey(k.0))
    }

    /// Parses the hex form of the UAPI protocol.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        PublicKey::from_hex(text).map(|k| PresharedKey(k.0))
    }

    pub fn to_hex(&self) -> String {
        PublicKey(self.0).to_hex()
    }

    pub fn to_base64(&self) -> String {
        PublicKey(self.0).to_base64()
    }

    /// The all-zero key a device reports for "no preshared key".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn a_preshared_key_never_shows_in_debug() {
        let psk = PresharedKey::from_base64(KEY).unwrap();
        assert_eq!(format!("{psk:?}"), "PresharedKey(<redacted>)");
        assert_eq!(psk.to_base64(), KEY);
        assert_eq!(PresharedKey::from_hex(&psk.to_hex()).unwrap(), psk);
        assert!(!psk.is_zero());
        assert!(PresharedKey::from_base64("short").is_err());
    }

    #[test]
    fn base64_and_hex_round_trip() {
        let key: PublicKey = KEY.parse().unwrap();
        assert_eq!(key.to_string(), KEY);
        assert_eq!(PublicKey::from_hex(&key.to_hex()).unwrap(), key);
        assert_eq!(key.to_hex().len(), 64);
    }

    #[test]
    fn malformed_keys_are_refused_with_a_hint() {
        for bad in [
            "",
            "abc",
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8yk",
            "!!!!9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw==",
        ] {
            let err = bad.parse::<PublicKey>().unwrap_err();
            assert!(err.to_string().contains("44 characters"), "{bad}");
        }
        assert!(PublicKey::from_hex("zz").is_err());
        assert!(PublicKey::from_hex(&"g".repeat(64)).is_err());
    }
}
