//! Log compaction: with a small snapshot threshold the log is purged behind
//! snapshots, and a node that joins afterwards is brought up to date by a
//! streamed snapshot, ending with the same state digest.

use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::{converged, issue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_learner_bootstraps_from_snapshot_after_purge() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        extra_config: "[raft]\nsnapshot_logs_since_last = 40\nmax_in_snapshot_log_to_keep = 0\npurge_batch_size = 1\n".into(),
        ..Default::default()
    })
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let mut last = 0;
    let mut jtis = Vec::new();
    for i in 0..120 {
        let r = issue(l, &format!("user:{i}"), 3600).await?;
        last = r.revision;
        jtis.push(r.record.unwrap().jti);
    }
    let mut t = l.tokens()?;
    for jti in jtis.iter().take(30) {
        last = t
            .revoke(pb::RevokeRequest {
                jti: jti.clone(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .revision;
    }
    let s = veto_testkit::eventually(
        "log purged",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let s = cluster.node(leader).ok()?.status().await?;
            (s.purged_index > 0 && s.snapshot_index > 0).then_some(s)
        },
    )
    .await?;
    assert!(s.purged_index > 0, "{s:?}");

    let n4 = cluster.spawn_new(4).await?.grpc_addr.clone();
    let mut admin = cluster.node(leader)?.admin()?;
    admin
        .add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 4,
                addr: n4,
            }),
            blocking: true,
        })
        .await?;
    let (_, digest) = converged(&cluster, last).await?;
    let s4 = cluster.node(4)?.status_with_digest().await.unwrap();
    assert_eq!(s4.state_digest, digest);
    assert_eq!(s4.tokens, 120);
    assert_eq!(s4.revocations, 30);
    assert!(s4.snapshot_index > 0, "node 4 installed a snapshot: {s4:?}");
    Ok(())
}
