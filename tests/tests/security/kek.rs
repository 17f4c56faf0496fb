//! KEK rotation as documented: roll the servers onto a new KEK with the old
//! one as a previous KEK, `veto keys rewrap`, then roll them again without
//! the old KEK; signing works throughout and afterwards, and a node given
//! only a KEK that sealed nothing cannot sign.

use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{new_kek, Cluster, ClusterOptions};
use veto_tests::issue;

async fn roll(cluster: &mut Cluster) -> anyhow::Result<()> {
    for id in cluster.nodes.iter().map(|n| n.id).collect::<Vec<_>>() {
        cluster.stop(id).await?;
        cluster.restart(id).await?;
        cluster.wait_leader(Duration::from_secs(20)).await?;
    }
    Ok(())
}

async fn leader_issue(cluster: &Cluster, sub: &str) -> anyhow::Result<pb::IssueResponse> {
    let l = cluster.wait_leader(Duration::from_secs(20)).await?;
    issue(cluster.node(l)?, sub, 3600).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_reseals_every_key_without_downtime() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let old = cluster.kek().to_string();
    leader_issue(&cluster, "user:before").await?;
    // A second key, published but not active, must be re-sealed too.
    let l = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster
        .node(l)?
        .admin()?
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Publish as i32,
            ..Default::default()
        })
        .await?;

    // 1. New KEK everywhere, the old one kept as previous.
    let new = new_kek();
    cluster.set_kek(&new);
    cluster.set_env("VETO_PREVIOUS_KEK", Some(&old));
    roll(&mut cluster).await?;
    leader_issue(&cluster, "user:during").await?;

    // 2. Re-seal.
    let l = cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut admin = cluster.node(l)?.admin()?;
    let r = admin
        .rewrap_keys(pb::RewrapKeysRequest {})
        .await?
        .into_inner();
    assert_eq!(r.rewrapped.len(), 2, "{r:?}");
    let again = admin
        .rewrap_keys(pb::RewrapKeysRequest {})
        .await?
        .into_inner();
    assert!(again.rewrapped.is_empty(), "idempotent: {again:?}");

    // 3. Drop the old KEK: signing still works.
    cluster.set_env("VETO_PREVIOUS_KEK", None);
    roll(&mut cluster).await?;
    leader_issue(&cluster, "user:after").await?;

    // A cluster whose KEK sealed nothing cannot sign (the check above is real).
    cluster.set_kek(&new_kek());
    roll(&mut cluster).await?;
    let l = cluster.wait_leader(Duration::from_secs(20)).await?;
    let e = cluster
        .node(l)?
        .tokens()?
        .issue(pb::IssueRequest {
            sub: "user:wrong-kek".into(),
            scopes: vec!["read".into()],
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await
        .expect_err("a KEK that sealed nothing must not sign");
    assert!(e.message().contains("signing key"), "{e:?}");
    Ok(())
}
