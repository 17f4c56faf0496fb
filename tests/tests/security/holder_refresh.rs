//! A token's holder rotates it by presenting it, with a `client`
//! certificate and no operator rights; the successor keeps the token's
//! subject, scopes and labels and cannot outlive the predecessor's
//! lifetime; refreshing an already-rotated token (two parties hold it)
//! revokes the whole family at every edge, and the audit says why.

use std::time::Duration;

use anyhow::{Context, Result};
use veto_auth::Transport;
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_tests::tls_cluster;

fn transport(dir: &std::path::Path, name: &str) -> Result<Transport> {
    veto_tests::tls_transport(dir, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_refreshes_its_token_and_reuse_revokes_the_family() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let edges =
        veto_tests::start_tls_edges(&cluster, dir.path(), &["edge-1", "edge-2"], 1_000).await?;
    let addr = servers[1].clone();
    let mut ops = cluster.nodes[0].tokens()?;
    let t0 = ops
        .issue(pb::IssueRequest {
            sub: "svc:ci".into(),
            scopes: vec!["deploy".into()],
            ttl_seconds: 300,
            labels: [("pipeline".to_owned(), "main".to_owned())].into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let ch =
        transport(dir.path(), "client")?.channel_lazy(&addr, veto_auth::Role::Server, |e| e)?;
    let mut holder = TokenServiceClient::new(ch);

    // The holder may not refresh by jti (operator only) ...
    let jti0 = t0
        .record
        .as_ref()
        .map(|r| r.jti.clone())
        .unwrap_or_default();
    let e = holder
        .refresh(pb::RefreshRequest {
            jti: jti0.clone(),
            ..Default::default()
        })
        .await
        .expect_err("client may not refresh by jti");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // ... nor beyond the token's own lifetime ...
    let e = holder
        .refresh_presented(pb::RefreshPresentedRequest {
            token: t0.token.clone(),
            ttl_seconds: 301,
            ..Default::default()
        })
        .await
        .expect_err("longer than the predecessor");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("ttl_seconds"), "{}", e.message());
    // ... nor with a forged token.
    let e = holder
        .refresh_presented(pb::RefreshPresentedRequest {
            token: "eyJhbGciOiJFZERTQSJ9.e30.AAAA".into(),
            ..Default::default()
        })
        .await
        .expect_err("forged");
    assert!(
        matches!(
            e.code(),
            tonic::Code::InvalidArgument | tonic::Code::Unauthenticated
        ),
        "{e:?}"
    );

    // Presenting it works, and the successor carries the token on.
    let r1 = holder
        .refresh_presented(pb::RefreshPresentedRequest {
            token: t0.token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let s1 = r1.successor.context("no successor")?;
    let rec1 = s1.record.clone().unwrap_or_default();
    let rec0 = t0.record.clone().unwrap_or_default();
    assert_eq!(rec1.family, rec0.family);
    assert_eq!(
        (rec1.sub.as_str(), rec1.scopes.clone()),
        ("svc:ci", vec!["deploy".to_owned()])
    );
    assert_eq!(rec1.labels, rec0.labels);
    assert_eq!(rec1.exp - rec1.iat, 300, "the predecessor's lifetime");
    assert!(rec1.issued_by.starts_with("client:"), "{}", rec1.issued_by);
    for e in &edges {
        assert!(
            e.handle
                .wait_revision(s1.revision, Duration::from_secs(5))
                .await
        );
        let v = e.handle.verify(&s1.token, &Default::default());
        assert_eq!(v.outcome, veto_feed::Outcome::Valid);
        let v = e.handle.verify(&t0.token, &Default::default());
        assert_eq!(
            v.outcome,
            veto_feed::Outcome::Revoked,
            "predecessor, no grace"
        );
    }

    // The old token shows up again: two parties hold it. The family dies.
    let e = holder
        .refresh_presented(pb::RefreshPresentedRequest {
            token: t0.token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("reuse");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("reuse detected"), "{}", e.message());
    let info = ops
        .get(pb::GetTokenRequest {
            jti: rec1.jti.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(info.status, pb::TokenStatus::Revoked as i32, "{info:?}");
    let rev = info.revocation.context("no revocation")?;
    assert_eq!(rev.kind, "family");
    assert!(rev.reason.starts_with("refresh reuse"), "{}", rev.reason);
    for e in &edges {
        assert!(
            e.handle
                .wait_revision(rev.revision, Duration::from_secs(5))
                .await
        );
        let v = e.handle.verify(&s1.token, &Default::default());
        assert_eq!(
            v.outcome,
            veto_feed::Outcome::Revoked,
            "successor at every edge"
        );
    }
    // And no one can mint from the family any more.
    let e = holder
        .refresh_presented(pb::RefreshPresentedRequest {
            token: s1.token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("family revoked");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    Ok(())
}

/// A refresh retried with its idempotency key (its answer was lost) gets
/// the same successor back, byte for byte, and the family lives; the same
/// retry without the key, or with another one, is reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_is_not_reuse() -> Result<()> {
    let cluster = veto_testkit::Cluster::start(veto_testkit::ClusterOptions::default()).await?;
    let t0 = veto_tests::issue(&cluster.nodes[0], "svc:retry", 300).await?;
    let mut c = TokenServiceClient::new(veto_testkit::channel(&cluster.nodes[1].grpc_addr)?);
    let req = |key: &str| pb::RefreshPresentedRequest {
        token: t0.token.clone(),
        ttl_seconds: 0,
        grace_seconds: 5,
        idempotency_key: key.into(),
    };
    let key = "0123456789abcdef0123456789abcdef";
    let first = c.refresh_presented(req(key)).await?.into_inner();
    let again = c.refresh_presented(req(key)).await?.into_inner();
    let (s1, s2) = (
        first.successor.context("successor")?,
        again.successor.context("successor")?,
    );
    assert_eq!(
        s1.token, s2.token,
        "the same successor, re-signed identically"
    );
    assert_eq!(s1.revision, s2.revision);
    assert_eq!(
        first.predecessor_revoked_at_unix,
        again.predecessor_revoked_at_unix
    );
    let jti1 = s1
        .record
        .as_ref()
        .map(|r| r.jti.clone())
        .unwrap_or_default();
    assert_eq!(
        veto_tests::token_status(&cluster.nodes[0], &jti1).await?,
        pb::TokenStatus::Active
    );
    // A short key is refused, naming the field; nothing changes.
    let e = c
        .refresh_presented(req("short"))
        .await
        .expect_err("short key");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("idempotency_key"), "{}", e.message());
    // Another key (someone else holding the token): reuse, the family dies.
    let e = c
        .refresh_presented(req("fedcba9876543210fedcba9876543210"))
        .await
        .expect_err("reuse");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        veto_tests::token_status(&cluster.nodes[0], &jti1).await?,
        pb::TokenStatus::Revoked
    );
    Ok(())
}
