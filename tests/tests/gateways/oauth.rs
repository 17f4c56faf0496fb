//! RFC 7662 introspection (edges) and RFC 7009 revocation (servers) under
//! TLS, checked field by field by tests/py/oauth_probe.py through Authlib's
//! OAuth 2.0 client (PyPI, pinned in tests/py/requirements-oauth.txt), then
//! cross-checked here: the token is revoked in the cluster and the audit
//! names the operator and the RFC 7009 reason.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use veto_auth::{TlsFiles, Transport};
use veto_proto as pb;
use veto_tests::{python_env, tls_cluster, token_status};

use crate::{issue, jti, root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_introspects_and_revokes_per_rfc7662_and_rfc7009() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let node = &cluster.nodes[0];
    let tok = issue(node, "svc:billing", &["read", "write"], Some("billing")).await?;
    let edge = veto_tests::start_edge(veto_edge::Options {
        edge_id: "edge-1".into(),
        servers: cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect(),
        bound_ms: crate::BOUND.as_millis() as u64,
        probe_interval_ms: 100,
        transport: Transport::from_config(&TlsFiles::in_dir(dir.path(), "edge-1"), false)?,
        ..Default::default()
    })
    .await?;
    let edge_http = edge.http_addr.context("edge without HTTP")?;
    let pair = |name: &str| {
        json!([
            dir.path().join(format!("{name}.pem")),
            dir.path().join(format!("{name}.key"))
        ])
    };
    let cfg = json!({
        "introspect": format!("https://{edge_http}/oauth2/introspect"),
        "revoke": format!("https://{}/oauth2/revoke", node.http_addr),
        "ca": dir.path().join("ca.pem"),
        "client": pair("client"),
        "operator": pair("operator"),
        "token": tok.token,
        "sub": "svc:billing",
        "scope": "read write",
        "aud": "billing",
    });
    let cfg_path = dir.path().join("oauth.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;

    let python = python_env("oauth", "tests/py/requirements-oauth.txt")?;
    let out = crate::run(
        std::process::Command::new(python)
            .arg(root().join("tests/py/oauth_probe.py"))
            .arg(&cfg_path),
    )?;
    let summary: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .with_context(|| format!("no JSON summary in {out}"))?;
    assert_eq!(summary["ok"], true, "{summary}");
    let passed = summary["passed"].as_array().map(Vec::len).unwrap_or(0);
    assert!(passed >= 40, "only {passed} checks ran: {summary}");
    eprintln!("oauth_probe: {summary}");

    // The cluster agrees, and the audit says who and why.
    let id = jti(&tok);
    assert_eq!(token_status(node, &id).await?, pb::TokenStatus::Revoked);
    let events = node
        .admin()?
        .audit(pb::AuditRequest {
            subject: "svc:billing".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    let revokes: Vec<_> = events
        .iter()
        .filter(|e| e.action.contains("revoke") && e.target.contains(&id))
        .collect();
    assert_eq!(revokes.len(), 1, "one revoke of {id}: {events:?}");
    assert_eq!(revokes[0].reason, "RFC 7009 revocation request");
    assert!(
        revokes[0].actor.starts_with("operator:"),
        "{:?}",
        revokes[0]
    );
    Ok(())
}
