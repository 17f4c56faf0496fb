//! `veto.v1.AdminService`: membership, status and signing-key stages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::{Request, Response, Status};
use veto_core::command::{Actor, Command, Response as SmResponse};
use veto_core::validate::{self, Invalid};
use veto_core::Kid;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::admin_service_server::AdminService;

use crate::convert;
use crate::error::{Error, Result};
use crate::node::{membership_err, unix_now, Node};
use crate::routing::actor;

/// The AdminService implementation.
#[derive(Clone)]
pub struct Service {
    node: Node,
    advertised: String,
    hub: crate::feed::Hub,
}

impl Service {
    /// Serves administration for `node`, reachable at `advertised`.
    pub fn new(node: Node, advertised: String, hub: crate::feed::Hub) -> Self {
        Self {
            node,
            advertised,
            hub,
        }
    }

    fn membership(&self) -> pb::MembershipInfo {
        let m = self.node.metrics();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        let mut info = pb::MembershipInfo::default();
        for (id, n) in mem.nodes() {
            let member = pb::Member {
                node_id: *id,
                addr: n.addr.clone(),
            };
            if voters.contains(id) {
                info.voters.push(member);
            } else {
                info.learners.push(member);
            }
        }
        info
    }

    fn membership_response(&self, revision: u64) -> pb::MembershipResponse {
        pb::MembershipResponse {
            revision,
            membership: Some(self.membership()),
        }
    }

    async fn add_learner_local(&self, r: &pb::AddLearnerRequest) -> Result<pb::MembershipResponse> {
        let m = r
            .member
            .as_ref()
            .ok_or_else(|| Invalid::new("member", "is required"))?;
        check_member(m)?;
        if self
            .node
            .metrics()
            .membership_config
            .membership()
            .get_node(&m.node_id)
            .is_some()
        {
            return Err(Error::FailedPrecondition(format!(
                "node {} is already a member",
                m.node_id
            )));
        }
        let res = self
            .node
            .raft()
            .add_learner(m.node_id, BasicNode::new(m.addr.clone()), r.blocking)
            .await
            .map_err(membership_err)?;
        Ok(self.membership_response(res.log_id.index))
    }

    async fn change_local(
        &self,
        change: ChangeMembers<u64, BasicNode>,
        retain: bool,
    ) -> Result<pb::MembershipResponse> {
        let res = self
            .node
            .raft()
            .change_membership(change, retain)
            .await
            .map_err(membership_err)?;
        Ok(self.membership_response(res.log_id.index))
    }

    async fn promote_local(&self, r: &pb::PromoteRequest) -> Result<pb::MembershipResponse> {
        let m = self.node.metrics();
        let mem = m.membership_config.membership();
        if mem.get_node(&r.node_id).is_none() {
            return Err(not_a_member(r.node_id));
        }
        if mem.voter_ids().any(|v| v == r.node_id) {
            return Err(Error::FailedPrecondition(format!(
                "node {} is already a voter",
                r.node_id
            )));
        }
        self.change_local(
            ChangeMembers::AddVoterIds(BTreeSet::from([r.node_id])),
            false,
        )
        .await
    }

    async fn change_membership_local(
        &self,
        r: &pb::ChangeMembershipRequest,
    ) -> Result<pb::MembershipResponse> {
        let voters: BTreeSet<u64> = r.voters.iter().copied().collect();
        if voters.is_empty() {
            return Err(Invalid::new("voters", "must not be empty").into());
        }
        if voters.len() != r.voters.len() {
            return Err(Invalid::new("voters", "must not repeat an id").into());
        }
        let m = self.node.metrics();
        for v in &voters {
            if m.membership_config.membership().get_node(v).is_none() {
                return Err(Invalid::new(
                    "voters",
                    format!("node {v} is not a member; add it as a learner first"),
                )
                .into());
            }
        }
        self.change_local(ChangeMembers::ReplaceAllVoters(voters), r.retain)
            .await
    }

