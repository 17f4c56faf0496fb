//! Per-token usage at the edge: how often each token was verified, when,
//! with what outcome and which scopes the requests required, in bounded
//! memory, until the next report to the server drains it.
//!
//! Only tokens whose signature verified are tracked (their jti is the
//! issuer's, not an attacker's choice); bad signatures, unknown keys and
//! malformed tokens are counted by `veto_verify_total` alone. Memory is
//! bounded by `max_tokens` distinct jtis between two reports; verifies of
//! further tokens are counted in `veto_edge_usage_dropped_total` and lost.
//!
//! The table is split in [`SHARDS`] maps (a count that is not a power of
//! two, so the maps' power-of-two capacities add up to less than one map's
//! would), each behind its own mutex, so verifies on different threads
//! rarely wait for each other.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use veto_core::usage::{Outcomes, UsageDelta};
use veto_core::Jti;
use veto_feed::Outcome;

/// Maps the table is split in.
pub const SHARDS: usize = 40;

/// Distinct scopes remembered as required (bits of [`Entry::scopes`]);
/// requests requiring more distinct scopes than this lose the excess.
pub const MAX_SCOPES: usize = 32;

/// One token's verifies since the last report: 32 bytes with its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    valid: u32,
    revoked: u16,
    refused: u16,
    /// Seconds since the table's epoch (the last drain).
    first: u16,
    last: u16,
    /// Required scopes, as bits of the interned scope list.
    scopes: u32,
}

impl Entry {
    /// Whether one more verify would overflow a counter or a time.
    fn full(&self, t: u16) -> bool {
        self.valid == u32::MAX
            || self.revoked == u16::MAX
            || self.refused == u16::MAX
            || t == u16::MAX
    }
}

/// Hashes a jti by its own bytes. A tracked jti is one the cluster issued
/// at random (only tokens whose signature verified are tracked), so its
/// bytes are already uniform and no caller can choose them to collide;
/// SipHash's flood resistance would buy nothing and cost every verify.
#[derive(Default)]
struct JtiHasher(u64);

