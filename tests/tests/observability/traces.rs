//! One revoke, one trace: a small OTLP collector (the official OTLP trace
//! service, served by tonic in this test) receives spans from three
//! veto-server processes and from three edges, and one trace holds the
//! revoke RPC, its Raft commit and the apply on every edge.

use std::collections::BTreeSet;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use veto_proto as pb;
use veto_testkit::{eventually, Cluster, ClusterOptions};
use veto_tests::otlp::{Collector, Got};
use veto_tests::{issue, start_edges};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_revoke_the_commit_and_every_edge_apply() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // This process hosts the edges: they export to the same collector.
    let traces = veto_telemetry::trace::init("veto-edge", Some(&endpoint), "warn")?;
    assert!(traces.exporting());
    let cluster = Cluster::start(ClusterOptions {
        env: vec![("VETO_OTLP_ENDPOINT".into(), endpoint.clone())],
        ..Default::default()
    })
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let tk = issue(l, "user:traced", 3600).await?;
    let edges = start_edges(&cluster, 3, 2_000, 100).await?;
    // Through a follower: the forward carries the context to the leader.
    let f = cluster.follower().await?;
    let rev = f
        .tokens()?
        .revoke(pb::RevokeRequest {
            jti: tk
                .record
                .as_ref()
                .map(|r| r.jti.clone())
                .unwrap_or_default(),
            reason: "traced".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    for e in &edges {
        let h = e.handle.clone();
        eventually(
            "edge applied",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let h = h.clone();
                async move { (h.revision() >= rev).then_some(()) }
            },
        )
        .await?;
    }
    let edge_ids: BTreeSet<String> = edges
        .iter()
        .map(|e| e.handle.options().edge_id.clone())
        .collect();
    let spans = collector.spans.clone();
    let want_edges = edge_ids.clone();
    let found = eventually(
        "one trace with the revoke, the commit and every edge's apply",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let spans = spans.lock().map(|s| s.clone()).unwrap_or_default();
            let want_edges = want_edges.clone();
            async move {
                let commit = spans.iter().find(|s| {
                    s.name == "raft.commit"
                        && s.attrs.get("revision").map(String::as_str)
                            == Some(rev.to_string().as_str())
                })?;
                let same: Vec<&Got> = spans
                    .iter()
                    .filter(|s| s.trace_id == commit.trace_id)
                    .collect();
                let rpcs: Vec<&&Got> = same
                    .iter()
                    .filter(|s| s.name == "veto.v1.TokenService/Revoke")
                    .collect();
                let applied: BTreeSet<String> = same
                    .iter()
                    .filter(|s| s.name == "edge.apply" && s.parent == commit.span_id)
                    .filter_map(|s| s.attrs.get("edge.id").cloned())
                    .collect();
                (rpcs.len() >= 2 && applied == want_edges).then(|| {
                    (
                        commit.clone(),
                        same.iter().map(|s| (*s).clone()).collect::<Vec<_>>(),
                    )
                })
            }
        },
    )
    .await;
    let (commit, trace) = match found {
        Ok(v) => v,
        Err(e) => {
            let got = collector
                .spans
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            let names: Vec<_> = got
                .iter()
                .map(|s| (&s.service, &s.name, &s.attrs))
                .collect();
            anyhow::bail!("{e}; spans received: {names:#?}");
        }
    };
    // The follower's RPC span is the root; the leader's RPC is its child and
    // the commit the leader RPC's child.
    let rpc_ids: Vec<&Got> = trace
        .iter()
        .filter(|s| s.name == "veto.v1.TokenService/Revoke")
        .collect();
    let root = rpc_ids
        .iter()
        .find(|s| s.parent.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no root RPC span: {trace:#?}"))?;
    assert_eq!(root.service, "veto-server");
    assert!(
        rpc_ids
            .iter()
            .any(|s| s.parent == root.span_id && s.span_id == commit.parent),
        "the commit hangs under the leader's RPC, itself under the follower's: {trace:#?}"
    );
    assert!(trace
        .iter()
        .filter(|s| s.name == "edge.apply")
        .all(|s| s.service == "veto-edge"
            && s.attrs.get("revision").map(String::as_str) == Some(rev.to_string().as_str())));
    // No token string in any span attribute.
    let all = collector
        .spans
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    assert!(all
        .iter()
        .all(|s| s.attrs.values().all(|v| !v.contains(&tk.token))));
    for e in edges {
        e.stop().await;
    }
    traces.shutdown().await;
    server.abort();
    Ok(())
}