    async fn remove_local(&self, r: &pb::RemoveRequest) -> Result<pb::MembershipResponse> {
        let m = self.node.metrics();
        let mem = m.membership_config.membership();
        if mem.get_node(&r.node_id).is_none() {
            return Err(not_a_member(r.node_id));
        }
        let set = BTreeSet::from([r.node_id]);
        if mem.voter_ids().any(|v| v == r.node_id) {
            if mem.voter_ids().count() == 1 {
                return Err(Error::FailedPrecondition(
                    "cannot remove the last voter".into(),
                ));
            }
            self.change_local(ChangeMembers::RemoveVoters(set.clone()), false)
                .await?;
        }
        self.change_local(ChangeMembers::RemoveNodes(set), false)
            .await
    }

    async fn transfer_local(
        &self,
        r: &pb::TransferLeaderRequest,
    ) -> Result<pb::TransferLeaderResponse> {
        let to = r.to_node_id;
        let m = self.node.metrics();
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == to)
        {
            return Err(Invalid::new("to_node_id", format!("node {to} is not a voter")).into());
        }
        if to == self.node.id() {
            return Ok(pb::TransferLeaderResponse { leader_id: to });
        }
        self.node
            .raft()
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Fatal(e.to_string()))?;
        let waited = self
            .node
            .raft()
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != Some(self.node.id()),
                "leadership moved",
            )
            .await;
        match waited {
            Ok(m) => Ok(pb::TransferLeaderResponse {
                leader_id: m.current_leader.unwrap_or(0),
            }),
            Err(e) => Err(Error::Timeout(format!(
                "leadership did not move to node {to}: {e}"
            ))),
        }
    }

    async fn rotate_local(
        &self,
        r: &pb::RotateSigningKeyRequest,
        actor: Actor,
    ) -> Result<pb::RotateSigningKeyResponse> {
        validate::reason("reason", &r.reason, self.node.limits())?;
        crate::token_service::check_wait(r.wait_for, r.wait_timeout_ms)?;
        let started = std::time::Instant::now();
        let stage = pb::KeyStage::try_from(r.stage)
            .map_err(|_| Invalid::new("stage", format!("unknown value {}", r.stage)))?;
        let (kid, cmd) = self.key_command(r, stage, actor).await?;
        self.node.state().read(|s| s.precheck(&cmd))?;
        let (revision, already) = match self.node.propose(cmd).await? {
            SmResponse::KeyChanged { revision } => (revision, false),
            SmResponse::Revoked { revision, already } => (revision, already),
            SmResponse::Rejected { rejection, .. } => return Err(rejection.into()),
            other => return Err(Error::Fatal(format!("unexpected response {other:?}"))),
        };
        // A key revoke is a revoke: it can wait for the edges and report
        // its propagation like the others.
        let edges = if stage == pb::KeyStage::Revoke {
            let r0 = pb::RevokeResponse {
                revision,
                already_revoked: already,
                commit_ms: started.elapsed().as_secs_f64() * 1e3,
                ..Default::default()
            };
            Some(
                crate::token_service::finish_revoke(
                    &self.hub,
                    r0,
                    r.wait_for,
                    r.wait_timeout_ms,
                    started,
                )
                .await,
            )
        } else {
            None
        };
        let keys = self
            .node
            .state()
            .read(|s| s.keys().map(convert::key).collect());
        Ok(pb::RotateSigningKeyResponse {
            kid: kid.to_string(),
            revision,
            keys,
            edges,
        })
    }

    /// The command for one rotation stage; activation first waits until
    /// every connected edge knows the key, unless forced.
    async fn key_command(
        &self,
        r: &pb::RotateSigningKeyRequest,
        stage: pb::KeyStage,
        actor: Actor,
    ) -> Result<(Kid, Command)> {
        if stage == pb::KeyStage::Unspecified {
            return Err(Invalid::new("stage", "is required").into());
        }
        if stage == pb::KeyStage::Publish {
            return Ok(self.node.new_key_command(actor));
        }
        let kid = validate::id::<Kid>("kid", &r.kid)?;
        let at = unix_now();
        let cmd = match stage {
            pb::KeyStage::Activate => {
                if !r.force {
                    self.wait_edges_know_key(kid, r.wait_timeout_ms).await?;
                }
                Command::ActivateKey { kid, at, actor }
            }
            pb::KeyStage::Retire => Command::RetireKey {
                kid,
                force: r.force,
                at,
                actor,
            },
            _ => Command::RevokeKey {
                kid,
                reason: r.reason.clone(),
                at,
                actor,
            },
        };
        Ok((kid, cmd))
    }

    /// Waits until every connected edge has applied the publish of `kid`.
    async fn wait_edges_know_key(&self, kid: Kid, timeout_ms: u64) -> Result<()> {
        let published = self
            .node
            .state()
            .read(|s| s.key(&kid).map(|k| k.published_revision))
            .ok_or_else(|| {
                Error::Rejected(veto_core::command::Rejection::NotFound {
                    what: "key".into(),
                    id: kid.to_string(),
                })
            })?;
        let limit = Duration::from_millis(if timeout_ms == 0 {
            10_000
        } else {
            timeout_ms.min(60_000)
        });
        let now = std::time::Instant::now();
        let w = self.hub.wait_edges(published, now, now + limit).await;
        if w.behind.is_empty() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "edges have not learned key {kid} (published at revision {published}): {}; retry or force",
            w.behind.join(", ")
        )))
    }

    /// Initialises a new cluster of `r.members` (this node alone if none)
    /// and waits for its first leader.
    async fn init_local(&self, r: pb::InitRequest) -> Result<pb::InitResponse> {
        let mut members = BTreeMap::new();
        if r.members.is_empty() {
            members.insert(self.node.id(), BasicNode::new(self.advertised.clone()));
        }
        for m in &r.members {
            check_member(m)?;
            if members
                .insert(m.node_id, BasicNode::new(m.addr.clone()))
                .is_some()
            {
                return Err(
                    Invalid::new("members", format!("node {} listed twice", m.node_id)).into(),
                );
            }
        }
        if !members.contains_key(&self.node.id()) {
            return Err(Invalid::new(
                "members",
                format!("must include this node ({})", self.node.id()),
            )
            .into());
        }
        // A new cluster gets a new id; every member adopts it from the first
        // Raft message and refuses messages from any other cluster.
        let uninitialised = self
            .node
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_none();
        if uninitialised {
            let id = veto_core::Jti(rand::random()).to_string();
            self.node
                .cluster_id()
                .set_if_unset(&id)
                .map_err(|e| Error::Internal(format!("cannot record the cluster id: {e}")))?;
        }
        match self.node.raft().initialize(members).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                return Err(Error::FailedPrecondition(format!(
                    "already initialised: {e}"
                )))
            }
            Err(RaftError::APIError(e)) => {
                return Err(Invalid::new("members", e.to_string()).into())
            }
            Err(RaftError::Fatal(e)) => return Err(Error::Fatal(e.to_string())),
        }
        let m = self
            .node
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await
            .map_err(|e| Error::Timeout(format!("no leader after init: {e}")))?;
        Ok(pb::InitResponse {
            leader_id: m.current_leader.unwrap_or(0),
        })
    }

    async fn audit_local(&self, r: &pb::AuditRequest) -> Result<pb::AuditResponse> {
        let l = self.node.limits();
        if !r.subject.is_empty() {
            veto_core::validate::subject("subject", &r.subject, l)?;
        }
        if r.actor.len() > 200 || r.actor.chars().any(|c| c.is_control()) {
            return Err(Invalid::new("actor", "must be at most 200 printable characters").into());
        }
        if r.since_unix < 0 || r.until_unix < 0 {
            return Err(Invalid::new("since_unix", "times must not be negative").into());
        }
        let limit = match r.page_size {
            0 => 100,
            n if n > 1000 => return Err(Invalid::new("page_size", "must be at most 1000").into()),
            n => n as usize,
        };
        let after_revision = match r.page_token.as_str() {
            "" => None,
            t => Some(
                t.parse::<u64>()
                    .map_err(|_| Invalid::new("page_token", "not a token this API returned"))?,
            ),
        };
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if r.action.len() > 64
            || !r
                .action
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(Invalid::new("action", "an action name: lowercase letters and _").into());
        }
        let (subject, actor) = (nonempty(&r.subject), nonempty(&r.actor));
        let action = nonempty(&r.action);
        let (since, until) = (
            (r.since_unix > 0).then_some(r.since_unix),
            (r.until_unix > 0).then_some(r.until_unix),
        );
        // The leader's copy reflects every acknowledged change; a node's
        // own copy (`local`) is read as it stands, with its own head.
        if !r.local {
            self.node.linearize().await?;
        }
        let (revision, head) = self
            .node
            .state()
            .read(|s| (s.revision, s.audit_head().clone()));
        let store = self.node.state().audit().clone();
        let (page, pruned, totals) = tokio::task::spawn_blocking(move || {
            let q = veto_core::audit::AuditQuery {
                subject: subject.as_deref(),
                actor: actor.as_deref(),
                action: action.as_deref(),
                since,
                until,
                after_revision,
                limit,
            };
            let page = store.query(&q)?;
            std::io::Result::Ok((page, store.pruned()?, store.totals()))
        })
        .await
        .map_err(|e| Error::Internal(format!("audit read: {e}")))?
        .map_err(|e| Error::Internal(format!("audit trail unreadable: {e}")))?;
        let oldest = self
            .node
            .state()
            .audit()
            .query(&veto_core::audit::AuditQuery {
                limit: 1,
                ..Default::default()
            })
            .ok()
            .and_then(|p| p.events.first().map(|c| c.event.revision))
            .unwrap_or(0);
        Ok(pb::AuditResponse {
            events: page
                .events
                .into_iter()
                .map(|c| pb::AuditEvent {
                    revision: c.event.revision,
                    at_unix: c.event.at.unwrap_or(0),
                    actor: c.event.actor,
                    action: c.event.action,
                    subject: c.event.subject.unwrap_or_default(),
                    target: c.event.target,
                    reason: c.event.reason,
                    seq: c.seq,
                    prev_hash: c.prev,
                    hash: c.hash,
                })
                .collect(),
            next_page_token: page.next_after.map(|r| r.to_string()).unwrap_or_default(),
            revision,
            oldest_retained_revision: oldest,
            head_seq: head.seq,
            head_hash: head.hash,
            pruned_seq: pruned.seq,
            pruned_hash: pruned.hash,
            retained_events: totals.events,
            retained_bytes: totals.bytes,
            resumes: page
                .resumes
                .into_iter()
                .map(|r| pb::AuditResume {
                    revision: r.revision,
                    seq: r.seq,
                    hash: r.hash,
                })
                .collect(),
        })
    }

    /// Audit from the leader's trail, or this node's with `local`.
    async fn audit_routed(&self, req: Request<pb::AuditRequest>) -> Result<pb::AuditResponse> {
        if req.get_ref().local {
            return self.audit_local(req.get_ref()).await;
        }
        match self.node.route(crate::routing::is_forwarded(&req)).await? {
            crate::node::Route::Local => self.audit_local(req.get_ref()).await,
            crate::node::Route::Forward(ch) => Ok(AdminServiceClient::new(ch)
                .audit(crate::routing::forward(&req))
                .await
                .map_err(Error::Forwarded)?
                .into_inner()),
        }
    }

    async fn set_issuer_policy_local(
        &self,
        r: &pb::SetIssuerPolicyRequest,
        actor: Actor,
    ) -> Result<pb::PolicyResponse> {
        if r.name.is_empty()
            || r.name.len() > 64
            || !r.name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(Invalid::new(
                "name",
                "the issuer certificate's common name: 1-64 printable ASCII characters",
            )
            .into());
        }
        let policy = match (&r.policy, r.remove) {
            (Some(_), true) => {
                return Err(Invalid::new("remove", "set either policy or remove, not both").into())
            }
            (None, false) => return Err(Invalid::new("policy", "is required").into()),
            (None, true) => None,
            (Some(p), false) => {
                let p = veto_core::policy::IssuerPolicy {
                    subjects: p.subjects.clone(),
                    subject_prefixes: p.subject_prefixes.clone(),
                    scopes: p.scopes.clone(),
                    max_ttl_seconds: p.max_ttl_seconds,
                    required_labels: p.required_labels.clone(),
                };
                p.validate().map_err(|e| {
                    Invalid::new(
                        match e.field {
                            "subjects" => "policy.subjects",
                            "subject_prefixes" => "policy.subject_prefixes",
                            "scopes" => "policy.scopes",
                            _ => "policy.max_ttl_seconds",
                        },
                        e.problem,
                    )
                })?;
                Some(p)
            }
        };
        let cmd = Command::SetIssuerPolicy {
            name: r.name.clone(),
            policy,
            at: unix_now(),
            actor,
        };
        self.policy_cmd(cmd).await
    }

    async fn set_rotation_policy_local(
        &self,
        r: &pb::SetRotationPolicyRequest,
        actor: Actor,
    ) -> Result<pb::PolicyResponse> {
        let policy = match (&r.policy, r.off) {
            (Some(_), true) => {
                return Err(Invalid::new("off", "set either policy or off, not both").into())
            }
            (None, false) => return Err(Invalid::new("policy", "is required").into()),
            (None, true) => None,
            (Some(p), false) => {
                let p = veto_core::policy::RotationPolicy {
                    period_seconds: p.period_seconds,
                    publish_lead_seconds: p.publish_lead_seconds,
                    activation_timeout_seconds: p.activation_timeout_seconds,
                };
                p.validate().map_err(|e| {
                    Invalid::new(
                        match e.field {
                            "period_seconds" => "policy.period_seconds",
                            "publish_lead_seconds" => "policy.publish_lead_seconds",
                            _ => "policy.activation_timeout_seconds",
                        },
                        e.problem,
                    )
                })?;
                Some(p)
            }
        };
        let cmd = Command::SetRotationPolicy {
            policy,
            at: unix_now(),
            actor,
        };
        self.policy_cmd(cmd).await
    }

    async fn record_usage_local(&self, r: &pb::RecordUsageRequest) -> Result<pb::PolicyResponse> {
        if r.usage.len() > crate::usage::DELTAS_PER_COMMAND {
            return Err(Invalid::new(
                "usage",
                format!("at most {} per request", crate::usage::DELTAS_PER_COMMAND),
            )
            .into());
        }
        let deltas = crate::usage::deltas_of(None, &r.usage);
        let revision = crate::usage::record(&self.node, &deltas)
            .await
            .map_err(|f| f.error)?;
        Ok(pb::PolicyResponse { revision })
    }

    async fn policy_cmd(&self, cmd: Command) -> Result<pb::PolicyResponse> {
        match self.node.propose(cmd).await? {
            SmResponse::Applied { revision } => Ok(pb::PolicyResponse { revision }),
            SmResponse::Rejected { rejection, .. } => Err(rejection.into()),
            other => Err(Error::Fatal(format!("unexpected response {other:?}"))),
        }
    }

    async fn list_issuer_policies_local(&self) -> Result<pb::ListIssuerPoliciesResponse> {
        self.node.linearize().await?;
        Ok(self.node.state().read(|s| pb::ListIssuerPoliciesResponse {
            policies: s
                .issuer_policies()
                .iter()
                .map(|(name, p)| pb::NamedIssuerPolicy {
                    name: name.clone(),
                    policy: Some(convert::issuer_policy(p)),
                })
                .collect(),
            revision: s.revision,
        }))
    }

    async fn list_keys_local(&self) -> Result<pb::ListKeysResponse> {
        self.node.linearize().await?;
        let now = unix_now();
        Ok(self.node.state().read(|s| pb::ListKeysResponse {
            keys: s.keys().map(convert::key).collect(),
            revision: s.revision,
            rotation: convert::rotation_status(s, now),
        }))
    }
}

