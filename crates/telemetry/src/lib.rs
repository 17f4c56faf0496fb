//! veto's metrics: every name in one place (`veto_` prefix, unit last), and
//! the Prometheus text exposition every node serves on `/metrics`.
//!
//! Recording goes through the `metrics` facade; [`install`] sets the
//! process-wide Prometheus recorder and returns the handle that renders it.

use std::sync::OnceLock;

pub mod trace;

pub use metrics;
pub use metrics_exporter_prometheus::PrometheusHandle as Handle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Issue latency on the serving node, receipt to commit.
pub const ISSUE_LATENCY_SECONDS: &str = "veto_issue_latency_seconds";
/// Revoke latency on the serving node, receipt to commit.
pub const REVOKE_LATENCY_SECONDS: &str = "veto_revoke_latency_seconds";
/// Committed revocations by kind (`token`, `subject`, `family`, `key`).
pub const REVOKES_TOTAL: &str = "veto_revokes_total";
/// Issued tokens.
pub const ISSUED_TOTAL: &str = "veto_issued_total";
/// Commit (apply on the serving node) to an edge's ack, on that node's clock.
pub const PROPAGATION_SECONDS: &str = "veto_propagation_seconds";
/// Per-edge lag behind this node's applied revision, in revisions.
pub const EDGE_LAG_REVISIONS: &str = "veto_edge_lag_revisions";
/// Per-edge seconds since this node last answered its probe.
pub const EDGE_FRESH_AGE_SECONDS: &str = "veto_edge_fresh_age_seconds";
/// Feed streams opened by edges.
pub const FEED_CONNECTS_TOTAL: &str = "veto_feed_connects_total";
/// Snapshots sent to edges.
pub const FEED_SNAPSHOTS_TOTAL: &str = "veto_feed_snapshots_total";
/// Raft term.
pub const RAFT_TERM: &str = "veto_raft_term";
/// Current leader id (0 when unknown).
pub const RAFT_LEADER: &str = "veto_raft_leader";
/// Whether this node leads (1) or not (0).
pub const RAFT_IS_LEADER: &str = "veto_raft_is_leader";
/// Highest committed log index known here.
pub const RAFT_COMMIT_INDEX: &str = "veto_raft_commit_index";
/// Highest applied log index here.
pub const RAFT_APPLIED_INDEX: &str = "veto_raft_applied_index";
/// Verifies answered at an edge, by outcome.
pub const VERIFY_TOTAL: &str = "veto_verify_total";
/// The edge's applied revision.
pub const EDGE_APPLIED_REVISION: &str = "veto_edge_applied_revision";
/// Feed sessions an edge opened (connects and failovers).
pub const EDGE_FEED_CONNECTS_TOTAL: &str = "veto_edge_feed_connects_total";
/// Snapshot resyncs at an edge.
pub const EDGE_RESYNCS_TOTAL: &str = "veto_edge_resyncs_total";

/// Edges a node told to resync from a snapshot (they fell too far behind).
pub const FEED_RESYNCS_TOTAL: &str = "veto_feed_resyncs_total";
/// Edges streaming from this node now.
pub const EDGES_CONNECTED: &str = "veto_edges_connected";
/// Live and SST file bytes of the node's RocksDB, plus snapshot files.
pub const ROCKSDB_SIZE_BYTES: &str = "veto_rocksdb_size_bytes";
/// The edge's own view: seconds since its last answered probe.
pub const EDGE_FRESHNESS_AGE_SECONDS: &str = "veto_edge_freshness_age_seconds";
/// 1 while the edge is outside its bound (answers STALE), else 0.
pub const EDGE_STALE: &str = "veto_edge_stale";
/// The edge's configured propagation bound B.
pub const EDGE_BOUND_SECONDS: &str = "veto_edge_bound_seconds";
/// The leader's wall clock minus the edge's, measured from probe replies.
pub const EDGE_CLOCK_OFFSET_SECONDS: &str = "veto_edge_clock_offset_seconds";
/// Half the round trip of the probe the offset came from (its error bound).
pub const EDGE_CLOCK_OFFSET_UNCERTAINTY_SECONDS: &str =
    "veto_edge_clock_offset_uncertainty_seconds";
/// Calls refused by authentication, authorisation or a write rate limit.
pub const AUTH_DENIED_TOTAL: &str = "veto_auth_denied_total";
/// The reasons [`AUTH_DENIED_TOTAL`] is labelled with.
pub const AUTH_DENIED_REASONS: [&str; 3] = ["unauthenticated", "permission_denied", "rate_limited"];

fn register_auth() {
    metrics::describe_counter!(
        AUTH_DENIED_TOTAL,
        "Calls refused: no identity, wrong role, or over the per-client write rate."
    );
    for r in AUTH_DENIED_REASONS {
        metrics::counter!(AUTH_DENIED_TOTAL, "reason" => r).increment(0);
    }
}

/// Could not install the recorder.
#[derive(Debug, thiserror::Error)]
#[error("metrics recorder: {0}")]
pub struct Error(String);

/// What kind of series a metric is.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's description: name, kind, unit and help text.
type Described = (&'static str, Kind, Option<metrics::Unit>, &'static str);

