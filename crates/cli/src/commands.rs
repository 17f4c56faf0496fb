//! One function per command group. Each takes the parsed arguments and a
//! client, calls the service and hands the answer to `output`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;

use crate::output;
use crate::{
    backup, connect, status_err, AuditArgs, CertsCmd, ClusterCmd, KeysCmd, PolicyCmd, SeedArgs,
    SnapshotCmd, TokenCmd,
};

type Admin = AdminServiceClient<Channel>;
type Tokens = TokenServiceClient<Channel>;

/// `veto cluster force-new`: offline, on a survivor's data directory.
pub(crate) fn force_new(c: ClusterCmd, j: bool) -> Result<()> {
    let ClusterCmd::ForceNew {
        survivor_data_dir,
        survivor_node_id,
        seed: SeedArgs {
            data_dir,
            node_id,
            members,
        },
        i_have_lost_quorum,
    } = c
    else {
        bail!("not a force-new command");
    };
    if !i_have_lost_quorum {
        bail!(
            "force-new discards the other members and every write only they held; \
             run it only when a majority is gone for good, with --i-have-lost-quorum"
        );
    }
    eprintln!(
        "WARNING: building a new cluster from {} alone; members not listed are forgotten",
        survivor_data_dir.display()
    );
    let rev = backup::force_new(
        &survivor_data_dir,
        survivor_node_id,
        &data_dir,
        node_id,
        &members,
    )?;
    if j {
        println!("{}", json!({"revision": rev, "data_dir": data_dir}));
    } else {
        println!(
            "seeded {} at revision {rev} with {} member(s); start veto-server --node-id {node_id} on it",
            data_dir.display(),
            members.len()
        );
    }
    Ok(())
}

/// `veto cluster ...` (all but force-new, which is offline).
pub(crate) async fn cluster(c: ClusterCmd, mut admin: Admin, j: bool) -> Result<()> {
    match c {
        ClusterCmd::Init { members } => {
            let r = admin
                .init(pb::InitRequest { members })
                .await
                .map_err(status_err)?
                .into_inner();
            if j {
                println!("{}", json!({"leader_id": r.leader_id}));
            } else {
                println!("cluster initialised; leader is node {}", r.leader_id);
            }
        }
        ClusterCmd::Status => {
            let s = admin.status(pb::StatusRequest::default()).await;
            output::print_status(j, &s.map_err(status_err)?.into_inner());
        }
        ClusterCmd::AddLearner {
            id,
            member_addr: addr,
            no_wait,
        } => {
            let req = pb::AddLearnerRequest {
                member: Some(pb::Member { node_id: id, addr }),
                blocking: !no_wait,
            };
            let r = admin.add_learner(req).await.map_err(status_err)?;
            output::print_membership(j, &r.into_inner());
        }
        ClusterCmd::Promote { id } => {
            let r = admin.promote(pb::PromoteRequest { node_id: id }).await;
            output::print_membership(j, &r.map_err(status_err)?.into_inner());
        }
        ClusterCmd::Remove { id } => {
            let r = admin.remove(pb::RemoveRequest { node_id: id }).await;
            output::print_membership(j, &r.map_err(status_err)?.into_inner());
        }
        ClusterCmd::ForceNew { .. } => return force_new(c, j),
        ClusterCmd::TransferLeader { id } => {
            let req = pb::TransferLeaderRequest { to_node_id: id };
            let r = admin.transfer_leader(req).await.map_err(status_err)?;
            let leader = r.into_inner().leader_id;
            if j {
                println!("{}", json!({ "leader_id": leader }));
            } else {
                println!("leader is now node {leader}");
            }
        }
    }
    Ok(())
}

