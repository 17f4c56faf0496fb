//! The edge replica: ordered apply, freshness from probes, and verify.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use veto_core::token::{self, Leeway, Requirements};
use veto_core::{Claims, EdgeChange, Jti, Kid};

use crate::cache::SigCache;

/// Changes in `(from, to]`, each with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The revision the batch starts after.
    pub from: u64,
    /// The revision the replica is at after applying it.
    pub to: u64,
    /// Changes in revision order.
    pub changes: Vec<(u64, EdgeChange)>,
}

/// Why a batch was refused. The caller resyncs (snapshot) on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The batch does not start where the replica is.
    #[error("revision gap: replica at {have}, batch starts after {from}")]
    Gap {
        /// Replica revision.
        have: u64,
        /// Batch start.
        from: u64,
    },
    /// Revisions inside the batch are not increasing within `(from, to]`.
    #[error("batch revisions out of order")]
    OutOfOrder,
    /// A public key is not a valid Ed25519 point.
    #[error("bad public key for {0}")]
    BadKey(Kid),
}

/// What to do outside the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Refuse to answer (`STALE`).
    #[default]
    FailClosed,
    /// Answer, marking the answer stale.
    FailOpen,
}

/// Verification outcome (mirrors `veto.v1.Outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Valid,
    /// Not a well-formed veto token (or over the size limit).
    Malformed,
    /// Signature does not verify.
    BadSignature,
    /// Key unknown, retired or revoked.
    UnknownKey,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// Audience mismatch.
    WrongAudience,
    /// Missing a required scope.
    InsufficientScope,
    /// Revoked (token, subject or family).
    Revoked,
    /// Outside the propagation bound (fail-closed).
    Stale,
}

impl Outcome {
    /// Every outcome in declaration order: `Outcome::ALL[o as usize] == o`.
    pub const ALL: [Outcome; 10] = [
        Outcome::Valid,
        Outcome::Malformed,
        Outcome::BadSignature,
        Outcome::UnknownKey,
        Outcome::Expired,
        Outcome::NotYetValid,
        Outcome::WrongAudience,
        Outcome::InsufficientScope,
        Outcome::Revoked,
        Outcome::Stale,
    ];

    /// A stable snake_case name (metric labels, logs).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Valid => "valid",
            Outcome::Malformed => "malformed",
            Outcome::BadSignature => "bad_signature",
            Outcome::UnknownKey => "unknown_key",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::WrongAudience => "wrong_audience",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::Revoked => "revoked",
            Outcome::Stale => "stale",
        }
    }
}

/// The answer to one verify.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// Human-readable detail; never contains the token.
    pub reason: String,
    /// Claims, when the signature verified.
    pub claims: Option<Claims>,
    /// Answered outside the bound (fail-open only).
    pub stale: bool,
    /// The signing key, when the signature verified.
    pub kid: Option<Kid>,
}

impl Verdict {
    fn no(
        outcome: Outcome,
        reason: impl Into<String>,
        claims: Option<Claims>,
        stale: bool,
    ) -> Self {
        Self {
            outcome,
            reason: reason.into(),
            claims,
            stale,
            kid: None,
        }
    }

    fn signed_by(mut self, kid: Kid) -> Self {
        self.kid = Some(kid);
        self
    }
}

/// Freshness as of a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Age of the freshness proof, if any.
    pub age: Option<Duration>,
    /// Whether `age <= bound`.
    pub fresh: bool,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    vk: VerifyingKey,
    refused: bool,
}

const MAX_OUTSTANDING_PROBES: usize = 256;

/// A revoked token: refused from `refuse_from` on this replica's monotonic
/// clock (`None`: refused now), kept until its `exp`.
#[derive(Debug, Clone, Copy)]
struct TokenEntry {
    exp: i64,
    refuse_from: Option<Instant>,
}

