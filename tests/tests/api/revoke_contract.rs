//! The revoke and verify contract on a real cluster with real edges: a
//! subject revoke is exact to the revision (a token issued after its answer,
//! in the same second, is valid), the audience and scope rules as
//! `verifier.proto` states them, and `--wait-edges` on every revoke kind,
//! key revoke included, reporting a member that does not answer instead of
//! claiming a propagation nobody confirmed.

use std::process::Command;
use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{bin_named, Cluster, ClusterOptions};
use veto_tests::{issue, start_edges, verify_at};

fn veto(args: &[&str]) -> anyhow::Result<String> {
    let bin = bin_named("veto", "VETO_CLI_BIN")?;
    let out = Command::new(bin)
        .env("VETO_INSECURE", "1")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "veto {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn jti(t: &pb::IssueResponse) -> String {
    t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default()
}

fn iat(t: &pb::IssueResponse) -> i64 {
    t.record.as_ref().map(|r| r.iat).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_in_the_same_second_after_a_subject_revoke_is_valid() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let l = cluster.node(cluster.wait_leader(Duration::from_secs(20)).await?)?;
    let edges = start_edges(&cluster, 2, 2_000, 100).await?;
    let mut tokens = l.tokens()?;
    // Revoke and re-issue inside one second on the leader's clock (retried
    // a few times in case a second boundary falls between them).
    let mut proven = false;
    for attempt in 0..5 {
        let sub = format!("svc:rotating-{attempt}");
        let old = issue(l, &sub, 3600).await?;
        let rv = tokens
            .revoke_subject(pb::RevokeSubjectRequest {
                sub: sub.clone(),
                reason: "rotate credentials".into(),
                wait_for: pb::WaitFor::AllEdges as i32,
                wait_timeout_ms: 5_000,
                ..Default::default()
            })
            .await?
            .into_inner();
        let new = issue(l, &sub, 3600).await?;
        let audit = l
            .admin()?
            .audit(pb::AuditRequest {
                subject: sub.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let revoke_at = audit
            .events
            .iter()
            .find(|e| e.action == "revoke_subject")
            .map(|e| e.at_unix)
            .ok_or_else(|| anyhow::anyhow!("no audit event for the revoke"))?;
        let newest = new.revision.max(rv.revision);
        for e in &edges {
            let v = verify_at(e, &old.token, newest).await?;
            assert_eq!(v.outcome, pb::Outcome::Revoked as i32, "old token: {v:?}");
            let v = verify_at(e, &new.token, newest).await?;
            assert!(
                v.valid,
                "a token issued after the revoke's answer must be valid: {v:?}"
            );
        }
        let status = veto_tests::token_status(l, &jti(&new)).await?;
        assert_eq!(status, pb::TokenStatus::Active);
        if iat(&new) == revoke_at && iat(&old) == revoke_at {
            proven = true;
            break;
        }
    }
    assert!(
        proven,
        "never managed to issue, revoke and re-issue within one second"
    );
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_and_scope_rules_at_a_real_edge() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let l = cluster.node(cluster.wait_leader(Duration::from_secs(20)).await?)?;
    let edges = start_edges(&cluster, 1, 2_000, 100).await?;
    let mut tokens = l.tokens()?;
    let issue_aud = |aud: Option<&str>| pb::IssueRequest {
        sub: "svc:billing".into(),
        scopes: vec!["invoices:read".into(), "invoices:write".into()],
        aud: aud.map(str::to_owned),
        ttl_seconds: 600,
        ..Default::default()
    };
    // Wait for the first signing key through the shared helper, then issue.
    issue(l, "svc:warmup", 60).await?;
    let for_payments = tokens
        .issue(issue_aud(Some("payments")))
        .await?
        .into_inner();
    let for_anyone = tokens.issue(issue_aud(None)).await?.into_inner();
    let rev = for_anyone.revision;
    let addr = edges[0]
        .grpc_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut c =
        pb::verifier_service_client::VerifierServiceClient::new(veto_testkit::channel(&addr)?);
    let ask = |t: &pb::IssueResponse, aud: Option<&str>, scopes: &[&str]| pb::VerifyRequest {
        token: t.token.clone(),
        required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
        audience: aud.map(str::to_owned),
        min_revision: rev,
    };
    let cases: Vec<(&str, pb::VerifyRequest, pb::Outcome)> = vec![
        (
            "token for an audience, verifier names none",
            ask(&for_payments, None, &[]),
            pb::Outcome::WrongAudience,
        ),
        (
            "token for an audience, verifier names another",
            ask(&for_payments, Some("orders"), &[]),
            pb::Outcome::WrongAudience,
        ),
        (
            "token for an audience, verifier names it",
            ask(&for_payments, Some("payments"), &["invoices:read"]),
            pb::Outcome::Valid,
        ),
        (
            "token for no audience, verifier requires one",
            ask(&for_anyone, Some("payments"), &[]),
            pb::Outcome::WrongAudience,
        ),
        (
            "token for no audience, verifier requires none",
            ask(&for_anyone, None, &["invoices:write"]),
            pb::Outcome::Valid,
        ),
        (
            "a scope the token does not grant",
            ask(&for_payments, Some("payments"), &["invoices:delete"]),
            pb::Outcome::InsufficientScope,
        ),
        (
            "one granted and one missing scope",
            ask(&for_anyone, None, &["invoices:read", "admin"]),
            pb::Outcome::InsufficientScope,
        ),
    ];
    for (what, req, want) in cases {
        let v = c.verify(req).await?.into_inner();
        assert_eq!(v.outcome, want as i32, "{what}: {v:?}");
        assert_eq!(v.valid, want == pb::Outcome::Valid, "{what}: {v:?}");
    }
    // VerifyBatch applies the same rules item by item.
    let batch = c
        .verify_batch(pb::VerifyBatchRequest {
            items: vec![
                ask(&for_payments, None, &[]),
                ask(&for_payments, Some("payments"), &[]),
            ],
        })
        .await?
        .into_inner();
    let got: Vec<i32> = batch.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        got,
        vec![pb::Outcome::WrongAudience as i32, pb::Outcome::Valid as i32]
    );
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

fn json_line(out: &str) -> anyhow::Result<serde_json::Value> {
    let first = out
        .lines()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no output"))?;
    Ok(serde_json::from_str(first)?)
}

/// What a `--wait-edges --json` revoke reported, checked for the cluster
/// with one member down: every live edge confirmed, the dead member named
/// as unknown, and no propagation figure claimed.
fn check_with_member_down(what: &str, v: &serde_json::Value, edges: u64, down: u64) {
    assert_eq!(v["edges_confirmed"], edges, "{what}: {v}");
    assert_eq!(
        v["edges_behind"].as_array().map(Vec::len),
        Some(0),
        "{what}: {v}"
    );
    let unknown: Vec<String> = v["edges_unknown"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        unknown.iter().any(|u| u.ends_with(&format!("@{down}"))),
        "{what}: the member that did not answer is not reported: {v}"
    );
    assert!(
        v["propagation_ms"].is_null(),
        "{what}: a propagation was claimed with a member unknown: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_edges_on_every_revoke_kind_reports_an_unreachable_member() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let edges = start_edges(&cluster, 2, 2_000, 100).await?;
    let addr = cluster.node(leader)?.grpc_addr.clone();
    let toks = {
        let l = cluster.node(leader)?;
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(issue(l, &format!("user:{i}"), 3600).await?);
        }
        v
    };
    // A second key, published, so a key revoke does not stop issuance.
    let published = veto(&["--addr", &addr, "--json", "keys", "rotate", "publish"])?;
    let kid = json_line(&published)?["kid"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            // `keys rotate` prints the key list; the published one is the
            // key in state "published".
            published.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["keys"].as_array()?.iter().find_map(|k| {
                    (k["state"] == "published")
                        .then(|| k["kid"].as_str().map(str::to_owned))
                        .flatten()
                })
            })
        })
        .ok_or_else(|| anyhow::anyhow!("no kid in {published}"))?;

    // All members up: the wait succeeds and measures.
    let out = veto(&[
        "--addr",
        &addr,
        "--json",
        "token",
        "revoke",
        &jti(&toks[0]),
        "--wait-edges",
    ])?;
    let v = json_line(&out)?;
    assert_eq!(v["edges_confirmed"], 2, "{v}");
    assert!(v["propagation_ms"].as_f64().is_some(), "{v}");
    assert_eq!(v["edges_unknown"].as_array().map(Vec::len), Some(0), "{v}");

    // A follower dies (SIGKILL): its edges fail over to the others.
    let down = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let down_addr = cluster.node(down)?.grpc_addr.clone();
    cluster.kill(down).await?;
    for e in &edges {
        let h = e.handle.clone();
        let down_addr = down_addr.clone();
        veto_testkit::eventually(
            "the edge to fail over to a live member",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || {
                let h = h.clone();
                let down_addr = down_addr.clone();
                async move {
                    let moved = h.server().is_some_and(|s| s != down_addr);
                    (moved && h.freshness().fresh).then_some(())
                }
            },
        )
        .await?;
    }
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "token",
            vec!["token".into(), "revoke".into(), jti(&toks[1])],
        ),
        (
            "subject",
            vec!["token".into(), "revoke-subject".into(), "user:2".into()],
        ),
        (
            "family",
            vec![
                "token".into(),
                "revoke-family".into(),
                toks[1]
                    .record
                    .as_ref()
                    .map(|r| r.family.clone())
                    .unwrap_or_default(),
            ],
        ),
        (
            "key",
            vec!["keys".into(), "rotate".into(), "revoke".into(), kid.clone()],
        ),
    ];
    for (what, args) in runs {
        let mut full = vec!["--addr".to_string(), addr.clone(), "--json".into()];
        full.extend(args);
        full.extend([
            "--wait-edges".into(),
            "--wait-timeout-ms".into(),
            "3000".into(),
        ]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = veto(&refs)?;
        let v = json_line(&out)?;
        assert!(v["revision"].as_u64().unwrap_or(0) > 0, "{what}: {v}");
        check_with_member_down(what, &v, 2, down);
    }
    // And the revoked key is refused at the edges: a token it never signed
    // cannot show that, so check the key's state instead.
    let keys = veto(&["--addr", &addr, "--json", "keys", "list"])?;
    assert!(keys.contains("revoked"), "{keys}");
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
