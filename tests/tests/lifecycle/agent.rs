//! `veto agent` delivers and renews a workload's token without hands, on a
//! TLS cluster of 3 with one edge. First `veto agent --once` with an
//! operator certificate issues an 8-second token into a file (the Issue
//! path). Then a long-running agent with only a `client` certificate starts
//! from that token (`--bootstrap-token-file`, renewed by presenting it) and
//! keeps its own file renewed at half the lifetime while the leader is
//! killed 300 ms before a renewal is due, so that renewal runs into the
//! election. A watcher reads the file every 100 ms and verifies it at the
//! edge over gRPC: every read must verify valid (zero failures), and it must
//! see at least four distinct successive jtis (the bootstrap's successor and
//! three renewals, two of them after the kill). `/healthz` answers 200 for
//! the file's jti, `/metrics` counts exactly the renewals seen, the file is
//! mode 0600 with nothing left beside it, and the agent's debug log holds
//! jtis but no token string.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use veto_auth::{TlsFiles, Transport};
use veto_proto as pb;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::{bin_named, eventually, free_addr, http_get};
use veto_tests::tls_cluster;

/// What the watcher saw.
#[derive(Default)]
struct Seen {
    /// Distinct jtis in the order they appeared in the file.
    jtis: Vec<String>,
    /// Every token string read, for the log search.
    tokens: BTreeSet<String>,
    /// Reads that verified valid.
    verified: u64,
    /// Reads that did not (after the first token appeared).
    failures: Vec<String>,
}

fn tls_args(certs: &Path, name: &str) -> Vec<String> {
    let f = TlsFiles::in_dir(certs, name);
    let p = |p: Option<std::path::PathBuf>| p.unwrap_or_default().display().to_string();
    vec![
        "--tls-ca".into(),
        p(f.ca),
        "--tls-cert".into(),
        p(f.cert),
        "--tls-key".into(),
        p(f.key),
    ]
}

/// `veto` with `args`, without the caller's VETO_* environment.
fn veto(args: &[String]) -> Result<tokio::process::Command> {
    let mut c = tokio::process::Command::new(bin_named("veto", "VETO_CLI_BIN")?);
    for k in [
        "VETO_ADDR",
        "VETO_INSECURE",
        "VETO_TLS_CA",
        "VETO_TLS_CERT",
        "VETO_TLS_KEY",
    ] {
        c.env_remove(k);
    }
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    Ok(c)
}

