//! Leaked tokens: a TLS cluster issuing tokens in the scanner form
//! (`token_prefix`), two TLS edges, and GitHub-style leak reports posted
//! over HTTPS without a client certificate to a follower's
//! `/v1/leaks/github`. A report signed with the configured P-256 key
//! revokes the leaked token (true positive), says false positive for a
//! string that is not ours and for a look-alike with a broken checksum,
//! and answers only once every edge refuses the token; the audit names the
//! leak-report actor and the report's URL, and `/metrics` carries the
//! time-to-dead sample. Reports with a bad signature, an unknown key id or
//! no signature get 401 and change nothing: another token stays valid at
//! every edge and no node's Raft log moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};
use veto_auth::{Role, Transport};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::{Cluster, ClusterOptions};

/// A key identifier in GitHub's style (hex of 32 bytes).
const KEY_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";
const PREFIX: &str = "vetotest";
const BOUND_MS: u64 = 2_000;
const LEAK_URL: &str = "https://github.com/octo/leaky/blob/0123abc/deploy/config.yml";

fn transport(dir: &std::path::Path, name: &str) -> Result<Transport> {
    veto_tests::tls_transport(dir, name)
}

fn sign(key: &SigningKey, body: &str) -> String {
    let sig: Signature = key.sign(body.as_bytes());
    STANDARD.encode(sig.to_der().as_bytes())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// One HTTPS POST (HTTP/1.1, `Connection: close`, 10 s limits), trusting
/// the veto CA and presenting no client certificate, as GitHub would.
async fn https_post(
    addr: &str,
    path: &str,
    ca_pem: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let limit = Duration::from_secs(10);
    let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await??;
    let ip: std::net::SocketAddr = addr.parse()?;
    let mut tls = tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::IpAddress(ip.ip().into()), tcp),
    )
    .await??;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {head:?}"))?;
    Ok((status, rest.to_string()))
}

/// Every node's commit index, by node id.
async fn commit_indexes(cluster: &Cluster) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        let s = n
            .status()
            .await
            .with_context(|| format!("status of node {}", n.id))?;
        out.push((n.id, s.commit_index));
    }
    Ok(out)
}

/// `Verify` and `VerifyBatch` over TLS (a `client` certificate) at `addr`.
async fn verify_grpc(t: &Transport, addr: &str, token: &str) -> Result<(i32, i32)> {
    let ch = t.channel_lazy(addr, Role::Edge, |e| e.timeout(Duration::from_secs(5)))?;
    let mut c = VerifierServiceClient::new(ch);
    let one = pb::VerifyRequest {
        token: token.into(),
        ..Default::default()
    };
    let single = c.verify(one.clone()).await?.into_inner();
    let batch = c
        .verify_batch(pb::VerifyBatchRequest { items: vec![one] })
        .await?
        .into_inner();
    let b = batch
        .results
        .first()
        .map(|r| r.outcome)
        .ok_or_else(|| anyhow!("empty batch answer"))?;
    Ok((single.outcome, b))
}

