//! Every TokenService/AdminService input rule answers with the right gRPC
//! status and a message naming the field, and nothing invalid reaches the
//! Raft log.

use std::time::Duration;

use tonic::Code;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::issue;

fn check<T: std::fmt::Debug>(
    what: &str,
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    field: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(
                s.message().contains(field),
                "{what}: message {:?} should name {field:?}",
                s.message()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses_and_never_reaches_the_log() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let f = cluster.follower().await?;
    let good = issue(f, "user:ok", 600).await?;
    let jti = good.record.clone().unwrap().jti;
    let first = {
        let mut t = f.tokens()?;
        t.revoke(pb::RevokeRequest {
            jti: jti.clone(),
            reason: "x".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
    };
    cluster
        .wait_applied(first.revision, Duration::from_secs(10))
        .await?;
    let before = cluster.node(leader)?.status().await.unwrap();

    let mut t = f.tokens()?;
    let iss = |sub: &str, scopes: Vec<&str>, aud: Option<&str>, ttl: u64| pb::IssueRequest {
        sub: sub.into(),
        scopes: scopes.into_iter().map(String::from).collect(),
        aud: aud.map(String::from),
        ttl_seconds: ttl,
        ..Default::default()
    };
    check(
        "empty sub",
        t.issue(iss("", vec![], None, 60)).await,
        Code::InvalidArgument,
        "sub",
    );
    check(
        "oversized sub",
        t.issue(iss(&"s".repeat(300), vec![], None, 60)).await,
        Code::InvalidArgument,
        "sub",
    );
    check(
        "sub with space",
        t.issue(iss("a b", vec![], None, 60)).await,
        Code::InvalidArgument,
        "sub",
    );
    check(
        "bad scope",
        t.issue(iss("u", vec!["read write"], None, 60)).await,
        Code::InvalidArgument,
        "scopes",
    );
    check(
        "scope chars",
        t.issue(iss("u", vec!["r$"], None, 60)).await,
        Code::InvalidArgument,
        "scopes",
    );
    check(
        "dup scope",
        t.issue(iss("u", vec!["r", "r"], None, 60)).await,
        Code::InvalidArgument,
        "scopes",
    );
    check(
        "too many scopes",
        t.issue(iss(
            "u",
            vec!["s"; 65]
                .into_iter()
                .enumerate()
                .map(|(i, _)| Box::leak(format!("s{i}").into_boxed_str()) as &str)
                .collect(),
            None,
            60,
        ))
        .await,
        Code::InvalidArgument,
        "scopes",
    );
    check(
        "empty aud",
        t.issue(iss("u", vec![], Some(""), 60)).await,
        Code::InvalidArgument,
        "aud",
    );
    check(
        "ttl over max",
        t.issue(iss("u", vec![], None, 10 * 24 * 3600)).await,
        Code::InvalidArgument,
        "ttl_seconds",
    );
    let rv = |jti: &str| pb::RevokeRequest {
        jti: jti.into(),
        ..Default::default()
    };
    check(
        "malformed jti",
        t.revoke(rv("zz")).await,
        Code::InvalidArgument,
        "jti",
    );
    check(
        "uppercase jti",
        t.revoke(rv(&"A".repeat(32))).await,
        Code::InvalidArgument,
        "jti",
    );
    check(
        "unknown jti",
        t.revoke(rv(&"0".repeat(32))).await,
        Code::NotFound,
        "token",
    );
    check(
        "long reason",
        t.revoke(pb::RevokeRequest {
            jti: jti.clone(),
            reason: "r".repeat(600),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "reason",
    );
    check(
        "bad wait_for",
        t.revoke(pb::RevokeRequest {
            jti: jti.clone(),
            wait_for: 7,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "wait_for",
    );
    check(
        "refresh malformed",
        t.refresh(pb::RefreshRequest {
            jti: "x".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "jti",
    );
    check(
        "refresh unknown",
        t.refresh(pb::RefreshRequest {
            jti: "1".repeat(32),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "token",
    );
    check(
        "refresh revoked",
        t.refresh(pb::RefreshRequest {
            jti: jti.clone(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "Revoked",
    );
    check(
        "refresh long grace",
        t.refresh(pb::RefreshRequest {
            jti: jti.clone(),
            grace_seconds: 1 << 40,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "grace_seconds",
    );
    check(
        "subject empty",
        t.revoke_subject(pb::RevokeSubjectRequest {
            sub: "".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "sub",
    );
    check(
        "subject future",
        t.revoke_subject(pb::RevokeSubjectRequest {
            sub: "u".into(),
            before_unix: i64::MAX,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "before_unix",
    );
    check(
        "family malformed",
        t.revoke_family(pb::RevokeFamilyRequest {
            family: "f".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "family",
    );
    check(
        "family unknown",
        t.revoke_family(pb::RevokeFamilyRequest {
            family: "2".repeat(32),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "family",
    );
    check(
        "get malformed",
        t.get(pb::GetTokenRequest { jti: "nope".into() }).await,
        Code::InvalidArgument,
        "jti",
    );
    check(
        "get unknown",
        t.get(pb::GetTokenRequest {
            jti: "3".repeat(32),
        })
        .await,
        Code::NotFound,
        "token",
    );
    check(
        "list page_size",
        t.list(pb::ListTokensRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_size",
    );
    check(
        "list page_token",
        t.list(pb::ListTokensRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "page_token",
    );
    let mut a = f.admin()?;
    check(
        "learner no member",
        a.add_learner(pb::AddLearnerRequest {
            member: None,
            blocking: false,
        })
        .await,
        Code::InvalidArgument,
        "member",
    );
    check(
        "learner bad addr",
        a.add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 9,
                addr: "nope".into(),
            }),
            blocking: false,
        })
        .await,
        Code::InvalidArgument,
        "member.addr",
    );
    check(
        "learner id 0",
        a.add_learner(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: 0,
                addr: "h:1".into(),
            }),
            blocking: false,
        })
        .await,
        Code::InvalidArgument,
        "member.node_id",
    );
    check(
        "promote unknown",
        a.promote(pb::PromoteRequest { node_id: 99 }).await,
        Code::NotFound,
        "member",
    );
    check(
        "remove unknown",
        a.remove(pb::RemoveRequest { node_id: 99 }).await,
        Code::NotFound,
        "member",
    );
    check(
        "voters empty",
        a.change_membership(pb::ChangeMembershipRequest {
            voters: vec![],
            retain: false,
        })
        .await,
        Code::InvalidArgument,
        "voters",
    );
    check(
        "voters unknown",
        a.change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 77],
            retain: false,
        })
        .await,
        Code::InvalidArgument,
        "voters",
    );
    check(
        "rotate stage",
        a.rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: 0,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "stage",
    );
    check(
        "rotate kid",
        a.rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Activate as i32,
            kid: "k".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "kid",
    );
    check(
        "rotate unknown kid",
        a.rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Activate as i32,
            kid: "4".repeat(32),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "key",
    );
    check(
        "init again",
        a.init(pb::InitRequest { members: vec![] }).await,
        Code::FailedPrecondition,
        "initialised",
    );

    // A second revoke is idempotent: same revision, nothing appended.
    let again = t
        .revoke(pb::RevokeRequest {
            jti: jti.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.revision, first.revision);

    let after = cluster.node(leader)?.status().await.unwrap();
    assert_eq!(
        after.last_log_index, before.last_log_index,
        "nothing invalid reached the log"
    );
    assert_eq!(after.tokens, before.tokens);
    assert_eq!(after.revocations, before.revocations);
    Ok(())
}
