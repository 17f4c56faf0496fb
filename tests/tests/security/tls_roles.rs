//! Transport security and authorisation (docs/design.md, "Security") on a TLS cluster:
//! who may call what, who cannot even connect, the HTTPS ports, the edge
//! feed's identity binding and the audit trail's actors.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use veto_auth::certs::{Ca, LeafSpec};
use veto_auth::{Role, TlsFiles, Transport};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::feed_service_client::FeedServiceClient;
use veto_proto::raft_service_client::RaftServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::Cluster;
use veto_tests::{https_get, tls_cluster, veto_cli};

fn read(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)?)
}

fn transport(dir: &Path, name: &str) -> anyhow::Result<Transport> {
    Ok(Transport::from_config(&TlsFiles::in_dir(dir, name), false)?)
}

/// A channel to a server (its certificate must carry the server role).
fn channel(t: &Transport, addr: &str) -> anyhow::Result<Channel> {
    Ok(t.channel_lazy(addr, Role::Server, |ep| {
        ep.connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
    })?)
}

/// Whether a Status call to the server at `addr` as `t` succeeds.
async fn status_as(t: &Transport, addr: &str) -> Result<(), tonic::Status> {
    let ch = t
        .channel(addr, Role::Server, |ep| {
            ep.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
        })
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AdminServiceClient::new(ch)
        .status(pb::StatusRequest::default())
        .await
        .map(|_| ())
}

/// The status code of one call of `rpc` with a default (often invalid)
/// request: only whether authorisation let it through matters.
async fn code_of(ch: &Channel, rpc: &str) -> Code {
    let mut t = TokenServiceClient::new(ch.clone());
    let mut a = AdminServiceClient::new(ch.clone());
    let r: Result<(), tonic::Status> = match rpc {
        "Issue" => t.issue(pb::IssueRequest::default()).await.map(|_| ()),
        "Refresh" => t.refresh(pb::RefreshRequest::default()).await.map(|_| ()),
        "Revoke" => t.revoke(pb::RevokeRequest::default()).await.map(|_| ()),
        "RevokeSubject" => t
            .revoke_subject(pb::RevokeSubjectRequest::default())
            .await
            .map(|_| ()),
        "RevokeFamily" => t
            .revoke_family(pb::RevokeFamilyRequest::default())
            .await
            .map(|_| ()),
        "RevokeSelector" => t
            .revoke_selector(pb::RevokeSelectorRequest::default())
            .await
            .map(|_| ()),
        "Get" => t.get(pb::GetTokenRequest::default()).await.map(|_| ()),
        "List" => t.list(pb::ListTokensRequest::default()).await.map(|_| ()),
        "Init" => a.init(pb::InitRequest::default()).await.map(|_| ()),
        "AddLearner" => a
            .add_learner(pb::AddLearnerRequest::default())
            .await
            .map(|_| ()),
        "Promote" => a.promote(pb::PromoteRequest::default()).await.map(|_| ()),
        "ChangeMembership" => a
            .change_membership(pb::ChangeMembershipRequest::default())
            .await
            .map(|_| ()),
        "Remove" => a.remove(pb::RemoveRequest::default()).await.map(|_| ()),
        "TransferLeader" => a
            .transfer_leader(pb::TransferLeaderRequest::default())
            .await
            .map(|_| ()),
        "Status" => a.status(pb::StatusRequest::default()).await.map(|_| ()),
        "RotateSigningKey" => a
            .rotate_signing_key(pb::RotateSigningKeyRequest::default())
            .await
            .map(|_| ()),
        "ListKeys" => a
            .list_keys(pb::ListKeysRequest::default())
            .await
            .map(|_| ()),
        "Edges" => a.edges(pb::EdgesRequest::default()).await.map(|_| ()),
        "Backup" => match a.backup(pb::BackupRequest::default()).await {
            Ok(s) => s.into_inner().message().await.map(|_| ()),
            Err(e) => Err(e),
        },
        "RewrapKeys" => a
            .rewrap_keys(pb::RewrapKeysRequest::default())
            .await
            .map(|_| ()),
        "Audit" => a.audit(pb::AuditRequest::default()).await.map(|_| ()),
        "Raft.Vote" => RaftServiceClient::new(ch.clone())
            .vote(pb::RaftPayload::default())
            .await
            .map(|_| ()),
        other => panic!("no call for {other}"),
    };
    r.err().map(|s| s.code()).unwrap_or(Code::Ok)
}

