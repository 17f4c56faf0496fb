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
//! The [`Table`] is plain data with no lock of its own: the edge keeps it
//! beside its replica, under the replica's mutex, which every verify holds
//! already. A verify is recorded while that lock is held, at the cost of one
//! hash-map update (no atomic operation, no second lock); a report takes
//! the table's maps out under the lock ([`Table::take`], a swap of
//! [`SHARDS`] pointers) and turns them into deltas after releasing it
//! ([`Taken::into_deltas`]). [`Tracker`] is that lock discipline, for the
//! edge's report task and for tests.
//!
//! The table is split in [`SHARDS`] maps, a count that is not a power of
//! two, so the maps' power-of-two capacities add up to less than one map's
//! would (one map of 1,000,000 entries takes 2^21 slots, 40 maps take 40 ×
//! 2^15).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

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

/// A jti as two words: hashed in one step, 8-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Key {
    fn of(jti: &Jti) -> Self {
        let (a, b) = jti.0.split_at(8);
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        Key(word(a), word(b))
    }

    fn jti(self) -> Jti {
        let mut j = [0u8; 16];
        j[..8].copy_from_slice(&self.0.to_le_bytes());
        j[8..].copy_from_slice(&self.1.to_le_bytes());
        Jti(j)
    }

    fn shard(self) -> usize {
        // jtis are random: any of their bits spread evenly.
        (self.1 % SHARDS as u64) as usize
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 ^ self.1.rotate_left(32));
    }
}

/// Hashes a [`Key`] by its own bits. A tracked jti is one the cluster
/// issued at random (only tokens whose signature verified are tracked), so
/// its bits are already uniform and no caller can choose them to collide;
/// SipHash's flood resistance would buy nothing and cost every verify.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, w: u64) {
        // The multiply carries the low bits into the top bits the map's
        // tags use.
        self.0 = (self.0 ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; correct for any other input all the same.
        for w in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            self.write_u64(self.0.rotate_left(5) ^ u64::from_le_bytes(b));
        }
    }
}

type Shard = HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>;

/// Verifies queued before [`Table::flush`] folds them in: 24 bytes each.
pub const BATCH: usize = 128;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Valid,
    Revoked,
    Refused,
}

/// One queued verify.
#[derive(Debug, Clone, Copy)]
struct Queued {
    key: Key,
    scopes: u32,
    t: u16,
    kind: Kind,
}

/// The usage table: plain data, kept under the lock its owner already
/// holds on every verify.
#[derive(Debug)]
pub struct Table {
    edge: String,
    shards: Vec<Shard>,
    /// Verifies not folded into `shards` yet.
    batch: Vec<Queued>,
    /// Entries whose counters filled before a drain, and deltas a report
    /// could not deliver, kept as deltas.
    spilled: Vec<UsageDelta>,
    len: usize,
    max_tokens: usize,
    dropped: u64,
    /// Unix seconds of the table's epoch.
    epoch: i64,
    /// Interned required scopes (bit i of an entry is `scopes[i]`).
    scopes: Vec<String>,
}

/// What [`Table::take`] took out: turned into deltas by
/// [`Taken::into_deltas`], away from the lock.
#[derive(Debug)]
pub struct Taken {
    edge: String,
    shards: Vec<Shard>,
    spilled: Vec<UsageDelta>,
    epoch: i64,
    scopes: Vec<String>,
}

fn delta(edge: &str, scopes: &[String], key: Key, e: &Entry, epoch: i64) -> UsageDelta {
    UsageDelta {
        jti: key.jti(),
        edge: edge.to_owned(),
        outcomes: Outcomes {
            valid: e.valid as u64,
            revoked: e.revoked as u64,
            refused: e.refused as u64,
        },
        first: epoch + e.first as i64,
        last: epoch + e.last as i64,
        scopes: scopes
            .iter()
            .enumerate()
            .filter(|(i, _)| e.scopes & (1 << i) != 0)
            .map(|(_, s)| s.clone())
            .collect(),
    }
}

