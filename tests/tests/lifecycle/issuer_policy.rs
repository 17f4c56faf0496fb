//! Least privilege for callers: an `issuer` certificate issues, refreshes
//! and revokes only within the policy an operator keeps for it in the
//! replicated state, and is refused outside it with the field named and
//! nothing written; an `auditor` reads everything and writes nothing.

use anyhow::{Context, Result};
use tonic::Code;
use veto_auth::{Role, TlsFiles, Transport};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_tests::{tls_cluster, veto_cli};

fn channel(dir: &std::path::Path, name: &str, addr: &str) -> Result<tonic::transport::Channel> {
    let t = Transport::from_config(&TlsFiles::in_dir(dir, name), false)?;
    Ok(t.channel_lazy(addr, Role::Server, |e| e)?)
}

fn req(sub: &str, scopes: &[&str], ttl: u64, labels: &[(&str, &str)]) -> pb::IssueRequest {
    pb::IssueRequest {
        sub: sub.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl_seconds: ttl,
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// The applied revision of the node at `addr` (the leader: it applies a
/// write before answering it).
async fn applied(dir: &std::path::Path, addr: &str) -> Result<u64> {
    let s = AdminServiceClient::new(channel(dir, "operator", addr)?)
        .status(pb::StatusRequest::default())
        .await?
        .into_inner();
    Ok(s.applied_index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_stays_inside_its_policy_and_an_auditor_only_reads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let d = dir.path().display().to_string();
    for (role, name) in [("issuer", "ci"), ("issuer", "rogue"), ("auditor", "audit")] {
        veto_cli(&[
            "certs", "issue", "--dir", &d, "--role", role, "--name", name,
        ])?;
    }
    // Calls go to a follower: the policy holds for forwarded writes.
    let leader = cluster
        .wait_leader(std::time::Duration::from_secs(10))
        .await?;
    let leader_addr = cluster.node(leader)?.grpc_addr.clone();
    let addr = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .map(|n| n.grpc_addr.clone())
        .context("a follower")?;
    let cli = |args: &[&str]| -> Result<String> {
        let ca = format!("{d}/ca.pem");
        let cert = format!("{d}/operator.pem");
        let key = format!("{d}/operator.key");
        let mut all = vec![
            "--addr",
            &addr,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--json",
        ];
        all.extend_from_slice(args);
        veto_cli(&all)
    };
    cli(&[
        "policy",
        "set-issuer",
        "ci",
        "--subject-prefix",
        "svc:ci-",
        "--subject",
        "svc:deployer",
        "--scope",
        "deploy",
        "--scope",
        "read",
        "--max-ttl",
        "600",
        "--require-label",
        "team",
    ])?;
    let listed = cli(&["policy", "list"])?;
    assert!(listed.contains("\"name\":\"ci\""), "{listed}");

    let mut ci = TokenServiceClient::new(channel(dir.path(), "ci", &addr)?);
    // Inside the policy: issued, and the record names the issuer.
    let ok = ci
        .issue(req("svc:ci-main", &["deploy"], 600, &[("team", "pay")]))
        .await?
        .into_inner();
    let rec = ok.record.clone().context("record")?;
    assert_eq!(rec.issued_by, "issuer:ci");
    assert_eq!(rec.owner, "issuer:ci");

    // Outside it: PERMISSION_DENIED naming the field, and nothing written.
    let before = applied(dir.path(), &leader_addr).await?;
    for (r, field) in [
        (req("svc:other", &["deploy"], 60, &[("team", "pay")]), "sub"),
        (req("svc:ci", &["deploy"], 60, &[("team", "pay")]), "sub"),
        (
            req("svc:ci-main", &["deploy", "admin"], 60, &[("team", "pay")]),
            "scopes",
        ),
        (
            req("svc:ci-main", &["read"], 601, &[("team", "pay")]),
            "ttl_seconds",
        ),
        (req("svc:ci-main", &["read"], 60, &[("x", "y")]), "labels"),
    ] {
        let e = ci.issue(r).await.expect_err(field);
        assert_eq!(e.code(), Code::PermissionDenied, "{field}: {e:?}");
        assert!(
            e.message().contains(&format!("issuer policy ci: {field}:")),
            "{field}: {}",
            e.message()
        );
    }
    // Refresh by jti: its own token yes (within max TTL), not beyond it.
    let e = ci
        .refresh(pb::RefreshRequest {
            jti: rec.jti.clone(),
            ttl_seconds: 601,
            grace_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("ttl");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Someone else's token: refused, by jti and in bulk.
    let mut ops = TokenServiceClient::new(channel(dir.path(), "operator", &addr)?);
    let alice = ops
        .issue(req("user:alice", &["read"], 600, &[]))
        .await?
        .into_inner();
    let alice_jti = alice.record.context("record")?.jti;
    let after_alice = applied(dir.path(), &leader_addr).await?;
    let e = ci
        .revoke(pb::RevokeRequest {
            jti: alice_jti.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other subject");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = ci
        .revoke_subject(pb::RevokeSubjectRequest {
            sub: "svc:ci-main".into(),
            ..Default::default()
        })
        .await
        .expect_err("bulk");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        applied(dir.path(), &leader_addr).await?,
        after_alice,
        "refusals wrote nothing"
    );
    assert_eq!(
        after_alice,
        before + 1,
        "only the operator's issue was written"
    );
    // Its own token: refreshed, then revoked.
    let next = ci
        .refresh(pb::RefreshRequest {
            jti: rec.jti.clone(),
            ttl_seconds: 300,
            grace_seconds: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    let next_jti = next
        .successor
        .and_then(|s| s.record)
        .map(|r| r.jti)
        .context("successor")?;
    ci.revoke(pb::RevokeRequest {
        jti: next_jti,
        reason: "rotated out".into(),
        ..Default::default()
    })
    .await?;
    // No admin rights at all.
    let e = AdminServiceClient::new(channel(dir.path(), "ci", &addr)?)
        .status(pb::StatusRequest::default())
        .await
        .expect_err("admin");
    assert_eq!(e.code(), Code::PermissionDenied);
    // An issuer certificate without a policy can do nothing.
    let e = TokenServiceClient::new(channel(dir.path(), "rogue", &addr)?)
        .issue(req("svc:ci-main", &["read"], 60, &[("team", "pay")]))
        .await
        .expect_err("no policy");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("has no policy"), "{}", e.message());

    // The auditor reads tokens, keys, policies, status and the trail ...
    let mut aud_t = TokenServiceClient::new(channel(dir.path(), "audit", &addr)?);
    let mut aud_a = AdminServiceClient::new(channel(dir.path(), "audit", &addr)?);
    let got = aud_t
        .get(pb::GetTokenRequest {
            jti: alice_jti.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got.record.map(|r| r.sub).as_deref(), Some("user:alice"));
    let listed = aud_t
        .list(pb::ListTokensRequest {
            owner: Some("issuer:ci".into()),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(listed.tokens.len(), 2, "{listed:?}");
    aud_a.list_keys(pb::ListKeysRequest {}).await?;
    aud_a.status(pb::StatusRequest::default()).await?;
    let policies = aud_a
        .list_issuer_policies(pb::ListIssuerPoliciesRequest {})
        .await?
        .into_inner();
    assert_eq!(policies.policies.len(), 1);
    let trail = aud_a
        .audit(pb::AuditRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let policy_set = trail
        .events
        .iter()
        .find(|e| e.action == "set_issuer_policy")
        .context("policy change audited")?;
    assert_eq!(policy_set.actor, "operator:operator");
    assert_eq!(policy_set.target, "issuer ci");
    assert!(trail
        .events
        .iter()
        .any(|e| e.action == "revoke_token" && e.actor == "issuer:ci"));
    // ... and writes nothing.
    let before = applied(dir.path(), &leader_addr).await?;
    let e = aud_t
        .issue(req("svc:ci-main", &["read"], 60, &[("team", "pay")]))
        .await
        .expect_err("auditor issue");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = aud_t
        .revoke(pb::RevokeRequest {
            jti: alice_jti,
            ..Default::default()
        })
        .await
        .expect_err("auditor revoke");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = aud_a
        .set_issuer_policy(pb::SetIssuerPolicyRequest {
            name: "audit".into(),
            remove: true,
            ..Default::default()
        })
        .await
        .expect_err("auditor policy");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = aud_a
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Publish as i32,
            ..Default::default()
        })
        .await
        .expect_err("auditor rotate");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = match aud_a.backup(pb::BackupRequest {}).await {
        Err(e) => e,
        Ok(mut s) => s.get_mut().message().await.expect_err("auditor backup"),
    };
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "backups carry sealed keys"
    );
    assert_eq!(applied(dir.path(), &leader_addr).await?, before);

    // Removing the policy takes the issuer's rights away.
    cli(&["policy", "remove-issuer", "ci"])?;
    let e = ci
        .issue(req("svc:ci-main", &["read"], 60, &[("team", "pay")]))
        .await
        .expect_err("removed");
    assert_eq!(e.code(), Code::PermissionDenied);
    // A policy that allows everything is refused, the field named.
    let bad = cli(&[
        "policy",
        "set-issuer",
        "ci",
        "--subject-prefix",
        "",
        "--scope",
        "read",
        "--max-ttl",
        "60",
    ]);
    let msg = format!("{bad:?}");
    assert!(
        msg.contains("InvalidArgument") && msg.contains("policy.subject_prefixes"),
        "{msg}"
    );
    Ok(())
}