const TOKEN_RPCS: &[&str] = &[
    "Issue",
    "Refresh",
    "Revoke",
    "RevokeSubject",
    "RevokeFamily",
    "RevokeSelector",
    "Get",
    "List",
];
const ADMIN_RPCS: &[&str] = &[
    "Init",
    "AddLearner",
    "Promote",
    "ChangeMembership",
    "Remove",
    "TransferLeader",
    "Status",
    "RotateSigningKey",
    "ListKeys",
    "Edges",
    "Backup",
    "RewrapKeys",
    "Audit",
];

async fn denied_total(cluster: &Cluster, op: &Transport) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for n in &cluster.nodes {
        let (status, body) = https_get(&n.http_addr, "/metrics", op, true).await?;
        anyhow::ensure!(status == 200, "/metrics as operator: {status}");
        sum += body
            .lines()
            .filter(|l| l.starts_with("veto_auth_denied_total{reason=\"permission_denied\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_may_do_everything_edges_and_clients_only_their_part() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cluster = tls_cluster(dir.path()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addr = cluster.node(leader)?.grpc_addr.clone();
    let op = transport(dir.path(), "operator")?;
    let edge = transport(dir.path(), "edge-1")?;
    let client = transport(dir.path(), "client")?;
    let peer = transport(dir.path(), "server-2")?;
    let (op_ch, edge_ch, client_ch) = (
        channel(&op, &addr)?,
        channel(&edge, &addr)?,
        channel(&client, &addr)?,
    );
    let denied_before = denied_total(&cluster, &op).await?;

    // Every TokenService and AdminService method: an edge and a verify
    // client are refused all of them (Refresh included: it names its
    // predecessor by jti, which is public), an operator none.
    for rpc in TOKEN_RPCS.iter().chain(ADMIN_RPCS) {
        let (o, e, c) = (
            code_of(&op_ch, rpc).await,
            code_of(&edge_ch, rpc).await,
            code_of(&client_ch, rpc).await,
        );
        assert!(
            !matches!(o, Code::PermissionDenied | Code::Unauthenticated),
            "operator {rpc}: {o:?}"
        );
        assert_eq!(e, Code::PermissionDenied, "edge {rpc}");
        assert_eq!(c, Code::PermissionDenied, "client {rpc}");
    }
    // Raft is for peers only.
    assert_eq!(code_of(&op_ch, "Raft.Vote").await, Code::PermissionDenied);
    assert_ne!(
        code_of(&channel(&peer, &addr)?, "Raft.Vote").await,
        Code::PermissionDenied
    );

    // Real requests: what the edge is refused changes nothing; the
    // operator's same requests work.
    let mut op_tokens = TokenServiceClient::new(op_ch.clone());
    let issue = pb::IssueRequest {
        sub: "user:sec".into(),
        scopes: vec!["read".into()],
        ttl_seconds: 600,
        ..Default::default()
    };
    let e = TokenServiceClient::new(edge_ch.clone())
        .issue(issue.clone())
        .await
        .expect_err("an edge issued a token");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("edge:edge-1"), "{}", e.message());
    let t = op_tokens.issue(issue).await?.into_inner();
    let jti = t.record.map(|r| r.jti).unwrap_or_default();
    let revoke = pb::RevokeRequest {
        jti: jti.clone(),
        reason: "test".into(),
        ..Default::default()
    };
    let e = TokenServiceClient::new(edge_ch.clone())
        .revoke(revoke.clone())
        .await
        .expect_err("an edge revoked a token");
    assert_eq!(e.code(), Code::PermissionDenied);
    let get = |jti: String| pb::GetTokenRequest { jti };
    let info = op_tokens.get(get(jti.clone())).await?.into_inner();
    assert_eq!(info.status, pb::TokenStatus::Active as i32);

    // Membership: node 4 (with its own server certificate) is refused to
    // an edge, then added and removed by the operator.
    let n4 = cluster.spawn_new(4).await?.grpc_addr.clone();
    let add = pb::AddLearnerRequest {
        member: Some(pb::Member {
            node_id: 4,
            addr: n4,
        }),
        blocking: true,
    };
    let e = AdminServiceClient::new(edge_ch.clone())
        .add_learner(add.clone())
        .await
        .expect_err("an edge changed membership");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut op_admin = AdminServiceClient::new(op_ch.clone());
    let s = op_admin
        .status(pb::StatusRequest::default())
        .await?
        .into_inner();
    let members = |s: &pb::StatusResponse| s.membership.clone().map(|m| (m.voters, m.learners));
    let before = members(&s);
    op_admin.add_learner(add).await?;
    let s = op_admin
        .status(pb::StatusRequest::default())
        .await?
        .into_inner();
    assert_ne!(
        members(&s),
        before,
        "the operator's add_learner changed nothing"
    );
    op_admin.remove(pb::RemoveRequest { node_id: 4 }).await?;
    let s = op_admin
        .status(pb::StatusRequest::default())
        .await?
        .into_inner();
    assert_eq!(members(&s), before);

    op_tokens.revoke(revoke).await?;
    let info = op_tokens.get(get(jti.clone())).await?.into_inner();
    assert_eq!(info.status, pb::TokenStatus::Revoked as i32);

    // Refusals are counted.
    let denied_after = denied_total(&cluster, &op).await?;
    assert!(
        denied_after >= denied_before + 40.0,
        "veto_auth_denied_total went {denied_before} -> {denied_after}"
    );
    Ok(())
}

/// Whether a Status call over `ep` succeeds.
async fn status_via(ep: Endpoint) -> Result<(), tonic::Status> {
    let ch = ep
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    AdminServiceClient::new(ch)
        .status(pb::StatusRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_an_expired_one_or_a_foreign_ca_cannot_connect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let addr = cluster.nodes[0].grpc_addr.clone();
    let ca_pem = read(&dir.path().join("ca.pem"))?;
    let ca = Ca::load(&ca_pem, &read(&dir.path().join("ca.key"))?)?;

    // The operator's certificate works at this address (so the refusals
    // below are about the certificate, not the address).
    let op = transport(dir.path(), "operator")?;
    status_as(&op, &addr).await?;

    // TLS with the right CA but no client certificate: the handshake
    // succeeds (gRPC health probes need none) and the call is refused.
    let anonymous = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))?;
    let e = status_via(anonymous)
        .await
        .expect_err("no client certificate was accepted");
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // Plaintext.
    assert!(
        status_via(Endpoint::from_shared(format!("http://{addr}"))?)
            .await
            .is_err(),
        "plaintext was accepted"
    );
    // An operator certificate that expired yesterday.
    let mut spec = LeafSpec::new("old-operator", Role::Operator, &[], 1);
    spec.not_before = time_days_ago(10);
    spec.not_after = time_days_ago(1);
    let expired = ca.issue(&spec)?;
    let t = Transport::from_pem(ca_pem.clone(), expired.cert_pem, expired.key_pem)?;
    assert!(
        status_as(&t, &addr).await.is_err(),
        "an expired certificate was accepted"
    );
    // An operator certificate from another CA.
    let foreign = Ca::generate("someone else's CA", 2)?;
    let leaf = foreign.issue(&LeafSpec::new("operator", Role::Operator, &[], 1))?;
    let t = Transport::from_pem(ca_pem.clone(), leaf.cert_pem, leaf.key_pem)?;
    assert!(
        status_as(&t, &addr).await.is_err(),
        "a foreign CA's certificate was accepted"
    );
    // Signed by the CA but naming no role: connects, may do nothing.
    let roleless = ca.issue_without_role(&LeafSpec::new("nobody", Role::Client, &[], 1))?;
    let t = Transport::from_pem(ca_pem.clone(), roleless.cert_pem, roleless.key_pem)?;
    let e = status_as(&t, &addr)
        .await
        .expect_err("a role-less certificate was obeyed");
    assert_eq!(e.code(), Code::PermissionDenied);

    // HTTPS: probes need no certificate; everything else does.
    let http = &cluster.nodes[0].http_addr;
    let (s, _) = https_get(http, "/healthz", &op, false).await?;
    assert_eq!(s, 200);
    let (s, body) = https_get(http, "/.well-known/jwks.json", &op, false).await?;
    assert_eq!(s, 200);
    assert!(body.contains("\"keys\""), "{body}");
    let (s, _) = https_get(http, "/metrics", &op, false).await?;
    assert_eq!(s, 401);
    let (s, _) = https_get(http, "/api/v1/status", &op, false).await?;
    assert_eq!(s, 401);
    let (s, body) = https_get(http, "/metrics", &op, true).await?;
    assert_eq!(s, 200);
    assert!(body.contains("veto_auth_denied_total"), "{body}");
    // A verify client's certificate may scrape metrics but not read the
    // cluster's members and edges.
    let client = transport(dir.path(), "client")?;
    assert_eq!(https_get(http, "/metrics", &client, true).await?.0, 200);
    assert_eq!(
        https_get(http, "/api/v1/status", &client, true).await?.0,
        403
    );
    assert_eq!(https_get(http, "/api/v1/status", &op, true).await?.0, 200);
    Ok(())
}