fn check_member(m: &pb::Member) -> Result<()> {
    if m.node_id == 0 {
        return Err(Invalid::new("member.node_id", "must be non-zero").into());
    }
    let ok = m.addr.len() <= 255
        && m.addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if !ok {
        return Err(Invalid::new("member.addr", "must be host:port").into());
    }
    Ok(())
}

fn not_a_member(node_id: u64) -> Error {
    Error::Rejected(veto_core::command::Rejection::NotFound {
        what: "member".into(),
        id: node_id.to_string(),
    })
}

impl Service {
    async fn rewrap_local(&self, actor: Actor) -> Result<pb::RewrapKeysResponse> {
        let mut out = pb::RewrapKeysResponse {
            kek_fingerprint: self.node.kek_fingerprint().to_string(),
            ..Default::default()
        };
        for (kid, cmd) in self.node.rewrap_commands(&actor)? {
            match self.node.propose(cmd).await? {
                SmResponse::KeyChanged { revision } => {
                    out.rewrapped.push(kid.to_string());
                    out.revision = revision;
                }
                // Revoked or retired meanwhile: nothing left to re-seal.
                SmResponse::Rejected {
                    rejection:
                        veto_core::command::Rejection::NotFound { .. }
                        | veto_core::command::Rejection::FailedPrecondition(_),
                    ..
                } => {}
                SmResponse::Rejected { rejection, .. } => return Err(rejection.into()),
                other => return Err(Error::Fatal(format!("unexpected response {other:?}"))),
            }
        }
        Ok(out)
    }

