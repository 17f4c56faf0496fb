//! The dashboard end to end: `/api/v1/status` on a follower reports every
//! member's edges, verify counts and merged propagation; headless Chromium
//! renders `/ui` from it (edge table and chart with real data) and saves a
//! screenshot under the test's output directory.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use veto_testkit::{eventually, http_get, Cluster, ClusterOptions};
use veto_tests::{issue, revoke_all, start_edges, verify_at};

fn chromium(args: &[&str], profile: &Path) -> anyhow::Result<String> {
    let bin = ["chromium", "/usr/bin/chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| {
            anyhow::anyhow!("chromium not found: scripts/deps.sh installs Debian's chromium")
        })?;
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1400,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_edges_and_propagation_in_chromium() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let mut toks = Vec::new();
    for i in 0..6 {
        toks.push(issue(l, &format!("user:{i}"), 3600).await?);
    }
    let edges = start_edges(&cluster, 3, 2_000, 100).await?;
    let last = revoke_all(l, &toks[..3]).await?;
    for e in &edges {
        for tk in &toks {
            verify_at(e, &tk.token, last).await?;
        }
    }
    // A follower answers for the whole cluster.
    let f = cluster.follower().await?;
    let status: serde_json::Value = eventually(
        "status with 3 edges, verify counts and propagation",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (code, body) = http_get(&f.http_addr, "/api/v1/status").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let edges = v["edges"].as_array()?.len();
            let points = v["propagation"]["series"].as_array()?.len();
            let valid = v["verify_totals"]["valid"].as_u64().unwrap_or(0);
            let revoked = v["verify_totals"]["revoked"].as_u64().unwrap_or(0);
            (code == 200 && edges == 3 && points > 0 && valid == 9 && revoked == 9).then_some(v)
        },
    )
    .await?;
    assert_eq!(status["node_id"].as_u64(), Some(f.id));
    assert_eq!(status["leader"].as_u64(), Some(leader));
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    let series = &status["propagation"]["series"];
    let samples: u64 = series
        .as_array()
        .map(|s| s.iter().filter_map(|p| p["count"].as_u64()).sum())
        .unwrap_or(0);
    // Every edge acked every revoke (plus the issues before it joined: none,
    // it bootstrapped from a snapshot): at least 3 edges x 1 ack.
    assert!(samples >= 3, "{status}");
    for p in series.as_array().into_iter().flatten() {
        let (p50, p99) = (
            p["p50_ms"].as_f64().unwrap_or(-1.0),
            p["p99_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(p50 >= 0.0 && p99 >= p50, "{p}");
    }

    // Chromium renders it.
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observability_ui");
    std::fs::create_dir_all(&out_dir)?;
    let profile = tempfile::tempdir()?;
    let url = format!("http://{}/ui", f.http_addr);
    let dom = chromium(
        &[
            "--virtual-time-budget=8000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
            &url,
        ],
        profile.path(),
    )?;
    assert!(
        dom.contains("data-ready=\"true\""),
        "dashboard never became ready: {dom}"
    );
    for e in &edges {
        let id = &e.handle.options().edge_id;
        assert!(
            dom.contains(&format!("data-edge=\"{id}\"")),
            "no row for {id}: {dom}"
        );
    }
    assert!(dom.contains("data-edges=\"3\""), "{dom}");
    let p99 = dom
        .split("class=\"p99\"")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no p99 line in the chart: {dom}"))?;
    assert!(
        p99.trim_start().starts_with("d=\"M"),
        "empty p99 line: {p99:.200}"
    );
    let shot = out_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--virtual-time-budget=8000",
            "--run-all-compositor-stages-before-draw",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        profile.path(),
    )?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {}",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
