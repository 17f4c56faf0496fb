//! The key-encryption key (KEK): every server reads the same 32-byte key at
//! start and uses it to seal signing keys' private halves before they enter
//! the replicated state, with XChaCha20-Poly1305 (random 24-byte nonce, the
//! `kid` as associated data so a sealed key cannot be moved to another kid).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::Kid;

/// KEK errors. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The KEK text is not 32 bytes in hex or base64.
    #[error("key-encryption key must be 32 bytes, given as 64 hex characters or base64")]
    BadFormat,
    /// The sealed key does not open with this KEK (wrong KEK or corrupted).
    #[error("sealed signing key {0} does not open with this key-encryption key")]
    Unseal(Kid),
}

/// The key-encryption key.
#[derive(Clone)]
pub struct Kek {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(fingerprint={})", self.fingerprint)
    }
}

impl Kek {
    /// From 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let fp = Sha256::digest([b"veto-kek-fingerprint:".as_slice(), bytes].concat());
        Self {
            cipher: XChaCha20Poly1305::new(bytes.into()),
            fingerprint: hex::encode(&fp[..8]),
        }
    }

    /// From text: 64 hex characters or standard/url-safe base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, Error> {
        use base64::Engine;
        let t = text.trim();
        let mut raw = [0u8; 32];
        if t.len() == 64 && hex::decode_to_slice(t, &mut raw).is_ok() {
            return Ok(Self::from_bytes(&raw));
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            if let Ok(v) = engine.decode(t) {
                if let Ok(arr) = <[u8; 32]>::try_from(v.as_slice()) {
                    return Ok(Self::from_bytes(&arr));
                }
            }
        }
        Err(Error::BadFormat)
    }

    /// A short public fingerprint, safe to log, to tell KEKs apart.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Seals a 32-byte private key for `kid`: nonce || ciphertext.
    pub fn seal(&self, kid: Kid, secret: &[u8; 32]) -> Vec<u8> {
        let nonce: [u8; 24] = rand::random();
        let aad = kid.0;
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        [nonce.as_slice(), &ct].concat()
    }

    /// Opens a sealed private key.
    pub fn open(&self, kid: Kid, sealed: &[u8]) -> Result<[u8; 32], Error> {
        if sealed.len() < 24 {
            return Err(Error::Unseal(kid));
        }
        let (nonce, ct) = sealed.split_at(24);
        let pt = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &kid.0,
                },
            )
            .map_err(|_| Error::Unseal(kid))?;
        <[u8; 32]>::try_from(pt.as_slice()).map_err(|_| Error::Unseal(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refuse_wrong_kek_or_kid() {
        let kek = Kek::from_bytes(&[9; 32]);
        let kid = Kid([1; 16]);
        let sealed = kek.seal(kid, &[5; 32]);
        assert!(!sealed.windows(32).any(|w| w == [5; 32]));
        assert_eq!(kek.open(kid, &sealed).unwrap(), [5; 32]);
        assert!(Kek::from_bytes(&[8; 32]).open(kid, &sealed).is_err());
        assert!(kek.open(Kid([2; 16]), &sealed).is_err());
        assert!(kek.open(kid, &sealed[..10]).is_err());
    }

    #[test]
    fn parses_hex_and_base64() {
        let hex = "11".repeat(32);
        assert_eq!(
            Kek::parse(&hex).unwrap().fingerprint(),
            Kek::from_bytes(&[0x11; 32]).fingerprint()
        );
        assert!(Kek::parse("ESIzRFVmd4iZqrvM3e7/ABEiM0RVZneImaq7zN3u/wA=").is_ok());
        assert!(Kek::parse("short").is_err());
    }
}