    /// The state at a revision no older than the leader's commit index at
    /// the time of the call, serialised, in chunks.
    async fn backup_chunks(&self) -> Result<Vec<pb::BackupChunk>> {
        let commit = self.node.leader_read_index().await?.index;
        let mut applied = self.node.state().subscribe_applied();
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|a| *a >= commit))
            .await
            .map_err(|_| Error::Timeout(format!("not caught up to revision {commit} in 10 s")))?
            .map_err(|_| Error::Fatal("state machine stopped".into()))?;
        // Clone under the lock, serialise off the async workers.
        let state = self.node.state().read(|s| s.clone());
        let revision = state.revision;
        let data = tokio::task::spawn_blocking(move || state.to_snapshot_bytes())
            .await
            .map_err(|e| Error::Fatal(format!("backup serialisation: {e}")))?;
        let sha = {
            use sha2::Digest;
            sha2::Sha256::digest(&data).to_vec()
        };
        let total = data.len() as u64;
        let mut chunks: Vec<pb::BackupChunk> = data
            .chunks(veto_core::limits::STREAM_CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| pb::BackupChunk {
                revision,
                offset: (i * veto_core::limits::STREAM_CHUNK_BYTES) as u64,
                data: bytes::Bytes::copy_from_slice(c),
                last: false,
                sha256: Default::default(),
                total_bytes: total,
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(pb::BackupChunk {
                revision,
                total_bytes: 0,
                ..Default::default()
            });
        }
        if let Some(l) = chunks.last_mut() {
            l.last = true;
            l.sha256 = sha.into();
        }
        Ok(chunks)
    }
}