/// A subject's cutoffs: tokens with `iat <= before` or `rev <
/// before_revision` are refused.
#[derive(Debug, Clone, Copy)]
struct SubjectEntry {
    before: i64,
    before_revision: u64,
    drop_after: i64,
}

/// The edge replica.
#[derive(Debug)]
pub struct Replica {
    revision: u64,
    keys: HashMap<Kid, KeyEntry>,
    tokens: HashMap<Jti, TokenEntry>,
    subjects: HashMap<String, SubjectEntry>,
    families: HashMap<Jti, i64>,
    /// Tokens with `exp` at or before this have expired on the cluster's
    /// clock (the highest sweep applied): refused whatever this edge's wall
    /// clock says, since their revocations may have been swept.
    expired_through: i64,
    leeway: Leeway,
    cache: SigCache,
    probes: VecDeque<(u64, Instant)>,
    pending: VecDeque<(Instant, u64)>,
    fresh_at: Option<Instant>,
    bound: Duration,
    policy: Policy,
    max_token_bytes: usize,
}

impl Replica {
    /// An empty replica with bound `bound`.
    pub fn new(bound: Duration, policy: Policy, sig_cache: usize, max_token_bytes: usize) -> Self {
        Self {
            revision: 0,
            keys: HashMap::new(),
            tokens: HashMap::new(),
            subjects: HashMap::new(),
            families: HashMap::new(),
            expired_through: 0,
            leeway: Leeway::default(),
            cache: SigCache::new(sig_cache),
            probes: VecDeque::new(),
            pending: VecDeque::new(),
            fresh_at: None,
            bound,
            policy,
            max_token_bytes,
        }
    }

    /// Sets the wall-clock tolerance for `nbf`/`iat` and `exp`.
    pub fn with_leeway(mut self, leeway: Leeway) -> Self {
        self.leeway = leeway;
        self
    }

    /// The wall-clock tolerance in force.
    pub fn leeway(&self) -> Leeway {
        self.leeway
    }

    /// Revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The configured bound.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Number of live token revocations held.
    pub fn revocations(&self) -> usize {
        self.tokens.len() + self.subjects.len() + self.families.len()
    }

    /// Number of keys known.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Applies a batch in order, or refuses it whole.
    ///
    /// A revocation with a grace period is refused from `fresh_at + grace`:
    /// `fresh_at` was proven by a probe answered at a revision below every
    /// change in this batch, so each of them was committed after that probe
    /// was sent, and the grace (a duration, stamped by one leader clock)
    /// ends no later on this edge than it does on the leader. With no proof
    /// yet, the grace is not granted at all.
    pub fn apply(&mut self, b: &Batch) -> Result<(), Error> {
        if b.from != self.revision {
            return Err(Error::Gap {
                have: self.revision,
                from: b.from,
            });
        }
        if b.to < b.from {
            return Err(Error::OutOfOrder);
        }
        let mut prev = b.from;
        for (rev, _) in &b.changes {
            if *rev <= b.from || *rev > b.to || *rev < prev {
                return Err(Error::OutOfOrder);
            }
            prev = *rev;
        }
        // Validate keys before touching state: apply is all or nothing.
        for (_, c) in &b.changes {
            if let EdgeChange::KeyPublished { kid, public } = c {
                VerifyingKey::from_bytes(public).map_err(|_| Error::BadKey(*kid))?;
            }
        }
        let committed_after = self.fresh_at;
        for (_, c) in &b.changes {
            self.apply_change(c, committed_after);
        }
        self.revision = b.to;
        self.promote_pending();
        Ok(())
    }

    /// Replaces the whole view with a snapshot at `revision`.
    pub fn install_snapshot(&mut self, revision: u64, changes: &[EdgeChange]) -> Result<(), Error> {
        for c in changes {
            if let EdgeChange::KeyPublished { kid, public } = c {
                VerifyingKey::from_bytes(public).map_err(|_| Error::BadKey(*kid))?;
            }
        }
        self.keys.clear();
        self.tokens.clear();
        self.subjects.clear();
        self.families.clear();
        self.expired_through = 0;
        self.cache.clear();
        // A snapshot says nothing about when its revocations were
        // committed: grace periods still running are not granted.
        for c in changes {
            self.apply_change(c, None);
        }
        self.revision = revision;
        self.promote_pending();
        Ok(())
    }

