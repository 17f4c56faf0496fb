//! Edges whose wall clocks are wrong, run under Debian's libfaketime (the
//! wall clock offset, the monotonic clock untouched): a revoke is refused at
//! once and a refresh's grace ends on time whatever the edge's clock says;
//! only the token's own time claims are judged on the edge's clock, within
//! the configured leeway; each edge measures its offset from the leader's
//! clock, exports it and warns in `/healthz`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use veto_proto as pb;
use veto_testkit::{bin_named, eventually, http_get, Cluster, ClusterOptions};

struct ClockEdge {
    child: tokio::process::Child,
    grpc: String,
    http: String,
}

/// Starts `veto-edge` with its wall clock `offset` (libfaketime syntax,
/// e.g. "-90s") and `extra` flags. libfaketime is preloaded into the edge
/// itself rather than through Debian's `faketime` wrapper: the wrapper
/// forks, so killing it on drop left the edge running, and an orphan
/// reconnected to whichever later test's cluster reused its ports.
async fn start_edge(
    dir: &Path,
    id: &str,
    servers: &[String],
    offset: &str,
    extra: &[&str],
) -> anyhow::Result<ClockEdge> {
    let ready = dir.join(format!("{id}.ready"));
    let log = dir.join(format!("{id}.log"));
    let child = tokio::process::Command::new(bin_named("veto-edge", "VETO_EDGE_BIN")?)
        .args(["--edge-id", id, "--servers", &servers.join(",")])
        .args(["--listen-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args([
            "--probe-interval-ms",
            "100",
            "--bound-ms",
            "2000",
            "--insecure",
        ])
        .args(extra)
        .arg("--ready-file")
        .arg(&ready)
        .env("LD_PRELOAD", veto_chaos::clock::libfaketime()?)
        .env("FAKETIME", offset)
        // Only the wall clock moves; timers and the bound keep real time.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(
            std::fs::File::options().append(true).open(&log)?,
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
    let e = ClockEdge {
        child,
        grpc: addrs["grpc"].as_str().unwrap_or_default().to_owned(),
        http: addrs["http"].as_str().unwrap_or_default().to_owned(),
    };
    let http = e.http.clone();
    eventually(
        "the edge to be fresh",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let http = http.clone();
            async move {
                let (code, _) = http_get(&http, "/healthz").await.ok()?;
                (code == 200).then_some(())
            }
        },
    )
    .await?;
    Ok(e)
}

async fn verify(e: &ClockEdge, token: &str, min_revision: u64) -> anyhow::Result<pb::Outcome> {
    let r = veto_tests::verify_addr(&e.grpc, token, min_revision).await?;
    Ok(pb::Outcome::try_from(r.outcome)?)
}

/// The edge's `veto_edge_clock_offset_seconds`, once it has a sample.
async fn offset_s(e: &ClockEdge) -> anyhow::Result<f64> {
    let http = e.http.clone();
    eventually(
        "a clock offset sample in /metrics",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let http = http.clone();
            async move {
                let (_, body) = http_get(&http, "/metrics").await.ok()?;
                body.lines()
                    .find(|l| l.starts_with("veto_edge_clock_offset_seconds{"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_with_wrong_clocks_refuse_revoked_tokens_on_time() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let l = cluster.node(cluster.wait_leader(Duration::from_secs(20)).await?)?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let dir = tempfile::tempdir()?;
    // 90 s behind with a leeway that covers it; 90 s behind with the
    // default 60 s; 90 s ahead.
    let behind = start_edge(
        dir.path(),
        "behind",
        &servers,
        "-90s",
        &["--clock-leeway-secs", "120"],
    )
    .await?;
    let behind_default = start_edge(dir.path(), "behind-default", &servers, "-90s", &[]).await?;
    let ahead = start_edge(dir.path(), "ahead", &servers, "+90s", &[]).await?;

    // Each measures its offset from the leader's clock.
    let b = offset_s(&behind).await?;
    let a = offset_s(&ahead).await?;
    assert!((b - 90.0).abs() < 2.0, "edge 90 s behind measured {b} s");
    assert!((a + 90.0).abs() < 2.0, "edge 90 s ahead measured {a} s");
    let (code, body) = http_get(&behind.http, "/healthz").await?;
    assert_eq!(code, 200, "a skewed clock is not staleness: {body}");
    assert!(body.contains("warning"), "{body}");

    // A new token: valid where the leeway covers the skew, NOT_YET_VALID
    // where it does not (nbf is the leader's second).
    let t = veto_tests::issue(l, "svc:clock", 3600).await?;
    let r0 = t.revision;
    assert_eq!(verify(&behind, &t.token, r0).await?, pb::Outcome::Valid);
    assert_eq!(verify(&ahead, &t.token, r0).await?, pb::Outcome::Valid);
    assert_eq!(
        verify(&behind_default, &t.token, r0).await?,
        pb::Outcome::NotYetValid
    );

    // A revoke is refused at once everywhere (before the fix, the edge
    // behind compared the leader's second with its own and kept accepting
    // for 90 s).
    let rv = l
        .tokens()?
        .revoke(pb::RevokeRequest {
            jti: t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default(),
            reason: "leaked".into(),
            wait_for: pb::WaitFor::AllEdges as i32,
            wait_timeout_ms: 5_000,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(rv.edges_confirmed, 3, "{rv:?}");
    for e in [&behind, &ahead] {
        assert_eq!(
            verify(e, &t.token, rv.revision).await?,
            pb::Outcome::Revoked
        );
    }

    // A refresh with a 4 s grace: the predecessor works during the grace
    // and is refused once it has passed, on the edge's monotonic clock.
    let p = veto_tests::issue(l, "svc:rotating", 3600).await?;
    let grace = Duration::from_secs(4);
    let rf = l
        .tokens()?
        .refresh(pb::RefreshRequest {
            jti: p.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default(),
            ttl_seconds: 3600,
            grace_seconds: grace.as_secs(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let answered = Instant::now();
    let succ = rf
        .successor
        .ok_or_else(|| anyhow::anyhow!("no successor"))?;
    for e in [&behind, &ahead] {
        assert_eq!(
            verify(e, &p.token, succ.revision).await?,
            pb::Outcome::Valid
        );
        assert_eq!(
            verify(e, &succ.token, succ.revision).await?,
            pb::Outcome::Valid
        );
    }
    tokio::time::sleep(
        (answered + grace + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    )
    .await;
    for e in [&behind, &ahead] {
        assert_eq!(
            verify(e, &p.token, succ.revision).await?,
            pb::Outcome::Revoked,
            "the grace outlived itself on an edge with a skewed clock"
        );
        assert_eq!(
            verify(e, &succ.token, succ.revision).await?,
            pb::Outcome::Valid
        );
    }

    // The token's own lifetime is judged on the edge's clock: a 60 s token
    // has already expired for the edge 90 s ahead (no exp leeway).
    let short = veto_tests::issue(l, "svc:short", 60).await?;
    assert_eq!(
        verify(&ahead, &short.token, short.revision).await?,
        pb::Outcome::Expired
    );
    assert_eq!(
        verify(&behind, &short.token, short.revision).await?,
        pb::Outcome::Valid
    );

    for mut e in [behind, behind_default, ahead] {
        e.child.start_kill()?;
        let _ = e.child.wait().await;
    }
    Ok(())
}
