//! What edges must learn from the replicated log.
//!
//! Edges hold only what verification needs: public keys with a valid/refused
//! flag, token revocations, subject cutoffs and family revocations. Each
//! applied command yields zero or more [`EdgeChange`]s, derived from the
//! command and the state right after apply (so they carry values, like a
//! token's `exp`, that the command itself does not). A snapshot for an edge
//! is the list of changes that rebuilds the same view from nothing.

use serde::{Deserialize, Serialize};

use crate::command::{Command, Response};
use crate::state::KeyState;
use crate::{Jti, Kid, State};

/// One change an edge applies, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeChange {
    /// A public key edges must accept tokens from.
    KeyPublished {
        /// Key id.
        kid: Kid,
        /// Ed25519 public key.
        public: [u8; 32],
    },
    /// A key that edges must refuse (retired or revoked).
    KeyRefused {
        /// Key id.
        kid: Kid,
    },
    /// A token refused once its grace period (usually none) has passed,
    /// counted on the edge's monotonic clock: the edge's wall clock plays
    /// no part in a revocation's effect.
    TokenRevoked {
        /// Token id.
        jti: Jti,
        /// Token expiry (the entry is dropped after it).
        exp: i64,
        /// The leader's time from which the token is refused; informational
        /// (and what edges of earlier versions compare with their clock).
        effective_at: i64,
        /// Milliseconds the token stays valid after the change's commit
        /// (a refresh's grace); 0 refuses it as soon as it is applied.
        #[serde(default)]
        grace_ms: u64,
    },
    /// Tokens of `sub` with `iat <= before` or `rev < before_revision` are
    /// refused.
    SubjectRevoked {
        /// Subject.
        sub: String,
        /// Inclusive cutoff on `iat`; `i64::MIN` for none.
        before: i64,
        /// Dropped after this time.
        drop_after: i64,
        /// Tokens signed before the issuer had applied this revision are
        /// refused (0: none).
        #[serde(default)]
        before_revision: u64,
    },
    /// Every token of the family is refused.
    FamilyRevoked {
        /// Family id.
        family: Jti,
        /// Dropped after this time.
        drop_after: i64,
    },
    /// Entries whose exp / drop_after is at or before `cutoff` are dropped.
    Swept {
        /// Cutoff.
        cutoff: i64,
    },
}

impl State {
    /// Applies `cmd` and returns the response with the changes edges need.
    pub fn apply_for_edges(&mut self, revision: u64, cmd: &Command) -> (Response, Vec<EdgeChange>) {
        let resp = self.apply(revision, cmd);
        let changed = matches!(
            resp,
            Response::Issued { .. }
                | Response::Revoked { already: false, .. }
                | Response::KeyChanged { .. }
                | Response::Swept { .. }
        );
        if !changed {
            return (resp, Vec::new());
        }
        let mut out = Vec::new();
        match cmd.untraced() {
            Command::Issue { .. }
            | Command::ActivateKey { .. }
            | Command::RewrapKey { .. }
            | Command::SetIssuerPolicy { .. }
            | Command::SetRotationPolicy { .. }
            | Command::RecordUsage { .. }
            | Command::Traced { .. } => {}
            Command::Refresh {
                predecessor, at, ..
            } => {
                if let Some(r) = self.token_revocation(predecessor) {
                    // The grace as a duration, both ends stamped by the same
                    // leader clock: the edge counts it on its own.
                    let grace_s = r.effective_at.saturating_sub(*at).max(0);
                    out.push(EdgeChange::TokenRevoked {
                        jti: *predecessor,
                        exp: r.exp,
                        effective_at: r.effective_at,
                        grace_ms: (grace_s as u64).saturating_mul(1000),
                    });
                }
            }
            Command::RevokeToken { jti, .. } => {
                if let Some(r) = self.token_revocation(jti) {
                    out.push(EdgeChange::TokenRevoked {
                        jti: *jti,
                        exp: r.exp,
                        effective_at: r.effective_at,
                        grace_ms: 0,
                    });
                }
            }
            Command::RevokeSubject { sub, .. } => {
                if let Some(c) = self.subject_cutoff(sub) {
                    out.push(EdgeChange::SubjectRevoked {
                        sub: sub.clone(),
                        before: c.before,
                        drop_after: c.drop_after,
                        before_revision: c.before_revision,
                    });
                }
            }
            Command::RevokeFamily { family, .. } => {
                if let Some(c) = self.family_revocation(family) {
                    out.push(EdgeChange::FamilyRevoked {
                        family: *family,
                        drop_after: c.drop_after,
                    });
                }
            }
            Command::RevokeSelector { selector, .. } => {
                for (jti, r) in self.revoked_by_selector(selector, revision) {
                    out.push(EdgeChange::TokenRevoked {
                        jti,
                        exp: r.exp,
                        effective_at: r.effective_at,
                        grace_ms: 0,
                    });
                }
            }
            Command::PublishKey { kid, public, .. } => out.push(EdgeChange::KeyPublished {
                kid: *kid,
                public: *public,
            }),
            Command::RetireKey { kid, .. } | Command::RevokeKey { kid, .. } => {
                out.push(EdgeChange::KeyRefused { kid: *kid })
            }
            Command::Sweep { cutoff } => out.push(EdgeChange::Swept { cutoff: *cutoff }),
        }
        (resp, out)
    }

    /// The changes that rebuild an edge's view of this state from nothing.
    ///
    /// A revocation still in its grace period is sent as immediate: the
    /// snapshot carries no clock-free way to say how much of the grace is
    /// left, and refusing a refreshed token early is the safe direction.
    pub fn edge_snapshot(&self) -> Vec<EdgeChange> {
        let mut out = Vec::new();
        if self.swept_through() > 0 {
            out.push(EdgeChange::Swept {
                cutoff: self.swept_through(),
            });
        }
        for k in self.keys() {
            out.push(EdgeChange::KeyPublished {
                kid: k.kid,
                public: k.public,
            });
            if !k.state.accepts_tokens() {
                out.push(EdgeChange::KeyRefused { kid: k.kid });
            }
        }
        for (jti, r) in self.revoked_tokens_iter() {
            out.push(EdgeChange::TokenRevoked {
                jti: *jti,
                exp: r.exp,
                effective_at: r.effective_at,
                grace_ms: 0,
            });
        }
        for (sub, c) in self.revoked_subjects_iter() {
            out.push(EdgeChange::SubjectRevoked {
                sub: sub.clone(),
                before: c.before,
                drop_after: c.drop_after,
                before_revision: c.before_revision,
            });
        }
        for (fam, c) in self.revoked_families_iter() {
            out.push(EdgeChange::FamilyRevoked {
                family: *fam,
                drop_after: c.drop_after,
            });
        }
        out
    }
}

/// Whether a key state is one edges accept (re-exported for edge code).
pub fn key_accepts(state: KeyState) -> bool {
    state.accepts_tokens()
}
