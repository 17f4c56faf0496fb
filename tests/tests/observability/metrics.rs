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

    // Every metric the alerting rules and the Grafana dashboard query is in
    // this real output (a server's and an edge's).
    let (_, feed_node_text) = http_get(&node.http_addr, "/metrics").await?;
    let (_, leader_text) = http_get(&l.http_addr, "/metrics").await?;
    let exposed = format!("{leader_text}\n{feed_node_text}\n{text}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
    let mut checked = 0;
    for f in ["rules.yml", "grafana/veto.json"] {
        let src = std::fs::read_to_string(root.join(f))?;
        let names = metric_names(&src);
        assert!(!names.is_empty(), "{f} queries no veto_ metric");
        for n in names {
            assert!(
                exposed.lines().any(|l| {
                    let rest = l.strip_prefix(n.as_str()).unwrap_or("#");
                    let rest = rest.strip_prefix("_bucket").unwrap_or(rest);
                    rest.starts_with('{') || rest.starts_with(' ')
                }),
                "{f} queries {n}, which no node or edge exposes"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10);
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

/// `veto_*` metric names in a rules or dashboard file, histogram series
/// folded to their base name (`_bucket`/`_sum`/`_count`); recording rules
/// (`veto:...`) are not metrics of ours and never match.
fn metric_names(src: &str) -> std::collections::BTreeSet<String> {
    let b = src.as_bytes();
    let mut out = std::collections::BTreeSet::new();
    let mut i = 0;
    while let Some(p) = src[i..].find("veto_") {
        let start = i + p;
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        let word_start = start == 0
            || !(b[start - 1].is_ascii_alphanumeric()
                || b[start - 1] == b'_'
                || b[start - 1] == b':');
        let next_colon = end < b.len() && b[end] == b':';
        if word_start && !next_colon && end > start + "veto_".len() {
            let mut n = &src[start..end];
            for suf in ["_bucket", "_sum", "_count"] {
                if let Some(base) = n.strip_suffix(suf) {
                    n = base;
                }
            }
            out.insert(n.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// promtool accepts the scrape config and the rules, and the rules' unit
/// tests pass.
#[test]
fn observability_config_and_rules_pass_promtool() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "rules.yml"],
        vec!["test", "rules", "rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&root)
            .output()
            .map_err(|e| {
                anyhow::anyhow!(
                    "promtool ({e}): scripts/deps.sh installs Debian's prometheus package"
                )
            })?;
        anyhow::ensure!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The dashboard is valid JSON with panels.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana/veto.json"))?)?;
    anyhow::ensure!(dash["panels"].as_array().is_some_and(|p| p.len() >= 6));
    Ok(())
}
