//! `veto.v1.TokenService`: issue, refresh, revoke and inspect tokens.
//!
//! Every handler validates its input before anything is proposed, so
//! nothing invalid reaches the Raft log; semantic checks (unknown jti,
//! already revoked) run against the leader's applied state first and again,
//! deterministically, inside apply.

use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;
use veto_core::command::{Actor, Command, NewToken, Response as SmResponse};
use veto_core::state::TokenStatus;
use veto_core::{token, validate, Claims, Jti};
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::token_service_server::TokenService;

use crate::convert;
use crate::error::{Error, Result};
use crate::node::{unix_now, Node};
use crate::routed;
use crate::routing::actor;

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
        mut r: pb::RevokeResponse,
        wait_for: i32,
        timeout_ms: u64,
        started: Instant,
    ) -> Result<pb::RevokeResponse> {
        if wait_for != pb::WaitFor::AllEdges as i32 {
            return Ok(r);
        }
        let committed = started + std::time::Duration::from_secs_f64(r.commit_ms / 1e3);
        let limit =
            std::time::Duration::from_millis(if timeout_ms == 0 { 5_000 } else { timeout_ms });
        let deadline = Instant::now() + limit;
        let mut acks = self.hub.subscribe_acks();
        loop {
            let edges = self.hub.cluster_edges().await;
            let live: Vec<_> = edges.iter().filter(|(e, _)| e.connected).collect();
            let behind: Vec<String> = live
                .iter()
                .filter(|(e, _)| e.applied_revision < r.revision)
                .map(|(e, _)| e.edge_id.clone())
                .collect();
            if behind.is_empty() {
                let last = live
                    .iter()
                    .map(|(_, t)| t.saturating_duration_since(committed))
                    .max()
                    .unwrap_or_default();
                r.propagation_ms = Some(last.as_secs_f64() * 1e3);
                r.edges_behind.clear();
                return Ok(r);
            }
            if Instant::now() >= deadline {
                r.propagation_ms = None;
                r.edges_behind = behind;
                return Ok(r);
            }
            tokio::select! {
                _ = acks.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(2)) => {}
            }
        }
    }

    fn new_token(
        &self,
        sub: &str,
        scopes: &[String],
        aud: Option<&str>,
        ttl: u64,
        fam: Option<Jti>,
    ) -> Result<(NewToken, String)> {
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
        };
        let claims = Claims {
            jti,
            sub: t.sub.clone(),
            scope: t.scopes.join(" "),
            iat: t.iat,
            nbf: t.nbf,
            exp: t.exp,
            fam: t.fam,
            aud: t.aud.clone(),
        };
        let s = token::encode(&claims, kid, &key);
        Ok((t, s))
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
        let (t, s) = self.new_token(&r.sub, &r.scopes, r.aud.as_deref(), ttl, None)?;
        let jti = t.jti;
        let started = Instant::now();
        match self
            .node
            .propose(Command::Issue { token: t, actor })
            .await?
        {
            SmResponse::Issued { revision } => {
                veto_telemetry::metrics::counter!(veto_telemetry::ISSUED_TOTAL).increment(1);
                veto_telemetry::metrics::histogram!(veto_telemetry::ISSUE_LATENCY_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                self.issued(jti, s, revision)
            }
            SmResponse::Rejected { rejection, .. } => Err(rejection.into()),
            other => Err(Error::Fatal(format!("unexpected response {other:?}"))),
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
        if succ.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "token {pred} was already refreshed"
            )));
        }
        if status != TokenStatus::Active {
            return Err(Error::FailedPrecondition(format!(
                "token {pred} is {status:?}, not active"
            )));
        }
        let (t, s) = self.new_token(&pt.sub, &pt.scopes, pt.aud.as_deref(), ttl, Some(pt.fam))?;
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

    fn check_wait(&self, wait_for: i32, timeout_ms: u64) -> Result<()> {
        match pb::WaitFor::try_from(wait_for) {
            Ok(pb::WaitFor::Unspecified) => {}
            Ok(pb::WaitFor::AllEdges) => {}
            Err(_) => {
                return Err(
                    validate::Invalid::new("wait_for", format!("unknown value {wait_for}")).into(),
                )
            }
        }
        if timeout_ms > 60_000 {
            return Err(validate::Invalid::new("wait_timeout_ms", "must be at most 60000").into());
        }
        Ok(())
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
                propagation_ms: None,
                edges_behind: vec![],
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
            propagation_ms: None,
            edges_behind: vec![],
        }
    }

    async fn revoke_inner(
        &self,
        r: &pb::RevokeRequest,
        actor: Actor,
    ) -> Result<pb::RevokeResponse> {
        let started = Instant::now();
        let jti: Jti = validate::id("jti", &r.jti)?;
        validate::reason("reason", &r.reason, self.node.limits())?;
        self.check_wait(r.wait_for, r.wait_timeout_ms)?;
        let now = unix_now();
        let known = self.node.state().read(|s| {
            s.token(&jti).map(|_| {
                s.token_revocation(&jti)
                    .filter(|rv| rv.effective_at <= now)
                    .map(|rv| rv.revision)
            })
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
                };
                self.revoke_cmd(cmd, started).await
            }
        }
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
        self.check_wait(r.wait_for, r.wait_timeout_ms)?;
        let now = unix_now();
        let before = match r.before_unix {
            0 => now,
            t if t < 0 => {
                return Err(validate::Invalid::new("before_unix", "must not be negative").into())
            }
            t if t > now => {
                return Err(
                    validate::Invalid::new("before_unix", "must not be in the future").into(),
                )
            }
            t => t,
        };
        if let Some(first) = self.node.state().read(|s| {
            s.subject_cutoff(&r.sub)
                .filter(|c| c.before >= before)
                .map(|c| c.revision)
        }) {
            return Ok(Self::already(first, started));
        }
        let cmd = Command::RevokeSubject {
            sub: r.sub.clone(),
            before,
            drop_after: before.saturating_add(l.max_ttl_seconds as i64),
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
        self.check_wait(r.wait_for, r.wait_timeout_ms)?;
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
                let cmd = Command::RevokeFamily {
                    family,
                    drop_after: now.saturating_add(self.node.limits().max_ttl_seconds as i64),
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
        self.node.linearize().await?;
        let now = unix_now();
        Ok(self.node.state().read(|s| {
            let page = s.list(r.sub.as_deref(), family, after, page_size + 1);
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
                String::new()
            };
            pb::ListTokensResponse {
                tokens,
                next_page_token,
                revision: s.revision,
            }
        }))
    }
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
    }
}

