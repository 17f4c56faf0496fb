//! The deterministic state machine: signing keys, token records and the
//! revocation set.
//!
//! [`State::apply`] reads only the state and the command. Indexes used for
//! listing are derived data: they are skipped when the state is serialised
//! into a snapshot and rebuilt by [`State::from_snapshot_bytes`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Actor, Command, NewToken, Rejection, Response};
use crate::{Jti, Kid};

/// Stage of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Known to edges, not yet signing.
    Published,
    /// Signs new tokens.
    Active,
    /// Replaced by a newer key; its tokens still verify.
    Retiring,
    /// Refused everywhere.
    Retired,
    /// Compromised: refused everywhere, with all its tokens.
    Revoked,
}

impl KeyState {
    /// Whether tokens signed with a key in this state verify.
    pub fn accepts_tokens(self) -> bool {
        matches!(
            self,
            KeyState::Published | KeyState::Active | KeyState::Retiring
        )
    }
}

/// A signing key as replicated. The private half is sealed with the KEK and
/// dropped once the key can no longer sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Key id.
    pub kid: Kid,
    /// Ed25519 public key.
    pub public: [u8; 32],
    /// Private key sealed with the KEK; empty once retired or revoked.
    pub sealed: Vec<u8>,
    /// Current stage.
    pub state: KeyState,
    /// Revision of the publish.
    pub published_revision: u64,
    /// Revision of the latest stage change.
    pub changed_revision: u64,
    /// Latest `exp` of any token signed with this key (0 if none).
    pub max_token_exp: i64,
    /// Who made the latest stage change.
    pub actor: Actor,
    /// Leader's time of the publish (unix seconds; 0 for keys published
    /// before it was recorded).
    #[serde(default)]
    pub published_at: i64,
    /// Leader's time of the activation (0 until activated).
    #[serde(default)]
    pub activated_at: i64,
}

/// A token's replicated metadata (never the token string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's claims and key.
    #[serde(flatten)]
    pub token: NewToken,
    /// Revision of the issue.
    pub issued_revision: u64,
    /// Who issued it.
    pub actor: Actor,
    /// Successor, once refreshed.
    pub successor: Option<Jti>,
}

/// Which kind of revocation applies to a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// Revoked by jti (or refreshed).
    Token,
    /// Revoked with all tokens of its subject up to a time.
    Subject,
    /// Revoked with its whole family.
    Family,
    /// Its signing key was revoked.
    Key,
}

/// One revocation of a single token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The token's exp: the entry is swept after it.
    pub exp: i64,
    /// The token is refused from this time (unix seconds).
    pub effective_at: i64,
    /// Revision that put this revocation in force.
    pub revision: u64,
    /// Audit reason.
    pub reason: String,
    /// Who revoked.
    pub actor: Actor,
}

/// A cutoff revoking many tokens (subject or family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cutoff {
    /// Subjects: tokens with `iat <= before` are refused (`i64::MIN`: no
    /// time cutoff). Families: the leader's time of the revoke.
    pub before: i64,
    /// Subjects: tokens whose `rev` is below this revision are refused
    /// (0: none). Exact on any clock: a token signed by a leader that had
    /// applied the revoke carries a `rev` at or above it.
    #[serde(default)]
    pub before_revision: u64,
    /// The entry is swept after this time.
    pub drop_after: i64,
    /// Revision that put it in force.
    pub revision: u64,
    /// Audit reason.
    pub reason: String,
    /// Who revoked.
    pub actor: Actor,
}

impl Cutoff {
    /// Whether this subject cutoff covers a token with `iat` and `rev`.
    pub fn covers(&self, iat: i64, rev: u64) -> bool {
        iat <= self.before || rev < self.before_revision
    }
}

/// What revoked a token, for status answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationInfo {
    /// The kind that applies.
    pub kind: RevocationKind,
    /// Revision of the revocation.
    pub revision: u64,
    /// Time from which the token is refused.
    pub effective_at: i64,
    /// Audit reason.
    pub reason: String,
}

/// The token status at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Valid.
    Active,
    /// Refused because revoked.
    Revoked,
    /// Will be refused at a known time (refresh grace).
    RevokePending,
    /// Past exp.
    Expired,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Revision (log index) of the last applied entry.
    pub revision: u64,
    keys: BTreeMap<Kid, KeyRecord>,
    active: Option<Kid>,
    tokens: BTreeMap<Jti, TokenRecord>,
    revoked_tokens: BTreeMap<Jti, Revocation>,
    revoked_subjects: BTreeMap<String, Cutoff>,
    revoked_families: BTreeMap<Jti, Cutoff>,
    /// Highest sweep cutoff applied: every token with `exp` at or before it
    /// has expired on the cluster's clock, and edges refuse it as expired
    /// whatever their own clock says (its revocation may have been swept).
    #[serde(default)]
    swept_through: i64,
    /// The end of the hash-chained audit trail: every replica computes
    /// the same head at the same revision. The events themselves are
    /// handed to the store ([`State::take_audit`]), which keeps them on
    /// disk under its retention.
    #[serde(default)]
    audit_head: crate::audit::AuditHead,
    /// Issuer policies by certificate common name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    issuer_policies: BTreeMap<String, crate::policy::IssuerPolicy>,
    /// The signing-key rotation schedule, when keys rotate themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation_policy: Option<crate::policy::RotationPolicy>,
    /// Verify usage per token, reported by edges.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    usage: crate::usage::UsageMap,
    /// Use attempts of revoked tokens ever recorded: unlike the per-token
    /// counts, never lowered when a sweep drops a record, so an alert on
    /// its increase sees every attempt.
    #[serde(default)]
    revoked_attempts_total: u64,
    /// Audit events applied since the store last took them.
    #[serde(skip)]
    audit_out: Vec<crate::audit::ChainedEvent>,
    #[serde(skip)]
    by_subject: BTreeSet<(String, Jti)>,
    #[serde(skip)]
    by_family: BTreeSet<(Jti, Jti)>,
}

