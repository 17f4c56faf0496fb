//! `veto-bench demo`: a local 3-node cluster on loopback with temporary data;
//! issues a token through a follower, revokes it, and prints the revision
//! and the measured commit latencies.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_testkit::{Cluster, ClusterOptions};

use crate::common::{
    addr_text, edge_opts, grpc_addrs, issue_first, ms, q, read_token, start_local_edge, wait_fresh,
};

/// Arguments of `veto-bench demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the walkthrough instead of keeping the cluster up.
    #[arg(long)]
    pub once: bool,
    /// Tokens to issue and revoke for the latency figures.
    #[arg(long, default_value_t = 200)]
    pub samples: u32,
    /// Propagation bound B of the edges, ms.
    #[arg(long, default_value_t = 2000)]
    pub bound_ms: u64,
    /// Edge probe interval H, ms.
    #[arg(long, default_value_t = 100)]
    pub probe_interval_ms: u64,
    /// Write Prometheus file_sd target files (veto-server.json,
    /// veto-edge.json) into this directory, for
    /// deploy/observability/prometheus.yml.
    #[arg(long, value_name = "DIR")]
    pub prometheus_targets: Option<std::path::PathBuf>,
}

/// Writes Prometheus file_sd files for the servers' and edges' HTTP ports.
fn write_targets(dir: &std::path::Path, servers: &[String], edges: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, job, targets) in [
        ("veto-server.json", "veto-server", servers),
        ("veto-edge.json", "veto-edge", edges),
    ] {
        let body = serde_json::json!([{ "targets": targets, "labels": { "cluster": "demo", "job": job } }]);
        let path = dir.join(file);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&body)?)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// The name of a verify outcome ("?" for an unknown value).
fn outcome_name(o: i32) -> &'static str {
    pb::Outcome::try_from(o)
        .map(|o| o.as_str_name())
        .unwrap_or("?")
}

/// The audience the demo's token is issued for: a verifier must name it.
const AUDIENCE: &str = "api.example";

/// Verifies `token` at `e` as the demo's API would: naming its audience and
/// the scope it needs. Fails unless the answer is `want`, so a demo that
/// shows the wrong outcome cannot pass for a working one.
async fn verify_at(
    e: &veto_edge::Edge,
    token: &str,
    min_revision: u64,
    want: pb::Outcome,
) -> Result<pb::VerifyResponse> {
    let addr = addr_text(e.grpc_addr);
    let mut c = veto_proto::verifier_service_client::VerifierServiceClient::new(
        veto_testkit::channel(&addr)?,
    );
    let r = c
        .verify(pb::VerifyRequest {
            token: token.into(),
            required_scopes: vec!["orders:read".into()],
            audience: Some(AUDIENCE.into()),
            min_revision,
        })
        .await?
        .into_inner();
    if r.outcome != want as i32 {
        anyhow::bail!(
            "{} answered {} ({}), expected {}",
            e.handle.options().edge_id,
            outcome_name(r.outcome),
            r.reason,
            want.as_str_name()
        );
    }
    Ok(r)
}

/// Prints the walkthrough's lines, unless the output is JSON.
#[derive(Clone, Copy)]
struct Say {
    json_out: bool,
}

impl Say {
    /// Prints `s` as a line of the walkthrough (nothing under `--json`).
    fn line(self, s: impl std::fmt::Display) {
        if !self.json_out {
            println!("{s}");
        }
    }
}

/// What the revoke step measured.
struct Revoked {
    /// The revoke's reply.
    rv: pb::RevokeResponse,
    /// Call start -> reply, on this process's clock.
    wall: Duration,
    /// Per edge: call start -> the edge applied the revoke, ms.
    per_edge: Vec<(String, f64)>,
}

