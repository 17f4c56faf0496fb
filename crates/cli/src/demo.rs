//! `veto demo`: a local 3-node cluster on loopback with temporary data;
//! issues a token through a follower, revokes it, and prints the revision
//! and the measured commit latencies.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};

/// Arguments of `veto demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the walkthrough instead of keeping the cluster up.
    #[arg(long)]
    pub once: bool,
    /// Tokens to issue and revoke for the latency figures.
    #[arg(long, default_value_t = 200)]
    pub samples: u32,
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
        "cluster up with a leader in {:.0} ms",
        ms(t0.elapsed())
    ));

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
                    aud: Some("api.example".into()),
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

    let started = Instant::now();
    let rv = tokens
        .revoke(pb::RevokeRequest {
            jti: rec.jti.clone(),
            reason: "demo: leaked".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let wall = started.elapsed();
    say(format!(
        "\nrevoked at revision {}: committed in {:.2} ms on the leader, {:.2} ms round trip via the follower",
        rv.revision,
        rv.commit_ms,
        ms(wall)
    ));
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
    cluster
        .wait_applied(rv.revision, Duration::from_secs(10))
        .await?;
    for n in &cluster.nodes {
        let s = n.status().await.unwrap_or_default();
        say(format!(
            "  node {} applied {} (>= {})",
            n.id, s.applied_index, rv.revision
        ));
    }
    let info = tokens
        .get(pb::GetTokenRequest {
            jti: rec.jti.clone(),
        })
        .await?
        .into_inner();
    let status = pb::TokenStatus::try_from(info.status)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    say(format!("token status now {status}"));

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
        return Ok(());
    }
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    say(format!("\nthe cluster keeps running; try:\n  veto --addr {} cluster status\n  veto --addr {} token issue --sub me --scope read", addrs.join(","), addrs.join(",")));
    say(format!(
        "  curl http://{}/.well-known/jwks.json",
        cluster.nodes[0].http_addr
    ));
    say("Ctrl-C stops it and removes its data.".into());
    tokio::signal::ctrl_c().await?;
    say("stopping".into());
    drop(cluster);
    Ok(())
}
