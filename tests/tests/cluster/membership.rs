//! A 3-node cluster of real `veto-server` processes: writes through a
//! follower, leader kill and re-election, restart with nothing lost, and
//! membership changes (learner, promote, remove).

use std::collections::BTreeMap;
use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::{converged, issue, token_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_leader_loss_restart_and_membership_changes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;

    // Issue and revoke through a follower: forwarded transparently.
    let follower = cluster.follower().await?;
    let fid = follower.id;
    let mut jtis = Vec::new();
    for i in 0..10 {
        let r = issue(cluster.node(fid)?, &format!("user:{i}"), 3600).await?;
        jtis.push(r.record.unwrap_or_default().jti);
    }
    let mut revoked = BTreeMap::new();
    let mut tokens = cluster.node(fid)?.tokens()?;
    for jti in jtis.iter().step_by(2) {
        let r = tokens
            .revoke(pb::RevokeRequest {
                jti: jti.clone(),
                reason: "t10".into(),
                ..Default::default()
            })
            .await?;
        revoked.insert(jti.clone(), r.into_inner().revision);
    }
    for jti in &jtis {
        let want = if revoked.contains_key(jti) {
            pb::TokenStatus::Revoked
        } else {
            pb::TokenStatus::Active
        };
        assert_eq!(token_status(cluster.node(fid)?, jti).await?, want, "{jti}");
    }

    // Kill the leader: a new one is elected and writes continue.
    cluster.kill(leader).await?;
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    assert_ne!(new_leader, leader);
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.is_running())
        .map(|n| n.id)
        .unwrap();
    for i in 10..15 {
        let r = issue(cluster.node(survivor)?, &format!("user:{i}"), 3600).await?;
        jtis.push(r.record.unwrap_or_default().jti);
    }
    let mut tokens = cluster.node(survivor)?.tokens()?;
    let late = jtis[11].clone();
    let r = tokens
        .revoke(pb::RevokeRequest {
            jti: late.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    revoked.insert(late, r.revision);

    // Restart the killed node on its data directory: it catches up, nothing lost.
    cluster.restart(leader).await?;
    let (_, digest) = converged(&cluster, r.revision).await?;
    assert!(!digest.is_empty());
    let restarted = cluster.node(leader)?.status().await.unwrap();
    assert_eq!(
        restarted.tokens, 15,
        "every issued token is on the restarted node"
    );
    assert_eq!(restarted.revocations, revoked.len() as u64);
    for jti in &jtis {
        let want = if revoked.contains_key(jti) {
            pb::TokenStatus::Revoked
        } else {
            pb::TokenStatus::Active
        };
        assert_eq!(
            token_status(cluster.node(leader)?, jti).await?,
            want,
            "{jti} after restart"
        );
    }

    // Membership: add a 4th node as learner, promote it, remove another.
    let n4 = cluster.spawn_new(4).await?;
    let n4_addr = n4.grpc_addr.clone();
    let mut admin = cluster.node(survivor)?.admin()?;
    let m = admin
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 4,
                addr: n4_addr,
            }),
            blocking: true,
        })
        .await?
        .into_inner();
    assert!(m
        .membership
        .unwrap()
        .learners
        .iter()
        .any(|l| l.node_id == 4));
    let m = admin
        .promote(pb::PromoteRequest { node_id: 4 })
        .await?
        .into_inner();
    assert!(m.membership.unwrap().voters.iter().any(|v| v.node_id == 4));
    let remove = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&id| id != 4 && id != new_leader)
        .unwrap();
    let m = admin
        .remove(pb::RemoveRequest { node_id: remove })
        .await?
        .into_inner();
    let mem = m.membership.unwrap();
    assert!(!mem.voters.iter().any(|v| v.node_id == remove));
    assert!(!mem.learners.iter().any(|v| v.node_id == remove));
    assert_eq!(mem.voters.len(), 3);
    cluster.kill(remove).await?;

    // The reshaped cluster still takes writes and agrees on the state.
    let r = issue(cluster.node(4)?, "user:after-reshape", 3600).await?;
    let (_, _) = converged(&cluster, r.revision).await?;
    assert_eq!(
        token_status(cluster.node(4)?, &r.record.unwrap().jti).await?,
        pb::TokenStatus::Active
    );
    Ok(())
}
