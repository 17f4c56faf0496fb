//! Shared helpers for veto's integration tests in `tests/tests/`.
//!
//! The tests start real `veto-server` processes through `veto-testkit`;
//! build the binaries first (`cargo build --bins`, which the README's test
//! command does).

pub mod otlp;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use veto_core::token;
use veto_proto as pb;
use veto_testkit::{eventually, http_get, Cluster, Node};

/// Issues a token through `node`, waiting (bounded) for the first signing
/// key on a fresh cluster.
pub async fn issue(node: &Node, sub: &str, ttl_seconds: u64) -> Result<pb::IssueResponse> {
    let c = node.tokens()?;
    let req = pb::IssueRequest {
        sub: sub.into(),
        scopes: vec!["read".into()],
        aud: None,
        ttl_seconds,
    };
    eventually(
        "an issued token",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.issue(req).await.ok().map(|r| r.into_inner()) }
        },
    )
    .await
}

/// Revokes each token (by jti) through `node`; returns the last revision.
pub async fn revoke_all(node: &Node, tokens: &[pb::IssueResponse]) -> Result<u64> {
    let mut c = node.tokens()?;
    let mut last = 0;
    for t in tokens {
        let jti = t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default();
        last = c
            .revoke(pb::RevokeRequest {
                jti,
                ..Default::default()
            })
            .await?
            .into_inner()
            .revision;
    }
    Ok(last)
}

/// The status of a token as the cluster reports it (linearizable Get).
pub async fn token_status(node: &Node, jti: &str) -> Result<pb::TokenStatus> {
    let r = node
        .tokens()?
        .get(pb::GetTokenRequest { jti: jti.into() })
        .await?
        .into_inner();
    Ok(pb::TokenStatus::try_from(r.status)?)
}

/// Verifies a token against the JWKS `node` publishes; `Ok(kid)` if it verifies.
pub async fn verify_with_jwks(node: &Node, token_str: &str, now: i64) -> Result<String, String> {
    let (code, body) = http_get(&node.http_addr, "/.well-known/jwks.json")
        .await
        .map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("jwks answered {code}"));
    }
    let jwks: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let parsed = token::parse(token_str, 4096).map_err(|e| e.to_string())?;
    let kid = parsed.kid.to_string();
    let key = jwks["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let x = key["x"].as_str().ok_or("jwk without x")?;
    let raw = URL_SAFE_NO_PAD.decode(x).map_err(|e| e.to_string())?;
    let arr: [u8; 32] = raw.as_slice().try_into().map_err(|_| "x is not 32 bytes")?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|e| e.to_string())?;
    parsed.verify_signature(&vk).map_err(|e| e.to_string())?;
    // A JWKS verifier checks the signature and the time window; it names
    // the token's own audience, having no route of its own to require.
    let req = token::Requirements {
        audience: parsed.claims.aud.as_deref(),
        scopes: &[],
    };
    token::check_claims(&parsed.claims, now, &req, token::Leeway::default())
        .map_err(|e| e.to_string())?;
    Ok(kid)
}

