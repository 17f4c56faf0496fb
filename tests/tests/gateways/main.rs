//! The edge's gateway hooks against the real peers that call them:
//! Debian's nginx (`auth_request`) and Caddy (`forward_auth`) in front of an
//! upstream, an ext_authz client generated from Envoy's published protos
//! (the `envoy-types` crate), Authlib's OAuth 2.0 client for RFC 7662 and
//! RFC 7009, and every configuration in docs/integrations.md through the
//! best validator here.

mod caddy;
mod configs;
mod ext_authz;
mod nginx;
mod oauth;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use veto_edge::gateway::{Gateway, RouteRule};
use veto_proto as pb;
use veto_testkit::{eventually, Cluster, Node};

/// The propagation bound of the edges in these tests.
pub const BOUND: Duration = Duration::from_millis(1_000);

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fenced blocks of docs/integrations.md whose first line is
/// `# check: NAME`, as (NAME, block text with that line).
pub fn doc_checks() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root().join("docs/integrations.md"))?;
    let mut out = Vec::new();
    let mut block: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start().starts_with("```")) {
            (None, true) => block = Some(Vec::new()),
            (Some(b), true) => {
                if let Some(name) = b.first().and_then(|l| l.strip_prefix("# check: ")) {
                    out.push((name.trim().to_owned(), b.join("\n") + "\n"));
                }
                block = None;
            }
            (Some(b), false) => b.push(line),
            (None, false) => {}
        }
    }
    anyhow::ensure!(block.is_none(), "docs/integrations.md: unclosed code block");
    Ok(out)
}

/// The one documented block named `name`.
pub fn doc_check(name: &str) -> Result<String> {
    let mut found = doc_checks()?.into_iter().filter(|(n, _)| n == name);
    let (_, text) = found
        .next()
        .with_context(|| format!("no `# check: {name}` block in docs/integrations.md"))?;
    anyhow::ensure!(found.next().is_none(), "two `# check: {name}` blocks");
    Ok(text)
}

/// The gateway settings of the tests' edges: `/admin` needs `admin`.
pub fn gateway() -> Gateway {
    Gateway {
        strip_token_header: true,
        routes: vec![RouteRule {
            path_prefix: "/admin".into(),
            scopes: vec!["admin".into()],
            ..RouteRule::default()
        }],
        ..Gateway::default()
    }
}

/// An edge with [`gateway`] fed only by `node` (kill it to make the edge
/// stale), serving gRPC and HTTP on ephemeral loopback ports.
pub async fn gateway_edge(node: &Node, name: &str) -> Result<veto_edge::Edge> {
    veto_tests::start_edge(veto_edge::Options {
        edge_id: name.into(),
        servers: vec![node.grpc_addr.clone()],
        bound_ms: BOUND.as_millis() as u64,
        probe_interval_ms: 100,
        gateway: gateway(),
        ..Default::default()
    })
    .await
}

/// Issues a token with `scopes` (and `aud`) through `node`, waiting
/// (bounded) for the first signing key.
pub async fn issue(
    node: &Node,
    sub: &str,
    scopes: &[&str],
    aud: Option<&str>,
) -> Result<pb::IssueResponse> {
    let req = pb::IssueRequest {
        sub: sub.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        aud: aud.map(str::to_owned),
        ttl_seconds: 600,
        ..Default::default()
    };
    veto_tests::issue_req(node, req).await
}

/// The jti of an issued token.
pub fn jti(t: &pb::IssueResponse) -> String {
    t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default()
}

/// Revokes `jti` through `node` (no edge wait); returns the instant the
/// revoke was acknowledged.
pub async fn revoke(node: &Node, jti: &str) -> Result<Instant> {
    node.tokens()?
        .revoke(pb::RevokeRequest {
            jti: jti.into(),
            reason: "gateway test".into(),
            ..Default::default()
        })
        .await?;
    Ok(Instant::now())
}

/// Asks `ask` every 10 ms from a revoke's acknowledgement `ack` until
/// `ack + BOUND + 500 ms`; every answer to a question asked at or after
/// `ack + BOUND` must be a refusal (`accepted` false). Returns how many
/// questions were asked in that window.
pub async fn refused_from_ack_plus_bound<F, Fut>(ack: Instant, mut ask: F) -> Result<usize>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = ack + BOUND + Duration::from_millis(500);
    let mut after = 0;
    for _ in 0..1_000 {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let accepted = ask().await?;
        if sent >= ack + BOUND {
            after += 1;
            anyhow::ensure!(
                !accepted,
                "accepted {:?} after the revoke's ack (bound {BOUND:?})",
                sent - ack
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(after > 0, "nothing asked after ack + B");
    Ok(after)
}

/// Kills the only server of edge `e` and waits until the edge is stale.
pub async fn make_stale(cluster: &mut Cluster, id: u64, e: &veto_edge::Edge) -> Result<()> {
    cluster.kill(id).await?;
    eventually(
        "the edge to turn stale",
        BOUND * 10,
        Duration::from_millis(50),
        || async { (!e.handle.freshness().fresh).then_some(()) },
    )
    .await
}

/// A gateway process under test (nginx, Caddy) in a scratch directory:
/// killed when dropped, its log kept for failure messages.
pub struct GatewayProcess {
    /// Where it listens, `127.0.0.1:port`.
    pub addr: String,
    child: tokio::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Spawns `cmd` (already given its configuration in `dir`; its log goes
    /// to `log`) and waits until it answers HTTP on `addr`.
    pub async fn spawn(
        mut cmd: tokio::process::Command,
        addr: String,
        dir: tempfile::TempDir,
        log: PathBuf,
    ) -> Result<GatewayProcess> {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {cmd:?} (scripts/deps.sh test installs it)"))?;
        let g = GatewayProcess {
            addr,
            child,
            log,
            _dir: dir,
        };
        eventually(
            "the gateway to listen",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async {
                veto_testkit::http_request(&g.addr, "GET", "/", &[], "")
                    .await
                    .ok()
            },
        )
        .await
        .with_context(|| g.log())?;
        Ok(g)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// An HTTP upstream on 127.0.0.1 that answers every request 200 with the
/// request's headers as its body, one `name: value` a line (names in lower
/// case): what a gateway let through, and with which headers.
pub struct Upstream {
    /// `127.0.0.1:port`.
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts it.
    pub async fn start() -> Result<Upstream> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(echo_headers(s));
            }
        });
        Ok(Upstream { addr, task })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_headers(mut s: tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let body: String = head
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| format!("{}: {}\n", k.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The value of header `name` in an [`Upstream`] echo body.
pub fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Runs `cmd`, failing with its output unless it succeeds; returns stdout.
pub fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?} (scripts/deps.sh test installs it)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