    fn apply_change(&mut self, c: &EdgeChange, committed_after: Option<Instant>) {
        match c {
            EdgeChange::KeyPublished { kid, public } => {
                if let Ok(vk) = VerifyingKey::from_bytes(public) {
                    self.keys
                        .entry(*kid)
                        .or_insert(KeyEntry { vk, refused: false });
                }
            }
            EdgeChange::KeyRefused { kid } => {
                if let Some(k) = self.keys.get_mut(kid) {
                    k.refused = true;
                }
            }
            EdgeChange::TokenRevoked {
                jti, exp, grace_ms, ..
            } => {
                let refuse_from = match (*grace_ms, committed_after) {
                    (0, _) | (_, None) => None,
                    (g, Some(t)) => t.checked_add(Duration::from_millis(g)),
                };
                let e = self.tokens.entry(*jti).or_insert(TokenEntry {
                    exp: *exp,
                    refuse_from,
                });
                // The earlier refusal wins; `None` (now) is the earliest.
                e.refuse_from = match (e.refuse_from, refuse_from) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                e.exp = e.exp.max(*exp);
            }
            EdgeChange::SubjectRevoked {
                sub,
                before,
                drop_after,
                before_revision,
            } => {
                let e = self.subjects.entry(sub.clone()).or_insert(SubjectEntry {
                    before: *before,
                    before_revision: *before_revision,
                    drop_after: *drop_after,
                });
                e.before = e.before.max(*before);
                e.before_revision = e.before_revision.max(*before_revision);
                e.drop_after = e.drop_after.max(*drop_after);
            }
            EdgeChange::FamilyRevoked { family, drop_after } => {
                let d = self.families.entry(*family).or_insert(*drop_after);
                *d = (*d).max(*drop_after);
            }
            EdgeChange::Swept { cutoff } => {
                self.expired_through = self.expired_through.max(*cutoff);
                self.tokens.retain(|_, e| e.exp > *cutoff);
                self.subjects.retain(|_, e| e.drop_after > *cutoff);
                self.families.retain(|_, d| *d > *cutoff);
            }
        }
    }

    // ---- freshness ----

    /// Records that probe `nonce` was sent at `at` on the current stream.
    pub fn probe_sent(&mut self, nonce: u64, at: Instant) {
        if self.probes.len() >= MAX_OUTSTANDING_PROBES {
            self.probes.pop_front();
        }
        self.probes.push_back((nonce, at));
    }

    /// Handles `SyncReply{nonce, revision}`. Returns false for an unknown nonce.
    pub fn sync_reply(&mut self, nonce: u64, revision: u64) -> bool {
        let Some(pos) = self.probes.iter().position(|(n, _)| *n == nonce) else {
            return false;
        };
        let sent = self.probes[pos].1;
        // Replies arrive in order on a stream: older probes are superseded.
        self.probes.drain(..=pos);
        if revision <= self.revision {
            self.mark_fresh(sent);
        } else {
            if self.pending.len() >= MAX_OUTSTANDING_PROBES {
                self.pending.pop_front();
            }
            self.pending.push_back((sent, revision));
        }
        true
    }

    /// Forgets outstanding probes (the stream they were sent on is gone).
    /// `fresh_at` stays: it was proven.
    pub fn reset_stream(&mut self) {
        self.probes.clear();
        self.pending.clear();
    }

    fn mark_fresh(&mut self, sent: Instant) {
        if self.fresh_at.is_none_or(|f| sent > f) {
            self.fresh_at = Some(sent);
        }
    }