/// `veto token ...`: issue, refresh, get, list.
pub(crate) async fn token(t: TokenCmd, mut tokens: Tokens, j: bool) -> Result<()> {
    match t {
        TokenCmd::Issue(a) => {
            let req = pb::IssueRequest {
                sub: a.sub,
                scopes: a.scopes,
                aud: a.aud,
                ttl_seconds: a.ttl,
                owner: a.owner,
                description: a.description,
                labels: a.labels.into_iter().collect(),
            };
            let r = tokens.issue(req).await.map_err(status_err)?;
            output::print_issued(j, &r.into_inner());
        }
        TokenCmd::Refresh {
            jti,
            token_file,
            ttl,
            grace,
        } => {
            let r = match token_file.as_deref().map(read_token).transpose()? {
                Some(token) => {
                    let req = pb::RefreshPresentedRequest {
                        token,
                        ttl_seconds: ttl,
                        grace_seconds: grace,
                        ..Default::default()
                    };
                    tokens.refresh_presented(req).await
                }
                None => {
                    let req = pb::RefreshRequest {
                        jti: jti.unwrap_or_default(),
                        ttl_seconds: ttl,
                        grace_seconds: grace,
                        ..Default::default()
                    };
                    tokens.refresh(req).await
                }
            };
            let r = r.map_err(status_err)?;
            output::print_refreshed(j, &r.into_inner());
        }
        TokenCmd::Get { jti } => {
            let r = tokens.get(pb::GetTokenRequest { jti }).await;
            let r = r.map_err(status_err)?.into_inner();
            if j {
                println!("{}", output::info_json(&r));
            } else {
                output::print_info(&r);
            }
        }
        TokenCmd::List {
            sub,
            family,
            owner,
            selector,
            status,
            kid,
            expires_within,
            unused_for,
            never_used,
            page_size,
            page_token,
        } => {
            let req = pb::ListTokensRequest {
                sub,
                family,
                page_size,
                page_token,
                owner,
                selector,
                status: status.unwrap_or_default(),
                kid,
                expires_within_seconds: expires_within,
                unused_for_seconds: unused_for.unwrap_or(0),
                never_used,
            };
            let r = tokens.list(req).await.map_err(status_err)?;
            output::print_token_list(j, &r.into_inner());
        }
        TokenCmd::Usage {
            by_subject,
            window,
            limit,
        } => {
            let req = pb::UsageRequest {
                group_by: if by_subject { "subject" } else { "owner" }.into(),
                window_seconds: window.unwrap_or(0),
                limit,
            };
            let r = tokens.usage(req).await.map_err(status_err)?;
            output::print_usage(j, &r.into_inner(), by_subject);
        }
        revoke => return token_revoke(revoke, tokens, j).await,
    }
    Ok(())
}

/// `veto token revoke | revoke-subject | revoke-family`, each able to wait
/// for the edges.
async fn token_revoke(t: TokenCmd, mut tokens: Tokens, j: bool) -> Result<()> {
    let (r, waited) = match t {
        TokenCmd::Revoke {
            jti,
            token_file,
            reason,
            wait,
        } => {
            let token = token_file.as_deref().map(read_token).transpose()?;
            let req = pb::RevokeRequest {
                jti: jti.unwrap_or_default(),
                reason,
                wait_for: wait.wait_for(),
                wait_timeout_ms: wait.wait_timeout_ms,
                token: token.unwrap_or_default(),
            };
            (tokens.revoke(req).await, wait.wait_edges)
        }
        TokenCmd::RevokeSubject {
            sub,
            before,
            reason,
            wait,
        } => {
            let req = pb::RevokeSubjectRequest {
                sub,
                before_unix: before,
                reason,
                wait_for: wait.wait_for(),
                wait_timeout_ms: wait.wait_timeout_ms,
            };
            (tokens.revoke_subject(req).await, wait.wait_edges)
        }
        TokenCmd::RevokeFamily {
            family,
            reason,
            wait,
        } => {
            let req = pb::RevokeFamilyRequest {
                family,
                reason,
                wait_for: wait.wait_for(),
                wait_timeout_ms: wait.wait_timeout_ms,
            };
            (tokens.revoke_family(req).await, wait.wait_edges)
        }
        TokenCmd::RevokeSelector {
            selector,
            reason,
            wait,
        } => {
            let req = pb::RevokeSelectorRequest {
                selector,
                reason,
                wait_for: wait.wait_for(),
                wait_timeout_ms: wait.wait_timeout_ms,
            };
            (tokens.revoke_selector(req).await, wait.wait_edges)
        }
        other => bail!("not a revoke command: {other:?}"),
    };
    output::print_revoke(j, &r.map_err(status_err)?.into_inner(), waited);
    Ok(())
}

