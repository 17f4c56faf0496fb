//! The audit trail: who issued, refreshed, revoked, rotated and changed
//! membership or policy, and when, derived deterministically from applied
//! entries and hash-chained.
//!
//! Every replica derives the same events at the same revisions (apply is
//! pure) and chains them the same way: event `n` carries
//! `hash_n = SHA-256(hash_{n-1} "\n" n "\n" json(event_n))` (hex, with 64
//! zeros before the first), so an edited or deleted entry breaks the chain.
//! The state keeps only the head ([`AuditHead`]); the store keeps the
//! events on disk under its age and size retention.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::state::State;

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Revision (log index) that applied it.
    pub revision: u64,
    /// Leader's time of the change (unix seconds); `None` when the entry
    /// carries none (key rewrap, membership).
    pub at: Option<i64>,
    /// Who asked (`operator:alice`, `veto-server:bootstrap`, ...).
    pub actor: String,
    /// What: the command name (`issue`, `revoke_token`, ...).
    pub action: String,
    /// The token subject concerned, when there is one.
    pub subject: Option<String>,
    /// The object: a jti, `old -> new` for a refresh, a family, a kid.
    pub target: String,
    /// The reason given, if any.
    pub reason: String,
}

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The link of event `seq` after `prev` (hex SHA-256, see the module docs).
pub fn chain_hash(prev: &str, seq: u64, event: &AuditEvent) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(prev.as_bytes());
    h.update(format!("\n{seq}\n").as_bytes());
    // Serialising a plain struct of strings and integers cannot fail.
    h.update(serde_json::to_vec(event).unwrap_or_default());
    hex::encode(h.finalize())
}

/// An event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedEvent {
    /// Position in the trail, from 1, without gaps.
    pub seq: u64,
    /// Hash of the event before (or [`GENESIS`]).
    pub prev: String,
    /// This event's link.
    pub hash: String,
    /// The event.
    pub event: AuditEvent,
}

impl ChainedEvent {
    /// Whether the stored hash is the hash of the stored content.
    pub fn intact(&self) -> bool {
        chain_hash(&self.prev, self.seq, &self.event) == self.hash
    }
}

/// The end of the chain as the replicated state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Events chained so far (the last one's `seq`).
    pub seq: u64,
    /// The last event's hash ([`GENESIS`] when none).
    pub hash: String,
}

impl Default for AuditHead {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

impl AuditHead {
    /// Chains `event` after the head and advances it.
    pub fn next(&mut self, event: AuditEvent) -> ChainedEvent {
        let seq = self.seq + 1;
        let hash = chain_hash(&self.hash, seq, &event);
        let c = ChainedEvent {
            seq,
            prev: std::mem::replace(&mut self.hash, hash.clone()),
            hash,
            event,
        };
        self.seq = seq;
        c
    }
}

/// A filter over the trail; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery<'a> {
    /// Exact subject.
    pub subject: Option<&'a str>,
    /// Exact actor.
    pub actor: Option<&'a str>,
    /// Exact action.
    pub action: Option<&'a str>,
    /// Events at or after this time.
    pub since: Option<i64>,
    /// Events at or before this time.
    pub until: Option<i64>,
    /// Only events after this revision (paging); `None`: from the start
    /// (the first membership entry is at revision 0).
    pub after_revision: Option<u64>,
    /// Most events returned.
    pub limit: usize,
}

impl AuditQuery<'_> {
    /// Whether `e` passes every filter.
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.after_revision.is_none_or(|a| e.revision > a)
            && self.subject.is_none_or(|s| e.subject.as_deref() == Some(s))
            && self.actor.is_none_or(|a| e.actor == a)
            && self.action.is_none_or(|a| e.action == a)
            && self.since.is_none_or(|t| e.at.is_some_and(|at| at >= t))
            && self.until.is_none_or(|t| e.at.is_some_and(|at| at <= t))
    }
}

/// The parts every event of one applied command shares.
struct Ev<'a> {
    revision: u64,
    cmd: &'a Command,
}