/// Verifies `token` at the edge as a verify client (3 s deadline).
async fn verify(
    c: &mut VerifierServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Result<pb::VerifyResponse, String> {
    let mut req = tonic::Request::new(pb::VerifyRequest {
        token: token.into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    c.verify(req)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// A Prometheus sample's value (no labels) from `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_a_valid_token_in_its_file_through_renewals_and_a_leader_kill() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let mut cluster = tls_cluster(&certs).await?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    // A bound well above a leader election: the edge stays fresh while it
    // moves its feed off the killed node.
    let edge = veto_tests::start_edge(veto_edge::Options {
        edge_id: "edge-1".into(),
        servers: servers.clone(),
        bound_ms: 10_000,
        probe_interval_ms: 100,
        transport: Transport::from_config(&TlsFiles::in_dir(&certs, "edge-1"), false)?,
        ..Default::default()
    })
    .await?;
    let edge_addr = edge.grpc_addr.context("edge serves no gRPC")?.to_string();
    let client = Transport::from_config(&TlsFiles::in_dir(&certs, "client"), false)?;
    let ch = client.channel_lazy(&edge_addr, veto_auth::Role::Edge, |e| e)?;
    let mut verifier = VerifierServiceClient::new(ch);

    // 1. CI style: --once with an operator certificate issues a token.
    let boot = dir.path().join("boot.jwt");
    let mut args = tls_args(&certs, "operator");
    args.extend(
        [
            "--timeout",
            "3",
            "agent",
            "--once",
            "--out",
            &boot.display().to_string(),
            "--server",
            &servers.join(","),
            "--edge",
            &edge_addr,
            "--subject",
            "svc:agent-test",
            "--scope",
            "deploy",
            "--ttl",
            "8",
            "--label",
            "app=agent-test",
        ]
        .map(String::from),
    );
    let once = tokio::time::timeout(Duration::from_secs(60), veto(&args)?.output()).await??;
    ensure!(
        once.status.success(),
        "veto agent --once: {}",
        String::from_utf8_lossy(&once.stderr)
    );
    let boot_token = std::fs::read_to_string(&boot)?.trim().to_owned();
    let v = verify(&mut verifier, &boot_token)
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(v.valid, "the issued token: {v:?}");
    ensure!(v.sub == "svc:agent-test" && v.scopes == ["deploy"], "{v:?}");
    let once_log = String::from_utf8_lossy(&once.stderr).into_owned();

    // 2. A sidecar with a client certificate, from the bootstrap token.
    let run = dir.path().join("run");
    std::fs::create_dir(&run)?;
    let out = run.join("token");
    let listen = free_addr()?;
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let mut args = tls_args(&certs, "client");
    args.extend(
        [
            "--timeout",
            "3",
            "agent",
            "--out",
            &out.display().to_string(),
            "--server",
            &servers.join(","),
            "--edge",
            &edge_addr,
            "--bootstrap-token-file",
            &boot.display().to_string(),
            "--refresh-at",
            "0.5",
            "--grace",
            "10",
            "--listen",
            &listen,
            "--backoff-min-ms",
            "100",
            "--backoff-max-ms",
            "1000",
        ]
        .map(String::from),
    );
    let mut agent = veto(&args)?
        .env("VETO_LOG", "debug")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;

    // The watcher: every 100 ms, read the file and verify it at the edge.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, out, mut verifier) =
            (seen.clone(), stop.clone(), out.clone(), verifier.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let read = std::fs::read_to_string(&out);
                let started = seen.lock().map(|s| !s.jtis.is_empty()).unwrap_or(true);
                let outcome = match read {
                    Err(e) if !started && e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => Some(Err(format!("read: {e}"))),
                    Ok(t) if t.trim().is_empty() => Some(Err("empty file".to_owned())),
                    Ok(t) => {
                        let t = t.trim().to_owned();
                        let v = verify(&mut verifier, &t).await;
                        Some(v.map(|v| (t, v)))
                    }
                };
                if let (Some(o), Ok(mut s)) = (outcome, seen.lock()) {
                    match o {
                        Ok((t, v)) if v.valid => {
                            s.verified += 1;
                            if s.jtis.last() != Some(&v.jti) {
                                s.jtis.push(v.jti.clone());
                            }
                            s.tokens.insert(t);
                        }
                        Ok((t, v)) => {
                            s.failures.push(format!(
                                "jti {} outcome {} ({})",
                                v.jti, v.outcome, v.reason
                            ));
                            s.tokens.insert(t);
                        }
                        Err(e) => s.failures.push(e),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let jtis = |n: usize| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                let s = seen.lock().ok()?;
                (s.jtis.len() >= n).then(|| s.jtis.clone())
            }
        }
    };

    let first = eventually(
        "the agent's first token",
        Duration::from_secs(30),
        Duration::from_millis(50),
        jtis(1),
    )
    .await?;
    let (code, body) = http_get(&listen, "/healthz").await?;
    ensure!(code == 200, "/healthz {code}: {body}");
    ensure!(body.contains("\"ok\""), "{body}");
    eventually(
        "the first renewal",
        Duration::from_secs(20),
        Duration::from_millis(50),
        jtis(2),
    )
    .await?;

    // Kill the leader 300 ms before the next renewal is due, so that the
    // renewal runs into the election; the agent carries on elsewhere.
    let (code, body) = http_get(&listen, "/healthz").await?;
    ensure!(code == 200, "/healthz {code}: {body}");
    let due_s = serde_json::from_str::<serde_json::Value>(&body)?["refresh_at"]
        .as_i64()
        .context("no refresh_at")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let early = (due_s * 1000 - 300 - now_ms).clamp(0, 8_000);
    tokio::time::sleep(Duration::from_millis(early as u64)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let killed_at = Instant::now();
    cluster.kill(leader).await?;
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let election = killed_at.elapsed();
    let all = eventually(
        "two renewals after the leader kill",
        Duration::from_secs(40),
        Duration::from_millis(50),
        jtis(4),
    )
    .await?;

    // The renewal counter matches what the watcher saw (each token in the
    // file after the bootstrap came from a refresh).
    let (mut renewals, mut seen_n, mut failed) = (0.0, 0, 0.0);
    for _ in 0..5 {
        let before = seen.lock().map(|s| s.jtis.len()).unwrap_or(0);
        let (code, text) = http_get(&listen, "/metrics").await?;
        ensure!(code == 200, "/metrics {code}");
        renewals = sample(&text, "veto_agent_renewals_total").context("no renewals metric")?;
        let after = seen.lock().map(|s| s.jtis.len()).unwrap_or(0);
        let expiry = sample(&text, "veto_agent_token_expiry_timestamp_seconds")
            .context("no expiry metric")?;
        ensure!(expiry > 0.0, "expiry gauge {expiry}");
        ensure!(
            sample(&text, "veto_agent_next_refresh_seconds").is_some(),
            "no next-refresh metric"
        );
        ensure!(
            text.contains("veto_agent_failures_total{reason=\"edge_rejected\"}"),
            "{text}"
        );
        failed = text
            .lines()
            .filter(|l| l.starts_with("veto_agent_failures_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        seen_n = after;
        if before == after {
            break;
        }
    }
    ensure!(
        renewals as usize == seen_n,
        "renewals_total {renewals} but the watcher saw {seen_n} tokens"
    );
    let (code, body) = http_get(&listen, "/healthz").await?;
    ensure!(code == 200, "/healthz {code}: {body}");
    let current = seen
        .lock()
        .ok()
        .and_then(|s| s.jtis.last().cloned())
        .unwrap_or_default();
    ensure!(body.contains(&current), "/healthz names {current}: {body}");

    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    let _ = agent.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await;

    let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    eprintln!(
        "agent: {} tokens ({} renewals counted, {} failed attempts), {} verifies, {} failures, leader {leader} -> {new_leader} in {election:?}",
        s.jtis.len(),
        renewals,
        failed,
        s.verified,
        s.failures.len()
    );
    let agent_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !s.failures.is_empty() || std::env::var_os("VETO_AGENT_TEST_LOG").is_some() {
        eprintln!("--- agent log ---\n{agent_log}");
    }
    ensure!(s.failures.is_empty(), "watcher failures: {:?}", s.failures);
    ensure!(s.jtis.len() >= 4 && all.len() >= 4, "{:?}", s.jtis);
    ensure!(first[0] == s.jtis[0]);
    let distinct: BTreeSet<_> = s.jtis.iter().collect();
    ensure!(
        distinct.len() == s.jtis.len(),
        "a jti came back: {:?}",
        s.jtis
    );
    ensure!(s.verified >= 50, "only {} verifies", s.verified);

    // The file: mode 0600, nothing left beside it.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "mode {mode:o}");
    let names: Vec<String> = std::fs::read_dir(&run)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ensure!(names == ["token"], "{names:?}");

    // The logs name jtis, never a token.
    let text = agent_log + &once_log;
    for j in &s.jtis {
        ensure!(text.contains(j.as_str()), "log does not name {j}");
    }
    let mut tokens = s.tokens.clone();
    tokens.insert(boot_token);
    for t in &tokens {
        let sig = t.rsplit('.').next().unwrap_or_default();
        ensure!(
            !text.contains(t.as_str()) && (sig.len() < 40 || !text.contains(sig)),
            "a token string is in the agent's log"
        );
    }
    Ok(())
}

/// Runs `veto agent --once` with `certs`' `cert` and `args`; its output.
async fn agent_once(certs: &Path, cert: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut all = tls_args(certs, cert);
    all.extend(["--timeout", "3", "agent", "--once"].map(String::from));
    all.extend(args.iter().map(|a| a.to_string()));
    Ok(tokio::time::timeout(Duration::from_secs(60), veto(&all)?.output()).await??)
}

/// A renewal whose successor no edge can check leaves the old token in the
/// file and the successor in the side file (0600); the next run checks and
/// promotes that successor instead of presenting the old token again, which
/// would be a refresh reuse and revoke the family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_edge_check_keeps_the_old_file_and_a_restart_resumes_without_a_second_refresh(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let cluster = tls_cluster(&certs).await?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let edge = veto_tests::start_edge(veto_edge::Options {
        edge_id: "edge-1".into(),
        servers: servers.clone(),
        probe_interval_ms: 100,
        transport: Transport::from_config(&TlsFiles::in_dir(&certs, "edge-1"), false)?,
        ..Default::default()
    })
    .await?;
    let edge_addr = edge.grpc_addr.context("edge serves no gRPC")?.to_string();
    let client = Transport::from_config(&TlsFiles::in_dir(&certs, "client"), false)?;
    let mut verifier = VerifierServiceClient::new(client.channel_lazy(
        &edge_addr,
        veto_auth::Role::Edge,
        |e| e,
    )?);
    let out = dir.path().join("token");
    let side = dir.path().join(".token.next");
    let (out_s, servers_s) = (out.display().to_string(), servers.join(","));
    let mut logs = String::new();

    let o = agent_once(
        &certs,
        "operator",
        &[
            "--out",
            &out_s,
            "--server",
            &servers_s,
            "--edge",
            &edge_addr,
            "--subject",
            "svc:ci",
            "--ttl",
            "6",
        ],
    )
    .await?;
    logs += &String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.success(), "issue: {logs}");
    let t1 = std::fs::read_to_string(&out)?.trim().to_owned();
    let v1 = verify(&mut verifier, &t1)
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(v1.valid, "{v1:?}");

    // Due at a tenth of the lifetime; the only edge named is not there.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let nowhere = free_addr()?;
    let renew = |edge: &str| {
        let edge = edge.to_owned();
        let (certs, out_s, servers_s) = (certs.clone(), out_s.clone(), servers_s.clone());
        async move {
            agent_once(
                &certs,
                "client",
                &[
                    "--out",
                    &out_s,
                    "--server",
                    &servers_s,
                    "--edge",
                    &edge,
                    "--refresh-at",
                    "0.1",
                    "--attempts",
                    "2",
                    "--backoff-min-ms",
                    "50",
                    "--backoff-max-ms",
                    "100",
                ],
            )
            .await
        }
    };
    let o = renew(&nowhere).await?;
    logs += &String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "no edge could check, yet: {logs}");
    ensure!(
        std::fs::read_to_string(&out)?.trim() == t1,
        "the file changed"
    );
    ensure!(
        verify(&mut verifier, &t1)
            .await
            .map_err(anyhow::Error::msg)?
            .valid,
        "the old token works during its grace"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&side)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "side file mode {mode:o}");
    let t2 = std::fs::read_to_string(&side)?.trim().to_owned();
    ensure!(t2 != t1);

    // With the edge back, the next run promotes the successor it left.
    let o = renew(&edge_addr).await?;
    logs += &String::from_utf8_lossy(&o.stderr);
    ensure!(o.status.success(), "resume: {logs}");
    ensure!(
        std::fs::read_to_string(&out)?.trim() == t2,
        "not the side file's token"
    );
    ensure!(!side.exists(), "the side file is left");
    let v2 = verify(&mut verifier, &t2)
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        v2.valid,
        "the successor (no reuse revoked its family): {v2:?}"
    );
    ensure!(v2.family == v1.family && v2.jti != v1.jti, "{v1:?} {v2:?}");
    ensure!(logs.contains(&v2.jti), "the log names the successor");
    for t in [&t1, &t2] {
        ensure!(!logs.contains(t.as_str()), "a token string is in the log");
    }
    eprintln!(
        "agent resume: kept {} while no edge answered, then promoted {}",
        v1.jti, v2.jti
    );
    Ok(())
}
