//! `veto-bench demo`: a local 3-node cluster on loopback with temporary data;
//! issues a token through a follower, revokes it, and prints the revision
//! and the measured commit latencies.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};

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
    let addr = e.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the demo.
pub async fn run(args: DemoArgs, json_out: bool) -> Result<()> {
    let say = |s: String| {
        if !json_out {
            println!("{s}");
        }
    };
    say("starting 3 veto-server nodes on 127.0.0.1 (temporary data, fsync on)...".into());
    tracing::warn!("the demo runs every process with --insecure: plaintext, no authentication");
    say("WARNING: the demo runs --insecure (plaintext gRPC and HTTP, no client certificates);\n         for a secured cluster see docs/security.md (veto certs init)".into());
    let t0 = Instant::now();
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .context("starting the cluster")?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    for n in &cluster.nodes {
        say(format!(
            "  node {}  grpc {}  http {}{}",
            n.id,
            n.grpc_addr,
            n.http_addr,
            if n.id == leader { "  (leader)" } else { "" }
        ));
    }
    say(format!(
        "cluster up with a leader in {:.0} ms; dashboard at http://{}/ui",
        ms(t0.elapsed()),
        cluster.nodes[0].http_addr
    ));

    // Three edges, in this process, each serving VerifierService on its own port.
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let mut edges = Vec::new();
    for i in 1..=3 {
        let opts = veto_edge::Options {
            edge_id: format!("edge-{i}"),
            servers: servers.clone(),
            bound_ms: args.bound_ms,
            probe_interval_ms: args.probe_interval_ms,
            ..Default::default()
        };
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        edges.push(veto_edge::Edge::start(opts, any, any).await?);
    }
    for e in &edges {
        if !e.handle.wait_fresh(Duration::from_secs(20)).await {
            anyhow::bail!("edge {} never became fresh", e.handle.options().edge_id);
        }
    }
    say(format!(
        "started 3 edges (bound B = {} ms, probe every {} ms):",
        args.bound_ms, args.probe_interval_ms
    ));
    for e in &edges {
        say(format!(
            "  {}  verify grpc {}  http {}  feed from {}",
            e.handle.options().edge_id,
            e.grpc_addr.map(|a| a.to_string()).unwrap_or_default(),
            e.http_addr.map(|a| a.to_string()).unwrap_or_default(),
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
        say(format!("Prometheus targets written to {}", dir.display()));
    }

    let follower = cluster.follower().await?;
    let mut tokens = follower.tokens()?;
    // The leader creates the first signing key right after election.
    let issued = veto_testkit::eventually(
        "the first signing key",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let mut t = tokens.clone();
            async move {
                t.issue(pb::IssueRequest {
                    sub: "user:alice".into(),
                    scopes: vec!["orders:read".into(), "orders:write".into()],
                    aud: Some(AUDIENCE.into()),
                    ttl_seconds: 3600,
                })
                .await
                .ok()
                .map(|r| r.into_inner())
            }
        },
    )
    .await?;
    let rec = issued.record.clone().unwrap_or_default();
    say(format!(
        "\nissued through follower node {} (forwarded to the leader):",
        follower.id
    ));
    say(format!(
        "  token    {}...{} ({} bytes, shown once)",
        &issued.token[..16.min(issued.token.len())],
        &issued.token[issued.token.len().saturating_sub(8)..],
        issued.token.len()
    ));
    say(format!(
        "  jti      {}\n  sub      {}\n  kid      {}\n  revision {}",
        rec.jti, rec.sub, rec.kid, issued.revision
    ));

    say("\nverify at every edge (no propagation needed for a new token):".into());
    for e in &edges {
        let s = Instant::now();
        let r = verify_at(e, &issued.token, 0, pb::Outcome::Valid).await?;
        say(format!(
            "  {}  {}  in {:.0} us (gRPC round trip)",
            e.handle.options().edge_id,
            outcome_name(r.outcome),
            s.elapsed().as_secs_f64() * 1e6
        ));
    }

    // Watch each edge's applied revision on this process's clock.
    let started = Instant::now();
    let mut watchers = Vec::new();
    for e in &edges {
        let h = e.handle.clone();
        watchers.push(tokio::spawn(async move {
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
        }));
    }
    let rv = tokens
        .revoke(pb::RevokeRequest {
            jti: rec.jti.clone(),
            reason: "demo: leaked".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let wall = started.elapsed();
    say(format!(
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
    say("call start -> edge applied the revoke (one clock, this process):".into());
    for (id, t) in &per_edge {
        say(format!("  {id}  {t:.2} ms"));
    }
    say("verify at every edge now:".into());
    for e in &edges {
        let r = verify_at(e, &issued.token, rv.revision, pb::Outcome::Revoked).await?;
        say(format!(
            "  {}  {}  ({})",
            e.handle.options().edge_id,
            outcome_name(r.outcome),
            r.reason
        ));
    }
    let again = tokens
        .revoke(pb::RevokeRequest {
            jti: rec.jti.clone(),
            reason: "again".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    say(format!(
        "revoked again: idempotent, returns the first revision {} (already_revoked={})",
        again.revision, again.already_revoked
    ));

    // Latency figures over a small sample, sent straight to the leader.
    let mut issue_h = Histogram::<u64>::new(3)?;
    let mut revoke_h = Histogram::<u64>::new(3)?;
    let mut lt = cluster.node(leader)?.tokens()?;
    let mut jtis = Vec::new();
    for i in 0..args.samples {
        let s = Instant::now();
        let r = lt
            .issue(pb::IssueRequest {
                sub: format!("user:{i}"),
                scopes: vec!["read".into()],
                aud: None,
                ttl_seconds: 600,
            })
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
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1e3;
    if json_out {
        println!(
            "{}",
            serde_json::json!({
                "revision": rv.revision, "commit_ms": rv.commit_ms, "roundtrip_ms": ms(wall),
                "propagation_ms": rv.propagation_ms,
                "edge_applied_ms": per_edge.iter().map(|(id, t)| serde_json::json!({"edge": id, "ms": t})).collect::<Vec<_>>(),
                "issue_ms": {"p50": q(&issue_h, 0.5), "p99": q(&issue_h, 0.99)},
                "revoke_ms": {"p50": q(&revoke_h, 0.5), "p99": q(&revoke_h, 0.99)},
                "nodes": cluster.nodes.iter().map(|n| serde_json::json!({"id": n.id, "grpc": n.grpc_addr, "http": n.http_addr})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "\ncommit latency, {} sequential calls each (client -> leader -> quorum fsync -> reply):",
            args.samples
        );
        println!(
            "  issue   p50 {:.2} ms  p99 {:.2} ms",
            q(&issue_h, 0.5),
            q(&issue_h, 0.99)
        );
        println!(
            "  revoke  p50 {:.2} ms  p99 {:.2} ms",
            q(&revoke_h, 0.5),
            q(&revoke_h, 0.99)
        );
    }
    if args.once {
        for e in edges {
            e.stop().await;
        }
        return Ok(());
    }
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    say(format!("\nthe cluster and edges keep running; try:\n  veto --insecure --addr {a} cluster status\n  veto --insecure --addr {a} edges\n  veto --insecure --addr {a} token issue --sub me --scope read\n  veto --insecure --addr {a} token revoke <jti> --wait-edges", a = addrs.join(",")));
    say(format!("  veto --insecure --addr {} top", addrs.join(",")));
    say(format!(
        "  curl http://{}/.well-known/jwks.json",
        cluster.nodes[0].http_addr
    ));
    say(format!(
        "dashboard: http://{}/ui (any node; JSON at /api/v1/status), metrics: http://<node or edge http>/metrics",
        cluster.nodes[0].http_addr
    ));
    say("Ctrl-C stops it and removes its data.".into());
    tokio::signal::ctrl_c().await?;
    say("stopping".into());
    for e in edges {
        e.stop().await;
    }
    drop(cluster);
    Ok(())
}