crate::rpc_service! {
    impl AdminService, client AdminServiceClient, for Service;
    routed {
        rewrap_keys(pb::RewrapKeysRequest) -> pb::RewrapKeysResponse,
            "veto.v1.AdminService/RewrapKeys" = |s, r| s.rewrap_local(actor(r));
        add_learner(pb::AddLearnerRequest) -> pb::MembershipResponse,
            "veto.v1.AdminService/AddLearner" = |s, r| s.add_learner_local(r.get_ref());
        promote(pb::PromoteRequest) -> pb::MembershipResponse,
            "veto.v1.AdminService/Promote" = |s, r| s.promote_local(r.get_ref());
        change_membership(pb::ChangeMembershipRequest) -> pb::MembershipResponse,
            "veto.v1.AdminService/ChangeMembership" =
            |s, r| s.change_membership_local(r.get_ref());
        remove(pb::RemoveRequest) -> pb::MembershipResponse,
            "veto.v1.AdminService/Remove" = |s, r| s.remove_local(r.get_ref());
        transfer_leader(pb::TransferLeaderRequest) -> pb::TransferLeaderResponse,
            "veto.v1.AdminService/TransferLeader" = |s, r| s.transfer_local(r.get_ref());
        rotate_signing_key(pb::RotateSigningKeyRequest) -> pb::RotateSigningKeyResponse,
            "veto.v1.AdminService/RotateSigningKey" =
            |s, r| s.rotate_local(r.get_ref(), actor(r));
        list_keys(pb::ListKeysRequest) -> pb::ListKeysResponse,
            "veto.v1.AdminService/ListKeys" = |s, r| s.list_keys_local();
        list_issuer_policies(pb::ListIssuerPoliciesRequest) -> pb::ListIssuerPoliciesResponse,
            "veto.v1.AdminService/ListIssuerPolicies" = |s, r| s.list_issuer_policies_local();
        record_usage(pb::RecordUsageRequest) -> pb::PolicyResponse,
            "veto.v1.AdminService/RecordUsage" = |s, r| s.record_usage_local(r.get_ref());
        set_issuer_policy(pb::SetIssuerPolicyRequest) -> pb::PolicyResponse,
            "veto.v1.AdminService/SetIssuerPolicy" =
            |s, r| s.set_issuer_policy_local(r.get_ref(), actor(r));
        set_rotation_policy(pb::SetRotationPolicyRequest) -> pb::PolicyResponse,
            "veto.v1.AdminService/SetRotationPolicy" =
            |s, r| s.set_rotation_policy_local(r.get_ref(), actor(r));
    }
    local {
        audit(pb::AuditRequest) -> pb::AuditResponse,
            "veto.v1.AdminService/Audit" = |s, r| s.audit_routed(r);
        init(pb::InitRequest) -> pb::InitResponse,
            "veto.v1.AdminService/Init" = |s, r| s.init_local(r.into_inner());
        status(pb::StatusRequest) -> pb::StatusResponse,
            "veto.v1.AdminService/Status" = |s, r| s.status_local(r.get_ref().include_digest);
        edges(pb::EdgesRequest) -> pb::EdgesResponse,
            "veto.v1.AdminService/Edges" = |s, r| s.edges_local(r.into_inner());
    }

    type BackupStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = std::result::Result<pb::BackupChunk, Status>> + Send>,
    >;

    async fn backup(
        &self,
        _req: Request<pb::BackupRequest>,
    ) -> std::result::Result<Response<Self::BackupStream>, Status> {
        let chunks = self.backup_chunks().await.map_err(Status::from)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }
}

