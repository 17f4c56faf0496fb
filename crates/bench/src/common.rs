//! Small helpers shared by the demo and the benchmarks: percentiles,
//! addresses, edge start-up and request construction.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_testkit::Cluster;

/// The `p` quantile of `h` (recorded in µs), in ms.
pub(crate) fn q(h: &Histogram<u64>, p: f64) -> f64 {
    h.value_at_quantile(p) as f64 / 1e3
}

/// `d` in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `d` in µs (at least 1), as a histogram records it.
pub(crate) fn micros(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

/// Records `d` (µs) into a shared histogram; a poisoned lock or an
/// out-of-range value skips the sample.
pub(crate) fn record_locked(h: &Mutex<Histogram<u64>>, d: Duration) {
    if let Ok(mut h) = h.lock() {
        let _ = h.record(micros(d));
    }
}

/// A copy of a shared histogram.
pub(crate) fn snapshot(h: &Mutex<Histogram<u64>>) -> Result<Histogram<u64>> {
    Ok(h.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone())
}

/// Every node's gRPC address.
pub(crate) fn grpc_addrs(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect()
}

/// An optional bound address as text ("" when absent).
pub(crate) fn addr_text(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// Loopback, any port.
pub(crate) fn any_local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Starts an edge serving gRPC and HTTP on loopback ports of its own.
pub(crate) async fn start_local_edge(opts: veto_edge::Options) -> Result<veto_edge::Edge> {
    Ok(veto_edge::Edge::start(opts, any_local(), any_local()).await?)
}

/// Waits (up to 20 s) for `e` to become fresh; fails if it never does.
pub(crate) async fn wait_fresh(e: &veto_edge::Edge) -> Result<()> {
    anyhow::ensure!(
        e.handle.wait_fresh(Duration::from_secs(20)).await,
        "edge {} never became fresh",
        e.handle.options().edge_id
    );
    Ok(())
}

/// Edge options: id, the servers to follow, bound B and probe interval H.
pub(crate) fn edge_opts(
    id: String,
    servers: &[String],
    bound_ms: u64,
    probe_ms: u64,
) -> veto_edge::Options {
    veto_edge::Options {
        edge_id: id,
        servers: servers.to_vec(),
        bound_ms,
        probe_interval_ms: probe_ms,
        ..Default::default()
    }
}

/// An issue request for a `read`-scoped token with no audience.
pub(crate) fn read_token(sub: String, ttl_seconds: u64) -> pb::IssueRequest {
    pb::IssueRequest {
        sub,
        scopes: vec!["read".into()],
        aud: None,
        ttl_seconds,
        ..Default::default()
    }
}

/// `batch` plain verify requests for consecutive `tokens` from `k` on (wrapping).
pub(crate) fn batch_items(tokens: &[String], k: usize, batch: usize) -> Vec<pb::VerifyRequest> {
    (0..batch)
        .map(|i| pb::VerifyRequest {
            token: tokens[(k + i) % tokens.len()].clone(),
            required_scopes: vec![],
            audience: None,
            min_revision: 0,
        })
        .collect()
}

/// Issues `req` through `client`, retrying (every 50 ms, for up to 10 s)
/// until the leader has created its first signing key.
pub(crate) async fn issue_first(
    client: &TokenServiceClient<Channel>,
    req: pb::IssueRequest,
) -> Result<pb::IssueResponse> {
    veto_testkit::eventually(
        "the first signing key",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let mut c = client.clone();
            let req = req.clone();
            async move { c.issue(req).await.ok().map(|r| r.into_inner()) }
        },
    )
    .await
}
