//! A rolling restart (what an upgrade does): every server is stopped
//! gracefully (SIGTERM; a leader hands leadership off first) and started
//! again on its data directory, one at a time, while tokens are revoked and
//! edges verify continuously. No valid token is refused, no acknowledged
//! revoke is lost, and the bound holds (checked from the history).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use veto_proto as pb;
use veto_testkit::{eventually, http_get, Cluster, ClusterOptions};
use veto_tests::{
    check_history, issue, issue_rec, revoke_via_any, spawn_verifiers, start_edges, token_status,
    Target,
};

const BOUND_MS: u64 = 2_000;
const PROBE_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_servers_one_at_a_time_loses_nothing_and_keeps_the_bound() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut toks = Vec::new();
    for i in 0..120 {
        let start = Instant::now();
        let t = issue(cluster.node(leader)?, &format!("user:{i}"), 3600).await?;
        toks.push(issue_rec(&t, start));
    }
    let (to_revoke, keep) = toks.split_at(60);
    let keep: HashSet<String> = keep.iter().map(|t| t.jti.clone()).collect();
    let edges = start_edges(&cluster, 2, BOUND_MS, PROBE_MS).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_verifiers(&edges, &toks, 7, Duration::from_millis(2), &stop);

    // Revokes at a steady pace through whichever node answers.
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let revoker = {
        let (stop, targets) = (stop.clone(), to_revoke.to_vec());
        tokio::spawn(async move {
            let mut revokes = Vec::new();
            for (k, t) in targets.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                revokes.push(revoke_via_any(&addrs, &t.jti, k, 4).await);
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            revokes
        })
    };

    // The roll: each server in turn, the leader included.
    let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    let t0 = Instant::now();
    for id in ids {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.stop(id).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.restart(id).await?;
        let http = cluster.node(id)?.http_addr.clone();
        eventually(
            "restarted node ready",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                let http = http.clone();
                async move {
                    let (code, _) = http_get(&http, "/readyz").await.ok()?;
                    (code == 200).then_some(())
                }
            },
        )
        .await?;
    }
    let revokes = revoker.await?;
    tokio::time::sleep(Duration::from_millis(BOUND_MS + 500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ops = Vec::new();
    for w in workers {
        ops.extend(w.await?);
    }

    // No valid token refused: a never-revoked token got VALID every time.
    let refused: Vec<_> = ops
        .iter()
        .filter(|op| keep.contains(&op.jti) && op.outcome != Some(pb::Outcome::Valid))
        .map(|op| (op.edge, op.outcome, op.start.saturating_duration_since(t0)))
        .collect();
    assert!(
        refused.is_empty(),
        "{} refusals of valid tokens, first {:?}, last {:?} (edge, outcome, time into the roll)",
        refused.len(),
        refused.first(),
        refused.last()
    );
    // The bound held, and nothing unrevoked was refused as revoked.
    let violations = check_history(&toks, &revokes, &ops, Duration::from_millis(BOUND_MS));
    assert!(
        violations.is_empty(),
        "{} violations: {:?}",
        violations.len(),
        violations.first()
    );
    // No acknowledged revoke lost, on any server.
    let acked: Vec<&str> = revokes
        .iter()
        .filter(|r| r.acked)
        .filter_map(|r| match &r.target {
            Target::Jti(j) => Some(j.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        acked.len() >= 30,
        "only {} revokes acknowledged",
        acked.len()
    );
    let last = cluster
        .node(cluster.wait_leader(Duration::from_secs(20)).await?)?
        .status()
        .await
        .map(|s| s.commit_index)
        .unwrap_or(0);
    cluster.wait_applied(last, Duration::from_secs(10)).await?;
    for n in &cluster.nodes {
        for jti in &acked {
            assert_eq!(
                token_status(n, jti).await?,
                pb::TokenStatus::Revoked,
                "node {}",
                n.id
            );
        }
    }
    assert!(ops.len() > 1_000, "only {} verifies recorded", ops.len());
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
