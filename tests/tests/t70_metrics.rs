//! Prometheus metrics after a known workload: the counters match it, the
//! Raft gauges are there, propagation was observed, and the exposition is
//! valid for `promtool check metrics`.

use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{eventually, http_get, Cluster, ClusterOptions};
use veto_tests::{issue, revoke_all, start_edges, verify_at};

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split_whitespace().next() == Some(series))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn promtool_check(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("promtool ({e}): scripts/deps.sh installs Debian's prometheus package")
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 1 on lint findings as well as errors; only errors fail here.
    anyhow::ensure!(!msg.contains("error"), "promtool: {msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reflect_a_known_workload() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let mut toks = Vec::new();
    for i in 0..5 {
        toks.push(issue(l, &format!("user:{i}"), 3600).await?);
    }
    let edges = start_edges(&cluster, 1, 2_000, 100).await?;
    let last = revoke_all(l, &toks[..3]).await?;
    l.tokens()?
        .revoke_subject(pb::RevokeSubjectRequest {
            sub: "user:4".into(),
            ..Default::default()
        })
        .await?;
    for tk in &toks {
        verify_at(&edges[0], &tk.token, last).await?;
    }
    let (code, text) = http_get(&l.http_addr, "/metrics").await?;
    assert_eq!(code, 200);
    assert_eq!(value(&text, "veto_issued_total"), Some(5.0), "{text}");
    assert_eq!(
        value(&text, "veto_revokes_total{kind=\"token\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "veto_revokes_total{kind=\"subject\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "veto_raft_is_leader"), Some(1.0));
    assert_eq!(value(&text, "veto_raft_leader"), Some(leader as f64));
    assert!(value(&text, "veto_raft_applied_index").unwrap_or(0.0) >= last as f64);
    assert_eq!(value(&text, "veto_revoke_latency_seconds_count"), Some(4.0));
    promtool_check(&text)?;

    // The node the edge streams from saw its acks.
    let server = edges[0].handle.server().unwrap();
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.grpc_addr == server)
        .unwrap();
    let text = eventually(
        "propagation observed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let (_, text) = http_get(&node.http_addr, "/metrics").await.ok()?;
            (value(&text, "veto_propagation_seconds_count").unwrap_or(0.0) >= 1.0).then_some(text)
        },
    )
    .await?;
    assert!(
        text.contains("veto_edge_lag_revisions{edge=\"edge-0\"}"),
        "{text}"
    );
    promtool_check(&text)?;

    let eaddr = edges[0].http_addr.unwrap().to_string();
    let (code, text) = http_get(&eaddr, "/metrics").await?;
    assert_eq!(code, 200);
    assert_eq!(
        value(
            &text,
            "veto_verify_total{edge=\"edge-0\",outcome=\"revoked\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "veto_verify_total{edge=\"edge-0\",outcome=\"valid\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, "veto_edge_applied_revision{edge=\"edge-0\"}").unwrap_or(0.0) >= last as f64
    );
    promtool_check(&text)?;
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
