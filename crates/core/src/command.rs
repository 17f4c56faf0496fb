//! Replicated commands and the state machine's responses.
//!
//! A command carries everything apply needs: the leader stamps the time
//! (`at`, unix seconds), fresh ids and derived bounds before proposing, so
//! apply stays a pure function.

use serde::{Deserialize, Serialize};

use crate::{Jti, Kid};

/// Who asked for a change, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Actor(pub String);

/// The metadata of a newly signed token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Token id.
    pub jti: Jti,
    /// Subject.
    pub sub: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Optional audience.
    pub aud: Option<String>,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
    /// Rotation family.
    pub fam: Jti,
    /// Signing key.
    pub kid: Kid,
    /// Revision the leader had applied when it signed (the token's `rev`).
    #[serde(default)]
    pub rev: u64,
    /// Who answers for the token (a team, a service, a person); the
    /// issuing actor when the request names none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// What the token is for, in the issuer's words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `key=value` labels (e.g. `version=1.4`), for listing and revoking
    /// by selector.
    #[serde(default, skip_serializing_if = "crate::labels::Labels::is_empty")]
    pub labels: crate::labels::Labels,
    /// A successor's refresh: SHA-256 (hex) of the idempotency key the
    /// caller sent, so a retry with the same key gets this successor back
    /// instead of being taken for refresh reuse.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub refresh_key: String,
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Record a token the leader signed.
    Issue {
        /// The token's metadata.
        token: NewToken,
        /// Caller.
        actor: Actor,
    },
    /// Record a successor and revoke the predecessor at `revoke_at`.
    Refresh {
        /// The token being replaced.
        predecessor: Jti,
        /// The successor, in the predecessor's family.
        successor: NewToken,
        /// When the predecessor stops being valid (unix seconds).
        revoke_at: i64,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Revoke one token.
    RevokeToken {
        /// Token id.
        jti: Jti,
        /// Audit reason.
        reason: String,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
        /// The token was presented (its signature checked by the leader
        /// against a key in the state): it is revoked until this `exp`,
        /// taken from the token, even if the state holds no record of it
        /// (issued after the backup a cluster was restored from, or lost
        /// with members before a `force-new`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presented: Option<Presented>,
    },
    /// Revoke every token of `sub` issued before this entry (by revision,
    /// when `by_revision`) or with `iat <= before`.
    RevokeSubject {
        /// Subject.
        sub: String,
        /// Time cutoff (inclusive) on `iat`, unix seconds; `i64::MIN` for
        /// none. Entries written before `by_revision` existed carry the
        /// leader's time here and are applied exactly as they were.
        before: i64,
        /// Revoke every token issued before this entry's revision: tokens
        /// whose `rev` is below it. Exact on any clock.
        #[serde(default)]
        by_revision: bool,
        /// When the cutoff can no longer matter (before + max TTL).
        drop_after: i64,
        /// Audit reason.
        reason: String,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Revoke a whole rotation family.
    RevokeFamily {
        /// Family id.
        family: Jti,
        /// When the entry can no longer matter.
        drop_after: i64,
        /// Audit reason.
        reason: String,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Revoke every live token whose labels match a selector, each as by
    /// jti ("retire every token of `version=1.4`"). Tokens issued later
    /// with matching labels are not covered.
    RevokeSelector {
        /// Terms every revoked token's labels satisfy.
        selector: crate::labels::Selector,
        /// Audit reason.
        reason: String,
        /// Leader's time: tokens expired by then are left alone.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Publish a new signing key (stage 1 of a rotation).
    PublishKey {
        /// Key id.
        kid: Kid,
        /// Ed25519 public key.
        public: [u8; 32],
        /// Private key sealed with the KEK.
        sealed: Vec<u8>,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Sign new tokens with `kid` (stage 2); the previous active key retires.
    ActivateKey {
        /// Key id.
        kid: Kid,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Refuse `kid` from now on (stage 3).
    RetireKey {
        /// Key id.
        kid: Kid,
        /// Retire even if tokens it signed are unexpired.
        force: bool,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Revoke a (compromised) key: every token it signed is refused.
    RevokeKey {
        /// Key id.
        kid: Kid,
        /// Audit reason.
        reason: String,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Drop revocations and records that can no longer matter: everything
    /// whose `exp`/`drop_after` is at or before `cutoff`.
    Sweep {
        /// Cutoff, unix seconds (leader's now minus a clock-skew allowance).
        cutoff: i64,
    },
    /// Replace a key's sealed private key with the same key sealed under
    /// a new KEK (KEK rotation); the key itself does not change.
    RewrapKey {
        /// Key id.
        kid: Kid,
        /// The private key sealed with the new KEK.
        sealed: Vec<u8>,
        /// Fingerprint of the new KEK (for the audit trail; never the key).
        kek: String,
        /// Caller.
        actor: Actor,
    },
    /// Set (or, with `policy: None`, remove) the policy of the issuer
    /// certificate named `name`.
    SetIssuerPolicy {
        /// The issuer certificate's common name.
        name: String,
        /// Its bounds; `None` removes the issuer's rights.
        policy: Option<crate::policy::IssuerPolicy>,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Set (or, with `None`, stop) the signing-key rotation policy.
    SetRotationPolicy {
        /// The schedule; `None` leaves rotation to operators.
        policy: Option<crate::policy::RotationPolicy>,
        /// Leader's time.
        at: i64,
        /// Caller.
        actor: Actor,
    },
    /// Fold verify usage reported by edges into the tokens' usage records
    /// (tokens no longer recorded are skipped). Housekeeping: not audited
    /// itself, but each use attempt of a revoked token is.
    RecordUsage {
        /// Deltas, at most one per (jti, edge); packed in the log
        /// ([`crate::usage::packed`]).
        #[serde(with = "crate::usage::packed")]
        deltas: Vec<crate::usage::UsageDelta>,
        /// Leader's time.
        at: i64,
    },
    /// A command carrying the W3C trace context of the call that caused it,
    /// so edges can attach their apply to the caller's trace. Applies
    /// exactly as `command`; the context never influences the result.
    Traced {
        /// `traceparent` / `tracestate` as propagated over HTTP.
        trace: std::collections::BTreeMap<String, String>,
        /// The command itself.
        command: Box<Command>,
    },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self.untraced() {
            Command::Issue { .. } => "issue",
            Command::Refresh { .. } => "refresh",
            Command::RevokeToken { .. } => "revoke_token",
            Command::RevokeSubject { .. } => "revoke_subject",
            Command::RevokeFamily { .. } => "revoke_family",
            Command::RevokeSelector { .. } => "revoke_selector",
            Command::PublishKey { .. } => "publish_key",
            Command::ActivateKey { .. } => "activate_key",
            Command::RetireKey { .. } => "retire_key",
            Command::RevokeKey { .. } => "revoke_key",
            Command::Sweep { .. } => "sweep",
            Command::RewrapKey { .. } => "rewrap_key",
            Command::SetIssuerPolicy { .. } => "set_issuer_policy",
            Command::SetRotationPolicy { .. } => "set_rotation_policy",
            Command::RecordUsage { .. } => "record_usage",
            Command::Traced { .. } => "traced",
        }
    }

    /// The command without its trace wrapper(s).
    pub fn untraced(&self) -> &Command {
        let mut c = self;
        while let Command::Traced { command, .. } = c {
            c = command;
        }
        c
    }

    /// The trace context this command carries, if any.
    pub fn trace_context(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        match self {
            Command::Traced { trace, .. } => Some(trace),
            _ => None,
        }
    }
}

/// What a presented token told the leader, for a revoke by token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presented {
    /// The token's `exp`.
    pub exp: i64,
    /// The token's subject.
    pub sub: String,
    /// The key that signed it.
    pub kid: Kid,
}

/// Why the state machine refused a command. Refusals are deterministic, so
/// every replica refuses the same entry the same way and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The named object does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of object.
        what: String,
        /// Its id.
        id: String,
    },
    /// The object exists but is in the wrong state for this command.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A change applied between the leader preparing this command and its
    /// apply makes it stale (a subject revoked while its token was being
    /// signed); preparing it again succeeds or fails for good.
    #[error("{0}")]
    Conflict(String),
    /// The object already exists.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// Kind of object.
        what: String,
        /// Its id.
        id: String,
    },
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// A blank or membership entry.
    Applied {
        /// Revision of the entry.
        revision: u64,
    },
    /// A token (or successor) was recorded.
    Issued {
        /// Revision of the entry.
        revision: u64,
    },
    /// A revocation is in force.
    Revoked {
        /// Revision of the revocation in force (the first one for a repeat).
        revision: u64,
        /// True when nothing changed because it was already revoked.
        already: bool,
    },
    /// A signing key changed stage.
    KeyChanged {
        /// Revision of the entry.
        revision: u64,
    },
    /// Expired entries were dropped.
    Swept {
        /// Revision of the entry.
        revision: u64,
        /// How many entries were dropped.
        dropped: u64,
    },
    /// The command was refused; nothing changed.
    Rejected {
        /// Revision of the entry that carried it.
        revision: u64,
        /// Why.
        rejection: Rejection,
    },
}

impl Response {
    /// A revocation that took effect at `revision`.
    pub fn revoked(revision: u64) -> Self {
        Response::Revoked {
            revision,
            already: false,
        }
    }

    /// A revocation already in force since `revision`: nothing changed.
    pub fn already_revoked(revision: u64) -> Self {
        Response::Revoked {
            revision,
            already: true,
        }
    }

    /// The revision the response reports.
    pub fn revision(&self) -> u64 {
        match self {
            Response::Applied { revision }
            | Response::Issued { revision }
            | Response::Revoked { revision, .. }
            | Response::KeyChanged { revision }
            | Response::Swept { revision, .. }
            | Response::Rejected { revision, .. } => *revision,
        }
    }
}

impl std::fmt::Display for Command {
    /// Names the command and its ids; never token strings or key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.untraced() {
            Command::Issue { token, .. } => write!(f, "issue jti={} sub={}", token.jti, token.sub),
            Command::Refresh {
                predecessor,
                successor,
                ..
            } => {
                write!(f, "refresh {} -> {}", predecessor, successor.jti)
            }
            Command::RevokeToken { jti, .. } => write!(f, "revoke_token jti={jti}"),
            Command::RevokeSubject {
                sub,
                before,
                by_revision: true,
                ..
            } if *before == i64::MIN => write!(f, "revoke_subject sub={sub} before=this revision"),
            Command::RevokeSubject { sub, before, .. } => {
                write!(f, "revoke_subject sub={sub} before={before}")
            }
            Command::RevokeFamily { family, .. } => write!(f, "revoke_family fam={family}"),
            Command::RevokeSelector { selector, .. } => {
                write!(f, "revoke_selector selector={selector}")
            }
            Command::PublishKey { kid, .. } => write!(f, "publish_key kid={kid}"),
            Command::ActivateKey { kid, .. } => write!(f, "activate_key kid={kid}"),
            Command::RetireKey { kid, .. } => write!(f, "retire_key kid={kid}"),
            Command::RevokeKey { kid, .. } => write!(f, "revoke_key kid={kid}"),
            Command::Sweep { cutoff } => write!(f, "sweep cutoff={cutoff}"),
            Command::RewrapKey { kid, kek, .. } => write!(f, "rewrap_key kid={kid} kek={kek}"),
            Command::SetIssuerPolicy { name, .. } => write!(f, "set_issuer_policy name={name}"),
            Command::SetRotationPolicy { .. } => write!(f, "set_rotation_policy"),
            Command::RecordUsage { deltas, .. } => {
                write!(f, "record_usage deltas={}", deltas.len())
            }
            Command::Traced { .. } => write!(f, "traced"),
        }
    }
}