/// Runs the demo.
pub async fn run(args: DemoArgs, json_out: bool) -> Result<()> {
    let say = Say { json_out };
    let (cluster, leader) = start_cluster(say).await?;
    let edges = start_edges(&args, &cluster, say).await?;
    let (mut tokens, issued) = issue_and_verify(&cluster, &edges, say).await?;
    let revoked = revoke_and_watch(&mut tokens, &edges, &issued, say).await?;
    let (issue_h, revoke_h) = latency_samples(&cluster, leader, args.samples).await?;
    report(&args, &cluster, &revoked, &issue_h, &revoke_h, json_out);
    keep_running(args.once, cluster, edges, say).await
}

/// Starts the 3-node cluster and prints its nodes; returns it and its leader.
async fn start_cluster(say: Say) -> Result<(Cluster, u64)> {
    say.line("starting 3 veto-server nodes on 127.0.0.1 (temporary data, fsync on)...");
    tracing::warn!("the demo runs every process with --insecure: plaintext, no authentication");
    say.line("WARNING: the demo runs --insecure (plaintext gRPC and HTTP, no client certificates);\n         for a secured cluster see docs/security.md (veto certs init)");
    let t0 = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .context("starting the cluster")?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    for n in &cluster.nodes {
        say.line(format!(
            "  node {}  grpc {}  http {}{}",
            n.id,
            n.grpc_addr,
            n.http_addr,
            if n.id == leader { "  (leader)" } else { "" }
        ));
    }
    say.line(format!(
        "cluster up with a leader in {:.0} ms; dashboard at http://{}/ui",
        ms(t0.elapsed()),
        cluster.nodes[0].http_addr
    ));
    Ok((cluster, leader))
}

/// Starts three edges in this process, each serving VerifierService on its
/// own port, waits until they are fresh, prints them and (if asked) writes
/// the Prometheus targets.
async fn start_edges(args: &DemoArgs, cluster: &Cluster, say: Say) -> Result<Vec<veto_edge::Edge>> {
    let servers = grpc_addrs(cluster);
    let mut edges = Vec::new();
    for i in 1..=3 {
        let opts = edge_opts(
            format!("edge-{i}"),
            &servers,
            args.bound_ms,
            args.probe_interval_ms,
        );
        edges.push(start_local_edge(opts).await?);
    }
    for e in &edges {
        wait_fresh(e).await?;
    }
    say.line(format!(
        "started 3 edges (bound B = {} ms, probe every {} ms):",
        args.bound_ms, args.probe_interval_ms
    ));
    for e in &edges {
        say.line(format!(
            "  {}  verify grpc {}  http {}  feed from {}",
            e.handle.options().edge_id,
            addr_text(e.grpc_addr),
            addr_text(e.http_addr),
            e.handle.server().unwrap_or_default()
        ));
    }
    if let Some(dir) = &args.prometheus_targets {
        let servers: Vec<String> = cluster.nodes.iter().map(|n| n.http_addr.clone()).collect();
        let edge_http: Vec<String> = edges
            .iter()
            .filter_map(|e| e.http_addr.map(|a| a.to_string()))
            .collect();
        write_targets(dir, &servers, &edge_http)?;
        say.line(format!("Prometheus targets written to {}", dir.display()));
    }
    Ok(edges)
}

