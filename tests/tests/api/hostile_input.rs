//! Hostile input to every RPC of every service (docs/design.md, "Security"): malformed,
//! oversized and non-protobuf requests, garbage streams, each answered with
//! a clear status (never a panic or a hang), and nothing changes: every
//! server's state digest and revision are the same before and after. Also:
//! the per-client write rate limit.

use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::{channel, Cluster, ClusterOptions};
use veto_tests::{issue, start_edges};

/// Sends and receives raw message bytes: lets the test put anything on
/// the wire.
#[derive(Clone, Default)]
struct Raw;
struct RawEnc;
struct RawDec;

impl Encoder for RawEnc {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEnc;
    type Decoder = RawDec;
    fn encoder(&mut self) -> RawEnc {
        RawEnc
    }
    fn decoder(&mut self) -> RawDec {
        RawDec
    }
}

fn path(p: &str) -> Result<PathAndQuery, Status> {
    PathAndQuery::try_from(p.to_owned()).map_err(|e| Status::internal(e.to_string()))
}

async fn raw_unary(ch: &Channel, p: &str, body: Vec<u8>) -> Result<(), Status> {
    let mut g = tonic::client::Grpc::new(ch.clone()).max_encoding_message_size(64 << 20);
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    g.unary(tonic::Request::new(body), path(p)?, Raw)
        .await
        .map(|_| ())
}

async fn raw_stream(ch: &Channel, p: &str, msgs: Vec<Vec<u8>>) -> Result<(), Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut s = g
        .streaming(tonic::Request::new(tokio_stream::iter(msgs)), path(p)?, Raw)
        .await?
        .into_inner();
    // The answer: an error as the first item, or a stream that ends.
    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(Status::deadline_exceeded("no answer within 10 s")),
    }
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send>>;

fn ok<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

/// Messages of TokenService and AdminService unary methods.
const UNARY: &[&str] = &[
    "/veto.v1.TokenService/Issue",
    "/veto.v1.TokenService/Refresh",
    "/veto.v1.TokenService/Revoke",
    "/veto.v1.TokenService/RevokeSubject",
    "/veto.v1.TokenService/RevokeFamily",
    "/veto.v1.TokenService/Get",
    "/veto.v1.TokenService/List",
    "/veto.v1.AdminService/Init",
    "/veto.v1.AdminService/AddLearner",
    "/veto.v1.AdminService/Promote",
    "/veto.v1.AdminService/ChangeMembership",
    "/veto.v1.AdminService/Remove",
    "/veto.v1.AdminService/TransferLeader",
    "/veto.v1.AdminService/Status",
    "/veto.v1.AdminService/RotateSigningKey",
    "/veto.v1.AdminService/ListKeys",
    "/veto.v1.AdminService/Edges",
    "/veto.v1.AdminService/RewrapKeys",
    "/veto.v1.AdminService/Audit",
    "/veto.v1.RaftService/AppendEntries",
    "/veto.v1.RaftService/Vote",
    "/veto.v1.RaftService/TransferLeader",
    "/veto.v1.RaftService/ReadIndex",
];