#[tonic::async_trait]
impl TokenService for Service {
    async fn issue(
        &self,
        req: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let span = crate::routing::rpc_span("veto.v1.TokenService/Issue", &req);
        async {
            routed!(
                self.node,
                req,
                TokenServiceClient,
                issue,
                self.issue_local(req.get_ref(), actor(&req))
            )
        }
        .instrument(span)
        .await
    }

    async fn refresh(
        &self,
        req: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let span = crate::routing::rpc_span("veto.v1.TokenService/Refresh", &req);
        async {
            routed!(
                self.node,
                req,
                TokenServiceClient,
                refresh,
                self.refresh_local(req.get_ref(), actor(&req))
            )
        }
        .instrument(span)
        .await
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let span = crate::routing::rpc_span("veto.v1.TokenService/Revoke", &req);
        async {
            routed!(
                self.node,
                req,
                TokenServiceClient,
                revoke,
                self.revoke_local(req.get_ref(), actor(&req))
            )
        }
        .instrument(span)
        .await
    }

    async fn revoke_subject(
        &self,
        req: Request<pb::RevokeSubjectRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let span = crate::routing::rpc_span("veto.v1.TokenService/RevokeSubject", &req);
        async {
            routed!(
                self.node,
                req,
                TokenServiceClient,
                revoke_subject,
                self.revoke_subject_local(req.get_ref(), actor(&req))
            )
        }
        .instrument(span)
        .await
    }

    async fn revoke_family(
        &self,
        req: Request<pb::RevokeFamilyRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        let span = crate::routing::rpc_span("veto.v1.TokenService/RevokeFamily", &req);
        async {
            routed!(
                self.node,
                req,
                TokenServiceClient,
                revoke_family,
                self.revoke_family_local(req.get_ref(), actor(&req))
            )
        }
        .instrument(span)
        .await
    }

    async fn get(
        &self,
        req: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        routed!(
            self.node,
            req,
            TokenServiceClient,
            get,
            self.get_local(req.get_ref())
        )
    }

    async fn list(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        routed!(
            self.node,
            req,
            TokenServiceClient,
            list,
            self.list_local(req.get_ref())
        )
    }
}