fn time_days_ago(days: i64) -> veto_auth::certs::OffsetDateTime {
    veto_auth::certs::OffsetDateTime::now_utc() - veto_auth::certs::Duration::days(days)
}

async fn verify(
    t: &Transport,
    edge: &veto_edge::Edge,
    token: &str,
) -> Result<pb::VerifyResponse, tonic::Status> {
    let addr = edge.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
    let ch = t
        .channel_lazy(&addr, Role::Edge, |ep| ep.timeout(Duration::from_secs(10)))
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    VerifierServiceClient::new(ch)
        .verify(pb::VerifyRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_stream_as_themselves_and_the_audit_names_the_caller() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let edge_opts = |id: &str, cert: &str| -> anyhow::Result<veto_edge::Options> {
        Ok(veto_edge::Options {
            edge_id: id.into(),
            servers: servers.clone(),
            bound_ms: 2_000,
            probe_interval_ms: 100,
            transport: transport(dir.path(), cert)?,
            ..Default::default()
        })
    };
    // edge-1 with its own certificate becomes fresh.
    let e1 = veto_edge::Edge::start(edge_opts("edge-1", "edge-1")?, local, local).await?;
    assert!(
        e1.handle.wait_fresh(Duration::from_secs(20)).await,
        "edge-1 never fresh"
    );
    // edge-2's certificate cannot subscribe as another edge: the server
    // answers PERMISSION_DENIED to its Hello.
    let hello = |id: &str| pb::EdgeMessage {
        msg: Some(pb::edge_message::Msg::Hello(pb::Hello {
            edge_id: id.into(),
            applied_revision: 0,
        })),
    };
    let e2 = transport(dir.path(), "edge-2")?;
    let mut feed = FeedServiceClient::new(channel(&e2, &servers[0])?);
    let refused = match feed
        .subscribe(tokio_stream::iter(vec![hello("edge-9")]))
        .await
    {
        Ok(s) => s.into_inner().message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(
        refused.err().map(|e| e.code()),
        Some(Code::PermissionDenied),
        "edge-2's certificate subscribed as edge-9"
    );

    // An operator issues through one follower and revokes through another;
    // a verify client checks at the edge.
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let followers: Vec<&veto_testkit::Node> =
        cluster.nodes.iter().filter(|n| n.id != leader).collect();
    let op = transport(dir.path(), "operator")?;
    let client = transport(dir.path(), "client")?;
    let issued = TokenServiceClient::new(channel(&op, &followers[0].grpc_addr)?)
        .issue(pb::IssueRequest {
            sub: "user:audited".into(),
            scopes: vec!["read".into()],
            ttl_seconds: 600,
            ..Default::default()
        })
        .await?
        .into_inner();
    let jti = issued.record.clone().map(|r| r.jti).unwrap_or_default();
    // An operator cannot write under another name: x-veto-actor is
    // ignored from anyone but a forwarding server.
    let mut spoof = tonic::Request::new(pb::IssueRequest {
        sub: "user:spoofed".into(),
        ttl_seconds: 600,
        ..Default::default()
    });
    spoof
        .metadata_mut()
        .insert("x-veto-actor", "operator:someone-else".parse()?);
    spoof
        .metadata_mut()
        .insert("x-veto-forwarded", "1".parse()?);
    // Straight to the leader: a "forwarded" request is never forwarded again.
    TokenServiceClient::new(channel(&op, &cluster.node(leader)?.grpc_addr)?)
        .issue(spoof)
        .await?;
    let v = verify(&client, &e1, &issued.token).await?;
    assert!(v.valid, "{v:?}");
    // Clients check the peer's role, not just the CA: the edge's
    // certificate (valid for 127.0.0.1 like the servers') does not pass for
    // a server's, so an edge key cannot pose as a server.
    let edge_addr = e1.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
    let posing = op
        .channel(&edge_addr, Role::Server, |ep| {
            ep.connect_timeout(Duration::from_secs(2))
        })
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(posing.contains("not a veto server"), "{posing:?}");
    // A client without a certificate cannot even ask the edge.
    let ca_pem = read(&dir.path().join("ca.pem"))?;
    let addr = e1.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
    let anon = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let anon_result = match anon.connect().await {
        Ok(ch) => VerifierServiceClient::new(ch)
            .verify(pb::VerifyRequest {
                token: issued.token.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(
        anon_result.is_err(),
        "an edge answered a client without a certificate"
    );

    let r = TokenServiceClient::new(channel(&op, &followers[1].grpc_addr)?)
        .revoke(pb::RevokeRequest {
            jti: jti.clone(),
            reason: "audit test".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let v = verify(&client, &e1, &issued.token).await?;
    assert!(
        !v.valid,
        "revoked at {} but still valid at the edge",
        r.revision
    );

    // The audit trail names the operator (not the forwarding servers), the
    // subject and the reason; filters narrow it.
    let mut admin = AdminServiceClient::new(channel(&op, &followers[0].grpc_addr)?);
    let audit = admin
        .audit(pb::AuditRequest {
            subject: "user:audited".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let seen: Vec<(&str, &str, &str, &str)> = audit
        .events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.actor.as_str(),
                e.target.as_str(),
                e.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("issue", "operator:operator", jti.as_str(), ""),
            (
                "revoke_token",
                "operator:operator",
                jti.as_str(),
                "audit test"
            ),
        ]
    );
    let by_actor = admin
        .audit(pb::AuditRequest {
            actor: "operator:operator".into(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(by_actor.events.len(), 1);
    assert!(!by_actor.next_page_token.is_empty());
    let spoofed = admin
        .audit(pb::AuditRequest {
            subject: "user:spoofed".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        spoofed
            .events
            .iter()
            .map(|e| e.actor.as_str())
            .collect::<Vec<_>>(),
        ["operator:operator"]
    );
    // Bootstrap writes by the server itself are attributed to it.
    let all = admin.audit(pb::AuditRequest::default()).await?.into_inner();
    assert!(
        all.events
            .iter()
            .any(|e| e.action == "publish_key" && e.actor.starts_with("veto-server")),
        "{:?}",
        all.events
    );
    // The CLI over TLS with the operator's certificate shows the same.
    let d = dir.path();
    let file = |f: &str| d.join(f).display().to_string();
    let out = veto_cli(&[
        "--addr",
        &followers[1].grpc_addr,
        "--tls-ca",
        &file("ca.pem"),
        "--tls-cert",
        &file("operator.pem"),
        "--tls-key",
        &file("operator.key"),
        "--json",
        "audit",
        "--subject",
        "user:audited",
    ])?;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1]["action"], "revoke_token");
    assert_eq!(lines[1]["actor"], "operator:operator");
    // Without a certificate the CLI refuses to fall back to plaintext.
    assert!(veto_cli(&["--addr", &followers[1].grpc_addr, "audit"]).is_err());
    let bad = admin
        .audit(pb::AuditRequest {
            page_token: "not-a-revision".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad page token was accepted");
    assert_eq!(bad.code(), Code::InvalidArgument);
    e1.stop().await;
    Ok(())
}