/// Issues the demo's token through a follower and verifies it VALID at
/// every edge; returns the follower's token client and the issued token.
async fn issue_and_verify(
    cluster: &Cluster,
    edges: &[veto_edge::Edge],
    say: Say,
) -> Result<(TokenServiceClient<Channel>, pb::IssueResponse)> {
    let follower = cluster.follower().await?;
    let tokens = follower.tokens()?;
    // The leader creates the first signing key right after election.
    let req = pb::IssueRequest {
        sub: "user:alice".into(),
        scopes: vec!["orders:read".into(), "orders:write".into()],
        aud: Some(AUDIENCE.into()),
        ttl_seconds: 3600,
        ..Default::default()
    };
    let issued = issue_first(&tokens, req).await?;
    let rec = issued.record.clone().unwrap_or_default();
    say.line(format!(
        "\nissued through follower node {} (forwarded to the leader):",
        follower.id
    ));
    say.line(format!(
        "  token    {}...{} ({} bytes, shown once)",
        &issued.token[..16.min(issued.token.len())],
        &issued.token[issued.token.len().saturating_sub(8)..],
        issued.token.len()
    ));
    say.line(format!(
        "  jti      {}\n  sub      {}\n  kid      {}\n  revision {}",
        rec.jti, rec.sub, rec.kid, issued.revision
    ));

    say.line("\nverify at every edge (no propagation needed for a new token):");
    for e in edges {
        let s = Instant::now();
        let r = verify_at(e, &issued.token, 0, pb::Outcome::Valid).await?;
        say.line(format!(
            "  {}  {}  in {:.0} us (gRPC round trip)",
            e.handle.options().edge_id,
            outcome_name(r.outcome),
            s.elapsed().as_secs_f64() * 1e6
        ));
    }
    Ok((tokens, issued))
}