impl Ev<'_> {
    fn event(
        &self,
        at: Option<i64>,
        actor: &crate::Actor,
        subject: Option<String>,
        target: String,
        reason: &str,
    ) -> AuditEvent {
        AuditEvent {
            revision: self.revision,
            at,
            actor: actor.0.clone(),
            action: self.cmd.name().to_owned(),
            subject,
            target,
            reason: reason.to_owned(),
        }
    }
}

/// The event for `cmd`, just applied successfully at `revision` to `s`.
/// `None` for housekeeping (expiry sweeps).
pub(crate) fn event_of(s: &State, revision: u64, cmd: &Command) -> Option<AuditEvent> {
    let ev = Ev { revision, cmd };
    Some(match cmd.untraced() {
        Command::Issue { token, actor } => ev.event(
            Some(token.iat),
            actor,
            Some(token.sub.clone()),
            token.jti.to_string(),
            "",
        ),
        Command::Refresh {
            predecessor,
            successor,
            at,
            actor,
            ..
        } => ev.event(
            Some(*at),
            actor,
            Some(successor.sub.clone()),
            format!("{predecessor} -> {}", successor.jti),
            "",
        ),
        Command::PublishKey { kid, at, actor, .. }
        | Command::ActivateKey { kid, at, actor }
        | Command::RetireKey { kid, at, actor, .. } => {
            ev.event(Some(*at), actor, None, kid.to_string(), "")
        }
        Command::RevokeKey {
            kid,
            reason,
            at,
            actor,
        } => ev.event(Some(*at), actor, None, kid.to_string(), reason),
        Command::RewrapKey {
            kid, kek, actor, ..
        } => ev.event(None, actor, None, kid.to_string(), &format!("kek {kek}")),
        Command::SetIssuerPolicy {
            name,
            policy,
            at,
            actor,
        } => ev.event(
            Some(*at),
            actor,
            None,
            format!("issuer {name}"),
            &policy
                .as_ref()
                .map_or_else(|| "removed".to_owned(), |p| p.summary()),
        ),
        Command::SetRotationPolicy { policy, at, actor } => ev.event(
            Some(*at),
            actor,
            None,
            "signing keys".into(),
            &policy
                .as_ref()
                .map_or_else(|| "rotation off".to_owned(), |p| p.summary()),
        ),
        // Usage is housekeeping; its revoked-token uses are audited one by
        // one by the state (`State::record_usage`).
        Command::Sweep { .. } | Command::RecordUsage { .. } | Command::Traced { .. } => {
            return None
        }
        revoke => return revoke_event(&ev, s, revoke),
    })
}

/// The event of a token, subject or family revoke.
fn revoke_event(ev: &Ev<'_>, s: &State, cmd: &Command) -> Option<AuditEvent> {
    Some(match cmd {
        Command::RevokeToken {
            jti,
            reason,
            at,
            actor,
            presented,
        } => ev.event(
            Some(*at),
            actor,
            s.token(jti)
                .map(|r| r.token.sub.clone())
                .or_else(|| presented.as_ref().map(|p| p.sub.clone())),
            if presented.is_some() {
                format!("{jti} (presented)")
            } else {
                jti.to_string()
            },
            reason,
        ),
        Command::RevokeSubject {
            sub,
            before,
            by_revision,
            reason,
            at,
            actor,
            ..
        } => ev.event(
            Some(*at),
            actor,
            Some(sub.clone()),
            match (*by_revision, *before) {
                (true, i64::MIN) => format!("issued before revision {}", ev.revision),
                (true, b) => format!("issued before revision {} or at or before {b}", ev.revision),
                (false, b) => format!("issued at or before {b}"),
            },
            reason,
        ),
        Command::RevokeFamily {
            family,
            reason,
            at,
            actor,
            ..
        } => ev.event(Some(*at), actor, None, family.to_string(), reason),
        Command::RevokeSelector {
            selector,
            reason,
            at,
            actor,
        } => ev.event(
            Some(*at),
            actor,
            None,
            format!(
                "selector {selector} ({} tokens)",
                s.revoked_by_selector(selector, ev.revision).len()
            ),
            reason,
        ),
        _ => return None,
    })
}