impl Service {
    /// This node's view: role, term, leader, log positions, state counts
    /// and (when asked) the state digest.
    async fn status_local(&self, want_digest: bool) -> Result<pb::StatusResponse> {
        let m = self.node.metrics();
        let role = match m.state {
            ServerState::Leader => pb::Role::Leader,
            ServerState::Follower => pb::Role::Follower,
            ServerState::Candidate => pb::Role::Candidate,
            ServerState::Learner => pb::Role::Learner,
            ServerState::Shutdown => pb::Role::Shutdown,
        };
        let leader_id = m.current_leader.unwrap_or(0);
        let leader_addr = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        let (tokens, revocations, active_kid, state_digest, applied) =
            self.node.state().read(|s| {
                (
                    s.token_count() as u64,
                    s.revocation_count() as u64,
                    s.active_key()
                        .map(|k| k.kid.to_string())
                        .unwrap_or_default(),
                    if want_digest {
                        s.digest()
                    } else {
                        String::new()
                    },
                    s.revision,
                )
            });
        Ok(pb::StatusResponse {
            node_id: self.node.id(),
            role: role as i32,
            term: m.current_term,
            leader_id,
            leader_addr,
            commit_index: m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
            applied_index: applied,
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.as_ref().map(|l| l.index).unwrap_or(0),
            membership: Some(self.membership()),
            tokens,
            revocations,
            active_kid,
            state_digest,
        })
    }

    /// This node's edges, once every connected edge applied
    /// `wait_revision` (or the wait timed out).
    async fn edges_local(&self, r: pb::EdgesRequest) -> Result<pb::EdgesResponse> {
        if r.wait_revision > 0 {
            let ms = match r.wait_timeout_ms {
                0 => 10_000,
                t => t.min(60_000),
            };
            let deadline = std::time::Instant::now() + Duration::from_millis(u64::from(ms));
            self.hub.wait_local(r.wait_revision, deadline).await;
        }
        Ok(self.hub.local_edges())
    }
}
