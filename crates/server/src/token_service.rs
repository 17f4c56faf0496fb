//! `veto.v1.TokenService`: issue, refresh, revoke and inspect tokens.
//!
//! Every handler validates its input before anything is proposed, so
//! nothing invalid reaches the Raft log; semantic checks (unknown jti,
//! already revoked) run against the leader's applied state first and again,
//! deterministically, inside apply.

use std::time::Instant;

use tracing::Instrument;
use veto_core::command::{Actor, Command, NewToken, Presented, Rejection, Response as SmResponse};
use veto_core::state::{TokenFilter, TokenStatus};
use veto_core::{token, validate, Claims, Jti};
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::token_service_server::TokenService;

use crate::convert;
use crate::error::{Error, Result};
use crate::node::{unix_now, Node};
use crate::routing::actor;

/// Times an issue or refresh is signed again after a [`Rejection::Conflict`].
const CONFLICT_RETRIES: u32 = 3;

/// Default wait for edges when a request names none, ms.
pub const DEFAULT_EDGE_WAIT_MS: u64 = 5_000;

/// With `WAIT_FOR_ALL_EDGES`, waits (up to `timeout_ms`, 0 for the default)
/// for every edge to apply `r.revision` and fills in what it measured.
pub async fn finish_revoke(
    hub: &crate::feed::Hub,
    mut r: pb::RevokeResponse,
    wait_for: i32,
    timeout_ms: u64,
    started: Instant,
) -> pb::RevokeResponse {
    if wait_for != pb::WaitFor::AllEdges as i32 {
        return r;
    }
    let committed = started + std::time::Duration::from_secs_f64(r.commit_ms.max(0.0) / 1e3);
    let limit = std::time::Duration::from_millis(if timeout_ms == 0 {
        DEFAULT_EDGE_WAIT_MS
    } else {
        timeout_ms
    });
    let w = hub
        .wait_edges(r.revision, committed, Instant::now() + limit)
        .await;
    r.propagation_ms = w.propagation_ms;
    r.edges_behind = w.behind;
    r.edges_unknown = w.unknown;
    r.edges_confirmed = w.confirmed;
    r
}

/// Checks a `wait_for` and its timeout.
pub fn check_wait(wait_for: i32, timeout_ms: u64) -> Result<()> {
    if pb::WaitFor::try_from(wait_for).is_err() {
        return Err(validate::Invalid::new("wait_for", format!("unknown value {wait_for}")).into());
    }
    if timeout_ms > 60_000 {
        return Err(validate::Invalid::new("wait_timeout_ms", "must be at most 60000").into());
    }
    Ok(())
}

/// Records one List page looks at, at most (a selective filter over a
/// large state answers in several pages rather than one long read).
const LIST_SCAN_RECORDS: usize = 100_000;

/// What an issued token carries besides its claims.
#[derive(Debug, Clone)]
struct Meta {
    owner: String,
    description: String,
    labels: veto_core::labels::Labels,
}

/// The TokenService implementation.
#[derive(Clone)]
pub struct Service {
    node: Node,
    hub: crate::feed::Hub,
}

impl Service {
    /// Serves tokens for `node`.
    pub fn new(node: Node, hub: crate::feed::Hub) -> Self {
        Self { node, hub }
    }

    /// With `WAIT_FOR_ALL_EDGES`, waits (up to the timeout) until every
    /// connected edge of every member has acknowledged the revision, and
    /// reports commit -> last ack on this node's clock.
    async fn finish(
        &self,
        r: pb::RevokeResponse,
        wait_for: i32,
        timeout_ms: u64,
        started: Instant,
    ) -> Result<pb::RevokeResponse> {
        Ok(finish_revoke(&self.hub, r, wait_for, timeout_ms, started).await)
    }

