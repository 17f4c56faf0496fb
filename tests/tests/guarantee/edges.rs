//! Edges on real sockets against a 3-node cluster: every revoke kind is
//! refused by every edge at once with `min_revision`; failover keeps an edge
//! fresh; with every server gone, edges fail closed within B + H and recover;
//! a late edge bootstraps from a snapshot after log purge; key rotation
//! under verify load never fails a valid token.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use veto_proto as pb;
use veto_testkit::{eventually, Cluster, ClusterOptions};
use veto_tests::{issue, revoke_all, start_edges, verify_at};

const BOUND_MS: u64 = 2_000;
const PROBE_MS: u64 = 100;

fn outcome(r: &pb::VerifyResponse) -> pb::Outcome {
    pb::Outcome::try_from(r.outcome).unwrap_or(pb::Outcome::Unspecified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revoke_kind_is_refused_by_every_edge() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let f = cluster.follower().await?;
    let by_jti = issue(f, "user:jti", 3600).await?;
    let by_sub = issue(f, "user:sub", 3600).await?;
    let by_fam = issue(f, "user:fam", 3600).await?;
    let by_key = issue(f, "user:key", 3600).await?;
    let edges = start_edges(&cluster, 3, BOUND_MS, PROBE_MS).await?;
    for e in &edges {
        for t in [&by_jti, &by_sub, &by_fam, &by_key] {
            let r = verify_at(e, &t.token, t.revision).await?;
            assert_eq!(outcome(&r), pb::Outcome::Valid, "{}", r.reason);
        }
    }
    let mut tokens = f.tokens()?;
    let mut admin = f.admin()?;
    let jti = |t: &pb::IssueResponse| t.record.clone().unwrap().jti;
    let r1 = tokens
        .revoke(pb::RevokeRequest {
            jti: jti(&by_jti),
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    let r2 = tokens
        .revoke_subject(pb::RevokeSubjectRequest {
            sub: "user:sub".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    let r3 = tokens
        .revoke_family(pb::RevokeFamilyRequest {
            family: by_fam.record.clone().unwrap().family,
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    for e in &edges {
        for (t, rev) in [(&by_jti, r1), (&by_sub, r2), (&by_fam, r3)] {
            let r = verify_at(e, &t.token, rev).await?;
            assert_eq!(outcome(&r), pb::Outcome::Revoked, "{}", r.reason);
        }
        let r = verify_at(e, &by_key.token, r3).await?;
        assert_eq!(outcome(&r), pb::Outcome::Valid, "{}", r.reason);
    }
    // revoke the signing key: publish and activate another first, so issuance continues
    let stage = |s: pb::KeyStage, kid: &str| pb::RotateSigningKeyRequest {
        stage: s as i32,
        kid: kid.into(),
        ..Default::default()
    };
    let new = admin
        .rotate_signing_key(stage(pb::KeyStage::Publish, ""))
        .await?
        .into_inner()
        .kid;
    admin
        .rotate_signing_key(stage(pb::KeyStage::Activate, &new))
        .await?;
    let after = issue(f, "user:after", 3600).await?;
    let r4 = admin
        .rotate_signing_key(stage(
            pb::KeyStage::Revoke,
            &by_key.record.clone().unwrap().kid,
        ))
        .await?
        .into_inner()
        .revision;
    for e in &edges {
        let r = verify_at(e, &by_key.token, r4).await?;
        assert_eq!(
            outcome(&r),
            pb::Outcome::UnknownKey,
            "revoked key refused: {}",
            r.reason
        );
        let r = verify_at(e, &after.token, r4).await?;
        assert_eq!(outcome(&r), pb::Outcome::Valid, "{}", r.reason);
    }
    // wait_for = ALL_EDGES reports the measured propagation, and every
    // member's Edges listing together names all three edges, caught up.
    let spare = issue(f, "user:wait", 3600).await?;
    let w = tokens
        .revoke(pb::RevokeRequest {
            jti: jti(&spare),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(w.propagation_ms.is_some(), "{w:?}");
    assert!(w.edges_behind.is_empty(), "{w:?}");
    let mut listed = Vec::new();
    for n in &cluster.nodes {
        let r = n
            .admin()?
            .edges(pb::EdgesRequest::default())
            .await?
            .into_inner();
        listed.extend(r.edges.into_iter().filter(|e| e.connected));
    }
    listed.sort_by(|a, b| a.edge_id.cmp(&b.edge_id));
    assert_eq!(
        listed
            .iter()
            .map(|e| e.edge_id.as_str())
            .collect::<Vec<_>>(),
        ["edge-0", "edge-1", "edge-2"]
    );
    assert!(
        listed.iter().all(|e| e.applied_revision >= w.revision),
        "{listed:?}"
    );
    let r = verify_at(&edges[1], &spare.token, 0).await?;
    assert_eq!(
        outcome(&r),
        pb::Outcome::Revoked,
        "applied before the revoke returned: {}",
        r.reason
    );
    // garbage never panics and gets a reason
    let r = verify_at(&edges[0], "not.a.token", 0).await?;
    assert_eq!(outcome(&r), pb::Outcome::Malformed);
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_then_total_outage_fails_closed_then_recovers() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let t = issue(cluster.follower().await?, "user:f", 3600).await?;
    let edges = start_edges(&cluster, 3, BOUND_MS, PROBE_MS).await?;

    // Kill the node edge 0 streams from; sample its freshness meanwhile.
    let h = edges[0].handle.clone();
    let server = h.server().unwrap();
    let victim = cluster
        .nodes
        .iter()
        .find(|n| n.grpc_addr == server)
        .unwrap()
        .id;
    let stale_seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (h, stale_seen, stop) = (h.clone(), stale_seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !h.freshness().fresh {
                    stale_seen.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    cluster.kill(victim).await?;
    eventually(
        "edge on another node",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let h = h.clone();
            let server = server.clone();
            async move { h.server().filter(|s| *s != server && h.freshness().fresh) }
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    assert!(
        !stale_seen.load(Ordering::Relaxed),
        "edge went stale during failover"
    );
    assert_eq!(
        outcome(&verify_at(&edges[0], &t.token, 0).await?),
        pb::Outcome::Valid
    );

    // Stop every server: each edge fails closed within B + H.
    let ids: Vec<u64> = cluster
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.id)
        .collect();
    let killed_at = Instant::now();
    for id in &ids {
        cluster.kill(*id).await?;
    }
    let limit = Duration::from_millis(BOUND_MS + PROBE_MS);
    for e in &edges {
        let h = e.handle.clone();
        eventually(
            "edge stale",
            limit + Duration::from_secs(1),
            Duration::from_millis(10),
            || {
                let h = h.clone();
                async move { (!h.freshness().fresh).then_some(()) }
            },
        )
        .await?;
        assert!(
            killed_at.elapsed() <= limit + Duration::from_millis(200),
            "stale after {:?}",
            killed_at.elapsed()
        );
        let err = verify_at(e, &t.token, 0).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().starts_with("STALE"), "{}", err.message());
    }
    // Bring them back: edges recover.
    for id in ids.iter().chain([victim].iter()) {
        cluster.restart(*id).await?;
    }
    for e in &edges {
        let h = e.handle.clone();
        eventually(
            "edge fresh again",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let h = h.clone();
                async move { h.freshness().fresh.then_some(()) }
            },
        )
        .await?;
        assert_eq!(
            outcome(&verify_at(e, &t.token, 0).await?),
            pb::Outcome::Valid
        );
    }
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_edge_bootstraps_from_snapshot_and_rotation_under_load_fails_nothing(
) -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        extra_config: "[raft]\nsnapshot_logs_since_last = 40\nmax_in_snapshot_log_to_keep = 0\npurge_batch_size = 1\n".into(),
        ..Default::default()
    })
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let mut toks = Vec::new();
    for i in 0..60 {
        toks.push(issue(l, &format!("user:{i}"), 3600).await?);
    }
    let last = revoke_all(l, &toks[..20]).await?;
    eventually(
        "log purged",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let s = cluster.node(leader).ok()?.status().await?;
            (s.purged_index > 0).then_some(())
        },
    )
    .await?;
    let edges = start_edges(&cluster, 2, BOUND_MS, PROBE_MS).await?;
    for e in &edges {
        assert!(e.handle.revocations() >= 20);
        assert_eq!(
            outcome(&verify_at(e, &toks[0].token, last).await?),
            pb::Outcome::Revoked
        );
        assert_eq!(
            outcome(&verify_at(e, &toks[40].token, last).await?),
            pb::Outcome::Valid
        );
    }

    // Verify load on every edge while the key rotates through every stage.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    let valid: Vec<String> = toks[20..].iter().map(|t| t.token.clone()).collect();
    for e in &edges {
        let (h, stop, failures, checks, valid) = (
            e.handle.clone(),
            stop.clone(),
            failures.clone(),
            checks.clone(),
            valid.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = h.verify(&valid[i % valid.len()], &Default::default());
                if v.outcome != veto_feed::Outcome::Valid {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                checks.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut admin = l.admin()?;
    let stage = |s: pb::KeyStage, kid: &str, force: bool| pb::RotateSigningKeyRequest {
        stage: s as i32,
        kid: kid.into(),
        force,
        ..Default::default()
    };
    let old = toks[0].record.clone().unwrap().kid;
    let new = admin
        .rotate_signing_key(stage(pb::KeyStage::Publish, "", false))
        .await?
        .into_inner()
        .kid;
    admin
        .rotate_signing_key(stage(pb::KeyStage::Activate, &new, false))
        .await?;
    // fresh tokens signed by the new key verify at every edge at once
    let fresh = issue(l, "user:new-key", 3600).await?;
    for e in &edges {
        let v = e.handle.verify(&fresh.token, &Default::default());
        assert_eq!(v.outcome, veto_feed::Outcome::Valid, "{}", v.reason);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await?;
    }
    assert!(checks.load(Ordering::Relaxed) > 100);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "valid tokens failed during rotation"
    );
    // retiring the old key (forced: its tokens are unexpired) refuses them
    let r = admin
        .rotate_signing_key(stage(pb::KeyStage::Retire, &old, true))
        .await?
        .into_inner()
        .revision;
    for e in &edges {
        assert_eq!(
            outcome(&verify_at(e, &toks[40].token, r).await?),
            pb::Outcome::UnknownKey
        );
    }
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