impl Taken {
    /// The deltas, each naming the table's edge.
    pub fn into_deltas(self) -> Vec<UsageDelta> {
        let edge = &self.edge;
        let n = self.spilled.len() + self.shards.iter().map(|s| s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(n);
        out.extend(self.spilled);
        for s in &self.shards {
            out.extend(
                s.iter()
                    .map(|(k, e)| delta(edge, &self.scopes, *k, e, self.epoch)),
            );
        }
        out
    }
}

impl Table {
    /// A table for `edge` holding at most `max_tokens` distinct tokens, its
    /// epoch at `now_unix`.
    pub fn new(edge: &str, max_tokens: usize, now_unix: i64) -> Self {
        Self {
            edge: edge.to_owned(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            batch: Vec::with_capacity(BATCH),
            spilled: Vec::new(),
            len: 0,
            max_tokens,
            dropped: 0,
            epoch: now_unix.max(0),
            scopes: Vec::new(),
        }
    }

    fn scope_bits(&mut self, required: &[String]) -> u32 {
        let mut bits = 0u32;
        for s in required {
            let i = match self.scopes.iter().position(|k| k == s) {
                Some(i) => i,
                None if self.scopes.len() < MAX_SCOPES => {
                    self.scopes.push(s.clone());
                    self.scopes.len() - 1
                }
                None => continue,
            };
            bits |= 1 << i;
        }
        bits
    }

    /// Records one verify of the token `jti` answered `outcome`, whose
    /// request required `required` scopes, at `now_unix`. Verifies whose
    /// signature did not verify are not tracked.
    ///
    /// The verify is queued in a small batch (3 KB, which stays in the
    /// CPU's nearest cache) and folded into the maps [`BATCH`] at a time
    /// by [`Table::flush`]. A token's entry is rarely still cached when the
    /// token comes again (each verify brings a token and a signature-cache
    /// line in from memory); folding many at once lets the CPU fetch the
    /// entries in parallel instead of waiting for one per verify.
    #[inline]
    pub fn record(&mut self, jti: &Jti, outcome: Outcome, required: &[String], now_unix: i64) {
        let kind = match outcome {
            Outcome::Valid => Kind::Valid,
            Outcome::Revoked => Kind::Revoked,
            Outcome::Expired
            | Outcome::NotYetValid
            | Outcome::WrongAudience
            | Outcome::InsufficientScope => Kind::Refused,
            _ => return,
        };
        let t = now_unix
            .saturating_sub(self.epoch)
            .clamp(0, u16::MAX as i64) as u16;
        let scopes = if required.is_empty() {
            0
        } else {
            self.scope_bits(required)
        };
        self.batch.push(Queued {
            key: Key::of(jti),
            scopes,
            t,
            kind,
        });
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    /// Folds the queued verifies into the maps.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        // First every lookup, whose results nothing waits for, so that
        // their cache misses overlap; then the updates, on cached lines.
        let mut hits = 0usize;
        for q in &batch {
            hits += usize::from(self.shards[q.key.shard()].contains_key(&q.key));
        }
        std::hint::black_box(hits);
        for q in &batch {
            self.apply(q);
        }
        batch.clear();
        self.batch = batch;
    }

    fn apply(&mut self, q: &Queued) {
        let (valid, revoked, refused) = match q.kind {
            Kind::Valid => (1, 0, 0),
            Kind::Revoked => (0, 1, 0),
            Kind::Refused => (0, 0, 1),
        };
        let e = match self.shards[q.key.shard()].get_mut(&q.key) {
            Some(e) if !e.full(q.t) => e,
            _ => return self.apply_slow(q.key, q.t, (valid, revoked, refused, q.scopes)),
        };
        e.valid += valid;
        e.revoked += revoked;
        e.refused += refused;
        e.last = e.last.max(q.t);
        e.scopes |= q.scopes;
    }

    /// A token not in the table yet, or whose entry is full.
    #[cold]
    fn apply_slow(
        &mut self,
        key: Key,
        t: u16,
        (valid, revoked, refused, scopes): (u32, u16, u16, u32),
    ) {
        let fresh = Entry {
            valid,
            revoked,
            refused,
            first: t,
            last: t,
            scopes,
        };
        let shard = &mut self.shards[key.shard()];
        if let Some(e) = shard.get_mut(&key) {
            // Full: keep the counts exact by moving it aside as a delta.
            let full = std::mem::replace(e, fresh);
            let d = delta(&self.edge, &self.scopes, key, &full, self.epoch);
            self.spilled.push(d);
            return;
        }
        if self.len >= self.max_tokens {
            self.dropped += 1;
            return;
        }
        self.len += 1;
        shard.insert(key, fresh);
    }

    /// Takes everything recorded since the last drain and starts a new
    /// epoch at `now_unix`: O([`SHARDS`]), for use under the owner's lock.
    pub fn take(&mut self, now_unix: i64) -> Taken {
        self.flush();
        let epoch = std::mem::replace(&mut self.epoch, now_unix.max(0));
        self.len = 0;
        Taken {
            edge: self.edge.clone(),
            shards: self.shards.iter_mut().map(std::mem::take).collect(),
            spilled: std::mem::take(&mut self.spilled),
            epoch,
            scopes: self.scopes.clone(),
        }
    }

    /// Takes everything as deltas (see [`Table::take`]).
    pub fn drain(&mut self, now_unix: i64) -> Vec<UsageDelta> {
        self.take(now_unix).into_deltas()
    }

    /// Puts deltas a report could not deliver back (merged with what was
    /// recorded since), so a broken stream loses nothing the table can hold.
    pub fn restore(&mut self, deltas: Vec<UsageDelta>) {
        self.spilled.extend(deltas);
    }

    /// Distinct tokens recorded since the last drain.
    pub fn tracked(&mut self) -> usize {
        self.flush();
        self.len
    }

    /// Verifies not tracked because the table was full, since start.
    pub fn dropped(&mut self) -> u64 {
        self.flush();
        self.dropped
    }

    /// Bytes the table's maps hold now (capacity, not just entries): what
    /// the bound costs.
    pub fn allocated_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, Entry)>() + 1;
        self.shards
            .iter()
            .map(|s| s.capacity() * slot)
            .sum::<usize>()
    }
}