/// Where a trail fails its chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The stored hash is not the hash of the stored content: the entry
    /// was edited.
    #[error("entry {seq} (revision {revision}) was edited: its content does not hash to its link")]
    Edited {
        /// Position.
        seq: u64,
        /// Revision.
        revision: u64,
    },
    /// An entry is missing or out of place: the chain jumps.
    #[error("the chain breaks before entry {seq} (revision {revision}): expected position {expected} after hash {prev}, found position {seq} after {found}")]
    Gap {
        /// Position found.
        seq: u64,
        /// Its revision.
        revision: u64,
        /// Position expected.
        expected: u64,
        /// Hash expected before it.
        prev: String,
        /// Hash it names before it.
        found: String,
    },
    /// The trail does not reach the replicated head (its tail was cut) or
    /// reaches it with another hash.
    #[error("the trail ends at position {seq} but the replicated head is position {head_seq} ({head_hash})")]
    Head {
        /// Last position held.
        seq: u64,
        /// The replicated head's position.
        head_seq: u64,
        /// Its hash.
        head_hash: String,
    },
}

/// Checks a trail link by link, oldest first, and that it passes through
/// the replicated head.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    seq: u64,
    hash: String,
    head: (u64, String),
    head_ok: Option<bool>,
    /// Entries checked.
    pub checked: u64,
    /// Entries this trail does not hold because its node installed a
    /// snapshot instead (its peers hold them).
    pub not_held: u64,
}

impl ChainCheck {
    /// Starts after the last entry retention dropped (`0` and any hash when
    /// none was), to end at the replicated head (`head_seq`, `head_hash`)
    /// read before the trail.
    pub fn new(pruned_seq: u64, pruned_hash: &str, head_seq: u64, head_hash: &str) -> Self {
        let mut c = Self {
            seq: pruned_seq,
            hash: if pruned_seq == 0 {
                GENESIS.to_owned()
            } else {
                pruned_hash.to_owned()
            },
            head: (head_seq, head_hash.to_owned()),
            head_ok: None,
            checked: 0,
            not_held: 0,
        };
        c.observe();
        c
    }

    fn observe(&mut self) {
        if self.seq == self.head.0 {
            self.head_ok = Some(self.hash == self.head.1);
        }
    }

    /// The chain resumes at (`seq`, `hash`) after a snapshot install at
    /// `revision`.
    pub fn resume(&mut self, revision: u64, seq: u64, hash: &str) -> Result<(), Broken> {
        if seq == self.seq && hash == self.hash {
            return Ok(());
        }
        if seq < self.seq {
            return Err(self.gap(seq, revision, hash));
        }
        self.not_held += seq - self.seq;
        self.seq = seq;
        self.hash = hash.to_owned();
        self.observe();
        Ok(())
    }

    /// Checks the next entry.
    pub fn next(&mut self, c: &ChainedEvent) -> Result<(), Broken> {
        if !c.intact() {
            return Err(Broken::Edited {
                seq: c.seq,
                revision: c.event.revision,
            });
        }
        if c.seq != self.seq + 1 || c.prev != self.hash {
            return Err(self.gap(c.seq, c.event.revision, &c.prev));
        }
        self.seq = c.seq;
        self.hash = c.hash.clone();
        self.checked += 1;
        self.observe();
        Ok(())
    }

    /// The chain jumps to `seq` (at `revision`, naming `found` before it).
    fn gap(&self, seq: u64, revision: u64, found: &str) -> Broken {
        Broken::Gap {
            seq,
            revision,
            expected: self.seq + 1,
            prev: self.hash.clone(),
            found: found.to_owned(),
        }
    }

    /// Whether the trail passed through the replicated head with its hash.
    pub fn finish(&self) -> Result<(), Broken> {
        match self.head_ok {
            Some(true) => Ok(()),
            _ => Err(Broken::Head {
                seq: self.seq,
                head_seq: self.head.0,
                head_hash: self.head.1.clone(),
            }),
        }
    }

    /// Position of the last entry checked.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}
