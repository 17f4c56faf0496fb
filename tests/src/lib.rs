//! Shared helpers for veto's integration tests in `tests/tests/`.
//!
//! The tests start real `veto-server` processes through `veto-testkit`;
//! build the binaries first (`cargo build --bins`, which the README's test
//! command does).

pub mod otlp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use veto_core::token;
use veto_proto as pb;
use veto_testkit::{eventually, http_get, Cluster, Node};

pub use veto_chaos::workload::{History, IssueRec, RevokeRec, Target, VerifyRec};

/// Issues a token through `node`, waiting (bounded) for the first signing
/// key on a fresh cluster.
pub async fn issue(node: &Node, sub: &str, ttl_seconds: u64) -> Result<pb::IssueResponse> {
    let req = pb::IssueRequest {
        sub: sub.into(),
        scopes: vec!["read".into()],
        ttl_seconds,
        ..Default::default()
    };
    issue_req(node, req).await
}

/// Issues `req` through `node`, waiting (bounded) for the first signing
/// key on a fresh cluster.
pub async fn issue_req(node: &Node, req: pb::IssueRequest) -> Result<pb::IssueResponse> {
    let c = node.tokens()?;
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

/// Starts one in-process edge with `opts`, serving gRPC and HTTP on
/// ephemeral 127.0.0.1 ports, and waits (up to 20 s) until it is fresh.
pub async fn start_edge(opts: veto_edge::Options) -> Result<veto_edge::Edge> {
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let e = veto_edge::Edge::start(opts, local, local).await?;
    anyhow::ensure!(
        e.handle.wait_fresh(Duration::from_secs(20)).await,
        "edge {} never became fresh",
        e.handle.options().edge_id
    );
    Ok(e)
}

/// The TLS transport of the certificate `name` from a `veto certs init`
/// directory.
pub fn tls_transport(dir: &std::path::Path, name: &str) -> Result<veto_auth::Transport> {
    Ok(veto_auth::Transport::from_config(
        &veto_auth::TlsFiles::in_dir(dir, name),
        false,
    )?)
}

/// Starts in-process TLS edges named `names` (their certificates from
/// `dir`) subscribed to every node of `cluster`, each waited fresh.
pub async fn start_tls_edges(
    cluster: &Cluster,
    dir: &std::path::Path,
    names: &[&str],
    bound_ms: u64,
) -> Result<Vec<veto_edge::Edge>> {
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let mut edges = Vec::new();
    for name in names {
        edges.push(
            start_edge(veto_edge::Options {
                edge_id: (*name).into(),
                servers: servers.clone(),
                bound_ms,
                probe_interval_ms: 100,
                transport: tls_transport(dir, name)?,
                ..Default::default()
            })
            .await?,
        );
    }
    Ok(edges)
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
    verify_addr(&addr, token, min_revision).await
}

/// Verifies `token` at the edge listening on `addr` (5 s deadline).
pub async fn verify_addr(
    addr: &str,
    token: &str,
    min_revision: u64,
) -> Result<pb::VerifyResponse, tonic::Status> {
    let ch = veto_testkit::channel(addr).map_err(|e| tonic::Status::internal(e.to_string()))?;
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
/// `start`-th, trying each up to `rounds` times, 3 s per call), recorded for
/// the history checker: acknowledged or not, with its invocation and its
/// acknowledgement (or last failure).
pub async fn revoke_via_any(addrs: &[String], jti: &str, start: usize, rounds: usize) -> RevokeRec {
    let mut rec = RevokeRec {
        start: Instant::now(),
        end: Instant::now(),
        target: Target::Jti(jti.to_string()),
        acked: false,
        propagation_ms: None,
        tries: 0,
        waited: false,
        edges_behind: 0,
        refresh: false,
    };
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
        rec.tries += 1;
        let answer = c.revoke(req).await;
        rec.end = Instant::now();
        if answer.is_ok() {
            rec.acked = true;
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rec
}

/// An acknowledged issue as the history checker records it; `start` is
/// when the call was sent, the acknowledgement is now.
pub fn issue_rec(r: &pb::IssueResponse, start: Instant) -> IssueRec {
    let rec = r.record.clone().unwrap_or_default();
    IssueRec {
        start,
        end: Instant::now(),
        jti: rec.jti,
        token: r.token.clone(),
        sub: rec.sub,
        family: rec.family,
        kid: rec.kid,
        nbf: rec.nbf.max(rec.iat),
        exp: rec.exp,
    }
}

/// Checks a recorded history with the chaos harness's checker (the same
/// rules: no acceptance at or after ack + B, no fresh edge refusing a
/// token no revoke attempt covers, no edge error but a network failure).
pub fn check_history(
    issues: &[IssueRec],
    revokes: &[RevokeRec],
    verifies: &[VerifyRec],
    bound: Duration,
) -> Vec<veto_chaos::checker::Violation> {
    let h = History {
        issues: issues.to_vec(),
        revokes: revokes.to_vec(),
        verifies: verifies.to_vec(),
        ..History::default()
    };
    veto_chaos::checker::check_history(&h, bound)
}

/// Verifies continuously at every edge (in-process, `pause` between calls,
/// the k-th call on token `(k * stride) % toks.len()`) until `stop` is set;
/// each task returns its edge's verifies as the history checker records them.
pub fn spawn_verifiers(
    edges: &[veto_edge::Edge],
    toks: &[IssueRec],
    stride: usize,
    pause: Duration,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<VerifyRec>>> {
    edges
        .iter()
        .enumerate()
        .map(|(edge, e)| {
            let (h, stop, toks) = (e.handle.clone(), stop.clone(), toks.to_vec());
            tokio::spawn(async move {
                let mut i = 0usize;
                let mut local = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = &toks[(i * stride) % toks.len()];
                    let start = Instant::now();
                    let v = h.verify(&t.token, &Default::default());
                    local.push(VerifyRec {
                        edge,
                        jti: t.jti.clone(),
                        start,
                        end: Instant::now(),
                        outcome: Some(veto_edge::service::outcome(v.outcome)),
                        error: None,
                    });
                    i += 1;
                    tokio::time::sleep(pause).await;
                }
                local
            })
        })
        .collect()
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