impl Hasher for JtiHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Folds each 8-byte word in (the array's length prefix included);
        // the multiply spreads every bit to the top bits the map uses.
        for w in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

type Shard = HashMap<[u8; 16], Entry, BuildHasherDefault<JtiHasher>>;

/// The usage table.
pub struct Usage {
    edge: String,
    shards: Vec<Mutex<Shard>>,
    /// Entries whose counters filled before a drain, kept as deltas.
    spilled: Mutex<Vec<UsageDelta>>,
    len: AtomicUsize,
    max_tokens: usize,
    dropped: AtomicU64,
    /// Unix seconds of the table's epoch.
    epoch: AtomicU64,
    scopes: RwLock<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Usage {
    /// A table for `edge` holding at most `max_tokens` distinct tokens.
    pub fn new(edge: &str, max_tokens: usize, now_unix: i64) -> Self {
        Self {
            edge: edge.to_owned(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            spilled: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            max_tokens,
            dropped: AtomicU64::new(0),
            epoch: AtomicU64::new(now_unix.max(0) as u64),
            scopes: RwLock::new(Vec::new()),
        }
    }

    fn shard(&self, jti: &[u8; 16]) -> &Mutex<Shard> {
        // jtis are random: their first bytes spread evenly.
        let i = u32::from_le_bytes([jti[0], jti[1], jti[2], jti[3]]) as usize % SHARDS;
        &self.shards[i]
    }

    fn scope_bits(&self, required: &[String]) -> u32 {
        if required.is_empty() {
            return 0;
        }
        let mut bits = 0u32;
        let mut missing = Vec::new();
        {
            let known = self.scopes.read().unwrap_or_else(|p| p.into_inner());
            for s in required {
                match known.iter().position(|k| k == s) {
                    Some(i) => bits |= 1 << i,
                    None => missing.push(s),
                }
            }
        }
        if !missing.is_empty() {
            let mut known = self.scopes.write().unwrap_or_else(|p| p.into_inner());
            for s in missing {
                let i = match known.iter().position(|k| k == s) {
                    Some(i) => i,
                    None if known.len() < MAX_SCOPES => {
                        known.push(s.clone());
                        known.len() - 1
                    }
                    None => continue,
                };
                bits |= 1 << i;
            }
        }
        bits
    }

    /// Records one verify of the token `jti` answered `outcome`, whose
    /// request required `required` scopes, at `now_unix`. Verifies whose
    /// signature did not verify are not tracked.
    pub fn record(&self, jti: &Jti, outcome: Outcome, required: &[String], now_unix: i64) {
        let (valid, revoked, refused) = match outcome {
            Outcome::Valid => (1, 0, 0),
            Outcome::Revoked => (0, 1, 0),
            Outcome::Expired
            | Outcome::NotYetValid
            | Outcome::WrongAudience
            | Outcome::InsufficientScope => (0, 0, 1),
            _ => return,
        };
        let epoch = self.epoch.load(Ordering::Relaxed) as i64;
        let t = now_unix.saturating_sub(epoch).clamp(0, u16::MAX as i64) as u16;
        let scopes = self.scope_bits(required);
        let mut shard = lock(self.shard(&jti.0));
        let e = match shard.get_mut(&jti.0) {
            Some(e) => e,
            None => {
                if self.len.load(Ordering::Relaxed) >= self.max_tokens {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.len.fetch_add(1, Ordering::Relaxed);
                shard.entry(jti.0).or_insert(Entry {
                    first: t,
                    ..Entry::default()
                })
            }
        };
        if e.full(t) {
            // Keep the counts exact: move the full entry aside as a delta.
            let full = std::mem::replace(
                e,
                Entry {
                    first: t,
                    ..Entry::default()
                },
            );
            let d = self.delta(jti, &full, epoch);
            lock(&self.spilled).push(d);
        }
        e.valid += valid;
        e.revoked += revoked;
        e.refused += refused;
        e.last = t;
        e.scopes |= scopes;
    }

    fn delta(&self, jti: &Jti, e: &Entry, epoch: i64) -> UsageDelta {
        let known = self.scopes.read().unwrap_or_else(|p| p.into_inner());
        UsageDelta {
            jti: *jti,
            edge: self.edge.clone(),
            outcomes: Outcomes {
                valid: e.valid as u64,
                revoked: e.revoked as u64,
                refused: e.refused as u64,
            },
            first: epoch + e.first as i64,
            last: epoch + e.last as i64,
            scopes: known
                .iter()
                .enumerate()
                .filter(|(i, _)| e.scopes & (1 << i) != 0)
                .map(|(_, s)| s.clone())
                .collect(),
        }
    }

    /// Takes everything recorded since the last drain as deltas and starts
    /// a new epoch at `now_unix`.
    pub fn drain(&self, now_unix: i64) -> Vec<UsageDelta> {
        let epoch = self.epoch.swap(now_unix.max(0) as u64, Ordering::Relaxed) as i64;
        let mut out = std::mem::take(&mut *lock(&self.spilled));
        for s in &self.shards {
            let taken = std::mem::take(&mut *lock(s));
            self.len.fetch_sub(taken.len(), Ordering::Relaxed);
            out.extend(taken.iter().map(|(k, e)| self.delta(&Jti(*k), e, epoch)));
        }
        out
    }

    /// Puts deltas a report could not deliver back (merged with what was
    /// recorded since), so a broken stream loses nothing the table can hold.
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        lock(&self.spilled).extend(deltas);
    }

    /// Distinct tokens recorded since the last drain.
    pub fn tracked(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Verifies not tracked because the table was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Bytes the table's maps hold now (capacity, not just entries): what
    /// the bound costs.
    pub fn allocated_bytes(&self) -> usize {
        let slot = std::mem::size_of::<([u8; 16], Entry)>() + 1;
        self.shards
            .iter()
            .map(|s| lock(s).capacity() * slot)
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_fold_per_token_and_drain_as_exact_deltas() {
        let u = Usage::new("e1", 10, 1000);
        let a = Jti([1; 16]);
        let b = Jti([2; 16]);
        let read = vec!["read".to_owned()];
        for _ in 0..5 {
            u.record(&a, Outcome::Valid, &read, 1003);
        }
        u.record(&a, Outcome::Revoked, &[], 1007);
        u.record(&b, Outcome::InsufficientScope, &["write".to_owned()], 1001);
        u.record(&b, Outcome::BadSignature, &[], 1001);
        assert_eq!(u.tracked(), 2);
        let mut d = u.drain(1010);
        d.sort_by_key(|d| d.jti);
        assert_eq!(d.len(), 2);
        assert_eq!(
            (
                d[0].outcomes.valid,
                d[0].outcomes.revoked,
                d[0].first,
                d[0].last
            ),
            (5, 1, 1003, 1007)
        );
        assert_eq!(d[0].scopes.iter().collect::<Vec<_>>(), vec!["read"]);
        assert_eq!(d[1].outcomes.refused, 1);
        assert_eq!(d[0].edge, "e1");
        assert_eq!(u.tracked(), 0);
        assert!(u.drain(1011).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let u = Usage::new("e1", 3, 0);
        for i in 0..5u8 {
            u.record(&Jti([i; 16]), Outcome::Valid, &[], 1);
        }
        // known tokens still count
        u.record(&Jti([0; 16]), Outcome::Valid, &[], 2);
        assert_eq!((u.tracked(), u.dropped()), (3, 2));
        let total: u64 = u.drain(3).iter().map(|d| d.outcomes.valid).sum();
        assert_eq!(total, 4);
    }

    #[test]
    fn a_full_counter_spills_instead_of_saturating() {
        let u = Usage::new("e1", 3, 0);
        let a = Jti([7; 16]);
        {
            let mut s = lock(u.shard(&a.0));
            s.insert(
                a.0,
                Entry {
                    revoked: u16::MAX,
                    ..Entry::default()
                },
            );
        }
        u.len.fetch_add(1, Ordering::Relaxed);
        u.record(&a, Outcome::Revoked, &[], 5);
        let total: u64 = u.drain(6).iter().map(|d| d.outcomes.revoked).sum();
        assert_eq!(total, u16::MAX as u64 + 1);
    }
}