/// The sample count of a metric line `name{labels} value` (or `name value`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_leak_report_kills_the_token_at_every_edge_and_a_forged_one_changes_nothing(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    veto_tests::veto_cli(&["certs", "init", "--dir", &d, "--edges", "2"])?;
    // The scanner's key pair: GitHub's in production, ours here.
    let github = SigningKey::from_slice(&[0x42; 32])?;
    let stranger = SigningKey::from_slice(&[0x24; 32])?;
    let pem_path = dir.path().join("github-ss.pem");
    std::fs::write(
        &pem_path,
        github.verifying_key().to_public_key_pem(LineEnding::LF)?,
    )?;
    let cluster = Cluster::start(ClusterOptions {
        tls_dir: Some(dir.path().to_path_buf()),
        extra_config: format!(
            "token_prefix = \"{PREFIX}\"\n[leak_reports]\ngithub_keys = {{ \"{KEY_ID}\" = \"{}\" }}\n",
            pem_path.display()
        ),
        ..Default::default()
    })
    .await?;
    veto_tests::issue(&cluster.nodes[0], "user:warmup", 60).await?;
    let edges =
        veto_tests::start_tls_edges(&cluster, dir.path(), &["edge-1", "edge-2"], BOUND_MS).await?;
    let client = transport(dir.path(), "client")?;
    let ca = std::fs::read_to_string(dir.path().join("ca.pem"))?;

    // Two live tokens, both in the scanner form.
    let mut ops = cluster.nodes[0].tokens()?;
    let mut live = Vec::new();
    for sub in ["svc:leaky", "svc:bystander"] {
        live.push(
            ops.issue(pb::IssueRequest {
                sub: sub.into(),
                scopes: vec!["read".into()],
                ttl_seconds: 600,
                ..Default::default()
            })
            .await?
            .into_inner(),
        );
    }
    let (leaked, bystander) = (&live[0], &live[1]);
    let jti = |t: &pb::IssueResponse| t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
    let rev = live.iter().map(|t| t.revision).max().unwrap_or(0);
    for t in &live {
        ensure!(
            t.token.starts_with(&format!("{PREFIX}_eyJ")),
            "not in the scanner form"
        );
        let jws = veto_core::scan::strip(&t.token).map_err(|e| anyhow!("{e}"))?;
        ensure!(jws.starts_with("eyJ") && jws.len() + PREFIX.len() + 8 == t.token.len());
        for e in &edges {
            ensure!(e.handle.wait_revision(rev, Duration::from_secs(5)).await);
            let v = e.handle.verify(&t.token, &Default::default());
            ensure!(v.outcome == veto_feed::Outcome::Valid, "{:?}", v.outcome);
            let addr = e.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
            let (one, batch) = verify_grpc(&client, &addr, &t.token).await?;
            ensure!((one, batch) == (pb::Outcome::Valid as i32, pb::Outcome::Valid as i32));
            // and in its plain form too
            let (one, _) = verify_grpc(&client, &addr, jws).await?;
            ensure!(one == pb::Outcome::Valid as i32);
        }
    }
    // One character of the bystander's JWS changed: the checksum refuses
    // it as malformed at the edge, before any signature check.
    let mut broken = bystander.token.clone().into_bytes();
    let i = PREFIX.len() + 20;
    broken[i] = if broken[i] == b'A' { b'B' } else { b'A' };
    let broken = String::from_utf8(broken)?;
    for e in &edges {
        let v = e.handle.verify(&broken, &Default::default());
        ensure!(
            v.outcome == veto_feed::Outcome::Malformed,
            "{:?}",
            v.outcome
        );
        ensure!(v.reason.contains("checksum"), "{}", v.reason);
    }

    // The report, to a follower (which forwards the revoke to the leader).
    let follower = cluster.follower().await?;
    let not_ours = "NMIfyYncKcRALEXAMPLE9f3Kq0";
    let report = serde_json::json!([
        {"token": leaked.token, "type": "veto_api_token", "url": LEAK_URL, "source": "commit"},
        {"token": not_ours, "type": "veto_api_token", "url": LEAK_URL, "source": "commit"},
        {"token": broken, "type": "veto_api_token", "url": LEAK_URL, "source": "content"},
    ])
    .to_string();
    let sent = Instant::now();
    let (code, body) = https_post(
        &follower.http_addr,
        "/v1/leaks/github",
        &ca,
        &[
            ("Github-Public-Key-Identifier", KEY_ID),
            ("Github-Public-Key-Signature", &sign(&github, &report)),
        ],
        &report,
    )
    .await?;
    let answered = sent.elapsed();
    ensure!(code == 200, "{code}: {body}");
    ensure!(
        !body.contains(&leaked.token) && !body.contains(&bystander.token),
        "a token echoed"
    );
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    let items = answer.as_array().context("not an array")?;
    ensure!(items.len() == 3, "{body}");
    let a = &items[0];
    ensure!(a["token_hash"] == sha256_hex(&leaked.token).as_str(), "{a}");
    ensure!(a["token_type"] == "veto_api_token", "{a}");
    ensure!(
        a["label"] == "true_positive" && a["action"] == "revoked",
        "{a}"
    );
    ensure!(a["jti"] == jti(leaked).as_str(), "{a}");
    let revision = a["revision"].as_u64().context("no revision")?;
    let dead_ms = a["time_to_dead_ms"]
        .as_f64()
        .context("not confirmed at every edge")?;
    for b in &items[1..] {
        ensure!(b["label"] == "false_positive", "{b}");
        ensure!(
            b["action"] == "not_a_veto_token" && b["jti"].is_null(),
            "{b}"
        );
    }
    ensure!(items[1]["token_hash"] == sha256_hex(not_ours).as_str());
    ensure!(
        dead_ms <= BOUND_MS as f64,
        "time to dead {dead_ms} ms over the bound {BOUND_MS} ms"
    );

    // Refused at every edge: at once (the answer waited for their acks),
    // and certainly within the bound of the answer.
    let within = Instant::now() + Duration::from_millis(BOUND_MS);
    for e in &edges {
        let addr = e.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
        loop {
            let v = e.handle.verify(&leaked.token, &Default::default());
            let (one, batch) = verify_grpc(&client, &addr, &leaked.token).await?;
            let revoked = pb::Outcome::Revoked as i32;
            if v.outcome == veto_feed::Outcome::Revoked && one == revoked && batch == revoked {
                break;
            }
            ensure!(
                Instant::now() < within,
                "edge {} still accepts the leaked token: {:?}",
                e.handle.options().edge_id,
                v.outcome
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(e.handle.revision() >= revision);
        // The bystander is untouched.
        let v = e.handle.verify(&bystander.token, &Default::default());
        ensure!(v.outcome == veto_feed::Outcome::Valid, "{:?}", v.outcome);
    }
    eprintln!(
        "leak report: time to dead {dead_ms:.1} ms at {} edges (answer after {} ms)",
        edges.len(),
        answered.as_millis()
    );

    // The audit names the reporter and the leak's URL.
    let op = transport(dir.path(), "operator")?;
    let mut admin = AdminServiceClient::new(op.channel_lazy(
        &cluster.nodes[0].grpc_addr,
        Role::Server,
        |e| e,
    )?);
    let audit = admin
        .audit(pb::AuditRequest {
            actor: format!("leak-report:{KEY_ID}"),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(audit.events.len() == 1, "{:?}", audit.events);
    let ev = &audit.events[0];
    // by presented token: the target reads "<jti> (presented)"
    ensure!(
        ev.action == "revoke_token" && ev.target.starts_with(&jti(leaked)),
        "{ev:?}"
    );
    ensure!(
        ev.subject == "svc:leaky" && ev.revision == revision,
        "{ev:?}"
    );
    ensure!(
        ev.reason.contains(LEAK_URL) && ev.reason.contains("source=commit"),
        "{}",
        ev.reason
    );

    // The same report again (GitHub retries): already revoked, nothing new.
    let (code, body) = https_post(
        &follower.http_addr,
        "/v1/leaks/github",
        &ca,
        &[
            ("Github-Public-Key-Identifier", KEY_ID),
            ("Github-Public-Key-Signature", &sign(&github, &report)),
        ],
        &report,
    )
    .await?;
    ensure!(code == 200, "{code}: {body}");
    let again: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(again[0]["action"] == "already_revoked", "{body}");
    ensure!(again[0]["revision"] == revision, "{body}");
    ensure!(again[0]["label"] == "true_positive", "{body}");

    // /metrics on the node that took the report: the time-to-dead sample.
    let (code, text) =
        veto_tests::https_get(&follower.http_addr, "/metrics", &follower.client, true).await?;
    ensure!(code == 200, "{code}");
    let count = metric(&text, "veto_leak_time_to_dead_seconds_count").unwrap_or(0.0);
    ensure!(count >= 1.0, "no time-to-dead sample");
    let sum = metric(&text, "veto_leak_time_to_dead_seconds_sum").unwrap_or(-1.0);
    ensure!(
        (sum * 1e3 - dead_ms).abs() < 1.0,
        "sum {sum} s vs {dead_ms} ms"
    );
    for (series, want) in [
        ("veto_leak_tokens_total{outcome=\"revoked\"}", 1.0),
        ("veto_leak_tokens_total{outcome=\"already_revoked\"}", 1.0),
        ("veto_leak_tokens_total{outcome=\"not_a_veto_token\"}", 4.0),
        ("veto_leak_reports_total{outcome=\"accepted\"}", 2.0),
    ] {
        ensure!(metric(&text, series) == Some(want), "{series} != {want}");
    }

    // Forged reports: each 401, nothing revoked, no log entry anywhere.
    let before = commit_indexes(&cluster).await?;
    let forged = serde_json::json!([
        {"token": bystander.token, "type": "veto_api_token", "url": LEAK_URL, "source": "commit"},
    ])
    .to_string();
    let good_sig = sign(&github, &forged);
    let other_sig = sign(&stranger, &forged);
    let tampered = forged.replace("commit", "content");
    let cases = [
        (
            "signed by another key",
            vec![
                ("Github-Public-Key-Identifier", KEY_ID),
                ("Github-Public-Key-Signature", other_sig.as_str()),
            ],
            &forged,
        ),
        (
            "unknown key id",
            vec![
                ("Github-Public-Key-Identifier", "deadbeef"),
                ("Github-Public-Key-Signature", good_sig.as_str()),
            ],
            &forged,
        ),
        (
            "body changed after signing",
            vec![
                ("Github-Public-Key-Identifier", KEY_ID),
                ("Github-Public-Key-Signature", good_sig.as_str()),
            ],
            &tampered,
        ),
        (
            "no signature",
            vec![("Github-Public-Key-Identifier", KEY_ID)],
            &forged,
        ),
        (
            "signature not base64",
            vec![
                ("Github-Public-Key-Identifier", KEY_ID),
                ("Github-Public-Key-Signature", "not base64!"),
            ],
            &forged,
        ),
    ];
    for (what, headers, body) in &cases {
        for n in &cluster.nodes {
            let (code, answer) =
                https_post(&n.http_addr, "/v1/leaks/github", &ca, headers, body).await?;
            ensure!(code == 401, "{what} at node {}: {code} {answer}", n.id);
        }
    }
    // Signed but not JSON: 400, also changing nothing.
    let junk = "[{\"token\": ";
    let (code, answer) = https_post(
        &follower.http_addr,
        "/v1/leaks/github",
        &ca,
        &[
            ("Github-Public-Key-Identifier", KEY_ID),
            ("Github-Public-Key-Signature", &sign(&github, junk)),
        ],
        junk,
    )
    .await?;
    ensure!(code == 400, "malformed JSON: {code} {answer}");
    // Nothing was proposed: every node's commit index is where it was
    // (and stays there a moment later), and the bystander is valid at
    // every edge, over gRPC too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = commit_indexes(&cluster).await?;
    ensure!(before == after, "log moved: {before:?} -> {after:?}");
    for e in &edges {
        let v = e.handle.verify(&bystander.token, &Default::default());
        ensure!(v.outcome == veto_feed::Outcome::Valid, "{:?}", v.outcome);
        let addr = e.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
        let (one, batch) = verify_grpc(&client, &addr, &bystander.token).await?;
        ensure!((one, batch) == (pb::Outcome::Valid as i32, pb::Outcome::Valid as i32));
    }
    let info = ops
        .get(pb::GetTokenRequest {
            jti: jti(bystander),
        })
        .await?
        .into_inner();
    ensure!(info.status == pb::TokenStatus::Active as i32, "{info:?}");
    let (_, text) =
        veto_tests::https_get(&follower.http_addr, "/metrics", &follower.client, true).await?;
    let refused = |o: &str| {
        metric(
            &text,
            &format!("veto_leak_reports_total{{outcome=\"{o}\"}}"),
        )
        .unwrap_or(0.0)
    };
    ensure!(refused("bad_signature") >= 3.0 && refused("unknown_key") >= 1.0);
    ensure!(refused("malformed") == 1.0);
    Ok(())
}