/// An edge's usage table, reached through the edge's lock: what the report
/// task and tests use. Each call takes the lock once.
#[derive(Clone, Copy)]
pub struct Tracker<'a> {
    pub(crate) edge: &'a crate::EdgeHandle,
}

impl Tracker<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> Option<T> {
        self.edge.local().usage.as_mut().map(f)
    }

    /// [`Table::record`].
    pub fn record(&self, jti: &Jti, outcome: Outcome, required: &[String], now_unix: i64) {
        self.with(|t| t.record(jti, outcome, required, now_unix));
    }

    /// [`Table::drain`], the deltas built after the lock is released.
    pub fn drain(&self, now_unix: i64) -> Vec<UsageDelta> {
        self.with(|t| t.take(now_unix))
            .map(Taken::into_deltas)
            .unwrap_or_default()
    }

    /// [`Table::restore`].
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        self.with(|t| t.restore(deltas));
    }

    /// [`Table::tracked`].
    pub fn tracked(&self) -> usize {
        self.with(|t| t.tracked()).unwrap_or(0)
    }

    /// [`Table::dropped`].
    pub fn dropped(&self) -> u64 {
        self.with(|t| t.dropped()).unwrap_or(0)
    }

    /// [`Table::allocated_bytes`].
    pub fn allocated_bytes(&self) -> usize {
        self.with(|t| t.allocated_bytes()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_fold_per_token_and_drain_as_exact_deltas() {
        let mut u = Table::new("e1", 10, 1000);
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
                d[0].jti,
                d[0].outcomes.valid,
                d[0].outcomes.revoked,
                d[0].first,
                d[0].last
            ),
            (a, 5, 1, 1003, 1007)
        );
        assert_eq!(d[0].scopes.iter().collect::<Vec<_>>(), vec!["read"]);
        assert_eq!((d[1].jti, d[1].outcomes.refused), (b, 1));
        assert_eq!(d[1].scopes.iter().collect::<Vec<_>>(), vec!["write"]);
        assert_eq!(d[0].edge, "e1");
        assert_eq!(u.tracked(), 0);
        assert!(u.drain(1011).is_empty());
        // The new epoch: times count from the drain.
        u.record(&a, Outcome::Valid, &[], 1012);
        assert_eq!(u.drain(1013)[0].first, 1012);
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_drops() {
        let mut u = Table::new("e1", 3, 0);
        for i in 0..5u8 {
            u.record(&Jti([i; 16]), Outcome::Valid, &[], 1);
        }
        // known tokens still count
        u.record(&Jti([0; 16]), Outcome::Valid, &[], 2);
        assert_eq!((u.tracked(), u.dropped()), (3, 2));
        let total: u64 = u.drain(3).iter().map(|d| d.outcomes.valid).sum();
        assert_eq!(total, 4);
        // A drain frees the room.
        u.record(&Jti([4; 16]), Outcome::Valid, &[], 4);
        assert_eq!((u.tracked(), u.dropped()), (1, 2));
    }

    #[test]
    fn a_full_counter_spills_instead_of_saturating() {
        let mut u = Table::new("e1", 3, 0);
        let a = Jti([7; 16]);
        let k = Key::of(&a);
        u.shards[k.shard()].insert(
            k,
            Entry {
                revoked: u16::MAX,
                ..Entry::default()
            },
        );
        u.len += 1;
        u.record(&a, Outcome::Revoked, &[], 5);
        u.flush();
        let d = u.drain(6);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|d| d.jti == a && d.edge == "e1"));
        let total: u64 = d.iter().map(|d| d.outcomes.revoked).sum();
        assert_eq!(total, u16::MAX as u64 + 1);
    }

    #[test]
    fn batches_fold_exactly_across_flushes_and_the_bound() {
        // 5 tokens fit; 7 are verified, 3 * BATCH + 5 times in all, so the
        // records cross several flushes.
        let mut u = Table::new("e1", 5, 100);
        let n = 3 * BATCH as u64 + 5;
        let at = |i: u64| 100 + (i / BATCH as u64) as i64;
        for i in 0..n {
            let j = Jti([(i % 7) as u8 + 1; 16]);
            let o = if i % 3 == 0 {
                Outcome::Revoked
            } else {
                Outcome::Valid
            };
            u.record(&j, o, &[], at(i));
        }
        let seen: Vec<u64> = (0..7)
            .map(|k| (0..n).filter(|i| i % 7 == k).count() as u64)
            .collect();
        let last: Vec<i64> = (0..7)
            .map(|k| (0..n).filter(|i| i % 7 == k).map(at).max().unwrap_or(0))
            .collect();
        let d = u.drain(200);
        assert_eq!(d.len(), 5);
        let kept: u64 = d
            .iter()
            .map(|d| d.outcomes.valid + d.outcomes.revoked)
            .sum();
        assert_eq!(kept + u.dropped(), n);
        for x in &d {
            let k = (x.jti.0[0] - 1) as usize;
            assert_eq!(x.outcomes.valid + x.outcomes.revoked, seen[k]);
            assert_eq!((x.first, x.last), (100, last[k]));
        }
    }

    #[test]
    fn keys_round_trip_and_spread_over_the_shards() {
        let mut seen = [0usize; SHARDS];
        for i in 0..4000u32 {
            let mut j = [0u8; 16];
            // distinct, uniform-looking jtis
            let x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            j[..8].copy_from_slice(&x.to_le_bytes());
            j[8..].copy_from_slice(&x.rotate_left(17).to_be_bytes());
            let k = Key::of(&Jti(j));
            assert_eq!(k.jti(), Jti(j));
            seen[k.shard()] += 1;
        }
        // 100 per shard expected.
        assert!(seen.iter().all(|&n| (50..200).contains(&n)), "{seen:?}");
    }
}