    fn new_token(
        &self,
        sub: &str,
        scopes: &[String],
        aud: Option<&str>,
        ttl: u64,
        fam: Option<Jti>,
        meta: Meta,
    ) -> Result<(NewToken, String)> {
        // Read before signing: every revision at or below it was applied
        // here before the token existed.
        let rev = self.node.state().read(|s| s.revision);
        let (kid, key) = self.node.signer()?;
        let now = unix_now();
        let jti = Jti::random();
        let t = NewToken {
            jti,
            sub: sub.to_owned(),
            scopes: scopes.to_vec(),
            aud: aud.map(str::to_owned),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl as i64),
            fam: fam.unwrap_or(jti),
            kid,
            rev,
            owner: meta.owner,
            description: meta.description,
            labels: meta.labels,
            refresh_key: String::new(),
        };
        let s = self.sign(&t, &key);
        Ok((t, s))
    }

    /// The token string of `t` signed with `key` (Ed25519 is deterministic:
    /// the same claims and key give the same string).
    fn sign(&self, t: &NewToken, key: &ed25519_dalek::SigningKey) -> String {
        let claims = Claims {
            jti: t.jti,
            sub: t.sub.clone(),
            scope: t.scopes.join(" "),
            iat: t.iat,
            nbf: t.nbf,
            exp: t.exp,
            fam: t.fam,
            aud: t.aud.clone(),
            rev: t.rev,
        };
        let s = token::encode(&claims, t.kid, key);
        // The scanner form when `token_prefix` is set (crate::leak).
        veto_core::scan::issue_form(self.node.options().token_prefix.as_ref(), s)
    }

    fn issued(&self, jti: Jti, token: String, revision: u64) -> Result<pb::IssueResponse> {
        let record = self
            .node
            .state()
            .read(|s| s.token(&jti).map(convert::record))
            .ok_or_else(|| Error::Fatal(format!("token {jti} missing after apply")))?;
        Ok(pb::IssueResponse {
            token,
            record: Some(record),
            revision,
        })
    }

    async fn issue_local(&self, r: &pb::IssueRequest, actor: Actor) -> Result<pb::IssueResponse> {
        let l = self.node.limits();
        validate::subject("sub", &r.sub, l)?;
        validate::scopes("scopes", &r.scopes, l)?;
        if let Some(a) = &r.aud {
            validate::audience("aud", a, l)?;
        }
        let ttl = validate::ttl("ttl_seconds", r.ttl_seconds, l)?;
        validate::owner("owner", &r.owner, l)?;
        validate::description("description", &r.description, l)?;
        let labels: veto_core::labels::Labels = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validate::labels("labels", &labels)?;
        if let Some((name, p)) = self.issuer_bounds(&actor)? {
            bounded(&name, p.check(&r.sub, &r.scopes, ttl, &labels))?;
        }
        let meta = Meta {
            owner: if r.owner.is_empty() {
                actor.0.clone()
            } else {
                r.owner.clone()
            },
            description: r.description.clone(),
            labels,
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let (t, s) =
                self.new_token(&r.sub, &r.scopes, r.aud.as_deref(), ttl, None, meta.clone())?;
            let jti = t.jti;
            let cmd = Command::Issue {
                token: t,
                actor: actor.clone(),
            };
            match self.node.propose(cmd).await? {
                SmResponse::Issued { revision } => {
                    veto_telemetry::metrics::counter!(veto_telemetry::ISSUED_TOTAL).increment(1);
                    veto_telemetry::metrics::histogram!(veto_telemetry::ISSUE_LATENCY_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return self.issued(jti, s, revision);
                }
                // The subject was revoked while this token was signed: a
                // token signed now has seen the revoke and is not covered.
                SmResponse::Rejected {
                    rejection: Rejection::Conflict(_),
                    ..
                } if attempt < CONFLICT_RETRIES => attempt += 1,
                SmResponse::Rejected { rejection, .. } => return Err(rejection.into()),
                other => return Err(Error::Fatal(format!("unexpected response {other:?}"))),
            }
        }
    }

    async fn refresh_local(
        &self,
        r: &pb::RefreshRequest,
        actor: Actor,
    ) -> Result<pb::RefreshResponse> {
        let l = self.node.limits();
        let pred: Jti = validate::id("jti", &r.jti)?;
        let ttl = validate::ttl("ttl_seconds", r.ttl_seconds, l)?;
        if r.grace_seconds > l.max_grace_seconds {
            return Err(validate::Invalid::new(
                "grace_seconds",
                format!(
                    "{} exceeds the maximum of {} s",
                    r.grace_seconds, l.max_grace_seconds
                ),
            )
            .into());
        }
        let now = unix_now();
        let p = self
            .node
            .state()
            .read(|s| {
                s.token(&pred)
                    .map(|rec| (rec.token.clone(), rec.successor, s.status(rec, now).0))
            })
            .ok_or_else(|| {
                Error::Rejected(veto_core::command::Rejection::NotFound {
                    what: "token".into(),
                    id: pred.to_string(),
                })
            })?;
        let (pt, succ, status) = p;
        if let Some((name, p)) = self.issuer_bounds(&actor)? {
            bounded(&name, p.check(&pt.sub, &pt.scopes, ttl, &pt.labels))?;
        }
        let refresh_key = idempotency_hash(&r.idempotency_key)?;
        if let (Some(sj), false) = (succ, refresh_key.is_empty()) {
            // A retry of a refresh that went through: the same successor.
            let again = self.node.state().read(|s| {
                s.token(&sj)
                    .filter(|rec| rec.token.refresh_key == refresh_key)
                    .map(|rec| (rec.token.clone(), rec.issued_revision))
                    .zip(s.token_revocation(&pred).map(|rv| rv.effective_at))
            });
            if let Some(((t, revision), revoke_at)) = again {
                let key = self.node.signer_for(t.kid)?;
                let token = self.sign(&t, &key);
                return Ok(pb::RefreshResponse {
                    successor: Some(self.issued(t.jti, token, revision)?),
                    predecessor_revoked_at_unix: revoke_at,
                });
            }
        }
        if succ.is_some() {
            // The predecessor is being rotated a second time: two parties
            // hold it. Its whole family dies (refresh-reuse detection).
            let revoke = pb::RevokeFamilyRequest {
                family: pt.fam.to_string(),
                reason: format!("refresh reuse: token {pred} was refreshed again after rotation"),
                ..Default::default()
            };
            let r = self.revoke_family_inner(&revoke, actor).await?;
            record_revoke("family", &r);
            return Err(Error::FailedPrecondition(format!(
                "token {pred} was already refreshed: reuse detected, its family {} is revoked (revision {})",
                pt.fam, r.revision
            )));
        }
        if status != TokenStatus::Active {
            return Err(Error::FailedPrecondition(format!(
                "token {pred} is {status:?}, not active"
            )));
        }
        // The successor carries on the predecessor's owner, description and labels.
        let meta = Meta {
            owner: pt.owner.clone(),
            description: pt.description.clone(),
            labels: pt.labels.clone(),
        };
        let (mut t, _) = self.new_token(
            &pt.sub,
            &pt.scopes,
            pt.aud.as_deref(),
            ttl,
            Some(pt.fam),
            meta,
        )?;
        t.refresh_key = refresh_key;
        let key = self.node.signer_for(t.kid)?;
        let s = self.sign(&t, &key);
        let jti = t.jti;
        let revoke_at = now.saturating_add(r.grace_seconds as i64);
        let cmd = Command::Refresh {
            predecessor: pred,
            successor: t,
            revoke_at,
            at: now,
            actor,
        };
        match self.node.propose(cmd).await? {
            SmResponse::Issued { revision } => Ok(pb::RefreshResponse {
                successor: Some(self.issued(jti, s, revision)?),
                predecessor_revoked_at_unix: revoke_at,
            }),
            SmResponse::Rejected { rejection, .. } => Err(rejection.into()),
            other => Err(Error::Fatal(format!("unexpected response {other:?}"))),
        }
    }

    /// Refresh by a holder presenting the token: the signature proves
    /// possession; the successor copies the predecessor and lives no
    /// longer than it did.
    async fn refresh_presented_local(
        &self,
        r: &pb::RefreshPresentedRequest,
        actor: Actor,
    ) -> Result<pb::RefreshResponse> {
        let (jti, _) = self.presented(&r.token)?;
        let lifetime = self
            .node
            .state()
            .read(|s| s.token(&jti).map(|rec| rec.token.exp - rec.token.iat))
            .ok_or_else(|| {
                Error::Rejected(veto_core::command::Rejection::NotFound {
                    what: "token".into(),
                    id: jti.to_string(),
                })
            })?;
        let lifetime = u64::try_from(lifetime.max(1)).unwrap_or(1);
        let ttl = match r.ttl_seconds {
            0 => lifetime,
            t if t > lifetime => {
                return Err(validate::Invalid::new(
                    "ttl_seconds",
                    format!("{t} exceeds the presented token's own lifetime of {lifetime} s"),
                )
                .into())
            }
            t => t,
        };
        let req = pb::RefreshRequest {
            jti: jti.to_string(),
            ttl_seconds: ttl.min(self.node.limits().max_ttl_seconds),
            grace_seconds: r.grace_seconds,
            idempotency_key: r.idempotency_key.clone(),
        };
        self.refresh_local(&req, actor).await
    }

    async fn usage_local(&self, r: &pb::UsageRequest) -> Result<pb::UsageResponse> {
        let by_subject = match r.group_by.as_str() {
            "" | "owner" => false,
            "subject" => true,
            _ => {
                return Err(
                    validate::Invalid::new("group_by", "must be \"owner\" or \"subject\"").into(),
                )
            }
        };
        let limit = match r.limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(validate::Invalid::new("limit", "must be at most 10000").into())
            }
            n => n as usize,
        };
        self.node.linearize().await?;
        let now = unix_now();
        let state = self.node.state().clone();
        let window = r.window_seconds;
        // O(tokens): off the async workers, and in pages so applies (and so
        // revocations) never wait long for the state lock.
        tokio::task::spawn_blocking(move || {
            let mut sum = Summary::new(now, by_subject, window, limit);
            let mut after = None;
            loop {
                let next = state.read(|s| {
                    let page = s.records_page(after, crate::rotation::USAGE_PAGE);
                    for rec in &page {
                        sum.add(s, rec);
                    }
                    page.last().map(|r| r.token.jti)
                });
                match next {
                    Some(j) => after = Some(j),
                    None => break,
                }
            }
            let revision = state.read(|s| s.revision);
            sum.finish(revision)
        })
        .await
        .map_err(|e| Error::Internal(format!("usage summary: {e}")))
    }

    /// The issuer policy bounding `actor` (an `issuer:NAME` certificate),
    /// `None` for every other role. An issuer without a policy may do
    /// nothing.
    fn issuer_bounds(
        &self,
        actor: &Actor,
    ) -> Result<Option<(String, veto_core::policy::IssuerPolicy)>> {
        let Some(name) = actor.0.strip_prefix("issuer:") else {
            return Ok(None);
        };
        let p = self
            .node
            .state()
            .read(|s| s.issuer_policy(name).cloned())
            .ok_or_else(|| {
                Error::PermissionDenied(format!(
                    "issuer {name} has no policy; an operator sets one with `veto policy set-issuer {name}`"
                ))
            })?;
        Ok(Some((name.to_owned(), p)))
    }

    async fn revoke_local(
        &self,
        r: &pb::RevokeRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let resp = self.revoke_inner(r, actor).await?;
        record_revoke("token", &resp);
        self.finish(resp, r.wait_for, r.wait_timeout_ms, started)
            .await
    }

    async fn revoke_subject_local(
        &self,
        r: &pb::RevokeSubjectRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let resp = self.revoke_subject_inner(r, actor).await?;
        record_revoke("subject", &resp);
        self.finish(resp, r.wait_for, r.wait_timeout_ms, started)
            .await
    }

    async fn revoke_family_local(
        &self,
        r: &pb::RevokeFamilyRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let resp = self.revoke_family_inner(r, actor).await?;
        record_revoke("family", &resp);
        self.finish(resp, r.wait_for, r.wait_timeout_ms, started)
            .await
    }

    async fn revoke_selector_local(
        &self,
        r: &pb::RevokeSelectorRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let selector = validate::selector("selector", &r.selector)?;
        validate::reason("reason", &r.reason, self.node.limits())?;
        check_wait(r.wait_for, r.wait_timeout_ms)?;
        let cmd = Command::RevokeSelector {
            selector,
            reason: r.reason.clone(),
            at: unix_now(),
            actor,
        };
        let resp = self.revoke_cmd(cmd, started).await?;
        record_revoke("selector", &resp);
        self.finish(resp, r.wait_for, r.wait_timeout_ms, started)
            .await
    }

    async fn revoke_cmd(&self, cmd: Command, started: Instant) -> Result<pb::RevokeResponse> {
        // The commit span's context rides inside the command, so every
        // edge's apply joins this trace.
        let span = tracing::info_span!(
            "raft.commit",
            otel.name = "raft.commit",
            command = cmd.name(),
            revision = tracing::field::Empty,
        );
        let cmd = match span.in_scope(veto_telemetry::trace::current_context) {
            Some(trace) => Command::Traced {
                trace,
                command: Box::new(cmd),
            },
            None => cmd,
        };
        let resp = self.node.propose(cmd).instrument(span.clone()).await?;
        if let SmResponse::Revoked { revision, .. } = &resp {
            span.record("revision", *revision);
        }
        match resp {
            SmResponse::Revoked { revision, already } => Ok(pb::RevokeResponse {
                revision,
                already_revoked: already,
                commit_ms: started.elapsed().as_secs_f64() * 1e3,
                ..Default::default()
            }),
            SmResponse::Rejected { rejection, .. } => Err(rejection.into()),
            other => Err(Error::Fatal(format!("unexpected response {other:?}"))),
        }
    }

    fn already(revision: u64, started: Instant) -> pb::RevokeResponse {
        pb::RevokeResponse {
            revision,
            already_revoked: true,
            commit_ms: started.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        }
    }

    async fn revoke_inner(
        &self,
        r: &pb::RevokeRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        validate::reason("reason", &r.reason, self.node.limits())?;
        check_wait(r.wait_for, r.wait_timeout_ms)?;
        let (jti, presented) = match (r.jti.is_empty(), r.token.is_empty()) {
            (false, true) => (validate::id::<Jti>("jti", &r.jti)?, None),
            (true, false) => {
                let (jti, p) = self.presented(&r.token)?;
                (jti, Some(p))
            }
            _ => {
                return Err(validate::Invalid::new(
                    "jti",
                    "exactly one of jti and token must be set",
                )
                .into())
            }
        };
        let now = unix_now();
        if let Some((name, p)) = self.issuer_bounds(&actor)? {
            let sub = self
                .node
                .state()
                .read(|s| s.token(&jti).map(|t| t.token.sub.clone()));
            let sub = sub.or_else(|| presented.as_ref().map(|p| p.sub.clone()));
            if let Some(sub) = sub.filter(|sub| !p.allows_subject(sub)) {
                return Err(Error::PermissionDenied(format!(
                    "issuer policy {name}: jti: the token's subject {sub:?} is outside the policy"
                )));
            }
        }
        let known = self.node.state().read(|s| {
            let pending = || {
                s.token_revocation(&jti)
                    .filter(|rv| rv.effective_at <= now)
                    .map(|rv| rv.revision)
            };
            match s.token(&jti) {
                Some(_) => Some(pending()),
                None if presented.is_some() => Some(pending()),
                None => None,
            }
        });
        match known {
            None => Err(veto_core::command::Rejection::NotFound {
                what: "token".into(),
                id: jti.to_string(),
            }
            .into()),
            Some(Some(first)) => Ok(Self::already(first, started)),
            Some(None) => {
                let cmd = Command::RevokeToken {
                    jti,
                    reason: r.reason.clone(),
                    at: now,
                    actor,
                    presented,
                };
                self.revoke_cmd(cmd, started).await
            }
        }
    }

    /// Checks a presented token's signature under the cluster's keys (any
    /// stage: a retired or revoked key's token may still be revoked) and
    /// returns what a revoke needs from it. The token is never logged.
    fn presented(&self, token_str: &str) -> Result<(Jti, Presented)> {
        let l = self.node.limits();
        let parsed = token::parse(token_str, l.max_token_bytes)
            .map_err(|e| validate::Invalid::new("token", e.to_string()))?;
        let public = self
            .node
            .state()
            .read(|s| s.key(&parsed.kid).map(|k| k.public))
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "token is signed with key {}, which this cluster does not know",
                    parsed.kid
                ))
            })?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| Error::Fatal(format!("stored public key {} is invalid", parsed.kid)))?;
        parsed
            .verify_signature(&vk)
            .map_err(|_| Error::Unauthenticated("token signature does not verify".to_string()))?;
        let c = parsed.claims;
        Ok((
            c.jti,
            Presented {
                exp: c.exp,
                sub: c.sub,
                kid: parsed.kid,
            },
        ))
    }

    async fn revoke_subject_inner(
        &self,
        r: &pb::RevokeSubjectRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let l = self.node.limits();
        validate::subject("sub", &r.sub, l)?;
        validate::reason("reason", &r.reason, l)?;
        check_wait(r.wait_for, r.wait_timeout_ms)?;
        let now = unix_now();
        // 0: everything issued before this revoke, by revision (exact on
        // any clock). A time cutoff must lie in a past second, so a token
        // issued after the answer (this second or later) is never covered.
        let (before, by_revision) = match r.before_unix {
            0 => (i64::MIN, true),
            t if t < 0 => {
                return Err(validate::Invalid::new("before_unix", "must not be negative").into())
            }
            t if t >= now => {
                return Err(validate::Invalid::new(
                    "before_unix",
                    "must be in a past second; 0 revokes every token issued so far",
                )
                .into())
            }
            t => (t, false),
        };
        let (already, max_exp) = self.node.state().read(|s| {
            let already = s
                .subject_cutoff(&r.sub)
                .filter(|c| !by_revision && c.before >= before)
                .map(|c| c.revision);
            (already, s.subject_max_exp(&r.sub))
        });
        if let Some(first) = already {
            return Ok(Self::already(first, started));
        }
        // Kept until every token it can cover has expired: those recorded,
        // and any signed up to now with the longest lifetime.
        let horizon = if by_revision { now } else { before };
        let cmd = Command::RevokeSubject {
            sub: r.sub.clone(),
            before,
            by_revision,
            drop_after: horizon
                .saturating_add(l.max_ttl_seconds as i64)
                .max(max_exp),
            reason: r.reason.clone(),
            at: now,
            actor,
        };
        self.revoke_cmd(cmd, started).await
    }

    async fn revoke_family_inner(
        &self,
        r: &pb::RevokeFamilyRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let family: Jti = validate::id("family", &r.family)?;
        validate::reason("reason", &r.reason, self.node.limits())?;
        check_wait(r.wait_for, r.wait_timeout_ms)?;
        let known = self.node.state().read(|s| {
            if let Some(c) = s.family_revocation(&family) {
                return Some(Some(c.revision));
            }
            s.family_exists(&family).then_some(None)
        });
        match known {
            None => Err(veto_core::command::Rejection::NotFound {
                what: "family".into(),
                id: family.to_string(),
            }
            .into()),
            Some(Some(first)) => Ok(Self::already(first, started)),
            Some(None) => {
                let now = unix_now();
                let max_exp = self.node.state().read(|s| s.family_max_exp(&family));
                let cmd = Command::RevokeFamily {
                    family,
                    drop_after: now
                        .saturating_add(self.node.limits().max_ttl_seconds as i64)
                        .max(max_exp),
                    reason: r.reason.clone(),
                    at: now,
                    actor,
                };
                self.revoke_cmd(cmd, started).await
            }
        }
    }

    async fn get_local(&self, r: &pb::GetTokenRequest) -> Result<pb::TokenInfo> {
        let jti: Jti = validate::id("jti", &r.jti)?;
        self.node.linearize().await?;
        let now = unix_now();
        self.node
            .state()
            .read(|s| s.token(&jti).map(|rec| info(s, rec, now)))
            .ok_or_else(|| {
                veto_core::command::Rejection::NotFound {
                    what: "token".into(),
                    id: jti.to_string(),
                }
                .into()
            })
    }

    async fn list_local(&self, r: &pb::ListTokensRequest) -> Result<pb::ListTokensResponse> {
        let l = self.node.limits();
        if let Some(s) = &r.sub {
            validate::subject("sub", s, l)?;
        }
        let family = r
            .family
            .as_deref()
            .map(|f| validate::id::<Jti>("family", f))
            .transpose()?;
        let page_size = match r.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(validate::Invalid::new("page_size", "must be at most 1000").into())
            }
            n => n as usize,
        };
        let after = match r.page_token.as_str() {
            "" => None,
            t => Some(validate::id::<Jti>("page_token", t)?),
        };
        if let Some(o) = &r.owner {
            validate::subject("owner", o, l)?;
        }
        let selector = r
            .selector
            .as_deref()
            .map(|s| validate::selector("selector", s))
            .transpose()?;
        let kid = r
            .kid
            .as_deref()
            .map(|k| validate::id::<veto_core::Kid>("kid", k))
            .transpose()?;
        let status = pb::TokenStatus::try_from(r.status)
            .map_err(|_| validate::Invalid::new("status", format!("unknown value {}", r.status)))?;
        self.node.linearize().await?;
        let now = unix_now();
        let filter = TokenFilter {
            sub: r.sub.as_deref(),
            family,
            owner: r.owner.as_deref(),
            selector: selector.as_ref(),
            kid,
            status: convert::status_from(status),
            expires_by: (r.expires_within_seconds > 0)
                .then(|| now.saturating_add(r.expires_within_seconds.min(i64::MAX as u64) as i64)),
            unused_since: (r.unused_for_seconds > 0)
                .then(|| now.saturating_sub(r.unused_for_seconds.min(i64::MAX as u64) as i64)),
            never_used: r.never_used,
            now,
        };
        Ok(self.node.state().read(|s| {
            let (page, stopped) = s.list_where(&filter, after, page_size + 1, LIST_SCAN_RECORDS);
            let more = page.len() > page_size;
            let tokens: Vec<pb::TokenInfo> = page
                .iter()
                .take(page_size)
                .map(|rec| info(s, rec, now))
                .collect();
            let next_page_token = if more {
                tokens
                    .last()
                    .and_then(|t| t.record.as_ref())
                    .map(|r| r.jti.clone())
                    .unwrap_or_default()
            } else {
                stopped.map(|j| j.to_string()).unwrap_or_default()
            };
            pb::ListTokensResponse {
                tokens,
                next_page_token,
                revision: s.revision,
            }
        }))
    }
}