/// Waits until every running node applied the same revision with the same
/// state digest; returns (revision, digest).
pub async fn converged(cluster: &Cluster, at_least: u64) -> Result<(u64, String)> {
    eventually(
        "replicas to converge",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let mut seen: Option<(u64, String)> = None;
            for n in cluster.nodes.iter().filter(|n| n.is_running()) {
                let s = n.status_with_digest().await?;
                if s.applied_index < at_least {
                    return None;
                }
                let cur = (s.applied_index, s.state_digest);
                match &seen {
                    None => seen = Some(cur),
                    Some(prev) if *prev != cur => return None,
                    Some(_) => {}
                }
            }
            seen
        },
    )
    .await
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Starts `n` edges (in-process, each serving VerifierService on its own
/// 127.0.0.1 port) subscribed to every node of `cluster`.
pub async fn start_edges(
    cluster: &Cluster,
    n: usize,
    bound_ms: u64,
    probe_ms: u64,
) -> Result<Vec<veto_edge::Edge>> {
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let mut edges = Vec::new();
    for i in 0..n {
        let opts = veto_edge::Options {
            edge_id: format!("edge-{i}"),
            servers: servers.clone(),
            bound_ms,
            probe_interval_ms: probe_ms,
            ..Default::default()
        };
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        edges.push(veto_edge::Edge::start(opts, local, local).await?);
    }
    for e in &edges {
        if !e.handle.wait_fresh(Duration::from_secs(20)).await {
            anyhow::bail!("edge {} never became fresh", e.handle.options().edge_id);
        }
    }
    Ok(edges)
}

/// Verifies `token` at an edge over gRPC with a consistency token.
pub async fn verify_at(
    edge: &veto_edge::Edge,
    token: &str,
    min_revision: u64,
) -> Result<pb::VerifyResponse, tonic::Status> {
    let addr = edge.grpc_addr.map(|a| a.to_string()).unwrap_or_default();
    let ch = veto_testkit::channel(&addr).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut c = veto_proto::verifier_service_client::VerifierServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::VerifyRequest {
        token: token.into(),
        required_scopes: vec![],
        audience: None,
        min_revision,
    });
    req.set_timeout(Duration::from_secs(5));
    c.verify(req).await.map(|r| r.into_inner())
}