async fn digests(cluster: &Cluster) -> Vec<(u64, u64, String)> {
    let mut v = Vec::new();
    for n in &cluster.nodes {
        let s = n.status_with_digest().await;
        v.push(
            s.map(|s| (n.id, s.applied_index, s.state_digest))
                .unwrap_or((n.id, 0, "no answer".into())),
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_hostile_input_clearly_and_nothing_changes() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let f = cluster.follower().await?;
    let good = issue(f, "user:victim", 600).await?;
    let jti = good.record.clone().map(|r| r.jti).unwrap_or_default();
    let edges = start_edges(&cluster, 1, 2_000, 100).await?;
    let edge_addr = edges[0]
        .grpc_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    let l = cluster.node(leader)?;
    cluster
        .wait_applied(good.revision, Duration::from_secs(10))
        .await?;
    let before = digests(&cluster).await;

    let ch = f.channel()?;
    let lch = l.channel()?;
    let ech = channel(&edge_addr)?;
    let t = || TokenServiceClient::new(ch.clone());
    let a = || AdminServiceClient::new(ch.clone());
    let v = || VerifierServiceClient::new(ech.clone());
    let huge = "x".repeat(5 << 20);
    let bad_jti = "zz".repeat(16);
    let probe_first = {
        use prost::Message;
        pb::EdgeMessage {
            msg: Some(pb::edge_message::Msg::Probe(pb::SyncProbe::default())),
        }
        .encode_to_vec()
    };
    let bad_hello = {
        use prost::Message;
        pb::EdgeMessage {
            msg: Some(pb::edge_message::Msg::Hello(pb::Hello {
                edge_id: "../../etc/passwd".into(),
                applied_revision: 0,
            })),
        }
        .encode_to_vec()
    };

    // (what, call, accepted codes)
    let mut table: Vec<(String, Call, &[Code])> = vec![
        (
            "Issue: empty sub".into(),
            Box::pin({
                let mut c = t();
                async move { ok(c.issue(pb::IssueRequest::default()).await) }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Issue: 10 kB sub".into(),
            Box::pin({
                let mut c = t();
                let s = "s".repeat(10_000);
                async move {
                    ok(c.issue(pb::IssueRequest {
                        sub: s,
                        ttl_seconds: 60,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Issue: 5 MiB request".into(),
            Box::pin({
                let mut c = t();
                let s = huge.clone();
                async move {
                    ok(c.issue(pb::IssueRequest {
                        sub: s,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::ResourceExhausted, Code::OutOfRange],
        ),
        (
            "Issue: 10,000 scopes".into(),
            Box::pin({
                let mut c = t();
                async move {
                    ok(c.issue(pb::IssueRequest {
                        sub: "u".into(),
                        scopes: (0..10_000).map(|i| format!("s{i}")).collect(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Refresh: bad jti".into(),
            Box::pin({
                let mut c = t();
                let j = bad_jti.clone();
                async move {
                    ok(c.refresh(pb::RefreshRequest {
                        jti: j,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Refresh: grace over max".into(),
            Box::pin({
                let mut c = t();
                let j = jti.clone();
                async move {
                    ok(c.refresh(pb::RefreshRequest {
                        jti: j,
                        grace_seconds: u64::MAX,
                        ttl_seconds: 60,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Revoke: empty jti".into(),
            Box::pin({
                let mut c = t();
                async move { ok(c.revoke(pb::RevokeRequest::default()).await) }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Revoke: 1 MB reason".into(),
            Box::pin({
                let mut c = t();
                let j = jti.clone();
                async move {
                    ok(c.revoke(pb::RevokeRequest {
                        jti: j,
                        reason: "r".repeat(1 << 20),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Revoke: unknown wait_for".into(),
            Box::pin({
                let mut c = t();
                let j = jti.clone();
                async move {
                    ok(c.revoke(pb::RevokeRequest {
                        jti: j,
                        wait_for: 99,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "RevokeSubject: empty".into(),
            Box::pin({
                let mut c = t();
                async move { ok(c.revoke_subject(pb::RevokeSubjectRequest::default()).await) }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "RevokeSubject: control chars".into(),
            Box::pin({
                let mut c = t();
                async move {
                    ok(c.revoke_subject(pb::RevokeSubjectRequest {
                        sub: "a\u{0}b".into(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "RevokeFamily: bad id".into(),
            Box::pin({
                let mut c = t();
                async move {
                    ok(c.revoke_family(pb::RevokeFamilyRequest {
                        family: "not-hex".into(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Get: bad jti".into(),
            Box::pin({
                let mut c = t();
                let j = bad_jti.clone();
                async move { ok(c.get(pb::GetTokenRequest { jti: j }).await) }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "List: page_size 5000".into(),
            Box::pin({
                let mut c = t();
                async move {
                    ok(c.list(pb::ListTokensRequest {
                        page_size: 5000,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "List: bad page token".into(),
            Box::pin({
                let mut c = t();
                async move {
                    ok(c.list(pb::ListTokensRequest {
                        page_token: "../".into(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Init: again".into(),
            Box::pin({
                let mut c = a();
                async move { ok(c.init(pb::InitRequest::default()).await) }
            }),
            &[Code::FailedPrecondition, Code::AlreadyExists],
        ),
        (
            "AddLearner: no member".into(),
            Box::pin({
                let mut c = a();
                async move { ok(c.add_learner(pb::AddLearnerRequest::default()).await) }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "AddLearner: bad address".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.add_learner(pb::AddLearnerRequest {
                        member: Some(pb::Member {
                            node_id: 9,
                            addr: "no port".into(),
                        }),
                        blocking: false,
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Promote: unknown node".into(),
            Box::pin({
                let mut c = a();
                async move { ok(c.promote(pb::PromoteRequest { node_id: 99 }).await) }
            }),
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
        ),
        (
            "ChangeMembership: no voters".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.change_membership(pb::ChangeMembershipRequest::default())
                        .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "ChangeMembership: unknown voter".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.change_membership(pb::ChangeMembershipRequest {
                        voters: vec![1, 2, 99],
                        retain: false,
                    })
                    .await)
                }
            }),
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
        ),
        (
            "Remove: node 0".into(),
            Box::pin({
                let mut c = a();
                async move { ok(c.remove(pb::RemoveRequest { node_id: 0 }).await) }
            }),
            &[Code::InvalidArgument, Code::NotFound],
        ),
        (
            "TransferLeader: unknown node".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(
                        c.transfer_leader(pb::TransferLeaderRequest { to_node_id: 99 })
                            .await,
                    )
                }
            }),
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
        ),
        (
            "RotateSigningKey: no stage".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.rotate_signing_key(pb::RotateSigningKeyRequest::default())
                        .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "RotateSigningKey: bad kid".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.rotate_signing_key(pb::RotateSigningKeyRequest {
                        stage: pb::KeyStage::Retire as i32,
                        kid: "x".into(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Audit: bad page token".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.audit(pb::AuditRequest {
                        page_token: "-1".into(),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Audit: page_size 5000".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.audit(pb::AuditRequest {
                        page_size: 5000,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Audit: 10 kB subject".into(),
            Box::pin({
                let mut c = a();
                async move {
                    ok(c.audit(pb::AuditRequest {
                        subject: "s".repeat(10_000),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "VerifyBatch: 5000 items".into(),
            Box::pin({
                let mut c = v();
                async move {
                    ok(c.verify_batch(pb::VerifyBatchRequest {
                        items: vec![pb::VerifyRequest::default(); 5000],
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Verify: 1 kB audience".into(),
            Box::pin({
                let mut c = v();
                async move {
                    ok(c.verify(pb::VerifyRequest {
                        token: "x".into(),
                        audience: Some("a".repeat(1000)),
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Verify: 9 MiB request".into(),
            Box::pin({
                let mut c = v();
                let s = "x".repeat(9 << 20);
                async move {
                    ok(c.verify(pb::VerifyRequest {
                        token: s,
                        ..Default::default()
                    })
                    .await)
                }
            }),
            &[Code::ResourceExhausted, Code::OutOfRange],
        ),
        (
            "Subscribe: Probe before Hello".into(),
            Box::pin({
                let c = ch.clone();
                let m = probe_first.clone();
                async move { raw_stream(&c, "/veto.v1.FeedService/Subscribe", vec![m]).await }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Subscribe: bad edge id".into(),
            Box::pin({
                let c = ch.clone();
                let m = bad_hello.clone();
                async move { raw_stream(&c, "/veto.v1.FeedService/Subscribe", vec![m]).await }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Subscribe: garbage bytes".into(),
            Box::pin({
                let c = ch.clone();
                async move {
                    raw_stream(&c, "/veto.v1.FeedService/Subscribe", vec![vec![0xff; 64]]).await
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "Subscribe: no messages".into(),
            Box::pin({
                let c = ch.clone();
                async move { raw_stream(&c, "/veto.v1.FeedService/Subscribe", vec![]).await }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "InstallSnapshot: empty stream".into(),
            Box::pin({
                let c = lch.clone();
                async move { raw_stream(&c, "/veto.v1.RaftService/InstallSnapshot", vec![]).await }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "InstallSnapshot: garbage".into(),
            Box::pin({
                let c = lch.clone();
                async move {
                    raw_stream(
                        &c,
                        "/veto.v1.RaftService/InstallSnapshot",
                        vec![vec![0x0a, 0x03, b'{', b'{', b'{']],
                    )
                    .await
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "AppendStream: non-protobuf bytes".into(),
            Box::pin({
                let c = lch.clone();
                async move {
                    raw_stream(
                        &c,
                        "/veto.v1.RaftService/AppendStream",
                        vec![vec![0x0f, 0xff, 0xff, 0xff]],
                    )
                    .await
                }
            }),
            &[Code::Internal, Code::InvalidArgument],
        ),
        (
            "AppendStream: garbage payload".into(),
            Box::pin({
                let c = lch.clone();
                async move {
                    raw_stream(
                        &c,
                        "/veto.v1.RaftService/AppendStream",
                        vec![vec![0x0a, 0x04, b'n', b'o', b'p', b'e']],
                    )
                    .await
                }
            }),
            &[Code::InvalidArgument],
        ),
        (
            "no such method".into(),
            Box::pin({
                let c = ch.clone();
                async move { raw_unary(&c, "/veto.v1.TokenService/DropTables", vec![]).await }
            }),
            &[Code::Unimplemented],
        ),
        (
            "no such service".into(),
            Box::pin({
                let c = ch.clone();
                async move { raw_unary(&c, "/grpc.reflection.v1.ServerReflection/Info", vec![]).await }
            }),
            &[Code::Unimplemented],
        ),
    ];
    // Every unary method: bytes that are not protobuf (an invalid wire
    // type), and a well-formed message whose Raft payload is garbage.
    for p in UNARY {
        let c = if p.contains("Raft") {
            lch.clone()
        } else {
            ch.clone()
        };
        table.push((
            format!("{p}: non-protobuf bytes"),
            Box::pin({
                let c = c.clone();
                async move { raw_unary(&c, p, vec![0x0f, 0xff, 0xff, 0xff]).await }
            }),
            // gRPC's status-code table: a request that does not parse is INTERNAL.
            &[Code::Internal, Code::InvalidArgument],
        ));
        // ReadIndex takes no input: its payload is ignored.
        if p.contains("Raft") && !p.ends_with("ReadIndex") {
            table.push((
                format!("{p}: garbage payload"),
                Box::pin(async move {
                    raw_unary(&c, p, vec![0x0a, 0x04, b'n', b'o', b'p', b'e']).await
                }),
                &[Code::InvalidArgument],
            ));
        }
    }

    let mut failures = Vec::new();
    for (what, call, codes) in table {
        let r = tokio::time::timeout(Duration::from_secs(20), call).await;
        let code = match r {
            Err(_) => {
                failures.push(format!("{what}: no answer within 20 s"));
                continue;
            }
            Ok(Ok(())) => Code::Ok,
            Ok(Err(s)) => {
                if s.message().is_empty() {
                    failures.push(format!("{what}: {:?} without a message", s.code()));
                }
                s.code()
            }
        };
        if !codes.contains(&code) {
            failures.push(format!("{what}: {code:?}, expected one of {codes:?}"));
        }
    }
    // Verify answers garbage with a reason, never an error.
    for (what, token) in [
        ("empty", String::new()),
        ("garbage", "not.a.token".to_string()),
        (
            "binary",
            String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x01]).into_owned(),
        ),
        ("100 kB", "a.".repeat(50_000)),
        ("5 MiB", huge.clone()),
        ("tampered", format!("{}x", good.token)),
    ] {
        let r = v()
            .verify(pb::VerifyRequest {
                token,
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                if r.valid || r.reason.is_empty() {
                    failures.push(format!("Verify {what}: {r:?}"));
                }
            }
            Err(s) => failures.push(format!("Verify {what}: error {s:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing changed anywhere, and every server still answers.
    let after = digests(&cluster).await;
    assert_eq!(before, after, "state changed under hostile input");
    let still = v()
        .verify(pb::VerifyRequest {
            token: good.token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(still.valid, "{still:?}");
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_the_per_client_rate_are_refused_and_counted() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        extra_config: "write_rate_per_second = 10\nwrite_burst = 10\n".into(),
        ..ClusterOptions::default()
    })
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    issue(l, "user:first", 600).await?;
    let mut c = l.tokens()?;
    let (mut ok_n, mut limited) = (0, 0);
    for i in 0..40 {
        match c
            .issue(pb::IssueRequest {
                sub: format!("user:{i}"),
                ttl_seconds: 600,
                ..Default::default()
            })
            .await
        {
            Ok(_) => ok_n += 1,
            Err(s) if s.code() == Code::ResourceExhausted => limited += 1,
            Err(s) => anyhow::bail!("unexpected {s:?}"),
        }
    }
    assert!(limited > 0, "40 fast writes, none limited ({ok_n} ok)");
    assert!(ok_n >= 5, "only {ok_n} of 40 writes passed");
    // Reads are not limited.
    let mut a = l.admin()?;
    for _ in 0..30 {
        a.status(pb::StatusRequest::default()).await?;
    }
    let (_, body) = veto_testkit::http_get(&l.http_addr, "/metrics").await?;
    let n: f64 = body
        .lines()
        .filter(|x| x.starts_with("veto_auth_denied_total{reason=\"rate_limited\"}"))
        .filter_map(|x| x.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(n >= limited as f64, "counted {n}, refused {limited}");
    Ok(())
}