const SECONDS: Option<metrics::Unit> = Some(metrics::Unit::Seconds);

#[rustfmt::skip]
const SERVER_METRICS: &[Described] = &[
    (ISSUE_LATENCY_SECONDS, Kind::Histogram, SECONDS, "Issue latency on the serving node, receipt to commit."),
    (REVOKE_LATENCY_SECONDS, Kind::Histogram, SECONDS, "Revoke latency on the serving node, receipt to commit."),
    (REVOKES_TOTAL, Kind::Counter, None, "Committed revocations by kind."),
    (ISSUED_TOTAL, Kind::Counter, None, "Tokens issued."),
    (PROPAGATION_SECONDS, Kind::Histogram, SECONDS, "Apply on this node to an edge's ack, on this node's clock."),
    (EDGE_LAG_REVISIONS, Kind::Gauge, None, "Per edge streaming from this node: revisions behind this node."),
    (EDGE_FRESH_AGE_SECONDS, Kind::Gauge, SECONDS, "Per edge streaming from this node: seconds since this node answered its probe."),
    (FEED_CONNECTS_TOTAL, Kind::Counter, None, "Feed streams opened by edges on this node."),
    (FEED_SNAPSHOTS_TOTAL, Kind::Counter, None, "Snapshots sent to edges."),
    (FEED_RESYNCS_TOTAL, Kind::Counter, None, "Snapshots sent to edges that had state but fell behind the retained log."),
    (EDGES_CONNECTED, Kind::Gauge, None, "Edges streaming from this node now."),
    (ROCKSDB_SIZE_BYTES, Kind::Gauge, Some(metrics::Unit::Bytes), "Bytes of the node's data directory (RocksDB and snapshots)."),
    (RAFT_TERM, Kind::Gauge, None, "Raft term."),
    (RAFT_LEADER, Kind::Gauge, None, "Current leader id (0 when unknown)."),
    (RAFT_IS_LEADER, Kind::Gauge, None, "1 on the leader, else 0."),
    (RAFT_COMMIT_INDEX, Kind::Gauge, None, "Highest committed log index known here."),
    (RAFT_APPLIED_INDEX, Kind::Gauge, None, "Highest applied log index here."),
];

#[rustfmt::skip]
const EDGE_METRICS: &[Described] = &[
    (VERIFY_TOTAL, Kind::Counter, None, "Verifies answered, by outcome."),
    (EDGE_APPLIED_REVISION, Kind::Gauge, None, "The edge's applied revision."),
    (EDGE_FEED_CONNECTS_TOTAL, Kind::Counter, None, "Feed sessions the edge opened (connects and failovers)."),
    (EDGE_RESYNCS_TOTAL, Kind::Counter, None, "Snapshot resyncs at the edge."),
    (EDGE_FRESHNESS_AGE_SECONDS, Kind::Gauge, SECONDS, "The edge's own view: seconds since its last answered probe."),
    (EDGE_STALE, Kind::Gauge, None, "1 while the edge is outside its bound (answers STALE), else 0."),
    (EDGE_BOUND_SECONDS, Kind::Gauge, SECONDS, "The edge's propagation bound B."),
    (EDGE_CLOCK_OFFSET_SECONDS, Kind::Gauge, SECONDS, "The leader's wall clock minus this edge's, from probe replies (exp/nbf use the edge's clock; revocations use none)."),
    (EDGE_CLOCK_OFFSET_UNCERTAINTY_SECONDS, Kind::Gauge, SECONDS, "Error bound of veto_edge_clock_offset_seconds (half the probe's round trip)."),
];

fn describe(all: &[Described]) {
    for &(name, kind, unit, help) in all {
        match (kind, unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

/// Describes every server metric and creates its counters at 0, so each
/// series exists (with help text) before the first event.
pub fn register_server() {
    describe(SERVER_METRICS);
    register_auth();
    for kind in ["token", "subject", "family", "key"] {
        metrics::counter!(REVOKES_TOTAL, "kind" => kind).increment(0);
    }
    for c in [
        ISSUED_TOTAL,
        FEED_CONNECTS_TOTAL,
        FEED_SNAPSHOTS_TOTAL,
        FEED_RESYNCS_TOTAL,
    ] {
        metrics::counter!(c).increment(0);
    }
}

/// Describes every edge metric and creates the edge's counters at 0.
pub fn register_edge(edge_id: &str) {
    describe(EDGE_METRICS);
    register_auth();
    for c in [EDGE_FEED_CONNECTS_TOTAL, EDGE_RESYNCS_TOTAL] {
        metrics::counter!(c, "edge" => edge_id.to_string()).increment(0);
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Installs the Prometheus recorder once per process and returns its handle
/// (later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, Error> {
    let _guard = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let latency = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .map_err(|e| Error(e.to_string()))?
        // Per-edge gauges of an edge that left stop being set; drop them
        // after a while instead of exporting a stale value forever.
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(120)),
        )
        .install_recorder()
        .map_err(|e| Error(e.to_string()))?;
    let _ = HANDLE.set(handle.clone());
    Ok(HANDLE.get().cloned().unwrap_or(handle))
}
