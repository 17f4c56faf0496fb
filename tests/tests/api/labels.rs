//! Tokens carry an owner, a description and labels; `List` filters by
//! them (and by status, key and expiry); a selector revoke ("every token of
//! `version=1.4`") reaches every edge with the same propagation wait as the
//! other revoke kinds; a refresh carries the metadata on; bad metadata and
//! selectors are refused with the field named and change nothing.

use std::collections::HashMap;

use anyhow::Result;
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};
use veto_tests::{start_edges, verify_at, veto_cli};

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn issue(
    c: &mut pb::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    owner: &str,
    l: &[(&str, &str)],
) -> Result<pb::IssueResponse> {
    Ok(c.issue(pb::IssueRequest {
        sub: "svc:api".into(),
        scopes: vec!["read".into()],
        ttl_seconds: 600,
        owner: owner.into(),
        description: format!("{owner} deploy token"),
        labels: labels(l),
        ..Default::default()
    })
    .await?
    .into_inner())
}

fn jti(t: &pb::IssueResponse) -> String {
    t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default()
}

async fn list(
    c: &mut pb::token_service_client::TokenServiceClient<tonic::transport::Channel>,
    req: pb::ListTokensRequest,
) -> Result<Vec<String>> {
    let mut out: Vec<String> = c
        .list(req)
        .await?
        .into_inner()
        .tokens
        .into_iter()
        .filter_map(|t| t.record.map(|r| r.jti))
        .collect();
    out.sort();
    Ok(out)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_labels_list_filters_and_selector_revokes() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let warm = veto_tests::issue(&cluster.nodes[0], "user:warmup", 60).await?;
    let edges = start_edges(&cluster, 2, 1_000, 100).await?;
    let mut c = cluster.nodes[1].tokens()?;
    let a = issue(&mut c, "team-a", &[("app", "api"), ("version", "1.4")]).await?;
    let b = issue(&mut c, "team-b", &[("app", "api"), ("version", "1.4")]).await?;
    let n = issue(&mut c, "team-a", &[("app", "api"), ("version", "1.5")]).await?;
    let mine = issue(&mut c, "", &[]).await?;

    // Get shows what was recorded, and who issued it.
    let got = c
        .get(pb::GetTokenRequest { jti: jti(&a) })
        .await?
        .into_inner();
    let rec = got.record.unwrap_or_default();
    assert_eq!(rec.owner, "team-a");
    assert_eq!(rec.description, "team-a deploy token");
    assert_eq!(rec.labels, labels(&[("app", "api"), ("version", "1.4")]));
    assert!(rec.issued_by.starts_with("anonymous@"), "{}", rec.issued_by);
    let me = mine.record.clone().unwrap_or_default();
    assert_eq!(me.owner, me.issued_by, "no owner named: the caller owns it");

    // List filters.
    let q = |f: fn(&mut pb::ListTokensRequest)| {
        let mut r = pb::ListTokensRequest::default();
        f(&mut r);
        r
    };
    let by_owner = list(&mut c, q(|r| r.owner = Some("team-a".into()))).await?;
    assert_eq!(by_owner, sorted(vec![jti(&a), jti(&n)]));
    let v14 = list(&mut c, q(|r| r.selector = Some("version=1.4".into()))).await?;
    assert_eq!(v14, sorted(vec![jti(&a), jti(&b)]));
    let api_not_14 = list(&mut c, q(|r| r.selector = Some("app,version!=1.4".into()))).await?;
    assert_eq!(api_not_14, vec![jti(&n)]);
    let soon = list(&mut c, q(|r| r.expires_within_seconds = 120)).await?;
    assert_eq!(
        soon,
        vec![jti(&warm)],
        "only the 60 s token expires within 120 s"
    );
    let kid = rec.kid.clone();
    let mut by_kid = pb::ListTokensRequest {
        kid: Some(kid),
        ..Default::default()
    };
    by_kid.owner = Some("team-b".into());
    assert_eq!(list(&mut c, by_kid).await?, vec![jti(&b)]);

    // Retire every token of version 1.4, waiting for every edge.
    let r = c
        .revoke_selector(pb::RevokeSelectorRequest {
            selector: "app=api,version=1.4".into(),
            reason: "retire 1.4".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
        })
        .await?
        .into_inner();
    assert!(!r.already_revoked);
    assert_eq!(r.edges_confirmed, 2, "{r:?}");
    assert!(r.propagation_ms.is_some(), "{r:?}");
    for e in &edges {
        for (t, valid) in [(&a, false), (&b, false), (&n, true), (&mine, true)] {
            let v = verify_at(e, &t.token, r.revision).await?;
            assert_eq!(v.valid, valid, "{} at {:?}: {v:?}", jti(t), e.grpc_addr);
        }
    }
    let revoked = list(&mut c, q(|r| r.status = pb::TokenStatus::Revoked as i32)).await?;
    assert_eq!(revoked, sorted(vec![jti(&a), jti(&b)]));
    let again = c
        .revoke_selector(pb::RevokeSelectorRequest {
            selector: "version=1.4".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(again.already_revoked);
    assert_eq!(again.revision, r.revision);

    // A refresh keeps owner, description and labels.
    let succ = c
        .refresh(pb::RefreshRequest {
            jti: jti(&n),
            ..Default::default()
        })
        .await?
        .into_inner()
        .successor
        .and_then(|s| s.record)
        .unwrap_or_default();
    assert_eq!(succ.owner, "team-a");
    assert_eq!(succ.labels, labels(&[("app", "api"), ("version", "1.5")]));

    // Bad input: the field named, nothing written.
    let before = cluster.nodes[0].status().await.map(|s| s.applied_index);
    for (req, field) in [
        (
            pb::IssueRequest {
                sub: "x".into(),
                labels: labels(&[("bad key", "v")]),
                ..Default::default()
            },
            "labels",
        ),
        (
            pb::IssueRequest {
                sub: "x".into(),
                owner: "two words".into(),
                ..Default::default()
            },
            "owner",
        ),
        (
            pb::IssueRequest {
                sub: "x".into(),
                description: "line\nbreak".into(),
                ..Default::default()
            },
            "description",
        ),
    ] {
        let e = c.issue(req).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    for sel in ["", "=x", "a=b c", "a,,b"] {
        let e = c
            .revoke_selector(pb::RevokeSelectorRequest {
                selector: sel.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{sel:?}: {e:?}");
        assert!(e.message().starts_with("selector"), "{}", e.message());
    }
    let e = c
        .list(pb::ListTokensRequest {
            selector: Some("!".into()),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let after = cluster.nodes[0].status().await.map(|s| s.applied_index);
    assert_eq!(before, after, "refused requests wrote nothing");
    let e = c
        .revoke_selector(pb::RevokeSelectorRequest {
            selector: "version=9.9".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing matches");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // The CLI speaks it too.
    let addr = cluster.nodes[2].grpc_addr.clone();
    let out = veto_cli(&[
        "--addr",
        &addr,
        "--insecure",
        "--json",
        "token",
        "list",
        "--selector",
        "version=1.5",
        "--owner",
        "team-a",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let listed: Vec<&str> = v["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["record"]["jti"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed.len(), 2, "n and its successor: {out}");
    Ok(())
}