/// SHA-256 (hex) of a refresh's idempotency key; empty when none is sent.
fn idempotency_hash(key: &str) -> Result<String> {
    if key.is_empty() {
        return Ok(String::new());
    }
    if !(16..=128).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(validate::Invalid::new(
            "idempotency_key",
            "16 to 128 printable ASCII characters (a random value per refresh)",
        )
        .into());
    }
    use sha2::Digest;
    Ok(sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A policy check's answer as a gRPC error naming the field.
fn bounded(name: &str, r: std::result::Result<(), veto_core::policy::Violation>) -> Result<()> {
    r.map_err(|v| Error::PermissionDenied(format!("issuer policy {name}: {v}")))
}

fn record_revoke(kind: &'static str, r: &pb::RevokeResponse) {
    use veto_telemetry::metrics::{counter, histogram};
    if !r.already_revoked {
        counter!(veto_telemetry::REVOKES_TOTAL, "kind" => kind).increment(1);
        histogram!(veto_telemetry::REVOKE_LATENCY_SECONDS).record(r.commit_ms / 1e3);
    }
}

fn info(s: &veto_core::State, rec: &veto_core::state::TokenRecord, now: i64) -> pb::TokenInfo {
    let (status, rev) = s.status(rec, now);
    pb::TokenInfo {
        record: Some(convert::record(rec)),
        status: convert::status(status) as i32,
        revocation: rev.as_ref().map(convert::revocation),
        revision: s.revision,
        usage: s.usage(&rec.token.jti).map(|u| pb::TokenUsageInfo {
            valid: u.outcomes.valid,
            revoked: u.outcomes.revoked,
            refused: u.outcomes.refused,
            first_used_unix: u.first_used,
            last_used_unix: u.last_used,
            edges: u.edges.iter().cloned().collect(),
            scopes_required: u.scopes_required.iter().cloned().collect(),
            scopes_unused: u
                .unused_scopes(&rec.token.scopes)
                .into_iter()
                .cloned()
                .collect(),
        }),
    }
}

/// A usage summary being built page by page (see `TokenService.Usage`).
struct Summary {
    now: i64,
    by_subject: bool,
    window_start: i64,
    limit: usize,
    groups: std::collections::BTreeMap<String, pb::UsageGroup>,
    over: Vec<pb::OverPrivileged>,
    active: u64,
    never: u64,
    used: u64,
    least: u64,
}

impl Summary {
    fn new(now: i64, by_subject: bool, window_seconds: u64, limit: usize) -> Self {
        Self {
            now,
            by_subject,
            window_start: now.saturating_sub(window_seconds.min(i64::MAX as u64) as i64),
            limit,
            groups: Default::default(),
            over: Vec::new(),
            active: 0,
            never: 0,
            used: 0,
            least: 0,
        }
    }

    fn add(&mut self, s: &veto_core::State, rec: &veto_core::state::TokenRecord) {
        let t = &rec.token;
        let key = if self.by_subject { &t.sub } else { &t.owner };
        let g = self.groups.entry(key.clone()).or_default();
        g.tokens += 1;
        let u = s.usage(&t.jti);
        if let Some(u) = u {
            g.verifies += u.outcomes.total();
            g.revoked_attempts += u.outcomes.revoked;
            g.last_used_unix = g.last_used_unix.max(u.last_used);
        }
        if s.status(rec, self.now).0 != TokenStatus::Active {
            return;
        }
        g.active += 1;
        self.active += 1;
        let Some(u) = u.filter(|u| u.outcomes.valid > 0) else {
            g.never_used += 1;
            self.never += 1;
            return;
        };
        if t.iat > self.window_start {
            return;
        }
        self.used += 1;
        let unused = u.unused_scopes(&t.scopes);
        if unused.is_empty() {
            self.least += 1;
        } else if self.over.len() < self.limit {
            self.over.push(pb::OverPrivileged {
                jti: t.jti.to_string(),
                sub: t.sub.clone(),
                owner: t.owner.clone(),
                granted: t.scopes.clone(),
                unused: unused.into_iter().cloned().collect(),
                verifies: u.outcomes.valid,
            });
        }
    }

    fn finish(self, revision: u64) -> pb::UsageResponse {
        let mut groups: Vec<pb::UsageGroup> = self
            .groups
            .into_iter()
            .map(|(k, mut g)| {
                g.key = k;
                g
            })
            .collect();
        groups.sort_by(|a, b| b.verifies.cmp(&a.verifies).then(a.key.cmp(&b.key)));
        groups.truncate(self.limit);
        pb::UsageResponse {
            groups,
            over_privileged: self.over,
            least_privilege_ratio: if self.used == 0 {
                1.0
            } else {
                self.least as f64 / self.used as f64
            },
            active: self.active,
            never_used: self.never,
            revision,
        }
    }
}

crate::rpc_service! {
    impl TokenService, client TokenServiceClient, for Service;
    routed {
        issue(pb::IssueRequest) -> pb::IssueResponse, "veto.v1.TokenService/Issue" =
            |s, r| s.issue_local(r.get_ref(), actor(r));
        refresh(pb::RefreshRequest) -> pb::RefreshResponse, "veto.v1.TokenService/Refresh" =
            |s, r| s.refresh_local(r.get_ref(), actor(r));
        refresh_presented(pb::RefreshPresentedRequest) -> pb::RefreshResponse,
            "veto.v1.TokenService/RefreshPresented" =
            |s, r| s.refresh_presented_local(r.get_ref(), actor(r));
        revoke(pb::RevokeRequest) -> pb::RevokeResponse, "veto.v1.TokenService/Revoke" =
            |s, r| s.revoke_local(r.get_ref(), actor(r));
        revoke_subject(pb::RevokeSubjectRequest) -> pb::RevokeResponse,
            "veto.v1.TokenService/RevokeSubject" =
            |s, r| s.revoke_subject_local(r.get_ref(), actor(r));
        revoke_family(pb::RevokeFamilyRequest) -> pb::RevokeResponse,
            "veto.v1.TokenService/RevokeFamily" =
            |s, r| s.revoke_family_local(r.get_ref(), actor(r));
        get(pb::GetTokenRequest) -> pb::TokenInfo, "veto.v1.TokenService/Get" =
            |s, r| s.get_local(r.get_ref());
        revoke_selector(pb::RevokeSelectorRequest) -> pb::RevokeResponse,
            "veto.v1.TokenService/RevokeSelector" =
            |s, r| s.revoke_selector_local(r.get_ref(), actor(r));
        list(pb::ListTokensRequest) -> pb::ListTokensResponse, "veto.v1.TokenService/List" =
            |s, r| s.list_local(r.get_ref());
        usage(pb::UsageRequest) -> pb::UsageResponse, "veto.v1.TokenService/Usage" =
            |s, r| s.usage_local(r.get_ref());
    }
    local {}
}
