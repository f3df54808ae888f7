//! WireGuard key pairs for `peer add --generate` (x25519-dalek, the same
//! crate the agent generates node keys with).

use base64::Engine as _;

/// A fresh key pair as base64 (private, public).
pub fn generate() -> (String, String) {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    (b64(secret.as_bytes()), b64(public.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_keys_are_wireguard_keys_and_differ() {
        let (private, public) = super::generate();
        let (other, _) = super::generate();
        assert_ne!(private, other);
        assert!(public.parse::<trellis_mesh::PublicKey>().is_ok());
        assert_eq!(private.len(), 44);
    }
}