/// A snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("state snapshot is corrupt: {0}")]
pub struct CorruptSnapshot(#[from] serde_json::Error);

impl State {
    /// Serialises the state for a snapshot. Deterministic: maps are ordered.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        // Serialising maps with string keys into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of the serialised state, hex. Equal states give equal digests.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.to_snapshot_bytes()))
    }

    /// Restores a state from snapshot bytes and rebuilds its indexes.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Self, CorruptSnapshot> {
        let mut s: State = serde_json::from_slice(bytes)?;
        s.by_subject = s
            .tokens
            .values()
            .map(|r| (r.token.sub.clone(), r.token.jti))
            .collect();
        s.by_family = s
            .tokens
            .values()
            .map(|r| (r.token.fam, r.token.jti))
            .collect();
        Ok(s)
    }

    /// Marks a non-command entry (blank, membership) as applied.
    pub fn apply_noop(&mut self, revision: u64) -> Response {
        self.revision = revision;
        Response::Applied { revision }
    }

    /// Applies a membership entry: no state change but an audit event
    /// (`membership`, the new configuration as `target`).
    pub fn apply_membership(&mut self, revision: u64, description: &str) -> Response {
        self.revision = revision;
        self.chain(crate::audit::AuditEvent {
            revision,
            at: None,
            actor: "raft".into(),
            action: "membership".into(),
            subject: None,
            target: description.to_owned(),
            reason: String::new(),
        });
        Response::Applied { revision }
    }

    fn chain(&mut self, event: crate::audit::AuditEvent) {
        let c = self.audit_head.next(event);
        self.audit_out.push(c);
    }

    /// The audit events applied since the last call, chained, in order.
    pub fn take_audit(&mut self) -> Vec<crate::audit::ChainedEvent> {
        std::mem::take(&mut self.audit_out)
    }

    /// The head of the audit chain.
    pub fn audit_head(&self) -> &crate::audit::AuditHead {
        &self.audit_head
    }

    /// The issuer policy of the certificate named `name`.
    pub fn issuer_policy(&self, name: &str) -> Option<&crate::policy::IssuerPolicy> {
        self.issuer_policies.get(name)
    }

    /// Every issuer policy by name.
    pub fn issuer_policies(&self) -> &BTreeMap<String, crate::policy::IssuerPolicy> {
        &self.issuer_policies
    }

    /// The signing-key rotation schedule, if keys rotate themselves.
    pub fn rotation_policy(&self) -> Option<&crate::policy::RotationPolicy> {
        self.rotation_policy.as_ref()
    }

    /// Applies one command at `revision`. Pure: no clock, no randomness, no I/O.
    pub fn apply(&mut self, revision: u64, cmd: &Command) -> Response {
        self.revision = revision;
        let result = match cmd.untraced() {
            Command::Issue { token, actor } => self.issue(revision, token, actor),
            Command::Refresh {
                predecessor,
                successor,
                revoke_at,
                at,
                actor,
            } => self.refresh(revision, *predecessor, successor, *revoke_at, *at, actor),
            Command::RevokeToken {
                jti,
                reason,
                at,
                actor,
                presented,
            } => self.revoke_token(revision, *jti, reason, *at, actor, presented.as_ref()),
            Command::RevokeSubject {
                sub,
                before,
                by_revision,
                drop_after,
                reason,
                actor,
                ..
            } => {
                let cut = SubjectCut {
                    before: *before,
                    before_revision: if *by_revision { revision } else { 0 },
                    drop_after: *drop_after,
                };
                self.revoke_subject(revision, sub, cut, reason, actor)
            }
            Command::RevokeFamily {
                family,
                drop_after,
                reason,
                at,
                actor,
            } => self.revoke_family(revision, *family, *drop_after, reason, *at, actor),
            Command::RevokeSelector {
                selector,
                reason,
                at,
                actor,
            } => self.revoke_selector(revision, selector, reason, *at, actor),
            Command::PublishKey {
                kid,
                public,
                sealed,
                at,
                actor,
            } => self.publish_key(revision, *kid, *public, sealed, *at, actor),
            Command::ActivateKey { kid, at, actor } => {
                self.activate_key(revision, *kid, *at, actor)
            }
            Command::RetireKey {
                kid,
                force,
                at,
                actor,
            } => self.retire_key(revision, *kid, *force, *at, actor),
            Command::RevokeKey { kid, actor, .. } => self.revoke_key(revision, *kid, actor),
            Command::Sweep { cutoff } => Ok(self.sweep(revision, *cutoff)),
            Command::RewrapKey {
                kid, sealed, actor, ..
            } => self.rewrap_key(revision, *kid, sealed, actor),
            Command::SetIssuerPolicy { name, policy, .. } => {
                self.set_issuer_policy(revision, name, policy.as_ref())
            }
            Command::SetRotationPolicy { policy, .. } => {
                self.set_rotation_policy(revision, policy.as_ref())
            }
            Command::RecordUsage { deltas, at } => Ok(self.record_usage(revision, deltas, *at)),
            // untraced() never returns a Traced command.
            Command::Traced { .. } => Ok(Response::Applied { revision }),
        };
        match result {
            Ok(r) => {
                if let Some(e) = crate::audit::event_of(self, revision, cmd) {
                    self.chain(e);
                }
                r
            }
            Err(rejection) => Response::Rejected {
                revision,
                rejection,
            },
        }
    }

    fn set_issuer_policy(
        &mut self,
        revision: u64,
        name: &str,
        policy: Option<&crate::policy::IssuerPolicy>,
    ) -> Result<Response, Rejection> {
        match policy {
            Some(p) => {
                p.validate()
                    .map_err(|e| Rejection::FailedPrecondition(format!("issuer policy {e}")))?;
                self.issuer_policies.insert(name.to_owned(), p.clone());
            }
            None => {
                if self.issuer_policies.remove(name).is_none() {
                    return Err(not_found("issuer policy", name));
                }
            }
        }
        Ok(Response::Applied { revision })
    }

    fn record_usage(
        &mut self,
        revision: u64,
        deltas: &[crate::usage::UsageDelta],
        at: i64,
    ) -> Response {
        for d in deltas {
            let Some(rec) = self.tokens.get(&d.jti) else {
                continue;
            };
            let sub = rec.token.sub.clone();
            self.usage.entry(d.jti).or_default().fold(d);
            self.revoked_attempts_total = self
                .revoked_attempts_total
                .saturating_add(d.outcomes.revoked);
            if d.outcomes.revoked > 0 {
                self.chain(crate::audit::AuditEvent {
                    revision,
                    at: Some(at),
                    actor: format!("edge:{}", d.edge),
                    action: "revoked_token_used".into(),
                    subject: Some(sub),
                    target: d.jti.to_string(),
                    reason: format!(
                        "{} use attempt(s) refused as revoked between {} and {}",
                        d.outcomes.revoked, d.first, d.last
                    ),
                });
            }
        }
        Response::Applied { revision }
    }

    /// The usage record of a token, if it was ever verified.
    pub fn usage(&self, jti: &Jti) -> Option<&crate::usage::UsageRecord> {
        self.usage.get(jti)
    }

    /// Use attempts of revoked tokens recorded since the cluster began
    /// (never lowered by sweeps).
    pub fn revoked_attempts_total(&self) -> u64 {
        self.revoked_attempts_total
    }

    /// Tokens recorded with usage.
    pub fn usage_count(&self) -> usize {
        self.usage.len()
    }

    /// Usage across the live tokens at `now` (the figures of the dashboards
    /// and the `veto_tokens_*` gauges). O(tokens): callers holding a lock
    /// that blocks apply should use [`State::usage_totals_page`].
    pub fn usage_totals(&self, now: i64) -> crate::usage::UsageTotals {
        let mut t = crate::usage::UsageTotals::default();
        let mut after = None;
        while let Some(next) = self.usage_totals_page(now, after, usize::MAX, &mut t) {
            after = Some(next);
        }
        t
    }

    /// Adds the usage of up to `limit` token records after `after` (by jti)
    /// to `t`; the jti to continue after, or `None` at the end. Lets a
    /// reader release its lock between pages.
    pub fn usage_totals_page(
        &self,
        now: i64,
        after: Option<Jti>,
        limit: usize,
        t: &mut crate::usage::UsageTotals,
    ) -> Option<Jti> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (n, rec) in self
            .tokens
            .range((from, Bound::Unbounded))
            .map(|(_, r)| r)
            .enumerate()
        {
            if n >= limit {
                return last;
            }
            last = Some(rec.token.jti);
            if let Some(u) = self.usage.get(&rec.token.jti) {
                t.verifies = t.verifies.saturating_add(u.outcomes.total());
                t.revoked_attempts = t.revoked_attempts.saturating_add(u.outcomes.revoked);
            }
            if self.status(rec, now).0 != TokenStatus::Active {
                continue;
            }
            t.active += 1;
            match self.usage.get(&rec.token.jti) {
                Some(u) if u.outcomes.valid > 0 => {
                    t.used += 1;
                    if u.unused_scopes(&rec.token.scopes).is_empty() {
                        t.least_privilege += 1;
                    }
                }
                _ => t.never_used += 1,
            }
        }
        None
    }

    /// Up to `limit` token records after `after` (by jti), in jti order.
    pub fn records_page(&self, after: Option<Jti>, limit: usize) -> Vec<&TokenRecord> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.tokens
            .range((from, Bound::Unbounded))
            .map(|(_, r)| r)
            .take(limit)
            .collect()
    }

    fn set_rotation_policy(
        &mut self,
        revision: u64,
        policy: Option<&crate::policy::RotationPolicy>,
    ) -> Result<Response, Rejection> {
        if let Some(p) = policy {
            p.validate()
                .map_err(|e| Rejection::FailedPrecondition(format!("rotation policy {e}")))?;
        }
        self.rotation_policy = policy.copied();
        Ok(Response::Applied { revision })
    }

    fn issue(&mut self, revision: u64, t: &NewToken, actor: &Actor) -> Result<Response, Rejection> {
        self.check_can_record(t)?;
        self.record(revision, t, actor);
        Ok(Response::Issued { revision })
    }

    fn check_can_record(&self, t: &NewToken) -> Result<(), Rejection> {
        if self.tokens.contains_key(&t.jti) {
            return Err(Rejection::AlreadyExists {
                what: "token".into(),
                id: t.jti.to_string(),
            });
        }
        if self.active != Some(t.kid) {
            // A rotation activated another key while this token was signed:
            // signing it again succeeds.
            return Err(Rejection::Conflict(format!(
                "signing key {} is no longer the active key; retry",
                t.kid
            )));
        }
        if self.revoked_families.contains_key(&t.fam) {
            return Err(Rejection::FailedPrecondition(format!(
                "family {} is revoked",
                t.fam
            )));
        }
        // A token the edges would refuse on arrival is never recorded as
        // issued. `rev == 0` marks entries from before the claim existed:
        // they apply as they always did.
        if let Some(c) = self.revoked_subjects.get(&t.sub) {
            if t.rev > 0 && c.covers(t.iat, t.rev) {
                return Err(Rejection::Conflict(format!(
                    "subject {} was revoked at revision {} while this token was being signed; issue it again",
                    t.sub, c.revision
                )));
            }
        }
        Ok(())
    }

    fn record(&mut self, revision: u64, t: &NewToken, actor: &Actor) {
        if let Some(k) = self.keys.get_mut(&t.kid) {
            k.max_token_exp = k.max_token_exp.max(t.exp);
        }
        self.by_subject.insert((t.sub.clone(), t.jti));
        self.by_family.insert((t.fam, t.jti));
        self.tokens.insert(
            t.jti,
            TokenRecord {
                token: t.clone(),
                issued_revision: revision,
                actor: actor.clone(),
                successor: None,
            },
        );
    }

    fn refresh(
        &mut self,
        revision: u64,
        pred: Jti,
        succ: &NewToken,
        revoke_at: i64,
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        let Some(p) = self.tokens.get(&pred) else {
            return Err(not_found("token", pred));
        };
        if p.successor.is_some() {
            return Err(Rejection::FailedPrecondition(format!(
                "token {pred} was already refreshed"
            )));
        }
        if at >= p.token.exp {
            return Err(Rejection::FailedPrecondition(format!(
                "token {pred} has expired"
            )));
        }
        if let Some(r) = self.revocation_of(p) {
            if r.effective_at <= at {
                return Err(Rejection::FailedPrecondition(format!(
                    "token {pred} is revoked"
                )));
            }
        }
        if succ.fam != p.token.fam {
            return Err(Rejection::FailedPrecondition(
                "successor must be in the same family".into(),
            ));
        }
        self.check_can_record(succ)?;
        let exp = p.token.exp;
        self.record(revision, succ, actor);
        if let Some(p) = self.tokens.get_mut(&pred) {
            p.successor = Some(succ.jti);
        }
        self.revoked_tokens.insert(
            pred,
            Revocation {
                exp,
                effective_at: revoke_at,
                revision,
                reason: format!("refreshed by {}", succ.jti),
                actor: actor.clone(),
            },
        );
        Ok(Response::Issued { revision })
    }

    fn revoke_token(
        &mut self,
        revision: u64,
        jti: Jti,
        reason: &str,
        at: i64,
        actor: &Actor,
        presented: Option<&crate::command::Presented>,
    ) -> Result<Response, Rejection> {
        let exp = match (self.tokens.get(&jti), presented) {
            (Some(rec), _) => rec.token.exp,
            (None, Some(p)) => {
                if !self.keys.contains_key(&p.kid) {
                    return Err(not_found("key", p.kid));
                }
                p.exp
            }
            (None, None) => return Err(not_found("token", jti)),
        };
        if let Some(existing) = self.revoked_tokens.get(&jti) {
            if existing.effective_at <= at {
                return Ok(Response::already_revoked(existing.revision));
            }
        }
        // New, or a pending (grace-period) revocation made immediate.
        let now_in_force = Revocation {
            exp,
            effective_at: at,
            revision,
            reason: reason.to_owned(),
            actor: actor.clone(),
        };
        self.revoked_tokens.insert(jti, now_in_force);
        Ok(Response::revoked(revision))
    }

    fn revoke_subject(
        &mut self,
        revision: u64,
        sub: &str,
        cut: SubjectCut,
        reason: &str,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        let SubjectCut {
            before,
            before_revision,
            drop_after,
        } = cut;
        let mut cut = Cutoff::new(cut, revision, reason, actor);
        if let Some(c) = self.revoked_subjects.get(sub) {
            if c.before >= before && c.before_revision >= before_revision {
                return Ok(Response::already_revoked(c.revision));
            }
            // Both cutoffs only grow, so the merged one covers exactly the
            // union of what each revoke covered.
            cut.before = before.max(c.before);
            cut.before_revision = before_revision.max(c.before_revision);
            cut.drop_after = drop_after.max(c.drop_after);
        }
        self.revoked_subjects.insert(sub.to_owned(), cut);
        Ok(Response::revoked(revision))
    }

    fn revoke_family(
        &mut self,
        revision: u64,
        family: Jti,
        drop_after: i64,
        reason: &str,
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        if let Some(c) = self.revoked_families.get(&family) {
            return Ok(Response::already_revoked(c.revision));
        }
        if self
            .by_family
            .range((family, Jti([0; 16]))..=(family, Jti([0xff; 16])))
            .next()
            .is_none()
        {
            return Err(not_found("family", family));
        }
        let cut = SubjectCut {
            before: at,
            before_revision: 0,
            drop_after,
        };
        self.revoked_families
            .insert(family, Cutoff::new(cut, revision, reason, actor));
        Ok(Response::revoked(revision))
    }

    fn revoke_selector(
        &mut self,
        revision: u64,
        selector: &crate::labels::Selector,
        reason: &str,
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        let mut matched = 0u64;
        let mut earliest_in_force: Option<u64> = None;
        let mut revoke = Vec::new();
        for (jti, rec) in &self.tokens {
            if rec.token.exp <= at || !selector.matches(&rec.token.labels) {
                continue;
            }
            matched += 1;
            match self.revoked_tokens.get(jti) {
                Some(r) if r.effective_at <= at => {
                    earliest_in_force =
                        Some(earliest_in_force.map_or(r.revision, |e| e.min(r.revision)));
                }
                _ => revoke.push((*jti, rec.token.exp)),
            }
        }
        if matched == 0 {
            return Err(not_found("live tokens matching", selector));
        }
        if revoke.is_empty() {
            return Ok(Response::already_revoked(
                earliest_in_force.unwrap_or(revision),
            ));
        }
        for (jti, exp) in revoke {
            self.revoked_tokens.insert(
                jti,
                Revocation {
                    exp,
                    effective_at: at,
                    revision,
                    reason: reason.to_owned(),
                    actor: actor.clone(),
                },
            );
        }
        Ok(Response::revoked(revision))
    }

    /// The tokens a selector revoke at `revision` revoked, with their
    /// revocations (what edges must learn, and what the audit counts).
    pub fn revoked_by_selector(
        &self,
        selector: &crate::labels::Selector,
        revision: u64,
    ) -> Vec<(Jti, &Revocation)> {
        self.tokens
            .iter()
            .filter(|(_, rec)| selector.matches(&rec.token.labels))
            .filter_map(|(jti, _)| {
                let r = self.revoked_tokens.get(jti)?;
                (r.revision == revision).then_some((*jti, r))
            })
            .collect()
    }

    fn publish_key(
        &mut self,
        revision: u64,
        kid: Kid,
        public: [u8; 32],
        sealed: &[u8],
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        if self.keys.contains_key(&kid) {
            return Err(Rejection::AlreadyExists {
                what: "key".into(),
                id: kid.to_string(),
            });
        }
        self.keys.insert(
            kid,
            KeyRecord {
                kid,
                public,
                sealed: sealed.to_vec(),
                state: KeyState::Published,
                published_revision: revision,
                changed_revision: revision,
                max_token_exp: 0,
                actor: actor.clone(),
                published_at: at,
                activated_at: 0,
            },
        );
        Ok(Response::KeyChanged { revision })
    }

    fn activate_key(
        &mut self,
        revision: u64,
        kid: Kid,
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        if let Some(already) = self.check_activate(&kid)? {
            return Ok(Response::KeyChanged { revision: already });
        }
        if let Some(old) = self.active.and_then(|a| self.keys.get_mut(&a)) {
            old.state = KeyState::Retiring;
            old.changed_revision = revision;
            old.actor = actor.clone();
        }
        if let Some(k) = self.keys.get_mut(&kid) {
            k.state = KeyState::Active;
            k.changed_revision = revision;
            k.actor = actor.clone();
            k.activated_at = at;
        }
        self.active = Some(kid);
        Ok(Response::KeyChanged { revision })
    }

    /// Activation rules; `Some(revision)` when the key is already active.
    fn check_activate(&self, kid: &Kid) -> Result<Option<u64>, Rejection> {
        let k = self.keys.get(kid).ok_or_else(|| not_found("key", kid))?;
        match k.state {
            KeyState::Published => Ok(None),
            KeyState::Active => Ok(Some(k.changed_revision)),
            s => Err(Rejection::FailedPrecondition(format!(
                "key {kid} is {s:?}; only a published key can be activated"
            ))),
        }
    }

    /// Retirement rules.
    fn check_retire(&self, kid: &Kid, force: bool, at: i64) -> Result<(), Rejection> {
        let k = self.keys.get(kid).ok_or_else(|| not_found("key", kid))?;
        match k.state {
            KeyState::Active => Err(Rejection::FailedPrecondition(format!(
                "key {kid} is active; activate another key first"
            ))),
            KeyState::Retired | KeyState::Revoked => Err(Rejection::FailedPrecondition(format!(
                "key {kid} is already {:?}",
                k.state
            ))),
            _ if !force && k.max_token_exp > at => Err(Rejection::FailedPrecondition(format!(
                "key {kid} signed tokens valid until {}; retire after that or force",
                k.max_token_exp
            ))),
            _ => Ok(()),
        }
    }

    fn retire_key(
        &mut self,
        revision: u64,
        kid: Kid,
        force: bool,
        at: i64,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        self.check_retire(&kid, force, at)?;
        if let Some(k) = self.keys.get_mut(&kid) {
            k.state = KeyState::Retired;
            k.sealed.clear();
            k.changed_revision = revision;
            k.actor = actor.clone();
        }
        Ok(Response::KeyChanged { revision })
    }

    fn rewrap_key(
        &mut self,
        revision: u64,
        kid: Kid,
        sealed: &[u8],
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        let Some(k) = self.keys.get_mut(&kid) else {
            return Err(not_found("key", kid));
        };
        if k.sealed.is_empty() {
            return Err(Rejection::FailedPrecondition(format!(
                "key {kid} is {:?}: its private key is gone, nothing to rewrap",
                k.state
            )));
        }
        if sealed.is_empty() {
            return Err(Rejection::FailedPrecondition(
                "rewrap needs the sealed private key".into(),
            ));
        }
        k.sealed = sealed.to_vec();
        k.actor = actor.clone();
        Ok(Response::KeyChanged { revision })
    }

    fn revoke_key(
        &mut self,
        revision: u64,
        kid: Kid,
        actor: &Actor,
    ) -> Result<Response, Rejection> {
        let Some(k) = self.keys.get_mut(&kid) else {
            return Err(not_found("key", kid));
        };
        if k.state == KeyState::Revoked {
            return Ok(Response::already_revoked(k.changed_revision));
        }
        k.state = KeyState::Revoked;
        k.sealed.clear();
        k.changed_revision = revision;
        k.actor = actor.clone();
        if self.active == Some(kid) {
            self.active = None;
        }
        Ok(Response::revoked(revision))
    }

    fn sweep(&mut self, revision: u64, cutoff: i64) -> Response {
        let before = self.revoked_tokens.len()
            + self.revoked_subjects.len()
            + self.revoked_families.len()
            + self.tokens.len();
        self.swept_through = self.swept_through.max(cutoff);
        self.revoked_tokens.retain(|_, r| r.exp > cutoff);
        self.revoked_subjects.retain(|_, c| c.drop_after > cutoff);
        self.revoked_families.retain(|_, c| c.drop_after > cutoff);
        let expired: Vec<Jti> = self
            .tokens
            .values()
            .filter(|r| r.token.exp <= cutoff)
            .map(|r| r.token.jti)
            .collect();
        for jti in expired {
            if let Some(r) = self.tokens.remove(&jti) {
                self.by_subject.remove(&(r.token.sub, jti));
                self.by_family.remove(&(r.token.fam, jti));
            }
            self.usage.remove(&jti);
        }
        let after = self.revoked_tokens.len()
            + self.revoked_subjects.len()
            + self.revoked_families.len()
            + self.tokens.len();
        Response::Swept {
            revision,
            dropped: (before - after) as u64,
        }
    }

    // ---- queries ----

    /// Checks a key-stage command against the current state without
    /// applying it, so the leader can refuse it before it reaches the log.
    /// Apply performs the same checks deterministically.
    pub fn precheck(&self, cmd: &Command) -> Result<(), Rejection> {
        match cmd.untraced() {
            Command::ActivateKey { kid, .. } => self.check_activate(kid).map(|_| ()),
            Command::RetireKey { kid, force, at, .. } => self.check_retire(kid, *force, *at),
            Command::RevokeKey { kid, .. } | Command::RewrapKey { kid, .. } => self
                .keys
                .get(kid)
                .map(|_| ())
                .ok_or_else(|| not_found("key", kid)),
            _ => Ok(()),
        }
    }

    /// Whether a sweep at `cutoff` would drop anything (so the leader only
    /// proposes sweeps that do work).
    pub fn sweep_due(&self, cutoff: i64) -> bool {
        self.revoked_tokens.values().any(|r| r.exp <= cutoff)
            || self
                .revoked_subjects
                .values()
                .any(|c| c.drop_after <= cutoff)
            || self
                .revoked_families
                .values()
                .any(|c| c.drop_after <= cutoff)
            || self.tokens.values().any(|r| r.token.exp <= cutoff)
    }

    /// The revocation recorded for `jti` itself (not subject/family/key).
    pub fn token_revocation(&self, jti: &Jti) -> Option<&Revocation> {
        self.revoked_tokens.get(jti)
    }

    /// Every token revocation, by jti.
    pub fn revoked_tokens_iter(&self) -> impl Iterator<Item = (&Jti, &Revocation)> {
        self.revoked_tokens.iter()
    }

    /// Every subject cutoff.
    pub fn revoked_subjects_iter(&self) -> impl Iterator<Item = (&String, &Cutoff)> {
        self.revoked_subjects.iter()
    }

    /// Every family revocation.
    pub fn revoked_families_iter(&self) -> impl Iterator<Item = (&Jti, &Cutoff)> {
        self.revoked_families.iter()
    }

    /// The highest sweep cutoff applied (0 before any sweep).
    pub fn swept_through(&self) -> i64 {
        self.swept_through
    }

    /// The latest `exp` among recorded tokens of `sub` (0 if none).
    pub fn subject_max_exp(&self, sub: &str) -> i64 {
        self.by_subject
            .range((sub.to_owned(), Jti([0; 16]))..=(sub.to_owned(), Jti([0xff; 16])))
            .filter_map(|(_, j)| self.tokens.get(j))
            .map(|r| r.token.exp)
            .max()
            .unwrap_or(0)
    }

    /// The latest `exp` among recorded tokens of family `fam` (0 if none).
    pub fn family_max_exp(&self, fam: &Jti) -> i64 {
        self.by_family
            .range((*fam, Jti([0; 16]))..=(*fam, Jti([0xff; 16])))
            .filter_map(|(_, j)| self.tokens.get(j))
            .map(|r| r.token.exp)
            .max()
            .unwrap_or(0)
    }

    /// The cutoff recorded for a subject.
    pub fn subject_cutoff(&self, sub: &str) -> Option<&Cutoff> {
        self.revoked_subjects.get(sub)
    }

    /// The revocation recorded for a family.
    pub fn family_revocation(&self, fam: &Jti) -> Option<&Cutoff> {
        self.revoked_families.get(fam)
    }

    /// Whether any token belongs to `fam`.
    pub fn family_exists(&self, fam: &Jti) -> bool {
        self.by_family
            .range((*fam, Jti([0; 16]))..=(*fam, Jti([0xff; 16])))
            .next()
            .is_some()
    }

    /// The key that signs new tokens.
    pub fn active_key(&self) -> Option<&KeyRecord> {
        self.active.and_then(|k| self.keys.get(&k))
    }

    /// A key by id.
    pub fn key(&self, kid: &Kid) -> Option<&KeyRecord> {
        self.keys.get(kid)
    }

    /// All keys, by id.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// A token record.
    pub fn token(&self, jti: &Jti) -> Option<&TokenRecord> {
        self.tokens.get(jti)
    }

    /// Number of token records.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Number of revocation entries of every kind.
    pub fn revocation_count(&self) -> usize {
        self.revoked_tokens.len() + self.revoked_subjects.len() + self.revoked_families.len()
    }

    /// The revocation that applies to a token, if any (possibly pending).
    pub fn revocation_of(&self, rec: &TokenRecord) -> Option<RevocationInfo> {
        let t = &rec.token;
        if let Some(k) = self.keys.get(&t.kid) {
            if k.state == KeyState::Revoked {
                return Some(RevocationInfo {
                    kind: RevocationKind::Key,
                    revision: k.changed_revision,
                    effective_at: 0,
                    reason: format!("signing key {} revoked", k.kid),
                });
            }
        }
        if let Some(c) = self.revoked_families.get(&t.fam) {
            return Some(cutoff_info(RevocationKind::Family, c));
        }
        if let Some(c) = self.revoked_subjects.get(&t.sub) {
            if c.covers(t.iat, t.rev) {
                return Some(cutoff_info(RevocationKind::Subject, c));
            }
        }
        self.revoked_tokens.get(&t.jti).map(|r| RevocationInfo {
            kind: RevocationKind::Token,
            revision: r.revision,
            effective_at: r.effective_at,
            reason: r.reason.clone(),
        })
    }

    /// A token's status at `now` (unix seconds).
    pub fn status(&self, rec: &TokenRecord, now: i64) -> (TokenStatus, Option<RevocationInfo>) {
        let rev = self.revocation_of(rec);
        let status = match &rev {
            Some(r) if r.effective_at <= now => TokenStatus::Revoked,
            _ if now >= rec.token.exp => TokenStatus::Expired,
            Some(_) => TokenStatus::RevokePending,
            None => TokenStatus::Active,
        };
        (status, rev)
    }

    /// Up to `limit` records matching `f` after `after` (exclusive),
    /// ordered by jti, looking at no more than `scan` records; the second
    /// value is the last record looked at when the scan stopped early (a
    /// caller pages on from there).
    pub fn list_where(
        &self,
        f: &TokenFilter<'_>,
        after: Option<Jti>,
        limit: usize,
        scan: usize,
    ) -> (Vec<&TokenRecord>, Option<Jti>) {
        let mut out = Vec::new();
        let mut last = None;
        for (n, rec) in self.records_after(f.sub, f.family, after).enumerate() {
            if out.len() >= limit {
                return (out, None);
            }
            if n >= scan {
                return (out, last);
            }
            last = Some(rec.token.jti);
            if f.matches(self, rec) {
                out.push(rec);
            }
        }
        (out, None)
    }

    /// Up to `limit` records after `after` (exclusive), ordered by jti,
    /// optionally only of one subject or family.
    pub fn list(
        &self,
        sub: Option<&str>,
        family: Option<Jti>,
        after: Option<Jti>,
        limit: usize,
    ) -> Vec<&TokenRecord> {
        self.records_after(sub, family, after).take(limit).collect()
    }

    /// Records after `after` (exclusive) in jti order, of one subject or
    /// family when given, from the index that holds them.
    fn records_after<'s>(
        &'s self,
        sub: Option<&str>,
        family: Option<Jti>,
        after: Option<Jti>,
    ) -> Box<dyn Iterator<Item = &'s TokenRecord> + 's> {
        if after == Some(Jti([0xff; 16])) {
            return Box::new(std::iter::empty());
        }
        let start = after.map(|a| {
            let mut b = a.0;
            // the next id after `a`
            for i in (0..16).rev() {
                let (v, carry) = b[i].overflowing_add(1);
                b[i] = v;
                if !carry {
                    break;
                }
            }
            Jti(b)
        });
        let lo = start.unwrap_or(Jti([0; 16]));
        let hi = Jti([0xff; 16]);
        let ids: Box<dyn Iterator<Item = Jti> + 's> = match (sub, family) {
            (Some(s), _) => Box::new(
                self.by_subject
                    .range((s.to_owned(), lo)..=(s.to_owned(), hi))
                    .map(|(_, j)| *j)
                    .filter(move |j| {
                        family.is_none_or(|f| self.tokens.get(j).is_some_and(|r| r.token.fam == f))
                    }),
            ),
            (None, Some(f)) => Box::new(self.by_family.range((f, lo)..=(f, hi)).map(|(_, j)| *j)),
            (None, None) => Box::new(self.tokens.range(lo..=hi).map(|(j, _)| *j)),
        };
        Box::new(ids.filter_map(|j| self.tokens.get(&j)))
    }
}