/// `veto keys ...`
pub(crate) async fn keys(k: KeysCmd, mut admin: Admin, j: bool) -> Result<()> {
    match k {
        KeysCmd::Rewrap => {
            let r = admin.rewrap_keys(pb::RewrapKeysRequest {}).await;
            output::print_rewrapped(j, &r.map_err(status_err)?.into_inner());
        }
        KeysCmd::List => {
            let r = admin.list_keys(pb::ListKeysRequest {}).await;
            let r = r.map_err(status_err)?.into_inner();
            output::print_keys(j, &r);
        }
        KeysCmd::Rotate {
            stage,
            kid,
            force,
            reason,
            wait,
        } => {
            let stage = match stage.as_str() {
                "publish" => pb::KeyStage::Publish,
                "activate" => pb::KeyStage::Activate,
                "retire" => pb::KeyStage::Retire,
                "revoke" => pb::KeyStage::Revoke,
                other => {
                    bail!("unknown stage {other:?}: use publish, activate, retire or revoke")
                }
            };
            let revoking = stage == pb::KeyStage::Revoke;
            if wait.wait_edges && !revoking {
                bail!("--wait-edges applies to the revoke stage only (activate always waits for the edges unless --force)");
            }
            let req = pb::RotateSigningKeyRequest {
                stage: stage as i32,
                kid: kid.unwrap_or_default(),
                force,
                wait_timeout_ms: if revoking { wait.wait_timeout_ms } else { 0 },
                reason,
                wait_for: wait.wait_for(),
            };
            let r = admin.rotate_signing_key(req).await.map_err(status_err)?;
            output::print_rotated(j, &r.into_inner(), wait.wait_edges);
        }
    }
    Ok(())
}

