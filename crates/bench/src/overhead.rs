//! `veto-bench overhead`: what metrics and tracing cost on the verify hot
//! path. Two edges on the same cluster, one recording Prometheus metrics and
//! one not; this process exports spans over OTLP (to an in-process sink,
//! which also receives the servers' spans), switched on and off between
//! measurements. Every round measures all four combinations in a rotating
//! order, so drift in a noisy machine hits them alike; medians of the rounds
//! and their ratios to "all off" are printed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::channel;

use crate::bench::BenchArgs;
use crate::common::{addr_text, batch_items, edge_opts, grpc_addrs, start_local_edge, wait_fresh};

/// Counts the spans it receives.
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize = req
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One measurement of one edge.
#[derive(Debug, Clone, Copy)]
struct Round {
    hit_ns: f64,
    batch_tps: f64,
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One measurement of edge `h`: in-process verify time on cache hits, and
/// VerifyBatch throughput at `grpc` for `batch_for`.
async fn measure(
    h: &veto_edge::EdgeHandle,
    grpc: &str,
    tokens: &Arc<Vec<String>>,
    batch_for: Duration,
) -> Result<Round> {
    let req = veto_core::token::Requirements::default();
    let passes = 5;
    let t = Instant::now();
    for _ in 0..passes {
        for tok in tokens.iter() {
            std::hint::black_box(h.verify(tok, &req));
        }
    }
    let hit_ns = t.elapsed().as_nanos() as f64 / (tokens.len() * passes) as f64;
    let batch = 1000usize;
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4usize {
        let mut c = VerifierServiceClient::new(channel(grpc)?);
        let (tokens, done) = (tokens.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = w * batch;
            while start.elapsed() < batch_for {
                let items = batch_items(&tokens, k, batch);
                if let Ok(r) = c.verify_batch(pb::VerifyBatchRequest { items }).await {
                    let n = r.into_inner().results.iter().filter(|r| r.valid).count();
                    done.fetch_add(n as u64, Ordering::Relaxed);
                }
                k += 4 * batch;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(Round {
        hit_ns,
        batch_tps: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
    })
}

/// The four configurations, measured every round: label, edge (0: metrics
/// off, 1: metrics on) and whether this process exports spans.
const CONFIGS: [(&str, usize, bool); 4] = [
    ("all off", 0, false),
    ("metrics on, tracing off", 1, false),
    ("tracing on, metrics off", 0, true),
    ("tracing on, metrics on", 1, true),
];

/// Per configuration: label, median in-process ns/op, median VerifyBatch tokens/s.
type Summary = Vec<(&'static str, f64, f64)>;

/// Runs the comparison.
pub async fn run(args: &BenchArgs, json_out: bool) -> Result<()> {
    let rounds = 9;
    let batch_for = Duration::from_secs(args.duration_secs.clamp(1, 20)) / 10;
    // The OTLP sink first: the servers export their spans to it throughout,
    // so revokes carry trace context and edges have traced changes to apply.
    let (sink, endpoint, server) = start_sink().await?;
    eprintln!("starting a 3-node cluster (exporting traces) and two edges (metrics off / on); issuing 10,000 tokens...");
    let (cluster, addr) = crate::edgebench::cluster_with_key_opts(veto_testkit::ClusterOptions {
        env: vec![("VETO_OTLP_ENDPOINT".into(), endpoint.clone())],
        ..Default::default()
    })
    .await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        crate::edgebench::issue_many(&addr, 10_000)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    );
    // Revoked one per round, so edges apply (traced) changes meanwhile.
    let spare = crate::edgebench::issue_many(&addr, 2 * rounds).await?;
    let edges = start_edges(&grpc_addrs(&cluster)).await?;
    let grpc: Vec<String> = edges.iter().map(|e| addr_text(e.grpc_addr)).collect();
    // Warm both signature caches.
    let req = veto_core::token::Requirements::default();
    for e in &edges {
        for t in tokens.iter() {
            e.handle.verify(t, &req);
        }
    }
    // This process traces like a traced edge would (OTLP export to the
    // sink); export is switched on and off between measurements, so every
    // round measures all four configurations, in a rotating order.
    let traces =
        veto_telemetry::trace::init("veto-bench", Some(&endpoint), "warn").context("tracing")?;
    let spans_before_tracing = sink.spans.load(Ordering::Relaxed);
    let mut tk = TokenServiceClient::new(channel(&addr)?);
    let mut results: Vec<(&str, Vec<Round>)> = CONFIGS.iter().map(|c| (c.0, Vec::new())).collect();
    for r in 0..rounds {
        measure_round(r, &edges, &grpc, &tokens, batch_for, &mut results).await?;
        // One revoke per round, applied by the edges with tracing on (an
        // edge.apply span each).
        veto_telemetry::trace::set_exporting(true);
        let jti = spare.get(r).map(|t| t.0.clone()).unwrap_or_default();
        let _ = tk
            .revoke(pb::RevokeRequest {
                jti,
                ..Default::default()
            })
            .await;
    }
    let summary = summarize(&results);
    traces.shutdown().await;
    report(json_out, rounds, &summary, &sink, spans_before_tracing);
    for e in edges {
        e.stop().await;
    }
    server.abort();
    drop(cluster);
    Ok(())
}

/// Starts the in-process OTLP sink on a loopback port; returns it, its
/// endpoint URL and its server task.
async fn start_sink() -> Result<(
    Sink,
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
)> {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((sink, endpoint, server))
}

/// Starts the two edges on `servers`, metrics off then on, each fresh.
async fn start_edges(servers: &[String]) -> Result<Vec<veto_edge::Edge>> {
    let mut edges = Vec::new();
    for (id, metrics) in [("overhead-off", false), ("overhead-on", true)] {
        let mut opts = edge_opts(id.into(), servers, 5_000, 200);
        opts.metrics = metrics;
        let e = start_local_edge(opts).await?;
        wait_fresh(&e).await?;
        edges.push(e);
    }
    Ok(edges)
}

/// Round `r`: measures every configuration once, starting at a rotating
/// offset, adding each measurement to `results`.
async fn measure_round(
    r: usize,
    edges: &[veto_edge::Edge],
    grpc: &[String],
    tokens: &Arc<Vec<String>>,
    batch_for: Duration,
    results: &mut [(&str, Vec<Round>)],
) -> Result<()> {
    for k in 0..CONFIGS.len() {
        let c = (r + k) % CONFIGS.len();
        let (_, edge, tracing_on) = CONFIGS[c];
        veto_telemetry::trace::set_exporting(tracing_on);
        let m = measure(&edges[edge].handle, &grpc[edge], tokens, batch_for).await?;
        results[c].1.push(m);
    }
    Ok(())
}

/// Per configuration, the medians of its rounds.
fn summarize(results: &[(&'static str, Vec<Round>)]) -> Summary {
    results
        .iter()
        .map(|(l, rs)| {
            (
                *l,
                median(rs.iter().map(|r| r.hit_ns).collect()),
                median(rs.iter().map(|r| r.batch_tps).collect()),
            )
        })
        .collect()
}

/// Prints the medians and their ratios to "all off": JSON, or a table.
fn report(json_out: bool, rounds: usize, summary: &Summary, sink: &Sink, spans_before: u64) {
    let base = summary.first().map(|s| (s.1, s.2)).unwrap_or((1.0, 1.0));
    if json_out {
        let v: Vec<_> = summary
            .iter()
            .map(|(l, hit, tps)| {
                serde_json::json!({"config": l, "inprocess_hit_ns": hit, "batch_tokens_per_sec": tps,
                                   "hit_ratio_vs_off": hit / base.0, "batch_ratio_vs_off": tps / base.1})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"rounds": rounds, "results": v, "spans_received": sink.spans.load(Ordering::Relaxed), "spans_before_edge_tracing": spans_before})
        );
        return;
    }
    println!(
        "\nverify cost with observability on vs off (median of {rounds} rounds, each measuring all four in a rotating order; 10,000 tokens; servers export spans throughout)"
    );
    println!(
        "{:<26} {:>14} {:>10} {:>20} {:>10}",
        "config", "in-proc ns/op", "vs off", "VerifyBatch tok/s", "vs off"
    );
    for (l, hit, tps) in summary {
        println!(
            "{:<26} {:>14.0} {:>10.3} {:>20.0} {:>10.3}",
            l,
            hit,
            hit / base.0,
            tps,
            tps / base.1
        );
    }
    println!(
        "spans received by the OTLP sink: {} from the servers before the rounds, {} in all",
        spans_before,
        sink.spans.load(Ordering::Relaxed)
    );
}
