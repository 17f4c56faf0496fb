//! The standard gRPC services, seen by a peer that is not veto's own code:
//! grpcio's health and reflection clients (PyPI, pinned in
//! tests/py/requirements-grpc.txt, run from a cached venv) against real
//! servers and edges. Every server and fresh edge is SERVING, overall and
//! per service (an edge's ext_authz included); an edge whose only server
//! died turns NOT_SERVING, ext_authz too, once stale, as its `/healthz`; reflection lists exactly the veto services of
//! each port, with methods that resolve; under TLS a probe without a client
//! certificate is answered and reflection without one is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use veto_testkit::{http_get, Cluster, ClusterOptions};
use veto_tests::{python_env, tls_cluster};

const SERVER_SERVICES: [&str; 4] = [
    "veto.v1.AdminService",
    "veto.v1.FeedService",
    "veto.v1.RaftService",
    "veto.v1.TokenService",
];
const EDGE_SERVICES: [&str; 1] = ["veto.v1.VerifierService"];
/// What an edge's health answers for: its own service and Envoy's
/// ext_authz, which reflection cannot describe (no published descriptors).
const EDGE_HEALTH: [&str; 2] = [
    "veto.v1.VerifierService",
    "envoy.service.auth.v3.Authorization",
];

fn probe_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/grpc_probe.py")
}

/// Runs the Python probe on `targets` (`addr=svc,svc`); one JSON object per
/// target.
fn probe(args: &[String]) -> anyhow::Result<Vec<Value>> {
    let python = python_env("grpc", "tests/py/requirements-grpc.txt")?;
    let out = std::process::Command::new(python)
        .arg(probe_script())
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "grpc_probe.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn target(addr: &str, services: &[&str]) -> String {
    format!("{addr}={}", services.join(","))
}

/// Every health answer of `r` is `want`, and so is the first Watch status.
fn assert_health(r: &Value, services: &[&str], want: &str) {
    assert_eq!(r["watch"], want, "{r}");
    for s in std::iter::once("").chain(services.iter().copied()) {
        assert_eq!(r["health"][s], want, "service {s:?}: {r}");
    }
}

/// Reflection lists exactly `services` of veto (besides the standard
/// ones), each with methods resolved from the reflected descriptors.
fn assert_reflection(r: &Value, services: &[&str], some_method: &str) {
    let listed: Vec<&str> = r["reflection"]["services"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let veto: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|s| s.starts_with("veto."))
        .collect();
    assert_eq!(veto, services, "{r}");
    assert!(listed.contains(&"grpc.health.v1.Health"), "{r}");
    let methods = &r["reflection"]["methods"];
    let found = services.iter().any(|s| {
        methods[*s]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == some_method))
    });
    assert!(found, "{some_method} not resolved: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_health_and_reflection_on_every_port() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    veto_tests::issue(&cluster.nodes[0], "user:warmup", 60).await?;
    let mut edges = veto_tests::start_edges(&cluster, 1, 1_000, 100).await?;
    // A second edge fed only by node 3, which is killed below.
    let only = cluster.nodes[2].grpc_addr.clone();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let lonely = veto_edge::Edge::start(
        veto_edge::Options {
            edge_id: "lonely".into(),
            servers: vec![only],
            bound_ms: 1_000,
            probe_interval_ms: 100,
            ..Default::default()
        },
        local,
        local,
    )
    .await?;
    anyhow::ensure!(
        lonely.handle.wait_fresh(Duration::from_secs(20)).await,
        "edge never fresh"
    );
    edges.push(lonely);
    let grpc = |e: &veto_edge::Edge| e.grpc_addr.map(|a| a.to_string()).unwrap_or_default();

    let mut targets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| target(&n.grpc_addr, &SERVER_SERVICES))
        .collect();
    targets.extend(edges.iter().map(|e| target(&grpc(e), &EDGE_HEALTH)));
    let all = probe(&targets)?;
    assert_eq!(all.len(), 5);
    for r in &all[..3] {
        assert_health(r, &SERVER_SERVICES, "SERVING");
        assert_reflection(r, &SERVER_SERVICES, "Issue");
    }
    for r in &all[3..] {
        assert_health(r, &EDGE_HEALTH, "SERVING");
        assert_reflection(r, &EDGE_SERVICES, "Verify");
    }

    // The lonely edge's server dies: once the edge can no longer prove it
    // is within the bound its health says so, as /healthz does.
    cluster.kill(3).await?;
    let lonely = &edges[1];
    let lonely_http = lonely.http_addr.map(|a| a.to_string()).unwrap_or_default();
    let started = Instant::now();
    let mut last = Value::Null;
    for _ in 0..40 {
        last = probe(&[
            "--no-reflection".into(),
            target(&grpc(lonely), &EDGE_HEALTH),
        ])?
        .remove(0);
        if last["health"][""] == "NOT_SERVING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_health(&last, &EDGE_HEALTH, "NOT_SERVING");
    assert!(started.elapsed() < Duration::from_secs(15));
    let (code, body) = http_get(&lonely_http, "/healthz").await?;
    assert_eq!(code, 503, "{body}");
    // The other edge and the surviving servers still serve.
    let rest = probe(&[
        "--no-reflection".into(),
        target(&grpc(&edges[0]), &EDGE_HEALTH),
        target(&cluster.nodes[0].grpc_addr, &SERVER_SERVICES),
        target(&cluster.nodes[1].grpc_addr, &SERVER_SERVICES),
    ])?;
    assert_health(&rest[0], &EDGE_HEALTH, "SERVING");
    for r in &rest[1..] {
        assert_health(r, &SERVER_SERVICES, "SERVING");
    }
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tls_probes_need_no_certificate_and_reflection_does() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = tls_cluster(dir.path()).await?;
    let ca = dir.path().join("ca.pem").display().to_string();
    let r = probe(&[
        "--ca".into(),
        ca,
        target(&cluster.nodes[0].grpc_addr, &SERVER_SERVICES),
    ])?
    .remove(0);
    assert_health(&r, &SERVER_SERVICES, "SERVING");
    assert_eq!(r["reflection"]["error"], "UNAUTHENTICATED", "{r}");
    Ok(())
}