/// `veto audit`: one page, every page with `--all`, or every page and then
/// each new event as it is applied with `--follow`.
pub(crate) async fn audit(a: AuditArgs, mut admin: Admin, j: bool) -> Result<()> {
    let mut token = a.page_token.clone();
    loop {
        let req = pb::AuditRequest {
            subject: a.subject.clone().unwrap_or_default(),
            actor: a.actor.clone().unwrap_or_default(),
            action: a.action.clone().unwrap_or_default(),
            since_unix: a.since,
            until_unix: a.until,
            page_size: a.page_size,
            page_token: token.clone(),
            local: false,
        };
        let r = match admin.audit(req).await {
            Ok(r) => r.into_inner(),
            // Following survives a leader change: ask again.
            Err(e) if a.follow && e.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(status_err(e)),
        };
        for e in &r.events {
            output::print_audit_event(j, e);
        }
        if a.follow {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            // Continue after the last event seen (or the page's end).
            if let Some(last) = r.events.last() {
                token = last.revision.to_string();
            }
            if !r.next_page_token.is_empty() {
                token = r.next_page_token;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        token = r.next_page_token;
        if token.is_empty() {
            return Ok(());
        }
        if !a.all {
            if j {
                println!("{}", json!({ "next_page_token": token }));
            } else {
                println!("more: --page-token {token}");
            }
            return Ok(());
        }
    }
}

/// `veto audit verify`: every member's trail, checked link by link.
pub(crate) async fn audit_verify(addrs: &str, timeout: Duration, j: bool) -> Result<()> {
    let first = connect(addrs, timeout).await?;
    let status = AdminServiceClient::new(first)
        .status(pb::StatusRequest::default())
        .await
        .map_err(status_err)?
        .into_inner();
    let mut members: Vec<pb::Member> = status
        .membership
        .map(|m| m.voters.into_iter().chain(m.learners).collect())
        .unwrap_or_default();
    members.sort_by_key(|m| m.node_id);
    if members.is_empty() {
        bail!("the cluster reports no members");
    }
    let mut failed = Vec::new();
    for m in &members {
        match verify_node(&m.addr, timeout).await {
            Ok(v) => output::print_audit_verified(j, m.node_id, &m.addr, &v),
            Err(e) => {
                output::print_audit_broken(j, m.node_id, &m.addr, &e.to_string());
                failed.push(m.node_id);
            }
        }
    }
    if !failed.is_empty() {
        bail!("the audit trail does not verify on node(s) {failed:?}");
    }
    Ok(())
}

/// What one node's trail showed.
pub(crate) struct Verified {
    pub checked: u64,
    pub not_held: u64,
    pub pruned_seq: u64,
    pub head_seq: u64,
    pub head_hash: String,
}

async fn verify_node(addr: &str, timeout: Duration) -> Result<Verified> {
    use veto_core::audit::{AuditEvent, ChainCheck, ChainedEvent};
    let mut admin = AdminServiceClient::new(connect(addr, timeout).await?);
    let mut token = String::new();
    let mut check: Option<ChainCheck> = None;
    let mut out = Verified {
        checked: 0,
        not_held: 0,
        pruned_seq: 0,
        head_seq: 0,
        head_hash: String::new(),
    };
    loop {
        let r = admin
            .audit(pb::AuditRequest {
                page_size: 1000,
                page_token: token.clone(),
                local: true,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let c = check.get_or_insert_with(|| {
            out.pruned_seq = r.pruned_seq;
            out.head_seq = r.head_seq;
            out.head_hash = r.head_hash.clone();
            ChainCheck::new(r.pruned_seq, &r.pruned_hash, r.head_seq, &r.head_hash)
        });
        // Resume points and events in revision order.
        let mut resumes = r.resumes.iter().peekable();
        for e in &r.events {
            while let Some(rp) = resumes.next_if(|rp| rp.revision < e.revision) {
                c.resume(rp.revision, rp.seq, &rp.hash)?;
            }
            let chained = ChainedEvent {
                seq: e.seq,
                prev: e.prev_hash.clone(),
                hash: e.hash.clone(),
                event: AuditEvent {
                    revision: e.revision,
                    at: (e.at_unix != 0).then_some(e.at_unix),
                    actor: e.actor.clone(),
                    action: e.action.clone(),
                    subject: (!e.subject.is_empty()).then(|| e.subject.clone()),
                    target: e.target.clone(),
                    reason: e.reason.clone(),
                },
            };
            c.next(&chained)?;
        }
        for rp in resumes {
            c.resume(rp.revision, rp.seq, &rp.hash)?;
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let c = check.context("the node answered no page")?;
    c.finish()?;
    out.checked = c.checked;
    out.not_held = c.not_held;
    Ok(out)
}

/// `veto policy ...`
pub(crate) async fn policy(p: PolicyCmd, mut admin: Admin, j: bool) -> Result<()> {
    let revision = match p {
        PolicyCmd::List => {
            let r = admin
                .list_issuer_policies(pb::ListIssuerPoliciesRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            output::print_issuer_policies(j, &r);
            return Ok(());
        }
        PolicyCmd::SetIssuer {
            name,
            subjects,
            subject_prefixes,
            scopes,
            max_ttl,
            required_labels,
        } => {
            let req = pb::SetIssuerPolicyRequest {
                name,
                policy: Some(pb::IssuerPolicy {
                    subjects,
                    subject_prefixes,
                    scopes,
                    max_ttl_seconds: max_ttl,
                    required_labels,
                }),
                remove: false,
            };
            admin.set_issuer_policy(req).await
        }
        PolicyCmd::RemoveIssuer { name } => {
            admin
                .set_issuer_policy(pb::SetIssuerPolicyRequest {
                    name,
                    policy: None,
                    remove: true,
                })
                .await
        }
        PolicyCmd::SetRotation {
            period,
            publish_lead,
            activation_timeout,
        } => {
            admin
                .set_rotation_policy(pb::SetRotationPolicyRequest {
                    policy: Some(pb::RotationPolicy {
                        period_seconds: period,
                        publish_lead_seconds: publish_lead,
                        activation_timeout_seconds: activation_timeout,
                    }),
                    off: false,
                })
                .await
        }
        PolicyCmd::RotationOff => {
            admin
                .set_rotation_policy(pb::SetRotationPolicyRequest {
                    policy: None,
                    off: true,
                })
                .await
        }
    }
    .map_err(status_err)?
    .into_inner()
    .revision;
    if j {
        println!("{}", json!({ "revision": revision }));
    } else {
        println!("applied at revision {revision}");
    }
    Ok(())
}

/// `veto edges`: every node in `addrs` is asked; nodes that do not answer
/// are skipped.
pub(crate) async fn edges(addrs: &str, timeout: Duration, j: bool) -> Result<()> {
    let mut all = Vec::new();
    for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let Ok(ch) = connect(a, timeout).await else {
            continue;
        };
        if let Ok(r) = AdminServiceClient::new(ch)
            .edges(pb::EdgesRequest::default())
            .await
        {
            all.extend(r.into_inner().edges);
        }
    }
    all.sort_by(|a, b| (a.edge_id.as_str(), !a.connected).cmp(&(b.edge_id.as_str(), !b.connected)));
    output::print_edges(j, &all);
    Ok(())
}

pub(crate) fn certs(c: CertsCmd, j: bool) -> Result<()> {
    use veto_auth::certs;
    let written = match c {
        CertsCmd::Init {
            dir,
            servers,
            edges,
            operators,
            clients,
            hosts,
            days,
        } => {
            let mut spec = certs::InitSpec {
                servers,
                edges,
                operators,
                clients,
                days,
                ..certs::InitSpec::default()
            };
            for h in hosts {
                if !spec.hosts.contains(&h) {
                    spec.hosts.push(h);
                }
            }
            certs::init_dir(&dir, &spec)?
        }
        CertsCmd::Issue {
            dir,
            role,
            name,
            hosts,
            days,
        } => {
            let role = veto_auth::Role::parse(&role).with_context(|| {
                format!("unknown role {role:?}: server, edge, operator, client, issuer or auditor")
            })?;
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .with_context(|| format!("cannot read {}", dir.join(f).display()))
            };
            let ca = certs::Ca::load(&read("ca.pem")?, &read("ca.key")?)?;
            let leaf = ca.issue(&certs::LeafSpec::new(&name, role, &hosts, days))?;
            certs::write_leaf(&dir, &name, &leaf)?
        }
    };
    if j {
        println!("{}", json!({ "written": written }));
    } else {
        for w in &written {
            println!("wrote {}", w.display());
        }
    }
    Ok(())
}

pub(crate) async fn snapshot(c: SnapshotCmd, addr: &str, timeout: Duration, j: bool) -> Result<()> {
    let show = |h: &backup::Header, what: &str| {
        if j {
            println!("{}", serde_json::to_string(h).unwrap_or_default());
        } else {
            println!(
                "{what}: revision {}, {} bytes, sha256 {}, taken {} from {}",
                h.revision, h.bytes, h.sha256, h.created_unix, h.from
            );
        }
    };
    match c {
        SnapshotCmd::Save { file } => {
            let h = backup::save(addr, &file, timeout).await?;
            show(&h, &format!("saved {}", file.display()));
        }
        SnapshotCmd::Inspect { file } => {
            let (h, state) = backup::load(&file)?;
            show(&h, &format!("{} is intact", file.display()));
            if !j {
                println!(
                    "  {} tokens, {} revocations",
                    state.token_count(),
                    state.revocation_count()
                );
            }
        }
        SnapshotCmd::Restore {
            file,
            seed:
                SeedArgs {
                    data_dir,
                    node_id,
                    members,
                },
        } => {
            let h = backup::restore(&file, &data_dir, node_id, &members)?;
            show(&h, &format!("restored into {}", data_dir.display()));
        }
    }
    Ok(())
}

/// Reads a token to present from a file or stdin (`-`), trimmed.
fn read_token(path: &std::path::Path) -> Result<String> {
    let raw = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the token from stdin")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the token from {}", path.display()))?
    };
    let t = raw.trim();
    if t.is_empty() {
        bail!("no token in {}", path.display());
    }
    Ok(t.to_owned())
}
