//! Token strings never leave veto (docs/design.md, "Security"): a full issue, refresh,
//! verify and revoke flow runs on a TLS cluster and a `veto-edge` process,
//! all with debug logging and span export on; then every log line, every
//! metric of every process, every exported span and every answer's error
//! text is searched for the tokens (and their signatures). Only jtis may
//! appear.

use std::process::Stdio;
use std::time::Duration;

use veto_auth::certs::InitSpec;
use veto_auth::{TlsFiles, Transport};
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::{bin_named, eventually, Cluster, ClusterOptions};
use veto_tests::https_get;
use veto_tests::otlp::Collector;

/// Every token-like secret to search for: the whole token and its
/// signature segment (a prefix or suffix of a token would still carry it).
fn needles(token: &str) -> Vec<String> {
    let mut v = vec![token.to_owned()];
    if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() >= 40) {
        v.push(sig.to_owned());
    }
    v
}

/// `token` with one payload character changed and its signature kept, so
/// an echo of it would carry the signature needle.
fn payload_tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    if let Some(p) = parts.get_mut(1) {
        let flip = if p.starts_with('e') { "f" } else { "e" };
        p.replace_range(0..1, flip);
    }
    parts.join(".")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_string_in_logs_metrics_spans_or_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    veto_auth::certs::init_dir(&certs, &InitSpec::default())?;
    let (collector, endpoint, _otlp) = Collector::start().await?;
    let cluster = Cluster::start(ClusterOptions {
        tls_dir: Some(certs.clone()),
        env: vec![
            ("RUST_LOG".into(), "debug".into()),
            ("VETO_OTLP_ENDPOINT".into(), endpoint.clone()),
        ],
        ..ClusterOptions::default()
    })
    .await?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();

    // One real veto-edge process, TLS to the servers and to its clients.
    let edge_log = dir.path().join("edge.log");
    let ready = dir.path().join("edge.ready");
    let tls = TlsFiles::in_dir(&certs, "edge-1");
    let path = |p: &Option<std::path::PathBuf>| p.clone().unwrap_or_default();
    let mut edge = tokio::process::Command::new(bin_named("veto-edge", "VETO_EDGE_BIN")?)
        .args(["--edge-id", "edge-1", "--servers", &servers.join(",")])
        .args(["--listen-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--probe-interval-ms", "100", "--otlp-endpoint", &endpoint])
        .arg("--ready-file")
        .arg(&ready)
        .arg("--tls-ca")
        .arg(path(&tls.ca))
        .arg("--tls-cert")
        .arg(path(&tls.cert))
        .arg("--tls-key")
        .arg(path(&tls.key))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&edge_log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&edge_log)?,
        ))
        .kill_on_drop(true)
        .spawn()?;
    let addrs: serde_json::Value = eventually(
        "edge ready file",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let ready = ready.clone();
            async move { serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok() }
        },
    )
    .await?;
    let edge_grpc = addrs["grpc"].as_str().unwrap_or_default().to_owned();
    let edge_http = addrs["http"].as_str().unwrap_or_default().to_owned();

    let t = |name: &str| Transport::from_config(&TlsFiles::in_dir(&certs, name), false);
    let (op, client) = (t("operator")?, t("client")?);
    let ch = |tr: &Transport,
              a: &str,
              peer: veto_auth::Role|
     -> anyhow::Result<tonic::transport::Channel> {
        Ok(tr.channel_lazy(a, peer, |ep| ep.timeout(Duration::from_secs(10)))?)
    };
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let mut tokens =
        TokenServiceClient::new(ch(&op, &follower.grpc_addr, veto_auth::Role::Server)?);
    let mut verifier = VerifierServiceClient::new(ch(&client, &edge_grpc, veto_auth::Role::Edge)?);

    // The flow. Every answer's text is kept to be searched too.
    let mut texts: Vec<String> = Vec::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut issued = Vec::new();
    for sub in ["user:leak-a", "user:leak-b"] {
        // Through a follower, as the operator; waits for the first key.
        let r = veto_tests::issue(follower, sub, 600).await?;
        secrets.extend(needles(&r.token));
        texts.push(format!("{:?}", r.record));
        issued.push(r);
    }
    let jti = |r: &pb::IssueResponse| r.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
    let refreshed = tokens
        .refresh(pb::RefreshRequest {
            jti: jti(&issued[1]),
            ttl_seconds: 600,
            grace_seconds: 0,
            ..Default::default()
        })
        .await?
        .into_inner()
        .successor
        .ok_or_else(|| anyhow::anyhow!("no successor"))?;
    secrets.extend(needles(&refreshed.token));
    // A tampered token is a token string too.
    let mut tampered = issued[0].token.clone();
    let last = if tampered.ends_with('A') { 'B' } else { 'A' };
    tampered.pop();
    tampered.push(last);
    secrets.extend(needles(&tampered));

    let verify = |token: &str| pb::VerifyRequest {
        token: token.into(),
        required_scopes: vec!["read".into()],
        ..Default::default()
    };
    let wait_fresh = || async {
        eventually(
            "edge answers",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let mut v = verifier.clone();
                let token = issued[0].token.clone();
                async move {
                    let r = v.verify(verify(&token)).await.ok()?.into_inner();
                    r.valid.then_some(())
                }
            },
        )
        .await
    };
    wait_fresh().await?;
    for tk in [
        &issued[0].token,
        &refreshed.token,
        &tampered,
        &issued[1].token,
    ] {
        let r = verifier.verify(verify(tk)).await?.into_inner();
        texts.push(format!("{r:?}"));
    }
    let batch = verifier
        .verify_batch(pb::VerifyBatchRequest {
            items: vec![
                verify(&issued[0].token),
                verify(&tampered),
                verify("garbage"),
            ],
        })
        .await?
        .into_inner();
    texts.push(format!("{batch:?}"));
    let rv = tokens
        .revoke(pb::RevokeRequest {
            jti: jti(&issued[0]),
            reason: "leak test".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    texts.push(format!("{rv:?}"));
    let after = verifier
        .verify(verify(&issued[0].token))
        .await?
        .into_inner();
    assert!(!after.valid, "revoked token still valid: {after:?}");
    texts.push(format!("{after:?}"));
    // Errors: a refresh of a revoked token, a revoke with a token where a
    // jti belongs, a Get of one.
    for e in [
        tokens
            .refresh(pb::RefreshRequest {
                jti: jti(&issued[0]),
                ..Default::default()
            })
            .await
            .err(),
        tokens
            .revoke(pb::RevokeRequest {
                jti: issued[1].token.clone(),
                ..Default::default()
            })
            .await
            .err(),
        // A presented token whose signature does not verify.
        tokens
            .revoke(pb::RevokeRequest {
                token: payload_tampered(&issued[1].token),
                ..Default::default()
            })
            .await
            .err(),
        tokens
            .get(pb::GetTokenRequest {
                jti: refreshed.token.clone(),
            })
            .await
            .err(),
    ] {
        let e = e.ok_or_else(|| anyhow::anyhow!("a bad request succeeded"))?;
        texts.push(format!("{:?} {}", e.code(), e.message()));
    }

    // The revoke's spans from the servers and the edge arrive (batch
    // export every 500 ms).
    eventually(
        "spans from servers and the edge",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || {
            let c = collector.clone();
            async move {
                let s = c.spans();
                let has = |svc: &str, name: &str| {
                    s.iter().any(|g| g.service == svc && g.name.contains(name))
                };
                (has("veto-server", "Revoke") && has("veto-edge", "edge.apply")).then_some(())
            }
        },
    )
    .await?;
    let spans = collector.spans();

    // Metrics of every process, over HTTPS with the operator certificate.
    let mut metrics = Vec::new();
    for a in cluster
        .nodes
        .iter()
        .map(|n| n.http_addr.as_str())
        .chain([edge_http.as_str()])
    {
        let (status, body) = https_get(a, "/metrics", &op, true).await?;
        anyhow::ensure!(status == 200, "/metrics on {a}: {status}");
        metrics.push(body);
    }
    edge.start_kill()?;
    let _ = edge.wait().await;
    let mut logs = Vec::new();
    for n in &cluster.nodes {
        logs.push((
            n.log_file.display().to_string(),
            std::fs::read_to_string(&n.log_file)?,
        ));
    }
    logs.push(("edge".into(), std::fs::read_to_string(&edge_log)?));

    // Debug logging was really on, and there was plenty to search.
    for (name, l) in &logs {
        let debug_lines = l.lines().filter(|x| x.contains("DEBUG")).count();
        assert!(debug_lines > 20, "{name}: only {debug_lines} debug lines");
    }
    let mut haystacks: Vec<(String, &str)> = Vec::new();
    for (name, l) in &logs {
        haystacks.push((format!("log {name}"), l));
    }
    for (i, m) in metrics.iter().enumerate() {
        haystacks.push((format!("metrics #{i}"), m));
    }
    for s in &spans {
        haystacks.push((format!("span {} of {}", s.name, s.service), &s.raw));
    }
    for t in &texts {
        haystacks.push(("an answer".into(), t));
    }
    for (where_, text) in &haystacks {
        for n in &secrets {
            assert!(
                !text.contains(n.as_str()),
                "a token string appears in {where_}"
            );
        }
    }
    // The search itself works: the jti (allowed) is found in the answers.
    let j = jti(&issued[0]);
    assert!(
        haystacks.iter().any(|(_, t)| t.contains(&j)),
        "jti {j} found nowhere"
    );
    Ok(())
}
