//! `veto top` against a live cluster, drawn into ratatui's TestBackend:
//! every member with its state, every edge, the propagation chart's title
//! with real percentiles, and verify rates by outcome.

use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use veto_cli::top::{collect, draw, App};
use veto_proto as pb;
use veto_testkit::{Cluster, ClusterOptions};

fn screen(t: &Terminal<TestBackend>) -> String {
    let b = t.backend().buffer();
    let w = b.area.width as usize;
    let cells: Vec<&str> = b.content().iter().map(|c| c.symbol()).collect();
    cells
        .chunks(w)
        .map(|row| row.concat())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_renders_members_edges_and_propagation() -> anyhow::Result<()> {
    // The test cluster runs --insecure; so does this client.
    veto_cli::set_transport(&veto_auth::TlsFiles::default(), true);
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let servers: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let mut edges = Vec::new();
    // one edge per node, so two members report edges
    for (i, server) in servers.iter().take(2).enumerate() {
        let opts = veto_edge::Options {
            edge_id: format!("top-edge-{i}"),
            servers: vec![server.clone()],
            probe_interval_ms: 100,
            ..Default::default()
        };
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let e = veto_edge::Edge::start(opts, local, local).await?;
        anyhow::ensure!(
            e.handle.wait_fresh(Duration::from_secs(20)).await,
            "edge not fresh"
        );
        edges.push(e);
    }
    let mut tokens = l.tokens()?;
    let mut last = 0;
    let mut issued = Vec::new();
    for i in 0..4 {
        // The leader creates the first signing key just after its election.
        let t = veto_testkit::eventually(
            "an issued token",
            Duration::from_secs(15),
            Duration::from_millis(50),
            || {
                let mut tokens = tokens.clone();
                async move {
                    tokens
                        .issue(pb::IssueRequest {
                            sub: format!("top:{i}"),
                            scopes: vec!["read".into()],
                            ttl_seconds: 3600,
                            ..Default::default()
                        })
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                }
            },
        )
        .await?;
        issued.push(t);
    }
    for t in &issued[..2] {
        last = tokens
            .revoke(pb::RevokeRequest {
                jti: t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .revision;
    }
    for e in &edges {
        anyhow::ensure!(e.handle.wait_revision(last, Duration::from_secs(10)).await);
    }

    let mut app = App::default();
    let mut term = Terminal::new(TestBackend::new(140, 44))?;
    // Two refreshes with verifies in between: rates by outcome appear.
    app.update(collect(&servers).await, Instant::now());
    for e in &edges {
        for t in &issued {
            e.handle.verify(&t.token, &Default::default());
        }
    }
    // Verify counts reach the servers with the edges' probes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.update(collect(&servers).await, Instant::now());
    term.draw(|f| draw(f, &app))?;
    let s = screen(&term);
    eprintln!("{s}");

    assert!(s.contains(&format!("leader {leader}")), "{s}");
    for n in &cluster.nodes {
        assert!(s.contains(&n.grpc_addr), "member {} missing:\n{s}", n.id);
    }
    assert!(s.contains("leader") && s.contains("follower"), "{s}");
    for e in &edges {
        assert!(s.contains(&e.handle.options().edge_id), "{s}");
    }
    assert!(
        s.contains("propagation, all edges: p50"),
        "no propagation samples:\n{s}"
    );
    assert!(
        s.contains("valid") && s.contains("revoked"),
        "no verify outcomes:\n{s}"
    );
    assert_eq!(app.view.verify_totals.get("valid"), Some(&4));
    assert_eq!(app.view.verify_totals.get("revoked"), Some(&4));
    assert!(
        app.rates.get("valid").is_some_and(|r| *r > 0.0),
        "{:?}",
        app.rates
    );

    // A member that stops answering is shown as such, not hidden.
    let mut cluster = cluster;
    let victim = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .map(|n| n.id)
        .unwrap();
    cluster.kill(victim).await?;
    app.update(collect(&servers).await, Instant::now());
    term.draw(|f| draw(f, &app))?;
    let s = screen(&term);
    assert!(s.contains("unreachable"), "{s}");
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