/// What [`State::list_where`] keeps. Empty fields keep everything.
#[derive(Debug, Clone, Default)]
pub struct TokenFilter<'a> {
    /// Only this subject.
    pub sub: Option<&'a str>,
    /// Only this family.
    pub family: Option<Jti>,
    /// Only this owner.
    pub owner: Option<&'a str>,
    /// Only tokens whose labels match.
    pub selector: Option<&'a crate::labels::Selector>,
    /// Only tokens signed by this key.
    pub kid: Option<Kid>,
    /// Only tokens in this status at `now`.
    pub status: Option<TokenStatus>,
    /// Only tokens that expire at or before this (unix seconds), and after `now`.
    pub expires_by: Option<i64>,
    /// Only tokens not verified valid since this time (unix seconds) and
    /// issued before it: "unused for 30 days".
    pub unused_since: Option<i64>,
    /// Only tokens never verified valid at any edge.
    pub never_used: bool,
    /// The reader's time, unix seconds (for status and expiry).
    pub now: i64,
}

impl TokenFilter<'_> {
    /// Whether `rec` passes every set condition.
    pub fn matches(&self, state: &State, rec: &TokenRecord) -> bool {
        let t = &rec.token;
        self.owner.is_none_or(|o| t.owner == o)
            && self.selector.is_none_or(|s| s.matches(&t.labels))
            && self.kid.is_none_or(|k| t.kid == k)
            && self
                .expires_by
                .is_none_or(|by| t.exp <= by && t.exp > self.now)
            && self
                .status
                .is_none_or(|st| state.status(rec, self.now).0 == st)
            && self.usage_matches(state, rec)
    }

    fn usage_matches(&self, state: &State, rec: &TokenRecord) -> bool {
        if !self.never_used && self.unused_since.is_none() {
            return true;
        }
        let last_valid = state
            .usage(&rec.token.jti)
            .filter(|u| u.outcomes.valid > 0)
            .map(|u| u.last_used);
        (!self.never_used || last_valid.is_none())
            && self
                .unused_since
                .is_none_or(|t| rec.token.iat < t && last_valid.is_none_or(|l| l < t))
    }
}

/// Subject and family revocations take effect at their revision, not at a
/// time: `effective_at` 0 says so (as for a revoked key).
fn cutoff_info(kind: RevocationKind, c: &Cutoff) -> RevocationInfo {
    RevocationInfo {
        kind,
        revision: c.revision,
        effective_at: 0,
        reason: c.reason.clone(),
    }
}

/// A revoke's cutoffs, as apply computes them (families have no
/// revision cutoff).
#[derive(Debug, Clone, Copy)]
struct SubjectCut {
    before: i64,
    before_revision: u64,
    drop_after: i64,
}

impl Cutoff {
    fn new(cut: SubjectCut, revision: u64, reason: &str, actor: &Actor) -> Self {
        Cutoff {
            before: cut.before,
            before_revision: cut.before_revision,
            drop_after: cut.drop_after,
            revision,
            reason: reason.to_owned(),
            actor: actor.clone(),
        }
    }
}

fn not_found(what: &str, id: impl std::fmt::Display) -> Rejection {
    Rejection::NotFound {
        what: what.into(),
        id: id.to_string(),
    }
}

#[cfg(test)]
mod tests;
