//! The guarantee (docs/design.md, "The feed") under faults, checked from a recorded history:
//! while tokens are revoked at a steady rate and edges verify continuously,
//! the node an edge streams from is killed and later the leader; no edge may
//! accept a token at or after (its revoke's ack + B), and no fresh edge may
//! refuse an unrevoked token as revoked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::{
    check_history, issue, issue_rec, revoke_via_any, spawn_verifiers, start_edges, Target,
};

const BOUND_MS: u64 = 1_000;
const PROBE_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_edge_accepts_a_revoked_token_after_ack_plus_bound_under_kills() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let f = cluster.follower().await?;
    let mut toks = Vec::new();
    for i in 0..60 {
        let start = Instant::now();
        let t = issue(f, &format!("user:{i}"), 3600).await?;
        toks.push(issue_rec(&t, start));
    }
    let edges = start_edges(&cluster, 3, BOUND_MS, PROBE_MS).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_verifiers(&edges, &toks, 1, Duration::from_millis(1), &stop);

    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let mut revokes = Vec::new();
    let victim = {
        let s = edges[0].handle.server().unwrap();
        cluster.nodes.iter().find(|n| n.grpc_addr == s).unwrap().id
    };
    for (k, t) in toks.iter().take(40).enumerate() {
        if k == 10 {
            cluster.kill(victim).await?;
        }
        if k == 25 {
            let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
            cluster.kill(leader).await?;
        }
        if k == 30 {
            for id in cluster
                .nodes
                .iter()
                .filter(|n| !n.is_running())
                .map(|n| n.id)
                .collect::<Vec<_>>()
            {
                cluster.restart(id).await?;
            }
        }
        // Send through any node that answers; the checker counts only
        // acknowledged revokes as promises.
        revokes.push(revoke_via_any(&addrs, &t.jti, k, 3).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Keep verifying well past the bound of the last revoke.
    tokio::time::sleep(Duration::from_millis(BOUND_MS + 500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ops = Vec::new();
    for w in workers {
        ops.extend(w.await?);
    }
    let bound = Duration::from_millis(BOUND_MS);
    let violations = check_history(&toks, &revokes, &ops, bound);
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        violations.first()
    );
    // The run must have exercised the property.
    let acked: Vec<_> = revokes.iter().filter(|r| r.acked).collect();
    assert!(
        acked.len() >= 30,
        "only {} revokes acknowledged",
        acked.len()
    );
    let late_checks = ops
        .iter()
        .filter(|o| {
            acked
                .iter()
                .any(|r| r.target == Target::Jti(o.jti.clone()) && o.start >= r.end + bound)
        })
        .count();
    assert!(
        late_checks > 100,
        "only {late_checks} verifies after ack + B"
    );
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
