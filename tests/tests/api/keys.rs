//! Staged key rotation: publish -> activate -> retire. Tokens signed with
//! the old key verify (against the published JWKS) until it is retired;
//! new tokens carry the new kid.

use std::time::Duration;

use tonic::Code;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::{issue, unix_now, verify_with_jwks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_activate_retire() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let f = cluster.follower().await?;
    let short = issue(f, "user:short", 2).await?;
    let long = issue(f, "user:long", 3600).await?;
    let old_kid = long.record.clone().unwrap().kid;
    assert_eq!(
        verify_with_jwks(f, &long.token, unix_now()).await,
        Ok(old_kid.clone())
    );

    let mut admin = f.admin()?;
    let stage = |s: pb::KeyStage, kid: &str, force: bool| pb::RotateSigningKeyRequest {
        stage: s as i32,
        kid: kid.into(),
        force,
        ..Default::default()
    };
    // publish: edges and JWKS learn the key; tokens are still signed with the old one
    let p = admin
        .rotate_signing_key(stage(pb::KeyStage::Publish, "", false))
        .await?
        .into_inner();
    let new_kid = p.kid.clone();
    assert_ne!(new_kid, old_kid);
    let still_old = issue(f, "user:a", 600).await?;
    assert_eq!(still_old.record.unwrap().kid, old_kid);
    for n in &cluster.nodes {
        let (_, body) = veto_testkit::http_get(&n.http_addr, "/.well-known/jwks.json").await?;
        assert!(
            body.contains(&new_kid) && body.contains(&old_kid),
            "node {} jwks {body}",
            n.id
        );
    }

    // activate: new tokens carry the new kid; old tokens still verify
    admin
        .rotate_signing_key(stage(pb::KeyStage::Activate, &new_kid, false))
        .await?;
    let fresh = issue(f, "user:b", 600).await?;
    assert_eq!(fresh.record.clone().unwrap().kid, new_kid);
    assert_eq!(
        verify_with_jwks(f, &fresh.token, unix_now()).await,
        Ok(new_kid.clone())
    );
    assert_eq!(
        verify_with_jwks(f, &long.token, unix_now()).await,
        Ok(old_kid.clone())
    );
    assert_eq!(
        verify_with_jwks(f, &short.token, unix_now()).await,
        Ok(old_kid.clone())
    );

    // the active key cannot be retired; the old one not while its tokens live
    let e = admin
        .rotate_signing_key(stage(pb::KeyStage::Retire, &new_kid, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let e = admin
        .rotate_signing_key(stage(pb::KeyStage::Retire, &old_kid, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("valid until"), "{}", e.message());

    // retire (forced, since `long` is unexpired): the old key is refused
    admin
        .rotate_signing_key(stage(pb::KeyStage::Retire, &old_kid, true))
        .await?;
    let keys = admin.list_keys(pb::ListKeysRequest {}).await?.into_inner();
    let state = |kid: &str| keys.keys.iter().find(|k| k.kid == kid).map(|k| k.state);
    assert_eq!(state(&old_kid), Some(pb::KeyState::Retired as i32));
    assert_eq!(state(&new_kid), Some(pb::KeyState::Active as i32));
    let err = verify_with_jwks(f, &long.token, unix_now())
        .await
        .unwrap_err();
    assert!(err.contains("not in JWKS"), "{err}");
    assert_eq!(
        verify_with_jwks(f, &fresh.token, unix_now()).await,
        Ok(new_kid.clone())
    );
    // the short-lived token would also have expired by now or soon: it never verifies after retire
    assert!(verify_with_jwks(f, &short.token, unix_now()).await.is_err());
    Ok(())
}