    fn promote_pending(&mut self) {
        while let Some(&(sent, rev)) = self.pending.front() {
            if rev > self.revision {
                break;
            }
            self.pending.pop_front();
            self.mark_fresh(sent);
        }
    }

    /// The send time of the newest answered-and-applied probe.
    pub fn fresh_at(&self) -> Option<Instant> {
        self.fresh_at
    }

    /// Freshness at `now`.
    pub fn freshness(&self, now: Instant) -> Freshness {
        let age = self.fresh_at.map(|f| now.saturating_duration_since(f));
        Freshness {
            age,
            fresh: age.is_some_and(|a| a <= self.bound),
        }
    }

    // ---- verify ----

    /// Verifies `token` at local monotonic time `now` and unix time
    /// `now_unix`. Revocations are judged on `now` alone; `now_unix` is
    /// compared (with the leeway) only with the token's `exp`, `nbf`, `iat`.
    pub fn verify(
        &mut self,
        token_str: &str,
        req: &Requirements<'_>,
        now: Instant,
        now_unix: i64,
    ) -> Verdict {
        let stale = !self.freshness(now).fresh;
        if stale && self.policy == Policy::FailClosed {
            return Verdict::no(
                Outcome::Stale,
                "edge cannot prove it is within the propagation bound",
                None,
                false,
            );
        }
        let parsed = match token::parse(token_str, self.max_token_bytes) {
            Ok(p) => p,
            Err(e) => return Verdict::no(Outcome::Malformed, e.to_string(), None, stale),
        };
        let Some(key) = self.keys.get(&parsed.kid) else {
            return Verdict::no(
                Outcome::UnknownKey,
                format!("unknown signing key {}", parsed.kid),
                None,
                stale,
            );
        };
        if key.refused {
            return Verdict::no(
                Outcome::UnknownKey,
                format!("signing key {} is retired or revoked", parsed.kid),
                None,
                stale,
            );
        }
        let ck = SigCache::key(&parsed.kid.0, parsed.signing_input, &parsed.signature);
        if !self.cache.contains(&ck) {
            if parsed.verify_signature(&key.vk).is_err() {
                return Verdict::no(Outcome::BadSignature, "bad signature", None, stale);
            }
            self.cache.insert(ck);
        }
        let (c, kid) = (parsed.claims, parsed.kid);
        if let Some(reason) = self.revoked(&c, now) {
            return Verdict::no(Outcome::Revoked, reason, Some(c), stale).signed_by(kid);
        }
        if c.exp <= self.expired_through {
            let reason = format!("expired at {} (on the cluster's clock)", c.exp);
            return Verdict::no(Outcome::Expired, reason, Some(c), stale).signed_by(kid);
        }
        if let Err(e) = token::check_claims(&c, now_unix, req, self.leeway) {
            let o = match e {
                token::Error::Expired(_) => Outcome::Expired,
                token::Error::NotYetValid(_) => Outcome::NotYetValid,
                token::Error::WrongAudience | token::Error::AudienceRequired => {
                    Outcome::WrongAudience
                }
                token::Error::InsufficientScope => Outcome::InsufficientScope,
                _ => Outcome::Malformed,
            };
            return Verdict::no(o, e.to_string(), Some(c), stale).signed_by(kid);
        }
        Verdict {
            outcome: Outcome::Valid,
            reason: String::new(),
            claims: Some(c),
            stale,
            kid: Some(kid),
        }
    }

    fn revoked(&self, c: &Claims, now: Instant) -> Option<String> {
        if self.families.contains_key(&c.fam) {
            return Some(format!("family {} revoked", c.fam));
        }
        if let Some(s) = self.subjects.get(&c.sub) {
            if c.iat <= s.before || c.rev < s.before_revision {
                return Some("subject revoked".into());
            }
        }
        if let Some(t) = self.tokens.get(&c.jti) {
            if t.refuse_from.is_none_or(|at| now >= at) {
                return Some("token revoked".into());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
