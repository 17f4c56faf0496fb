//! Token usage as the control plane keeps it: per jti, how often and when
//! edges verified it, which edges, with what outcome, and which scopes the
//! requests required.
//!
//! Edges aggregate verifies in memory and send deltas over their feed
//! stream; servers fold the deltas of many edges into one
//! [`crate::Command::RecordUsage`] per interval, so the Raft cost is bounded
//! by the interval, not by the verify rate. Records live and die with their
//! token records (a sweep drops both). No token string is ever part of it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::Jti;

pub mod packed;

/// Edges named per record at most; later ones are counted, not named.
pub const MAX_EDGES_PER_TOKEN: usize = 16;

/// What verifies of one token answered, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// Answered valid.
    pub valid: u64,
    /// Refused because the token (or its subject, family or key) is revoked:
    /// a use attempt of a revoked token.
    pub revoked: u64,
    /// Refused for another reason (expired, scope, audience, not yet valid).
    pub refused: u64,
}

impl Outcomes {
    /// Every verify counted.
    pub fn total(&self) -> u64 {
        self.valid
            .saturating_add(self.revoked)
            .saturating_add(self.refused)
    }

    fn add(&mut self, o: &Outcomes) {
        self.valid = self.valid.saturating_add(o.valid);
        self.revoked = self.revoked.saturating_add(o.revoked);
        self.refused = self.refused.saturating_add(o.refused);
    }
}

/// One edge's verifies of one token since its last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDelta {
    /// The token.
    pub jti: Jti,
    /// The edge that verified it.
    pub edge: String,
    /// Verifies by outcome.
    pub outcomes: Outcomes,
    /// First verify in this delta (unix seconds, the edge's clock).
    pub first: i64,
    /// Last verify in this delta.
    pub last: i64,
    /// Scopes the requests required (a subset of what was asked).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub scopes: BTreeSet<String>,
}

/// A token's usage as replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Verifies by outcome.
    pub outcomes: Outcomes,
    /// First verify seen (unix seconds, an edge's clock).
    pub first_used: i64,
    /// Last verify seen.
    pub last_used: i64,
    /// Edges that verified it (at most [`MAX_EDGES_PER_TOKEN`]).
    pub edges: BTreeSet<String>,
    /// Scopes requests required of it.
    pub scopes_required: BTreeSet<String>,
}

impl UsageRecord {
    /// Folds a delta in.
    pub fn fold(&mut self, d: &UsageDelta) {
        let fresh = self.outcomes.total() == 0;
        self.outcomes.add(&d.outcomes);
        self.first_used = if fresh {
            d.first
        } else {
            self.first_used.min(d.first)
        };
        self.last_used = self.last_used.max(d.last);
        if self.edges.len() < MAX_EDGES_PER_TOKEN || self.edges.contains(&d.edge) {
            self.edges.insert(d.edge.clone());
        }
        self.scopes_required.extend(d.scopes.iter().cloned());
    }

    /// Granted scopes no request required: what least privilege would drop.
    pub fn unused_scopes<'a>(&self, granted: &'a [String]) -> Vec<&'a String> {
        granted
            .iter()
            .filter(|s| !self.scopes_required.contains(*s))
            .collect()
    }
}

/// Usage across the live tokens (see `State::usage_totals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Active tokens (not revoked, not expired).
    pub active: u64,
    /// Active tokens verified valid at least once.
    pub used: u64,
    /// Active tokens never verified valid.
    pub never_used: u64,
    /// Used active tokens every granted scope of which some request required.
    pub least_privilege: u64,
    /// Use attempts of revoked tokens, over the recorded tokens.
    pub revoked_attempts: u64,
    /// Verifies recorded, over the recorded tokens.
    pub verifies: u64,
}

impl UsageTotals {
    /// The share of used active tokens that are least-privilege (1 when
    /// none is used yet).
    pub fn least_privilege_ratio(&self) -> f64 {
        if self.used == 0 {
            1.0
        } else {
            self.least_privilege as f64 / self.used as f64
        }
    }
}

/// The usage records of the state.
pub type UsageMap = BTreeMap<Jti, UsageRecord>;

/// Merges `delta` into a pending batch keyed by (jti, edge), as a server
/// does with the reports of its edges between two flushes.
pub fn merge_pending(pending: &mut BTreeMap<(Jti, String), UsageDelta>, delta: UsageDelta) {
    match pending.get_mut(&(delta.jti, delta.edge.clone())) {
        Some(p) => {
            p.outcomes.add(&delta.outcomes);
            p.first = p.first.min(delta.first);
            p.last = p.last.max(delta.last);
            p.scopes.extend(delta.scopes);
        }
        None => {
            pending.insert((delta.jti, delta.edge.clone()), delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        edge: &str,
        valid: u64,
        revoked: u64,
        first: i64,
        last: i64,
        scopes: &[&str],
    ) -> UsageDelta {
        UsageDelta {
            jti: Jti([1; 16]),
            edge: edge.into(),
            outcomes: Outcomes {
                valid,
                revoked,
                refused: 0,
            },
            first,
            last,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn folding_adds_counts_widens_times_and_names_edges_up_to_the_bound() {
        let mut r = UsageRecord::default();
        r.fold(&d("e1", 3, 0, 100, 110, &["read"]));
        r.fold(&d("e2", 2, 1, 90, 105, &[]));
        assert_eq!(r.outcomes.total(), 6);
        assert_eq!((r.first_used, r.last_used), (90, 110));
        assert_eq!(r.edges.len(), 2);
        let granted = vec!["read".to_owned(), "write".to_owned()];
        assert_eq!(r.unused_scopes(&granted), vec![&granted[1]]);
        for i in 0..40 {
            r.fold(&d(&format!("x{i}"), 1, 0, 120, 120, &[]));
        }
        assert_eq!(r.edges.len(), MAX_EDGES_PER_TOKEN);
        assert_eq!(r.outcomes.valid, 45);
        let mut pending = BTreeMap::new();
        merge_pending(&mut pending, d("e1", 1, 0, 5, 6, &["a"]));
        merge_pending(&mut pending, d("e1", 2, 0, 4, 9, &["b"]));
        merge_pending(&mut pending, d("e2", 1, 0, 5, 6, &[]));
        assert_eq!(pending.len(), 2);
        let p = &pending[&(Jti([1; 16]), "e1".to_owned())];
        assert_eq!(
            (p.outcomes.valid, p.first, p.last, p.scopes.len()),
            (3, 4, 9, 2)
        );
    }
}