/// Revokes `jti` through whichever of `addrs` answers (starting at the
/// `start`-th, trying each up to `rounds` times, 3 s per call); returns the
/// time of the acknowledgement, or None if no node acknowledged it.
pub async fn revoke_via_any(
    addrs: &[String],
    jti: &str,
    start: usize,
    rounds: usize,
) -> Option<std::time::Instant> {
    for a in addrs.iter().cycle().skip(start).take(addrs.len() * rounds) {
        let Ok(ch) = veto_testkit::channel(a) else {
            continue;
        };
        let mut c = pb::token_service_client::TokenServiceClient::new(ch);
        let mut req = tonic::Request::new(pb::RevokeRequest {
            jti: jti.to_string(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(3));
        if c.revoke(req).await.is_ok() {
            return Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Verifies continuously at every edge (in-process, `pause` between calls,
/// the k-th call on token `(k * stride) % toks.len()`) until `stop` is set;
/// each task returns its history with every outcome.
pub fn spawn_verifiers(
    edges: &[veto_edge::Edge],
    toks: &[(String, String)],
    stride: usize,
    pause: Duration,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(VerifyOp, veto_feed::Outcome)>>> {
    edges
        .iter()
        .map(|e| {
            let (h, stop, toks) = (e.handle.clone(), stop.clone(), toks.to_vec());
            tokio::spawn(async move {
                let mut i = 0usize;
                let mut local = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (jti, token) = &toks[(i * stride) % toks.len()];
                    let start = std::time::Instant::now();
                    let v = h.verify(token, &Default::default());
                    local.push((
                        VerifyOp {
                            edge: h.options().edge_id.clone(),
                            jti: jti.clone(),
                            start,
                            end: std::time::Instant::now(),
                            accepted: v.outcome == veto_feed::Outcome::Valid,
                            revoked: v.outcome == veto_feed::Outcome::Revoked,
                        },
                        v.outcome,
                    ));
                    i += 1;
                    tokio::time::sleep(pause).await;
                }
                local
            })
        })
        .collect()
}

/// One verify in a recorded history.
#[derive(Debug, Clone)]
pub struct VerifyOp {
    /// Which edge answered.
    pub edge: String,
    /// Token id verified.
    pub jti: String,
    /// Invocation time (harness clock).
    pub start: std::time::Instant,
    /// Completion time.
    pub end: std::time::Instant,
    /// Whether the edge accepted the token.
    pub accepted: bool,
    /// Whether the edge refused it as revoked.
    pub revoked: bool,
}

/// A violation of the guarantee (docs/design.md, "The feed") found in a history.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// An edge accepted `jti` at or after (revoke ack + B).
    AcceptedAfterBound {
        /// The edge.
        edge: String,
        /// The token.
        jti: String,
        /// How long after the ack the verify started.
        after_ack: Duration,
    },
    /// An edge refused an unrevoked token as revoked.
    RefusedUnrevoked {
        /// The edge.
        edge: String,
        /// The token.
        jti: String,
    },
}

/// Checks a history: `acks` maps jti -> the time its revoke was acknowledged
/// to the caller; `attempted` holds every jti a revoke was sent for (acked or
/// not). A verify that *started* at or after ack + `bound` must not accept.
pub fn check_history(
    ops: &[VerifyOp],
    acks: &std::collections::HashMap<String, std::time::Instant>,
    attempted: &std::collections::HashSet<String>,
    bound: Duration,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for op in ops {
        if op.accepted {
            if let Some(t) = acks.get(&op.jti) {
                if op.start >= *t + bound {
                    out.push(Violation::AcceptedAfterBound {
                        edge: op.edge.clone(),
                        jti: op.jti.clone(),
                        after_ack: op.start - *t,
                    });
                }
            }
        } else if op.revoked && !attempted.contains(&op.jti) {
            out.push(Violation::RefusedUnrevoked {
                edge: op.edge.clone(),
                jti: op.jti.clone(),
            });
        }
    }
    out
}

/// GET `path` over HTTPS (HTTP/1.1), trusting `t`'s CA and presenting
/// its certificate when `present`; returns the status code and response.
pub async fn https_get(
    addr: &str,
    path: &str,
    t: &veto_auth::Transport,
    present: bool,
) -> anyhow::Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ca, c, k) = t.pem().ok_or_else(|| anyhow::anyhow!("not TLS"))?;
    let chain_key = present.then_some((c, k));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match chain_key {
        Some((c, k)) => b.with_client_auth_cert(
            CertificateDer::pem_slice_iter(c.as_bytes()).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(k.as_bytes())?,
        )?,
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let ip: std::net::SocketAddr = addr.parse()?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(ip.ip().into()), tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))?;
    Ok((status, text))
}

/// Runs the `veto` CLI binary; its stdout, or an error with its stderr.
pub fn veto_cli(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(veto_testkit::bin_named("veto", "VETO_CLI_BIN")?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "veto {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TLS cluster of 3 with certificates from `veto certs init` in `dir`
/// (for 4 servers, so one can join, and edges `edge-1`, `edge-2`).
pub async fn tls_cluster(dir: &std::path::Path) -> Result<Cluster> {
    let d = dir.display().to_string();
    veto_cli(&[
        "certs",
        "init",
        "--dir",
        &d,
        "--servers",
        "4",
        "--edges",
        "2",
    ])?;
    let cluster = Cluster::start(veto_testkit::ClusterOptions {
        tls_dir: Some(dir.to_path_buf()),
        ..Default::default()
    })
    .await?;
    // Waits for the bootstrap signing key, so issues below cannot race it.
    issue(&cluster.nodes[0], "user:warmup", 60).await?;
    Ok(cluster)
}

/// A Python interpreter with the pinned `requirements` (a path from the
/// repository root) installed, from `scripts/pyenv.sh` (a cached venv).
pub fn python_env(name: &str, requirements: &str) -> Result<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("scripts/pyenv.sh"))
        .args([name, requirements])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/pyenv.sh {name} {requirements}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::time::Instant;

    #[test]
    fn checker_flags_late_acceptance_and_false_refusal() {
        let t0 = Instant::now();
        let b = Duration::from_millis(100);
        let op = |jti: &str, start_ms: u64, accepted: bool, revoked: bool| VerifyOp {
            edge: "e".into(),
            jti: jti.into(),
            start: t0 + Duration::from_millis(start_ms),
            end: t0 + Duration::from_millis(start_ms + 1),
            accepted,
            revoked,
        };
        let acks = HashMap::from([("x".to_string(), t0)]);
        let attempted = HashSet::from(["x".to_string()]);
        let ok = [
            op("x", 50, true, false),
            op("x", 150, false, true),
            op("y", 10, true, false),
        ];
        assert!(check_history(&ok, &acks, &attempted, b).is_empty());
        let bad = [op("x", 100, true, false), op("y", 5, false, true)];
        let v = check_history(&bad, &acks, &attempted, b);
        assert_eq!(v.len(), 2, "{v:?}");
    }
}
