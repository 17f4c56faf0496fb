//! Token usage, seen: a known verify workload over three edges (each
//! streaming from a different server, so two of them report through a
//! follower) reaches the control plane exactly: counts, first and last use,
//! edges, required and unused scopes, never-used tokens, the usage summary
//! with its least-privilege figures, and a revoked token's use attempts as
//! an audit event and a metric. An edge killed before its report loses
//! what it recorded since its previous report, and nothing else.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veto_core::token::Requirements;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_testkit::{channel, http_get, Cluster, ClusterOptions};

fn edge_opts(id: &str, server: &str, report_ms: u64) -> veto_edge::Options {
    veto_edge::Options {
        edge_id: id.into(),
        servers: vec![server.to_owned()],
        bound_ms: 2_000,
        probe_interval_ms: 100,
        usage_report_interval_ms: report_ms,
        ..Default::default()
    }
}

fn verify_n(
    edge: &veto_edge::Edge,
    token: &str,
    scope: &[String],
    n: usize,
) -> Vec<veto_feed::Outcome> {
    let req = Requirements {
        audience: None,
        scopes: scope,
    };
    (0..n)
        .map(|_| edge.handle.verify(token, &req).outcome)
        .collect()
}

async fn get(
    tokens: &mut TokenServiceClient<tonic::transport::Channel>,
    jti: &str,
) -> Result<pb::TokenInfo> {
    Ok(tokens
        .get(pb::GetTokenRequest { jti: jti.into() })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_over_three_edges_reaches_the_control_plane_exactly() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        extra_config: "\nusage_flush_interval_ms = 300\n".into(),
        ..Default::default()
    })
    .await?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    // Waits for the bootstrap signing key.
    veto_tests::issue(&cluster.nodes[0], "user:warmup", 60).await?;
    let mut edges = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        edges.push(veto_tests::start_edge(edge_opts(&format!("edge-{i}"), a, 200)).await?);
    }
    // An edge that would report only every minute: killed before it does.
    let doomed = veto_tests::start_edge(edge_opts("edge-k", &addrs[0], 60_000)).await?;

    let mut tokens = TokenServiceClient::new(channel(&addrs[0])?);
    let issue = |sub: &str, scopes: &[&str]| {
        let req = pb::IssueRequest {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl_seconds: 600,
            owner: "team-usage".into(),
            ..Default::default()
        };
        let mut c = tokens.clone();
        async move { anyhow::Ok(c.issue(req).await?.into_inner()) }
    };
    let a = issue("svc:a", &["read", "write"]).await?;
    let b = issue("svc:b", &["read"]).await?;
    let c = issue("svc:c", &["read"]).await?;
    let d = issue("svc:d", &["read"]).await?;
    let jti = |t: &pb::IssueResponse| t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
    for e in edges.iter().chain([&doomed]) {
        anyhow::ensure!(
            e.handle
                .wait_revision(d.revision, Duration::from_secs(10))
                .await
        );
    }
    let read = vec!["read".to_owned()];
    let valid = veto_feed::Outcome::Valid;
    assert!(verify_n(&edges[0], &a.token, &read, 10)
        .iter()
        .all(|o| *o == valid));
    assert!(verify_n(&edges[1], &a.token, &read, 5)
        .iter()
        .all(|o| *o == valid));
    assert!(verify_n(&edges[2], &b.token, &read, 7)
        .iter()
        .all(|o| *o == valid));
    assert!(verify_n(&edges[0], &d.token, &[], 3)
        .iter()
        .all(|o| *o == valid));
    // Never reported: the edge dies first.
    assert!(verify_n(&doomed, &b.token, &read, 5)
        .iter()
        .all(|o| *o == valid));
    doomed.stop().await;
    // A forged signature is not tracked (no jti to trust).
    let mut forged = b.token.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged)?;
    assert_ne!(verify_n(&edges[2], &forged, &[], 1)[0], valid);

    // D is revoked everywhere, then tried 4 times at edge-1.
    tokens
        .revoke(pb::RevokeRequest {
            jti: jti(&d),
            reason: "retired".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?;
    let refused = verify_n(&edges[1], &d.token, &[], 4);
    assert!(
        refused.iter().all(|o| *o == veto_feed::Outcome::Revoked),
        "{refused:?}"
    );

    // Everything reaches the replicated state (reports every 200 ms,
    // flushes every 300 ms).
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each edge reports through its own server, which flushes on its own
    // schedule: wait for every token's usage, not just some.
    let (ia, id, ib) = loop {
        let ia = get(&mut tokens, &jti(&a)).await?;
        let id = get(&mut tokens, &jti(&d)).await?;
        let ib = get(&mut tokens, &jti(&b)).await?;
        let done = ia.usage.as_ref().is_some_and(|u| u.valid >= 15)
            && id.usage.as_ref().is_some_and(|u| u.revoked >= 4)
            && ib.usage.as_ref().is_some_and(|u| u.valid >= 7);
        if done {
            break (ia, id, ib);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "usage never arrived: {ia:?} {id:?} {ib:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ua = ia.usage.context("usage of a")?;
    assert_eq!((ua.valid, ua.revoked, ua.refused), (15, 0, 0));
    assert_eq!(ua.edges, vec!["edge-0", "edge-1"]);
    assert_eq!(ua.scopes_required, vec!["read"]);
    assert_eq!(ua.scopes_unused, vec!["write"]);
    let now = veto_tests::unix_now();
    assert!(ua.first_used_unix <= ua.last_used_unix && ua.last_used_unix <= now);
    assert!(ua.first_used_unix >= now - 60);
    let ud = id.usage.context("usage of d")?;
    assert_eq!((ud.valid, ud.revoked), (3, 4));
    // Exactly the reported edges' verifies: the killed edge's 5 are lost.
    let ub = ib.usage.context("usage of b")?;
    assert_eq!((ub.valid, ub.edges.clone()), (7, vec!["edge-2".to_owned()]));
    assert!(get(&mut tokens, &jti(&c)).await?.usage.is_none());

    // Never used, as listed.
    let never = tokens
        .list(pb::ListTokensRequest {
            owner: Some("team-usage".into()),
            never_used: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let never: Vec<String> = never
        .tokens
        .iter()
        .filter_map(|t| t.record.as_ref().map(|r| r.jti.clone()))
        .collect();
    assert_eq!(never, vec![jti(&c)]);

    // The summary: per owner, and the least-privilege report.
    let u = tokens
        .usage(pb::UsageRequest {
            group_by: "owner".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let g = u
        .groups
        .iter()
        .find(|g| g.key == "team-usage")
        .context("the owner's group")?;
    assert_eq!((g.tokens, g.active, g.never_used), (4, 3, 1));
    assert_eq!((g.verifies, g.revoked_attempts), (15 + 7 + 3 + 4, 4));
    let over: Vec<&str> = u.over_privileged.iter().map(|o| o.jti.as_str()).collect();
    assert_eq!(over, vec![jti(&a).as_str()]);
    assert_eq!(u.over_privileged[0].unused, vec!["write"]);
    // a (read+write, uses read) is over-privileged, b is not: 1 of 2.
    assert!(
        (u.least_privilege_ratio - 0.5).abs() < 1e-9,
        "{}",
        u.least_privilege_ratio
    );
    let by_sub = veto_tests::veto_cli(&[
        "--addr",
        &addrs[1],
        "--insecure",
        "--json",
        "token",
        "usage",
        "--by-subject",
    ])?;
    assert!(by_sub.contains("\"subject\":\"svc:a\""), "{by_sub}");

    // The revoked token's use attempts: an audit event and a metric.
    let trail = AdminServiceClient::new(channel(&addrs[2])?)
        .audit(pb::AuditRequest {
            subject: "svc:d".into(),
            action: "revoked_token_used".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(trail.events.len(), 1, "{trail:?}");
    let used = &trail.events[0];
    assert_eq!(used.actor, "edge:edge-1");
    assert_eq!(used.target, jti(&d));
    assert!(
        used.reason.starts_with("4 use attempt(s)"),
        "{}",
        used.reason
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, m) = http_get(&cluster.nodes[1].http_addr, "/metrics").await?;
        let sample = |name: &str| {
            m.lines()
                .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // The gauge over live records, and the total the alert reads.
        let attempts = sample("veto_revoked_token_use_attempts")
            .min(sample("veto_revoked_token_use_attempts_total"));
        if attempts >= 4.0 {
            assert!(m.contains("veto_tokens_never_used "));
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "veto_revoked_token_use_attempts stayed {attempts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The Raft cost is per flush, not per verify: 34 tracked verifies took
    // a handful of entries.
    let (_, m) = http_get(&cluster.nodes[0].http_addr, "/metrics").await?;
    assert!(m.contains("veto_usage_commands_total"));
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