/// Watches `h`'s applied revision (for up to 10 s) until it moves past
/// where it is now; returns the new revision and when it was seen.
fn watch_revision(h: veto_edge::EdgeHandle) -> tokio::task::JoinHandle<Option<(u64, Instant)>> {
    tokio::spawn(async move {
        let seen = h.revision();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            let r = h.revision();
            if r > seen {
                return Some((r, Instant::now()));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        None
    })
}

/// Revokes the token waiting for every edge, prints when each edge applied
/// it, verifies it REVOKED everywhere and revokes it again (idempotent).
async fn revoke_and_watch(
    tokens: &mut TokenServiceClient<Channel>,
    edges: &[veto_edge::Edge],
    issued: &pb::IssueResponse,
    say: Say,
) -> Result<Revoked> {
    let jti = issued.record.clone().unwrap_or_default().jti;
    // Watch each edge's applied revision on this process's clock.
    let started = Instant::now();
    let watchers: Vec<_> = edges
        .iter()
        .map(|e| watch_revision(e.handle.clone()))
        .collect();
    let rv = tokens
        .revoke(pb::RevokeRequest {
            jti: jti.clone(),
            reason: "demo: leaked".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let wall = started.elapsed();
    say.line(format!(
        "\nrevoked at revision {}: committed in {:.2} ms on the leader; every live edge acknowledged {} ms after commit ({:.2} ms round trip via the follower)",
        rv.revision,
        rv.commit_ms,
        rv.propagation_ms.map(|p| format!("{p:.2}")).unwrap_or_else(|| "-".into()),
        ms(wall)
    ));
    let mut per_edge = Vec::new();
    for (e, w) in edges.iter().zip(watchers) {
        if let Ok(Some((_, at))) = w.await {
            per_edge.push((
                e.handle.options().edge_id.clone(),
                ms(at.saturating_duration_since(started)),
            ));
        }
    }
    say.line("call start -> edge applied the revoke (one clock, this process):");
    for (id, t) in &per_edge {
        say.line(format!("  {id}  {t:.2} ms"));
    }
    say.line("verify at every edge now:");
    for e in edges {
        let r = verify_at(e, &issued.token, rv.revision, pb::Outcome::Revoked).await?;
        say.line(format!(
            "  {}  {}  ({})",
            e.handle.options().edge_id,
            outcome_name(r.outcome),
            r.reason
        ));
    }
    revoke_again(tokens, jti, say).await?;
    Ok(Revoked { rv, wall, per_edge })
}

/// Revokes `jti` a second time and prints that the answer is the first revoke's.
async fn revoke_again(
    tokens: &mut TokenServiceClient<Channel>,
    jti: String,
    say: Say,
) -> Result<()> {
    let again = tokens
        .revoke(pb::RevokeRequest {
            jti,
            reason: "again".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    say.line(format!(
        "revoked again: idempotent, returns the first revision {} (already_revoked={})",
        again.revision, again.already_revoked
    ));
    Ok(())
}

/// Latency figures over `samples` sequential issues, then revokes of those
/// tokens, sent straight to the leader; returns (issue, revoke) histograms in µs.
async fn latency_samples(
    cluster: &Cluster,
    leader: u64,
    samples: u32,
) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let mut issue_h = Histogram::<u64>::new(3)?;
    let mut revoke_h = Histogram::<u64>::new(3)?;
    let mut lt = cluster.node(leader)?.tokens()?;
    let mut jtis = Vec::new();
    for i in 0..samples {
        let s = Instant::now();
        let r = lt
            .issue(read_token(format!("user:{i}"), 600))
            .await?
            .into_inner();
        issue_h.record(s.elapsed().as_micros() as u64)?;
        jtis.push(r.record.unwrap_or_default().jti);
    }
    for jti in &jtis {
        let s = Instant::now();
        lt.revoke(pb::RevokeRequest {
            jti: jti.clone(),
            ..Default::default()
        })
        .await?;
        revoke_h.record(s.elapsed().as_micros() as u64)?;
    }
    Ok((issue_h, revoke_h))
}

/// Prints the figures: one JSON object, or the commit latency lines.
fn report(
    args: &DemoArgs,
    cluster: &Cluster,
    revoked: &Revoked,
    issue_h: &Histogram<u64>,
    revoke_h: &Histogram<u64>,
    json_out: bool,
) {
    let Revoked { rv, wall, per_edge } = revoked;
    if json_out {
        println!(
            "{}",
            serde_json::json!({
                "revision": rv.revision, "commit_ms": rv.commit_ms, "roundtrip_ms": ms(*wall),
                "propagation_ms": rv.propagation_ms,
                "edge_applied_ms": per_edge.iter().map(|(id, t)| serde_json::json!({"edge": id, "ms": t})).collect::<Vec<_>>(),
                "issue_ms": {"p50": q(issue_h, 0.5), "p99": q(issue_h, 0.99)},
                "revoke_ms": {"p50": q(revoke_h, 0.5), "p99": q(revoke_h, 0.99)},
                "nodes": cluster.nodes.iter().map(|n| serde_json::json!({"id": n.id, "grpc": n.grpc_addr, "http": n.http_addr})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "\ncommit latency, {} sequential calls each (client -> leader -> quorum fsync -> reply):",
            args.samples
        );
        for (op, h) in [("issue ", issue_h), ("revoke", revoke_h)] {
            println!("  {op}  p50 {:.2} ms  p99 {:.2} ms", q(h, 0.5), q(h, 0.99));
        }
    }
}

/// With `once`, stops the edges; otherwise prints how to reach the cluster
/// and the edges and keeps them up until Ctrl-C.
async fn keep_running(
    once: bool,
    cluster: Cluster,
    edges: Vec<veto_edge::Edge>,
    say: Say,
) -> Result<()> {
    if once {
        for e in edges {
            e.stop().await;
        }
        return Ok(());
    }
    let addrs = grpc_addrs(&cluster);
    say.line(format!("\nthe cluster and edges keep running; try:\n  veto --insecure --addr {a} cluster status\n  veto --insecure --addr {a} edges\n  veto --insecure --addr {a} token issue --sub me --scope read\n  veto --insecure --addr {a} token revoke <jti> --wait-edges", a = addrs.join(",")));
    say.line(format!("  veto --insecure --addr {} top", addrs.join(",")));
    say.line(format!(
        "  curl http://{}/.well-known/jwks.json",
        cluster.nodes[0].http_addr
    ));
    say.line(format!(
        "dashboard: http://{}/ui (any node; JSON at /api/v1/status), metrics: http://<node or edge http>/metrics",
        cluster.nodes[0].http_addr
    ));
    say.line("Ctrl-C stops it and removes its data.");
    tokio::signal::ctrl_c().await?;
    say.line("stopping");
    for e in edges {
        e.stop().await;
    }
    drop(cluster);
    Ok(())
}
