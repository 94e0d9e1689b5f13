//! Update keys: the signing key (an Ed25519 PKCS#8 document, kept outside the repository) and
//! the list of public keys a device trusts (`/etc/cairn/update-keys` in the image).
//!
//! The trusted-keys file has one key a line: 64 hex digits of the Ed25519 public key, a space,
//! a name for messages (`3f9a…e1 cairn-dev`); `#` starts a comment.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Trusted keys a device may list: a bound on what a trusted-keys file may make us hold.
pub const TRUSTED_KEYS_MAX: usize = 16;

/// An Ed25519 public key.
pub type PublicKey = [u8; PUBLIC_KEY_BYTES];

/// The short form of a key in messages: its first 8 bytes in hex.
pub fn key_id(key: &PublicKey) -> String {
    hex::encode(&key[..8])
}

/// A key that signs bundles.
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new random key, as the PKCS#8 document to store (mode 0600, never in the repository).
    pub fn generate_pkcs8() -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| "cannot generate an Ed25519 key (no system randomness?)".to_string())
    }

    /// The key in a PKCS#8 document (as [`SigningKey::generate_pkcs8`] writes).
    pub fn from_pkcs8(doc: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(doc)
            .map(SigningKey)
            .map_err(|e| format!("not an Ed25519 PKCS#8 signing key ({e})"))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        let mut k = [0; PUBLIC_KEY_BYTES];
        k.copy_from_slice(self.0.public_key().as_ref());
        k
    }

    /// Signs `msg` (deterministic: the same message gives the same signature).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_BYTES] {
        let mut s = [0; SIGNATURE_BYTES];
        s.copy_from_slice(self.0.sign(msg).as_ref());
        s
    }
}

/// The public keys a device accepts bundles from, each with a name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustedKeys {
    keys: Vec<(PublicKey, String)>,
}

impl TrustedKeys {
    /// Parses a trusted-keys file; a bad line is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = TrustedKeys::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (hexkey, name) = line.split_once(' ').unwrap_or((line, ""));
            let mut key = [0; PUBLIC_KEY_BYTES];
            hex::decode_to_slice(hexkey, &mut key).map_err(|_| {
                format!(
                    "line {}: not an Ed25519 public key (64 hex digits): {hexkey}",
                    i + 1
                )
            })?;
            out.add(key, name.trim())?;
        }
        Ok(out)
    }

    /// Adds a key (bounded by [`TRUSTED_KEYS_MAX`]).
    pub fn add(&mut self, key: PublicKey, name: &str) -> Result<(), String> {
        if self.keys.len() >= TRUSTED_KEYS_MAX {
            return Err(format!("more than {TRUSTED_KEYS_MAX} trusted keys"));
        }
        if !self.contains(&key) {
            self.keys.push((key, name.to_string()));
        }
        Ok(())
    }

    /// The file's text for these keys.
    pub fn to_text(&self) -> String {
        self.keys
            .iter()
            .map(|(k, n)| format!("{} {n}\n", hex::encode(k)))
            .collect()
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }

    /// Whether no key is trusted (a device that accepts no update).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `key` is trusted and signed `msg` with `sig`.
    pub fn verify(
        &self,
        key: &PublicKey,
        msg: &[u8],
        sig: &[u8; SIGNATURE_BYTES],
    ) -> Result<(), crate::Refusal> {
        if !self.contains(key) {
            return Err(crate::Refusal::UnknownKey(key_id(key)));
        }
        UnparsedPublicKey::new(&ED25519, key)
            .verify(msg, sig)
            .map_err(|_| crate::Refusal::BadSignature(key_id(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trusted_keys_file_round_trips_and_bad_lines_are_named() {
        let a = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let mut keys = TrustedKeys::default();
        keys.add(a.public(), "dev").unwrap();
        let text = format!("# the keys\n\n{}", keys.to_text());
        assert_eq!(TrustedKeys::parse(&text).unwrap(), keys);
        let err = TrustedKeys::parse("# x\nabcd dev\n").unwrap_err();
        assert!(
            err.starts_with("line 2: not an Ed25519 public key"),
            "{err}"
        );
        assert!(SigningKey::from_pkcs8(b"not a key")
            .err()
            .unwrap()
            .contains("PKCS#8"));
    }

    #[test]
    fn only_a_trusted_key_with_its_own_signature_verifies() {
        let a = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let b = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let mut keys = TrustedKeys::default();
        keys.add(a.public(), "a").unwrap();
        let sig = a.sign(b"msg");
        assert!(keys.verify(&a.public(), b"msg", &sig).is_ok());
        assert!(matches!(
            keys.verify(&a.public(), b"msh", &sig),
            Err(crate::Refusal::BadSignature(_))
        ));
        assert!(matches!(
            keys.verify(&b.public(), b"msg", &b.sign(b"msg")),
            Err(crate::Refusal::UnknownKey(id)) if id == key_id(&b.public())
        ));
    }
}
