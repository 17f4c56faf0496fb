//! A bounded cache of verified signatures, so a repeated token skips Ed25519.
//!
//! Two generations of at most `capacity / 2` entries each: inserts go to the
//! young generation; when it is full the old one is dropped and the young one
//! becomes old. Lookups hit either. Memory is bounded and every operation is
//! O(1) without per-entry bookkeeping.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// Cache key: SHA-256 of `kid || signing input || signature`.
pub type Key = [u8; 32];

/// A bounded set of verified (kid, signing input, signature) triples.
#[derive(Debug)]
pub struct SigCache {
    young: HashSet<Key>,
    old: HashSet<Key>,
    half: usize,
}

impl SigCache {
    /// A cache holding up to `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> Self {
        let half = capacity / 2;
        Self {
            young: HashSet::with_capacity(half),
            old: HashSet::new(),
            half,
        }
    }

    /// The cache key of a signature over `input` under `kid`.
    pub fn key(kid: &[u8], input: &[u8], sig: &[u8]) -> Key {
        let mut h = Sha256::new();
        h.update(kid);
        h.update(input);
        h.update(sig);
        h.finalize().into()
    }

    /// Whether this exact signature was verified before.
    pub fn contains(&self, k: &Key) -> bool {
        self.young.contains(k) || self.old.contains(k)
    }

    /// Records a verified signature.
    pub fn insert(&mut self, k: Key) {
        if self.half == 0 {
            return;
        }
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(self.half);
        }
        self.young.insert(k);
    }

    /// Forgets everything (e.g. when a key is refused).
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_remembers_recent() {
        let mut c = SigCache::new(4);
        for i in 0u8..10 {
            c.insert([i; 32]);
            assert!(c.len() <= 4);
            assert!(c.contains(&[i; 32]));
        }
        assert!(!c.contains(&[0; 32]));
        let mut off = SigCache::new(0);
        off.insert([1; 32]);
        assert!(!off.contains(&[1; 32]));
    }
}
