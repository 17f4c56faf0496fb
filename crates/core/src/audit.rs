//! The audit trail: who issued, refreshed, revoked and rotated what, and
//! when, derived deterministically from applied commands.
//!
//! Every replica records the same events at the same revisions (apply is
//! pure), snapshots and backups carry them, and the oldest are dropped past
//! [`AUDIT_RETAIN`] so memory stays bounded; `oldest` tells a reader where
//! the retained trail starts.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::state::State;

/// Events kept; older ones are dropped (export with `veto audit` or a
/// backup to keep more).
pub const AUDIT_RETAIN: usize = 100_000;

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Revision (log index) that applied it.
    pub revision: u64,
    /// Leader's time of the change (unix seconds); `None` when the command
    /// carries none (key rewrap).
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

/// A filter over the trail; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery<'a> {
    /// Exact subject.
    pub subject: Option<&'a str>,
    /// Exact actor.
    pub actor: Option<&'a str>,
    /// Events at or after this time.
    pub since: Option<i64>,
    /// Events at or before this time.
    pub until: Option<i64>,
    /// Only events after this revision (paging).
    pub after_revision: u64,
    /// Most events returned.
    pub limit: usize,
}

impl AuditQuery<'_> {
    fn matches(&self, e: &AuditEvent) -> bool {
        e.revision > self.after_revision
            && self.subject.is_none_or(|s| e.subject.as_deref() == Some(s))
            && self.actor.is_none_or(|a| e.actor == a)
            && self.since.is_none_or(|t| e.at.is_some_and(|at| at >= t))
            && self.until.is_none_or(|t| e.at.is_some_and(|at| at <= t))
    }
}

/// The bounded trail inside [`State`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    events: VecDeque<AuditEvent>,
    /// Events dropped past [`AUDIT_RETAIN`] so far.
    dropped: u64,
}

impl AuditLog {
    pub(crate) fn push(&mut self, e: AuditEvent) {
        if self.events.len() >= AUDIT_RETAIN {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Matching events in revision order, up to `q.limit`, and whether more
    /// match after them.
    pub fn query(&self, q: &AuditQuery<'_>) -> (Vec<&AuditEvent>, bool) {
        // Events are in revision order: skip to the page start by search.
        let start = self
            .events
            .partition_point(|e| e.revision <= q.after_revision);
        let mut it = self.events.range(start..).filter(|e| q.matches(e));
        let page: Vec<&AuditEvent> = it.by_ref().take(q.limit).collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// Revision of the oldest retained event (0 when empty).
    pub fn oldest(&self) -> u64 {
        self.events.front().map(|e| e.revision).unwrap_or(0)
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events retained.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
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
        Command::Sweep { .. } | Command::Traced { .. } => return None,
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
