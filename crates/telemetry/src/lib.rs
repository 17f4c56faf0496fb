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
/// Leak reports by outcome: accepted, unknown_key, bad_signature,
/// malformed, too_large, busy, unavailable, error.
pub const LEAK_REPORTS_TOTAL: &str = "veto_leak_reports_total";
/// The outcomes [`LEAK_REPORTS_TOTAL`] is labelled with.
pub const LEAK_REPORT_OUTCOMES: [&str; 8] = [
    "accepted",
    "unknown_key",
    "bad_signature",
    "malformed",
    "too_large",
    "busy",
    "unavailable",
    "error",
];
/// Tokens in accepted-signature leak reports by outcome: revoked,
/// already_revoked, not_a_veto_token, error.
pub const LEAK_TOKENS_TOTAL: &str = "veto_leak_tokens_total";
/// The outcomes [`LEAK_TOKENS_TOTAL`] is labelled with.
pub const LEAK_TOKEN_OUTCOMES: [&str; 4] =
    ["revoked", "already_revoked", "not_a_veto_token", "error"];
/// Leak report receipt to every live edge refusing the token (one sample
/// per token a report revoked).
pub const LEAK_TIME_TO_DEAD_SECONDS: &str = "veto_leak_time_to_dead_seconds";
/// Leaked tokens revoked whose refusal at every edge was not confirmed
/// within `leak_reports.wait_edges_ms` (edges behind or unknown, or none).
pub const LEAK_UNCONFIRMED_TOTAL: &str = "veto_leak_unconfirmed_total";
/// Age of the active signing key, seconds since its activation.
pub const SIGNING_KEY_AGE_SECONDS: &str = "veto_signing_key_age_seconds";
/// When the rotation policy activates the next key (unix seconds; 0 when
/// keys rotate only by hand).
pub const SIGNING_KEY_NEXT_ROTATION_TIMESTAMP: &str =
    "veto_signing_key_next_rotation_timestamp_seconds";
/// Key stages the rotation schedule performed (leader), by stage.
pub const KEY_ROTATION_STAGES_TOTAL: &str = "veto_key_rotation_stages_total";
/// Activations the schedule forced although edges lacked the key.
pub const KEY_ROTATION_FORCED_TOTAL: &str = "veto_key_rotation_forced_total";
/// Audit events this node's retention dropped.
pub const AUDIT_PRUNED_TOTAL: &str = "veto_audit_pruned_total";
/// Bytes of audit trail this node keeps.
pub const AUDIT_RETAINED_BYTES: &str = "veto_audit_retained_bytes";
/// Audit events this node keeps.
pub const AUDIT_RETAINED_EVENTS: &str = "veto_audit_retained_events";
/// Active tokens (not revoked, not expired) in the replicated state.
pub const TOKENS_ACTIVE: &str = "veto_tokens_active";
/// Active tokens never verified valid at any edge.
pub const TOKENS_NEVER_USED: &str = "veto_tokens_never_used";
/// Share (0..1) of used active tokens every granted scope of which some
/// request required.
pub const TOKENS_LEAST_PRIVILEGE_RATIO: &str = "veto_tokens_least_privilege_ratio";
/// Use attempts of revoked tokens recorded over the live token records
/// (replicated: the same on every node; drops when records are swept).
pub const REVOKED_TOKEN_USE_ATTEMPTS: &str = "veto_revoked_token_use_attempts";
/// Use attempts of revoked tokens recorded since the cluster began, from
/// the replicated state: a counter no sweep lowers (what alerts use).
pub const REVOKED_TOKEN_USE_ATTEMPTS_TOTAL: &str = "veto_revoked_token_use_attempts_total";
/// Usage deltas this node folded into the replicated state.
pub const USAGE_DELTAS_TOTAL: &str = "veto_usage_deltas_total";
/// Verifies in edge usage reports this node dropped (its pending set was
/// full).
pub const USAGE_DROPPED_TOTAL: &str = "veto_usage_dropped_total";
/// `RecordUsage` entries this node proposed.
pub const USAGE_COMMANDS_TOTAL: &str = "veto_usage_commands_total";
/// Edge: tokens with usage not yet reported to a server.
pub const EDGE_USAGE_TRACKED: &str = "veto_edge_usage_tracked_tokens";
/// Edge: verifies not tracked because the usage table was full.
pub const EDGE_USAGE_DROPPED_TOTAL: &str = "veto_edge_usage_dropped_total";
/// Calls refused by authentication, authorisation or a write rate limit.
pub const AUTH_DENIED_TOTAL: &str = "veto_auth_denied_total";
/// The reasons [`AUTH_DENIED_TOTAL`] is labelled with.
pub const AUTH_DENIED_REASONS: [&str; 3] = ["unauthenticated", "permission_denied", "rate_limited"];

/// `veto agent`: tokens it wrote to its file from a refresh (RefreshPresented).
pub const AGENT_RENEWALS_TOTAL: &str = "veto_agent_renewals_total";
/// `veto agent`: tokens it wrote to its file from an Issue.
pub const AGENT_ISSUED_TOTAL: &str = "veto_agent_issued_total";
/// `veto agent`: failed attempts, by reason.
pub const AGENT_FAILURES_TOTAL: &str = "veto_agent_failures_total";
/// The reasons [`AGENT_FAILURES_TOTAL`] is labelled with.
pub const AGENT_FAILURE_REASONS: [&str; 7] = [
    "server_unreachable",
    "server_error",
    "refused",
    "edge_unreachable",
    "edge_rejected",
    "file",
    "no_source",
];
/// `veto agent`: `exp` (unix seconds) of the token in its file; 0 when none.
pub const AGENT_TOKEN_EXPIRY: &str = "veto_agent_token_expiry_timestamp_seconds";
/// `veto agent`: seconds until it refreshes the token in its file
/// (negative when overdue; 0 when there is none).
pub const AGENT_NEXT_REFRESH_SECONDS: &str = "veto_agent_next_refresh_seconds";

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
    (SIGNING_KEY_AGE_SECONDS, Kind::Gauge, SECONDS, "Age of the active signing key (since activation)."),
    (SIGNING_KEY_NEXT_ROTATION_TIMESTAMP, Kind::Gauge, SECONDS, "When the rotation policy activates the next signing key (unix; 0: manual rotation)."),
    (KEY_ROTATION_STAGES_TOTAL, Kind::Counter, None, "Key stages (publish, activate, retire) the rotation schedule performed on this node as leader."),
    (KEY_ROTATION_FORCED_TOTAL, Kind::Counter, None, "Activations forced by the activation timeout although edges lacked the key."),
    (AUDIT_PRUNED_TOTAL, Kind::Counter, None, "Audit events dropped by this node's retention."),
    (AUDIT_RETAINED_BYTES, Kind::Gauge, Some(metrics::Unit::Bytes), "Bytes of audit trail kept on this node."),
    (AUDIT_RETAINED_EVENTS, Kind::Gauge, None, "Audit events kept on this node."),
    (TOKENS_ACTIVE, Kind::Gauge, None, "Active tokens (not revoked, not expired) in the replicated state."),
    (TOKENS_NEVER_USED, Kind::Gauge, None, "Active tokens never verified valid at any edge."),
    (TOKENS_LEAST_PRIVILEGE_RATIO, Kind::Gauge, None, "Share of used active tokens whose every granted scope some request required."),
    (REVOKED_TOKEN_USE_ATTEMPTS, Kind::Gauge, None, "Use attempts of revoked tokens over the live token records (replicated)."),
    (REVOKED_TOKEN_USE_ATTEMPTS_TOTAL, Kind::Counter, None, "Use attempts of revoked tokens recorded since the cluster began (replicated; sweeps never lower it)."),
    (USAGE_DELTAS_TOTAL, Kind::Counter, None, "Edge usage deltas this node folded into the replicated state."),
    (USAGE_DROPPED_TOTAL, Kind::Counter, None, "Verifies in edge usage reports dropped because this node's pending set was full."),
    (USAGE_COMMANDS_TOTAL, Kind::Counter, None, "RecordUsage log entries this node proposed."),
    (LEAK_REPORTS_TOTAL, Kind::Counter, None, "Leak reports (GitHub secret scanning) received, by outcome."),
    (LEAK_TOKENS_TOTAL, Kind::Counter, None, "Tokens in signed leak reports, by outcome."),
    (LEAK_TIME_TO_DEAD_SECONDS, Kind::Histogram, SECONDS, "Leak report receipt to every live edge refusing the token."),
    (LEAK_UNCONFIRMED_TOTAL, Kind::Counter, None, "Leaked tokens revoked but not confirmed at every edge in time."),
];

#[rustfmt::skip]
const EDGE_METRICS: &[Described] = &[
    (VERIFY_TOTAL, Kind::Counter, None, "Verifies answered, by outcome."),
    (EDGE_APPLIED_REVISION, Kind::Gauge, None, "The edge's applied revision."),
    (EDGE_FEED_CONNECTS_TOTAL, Kind::Counter, None, "Feed sessions the edge opened (connects and failovers)."),
    (EDGE_RESYNCS_TOTAL, Kind::Counter, None, "Snapshot resyncs at the edge."),
    (EDGE_FRESHNESS_AGE_SECONDS, Kind::Gauge, SECONDS, "The edge's own view: seconds since its last answered probe."),
    (EDGE_USAGE_TRACKED, Kind::Gauge, None, "Tokens with usage not yet reported to a server."),
    (EDGE_USAGE_DROPPED_TOTAL, Kind::Counter, None, "Verifies not tracked because the usage table was full."),
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
    for stage in ["publish", "activate", "retire"] {
        metrics::counter!(KEY_ROTATION_STAGES_TOTAL, "stage" => stage).increment(0);
    }
    metrics::counter!(KEY_ROTATION_FORCED_TOTAL).increment(0);
    metrics::counter!(USAGE_DELTAS_TOTAL).increment(0);
    metrics::counter!(USAGE_COMMANDS_TOTAL).increment(0);
    metrics::counter!(USAGE_DROPPED_TOTAL).increment(0);
    metrics::counter!(AUDIT_PRUNED_TOTAL).increment(0);
    for o in LEAK_REPORT_OUTCOMES {
        metrics::counter!(LEAK_REPORTS_TOTAL, "outcome" => o).increment(0);
    }
    for o in LEAK_TOKEN_OUTCOMES {
        metrics::counter!(LEAK_TOKENS_TOTAL, "outcome" => o).increment(0);
    }
    for c in [
        ISSUED_TOTAL,
        FEED_CONNECTS_TOTAL,
        FEED_SNAPSHOTS_TOTAL,
        FEED_RESYNCS_TOTAL,
        LEAK_UNCONFIRMED_TOTAL,
    ] {
        metrics::counter!(c).increment(0);
    }
}

/// Describes every `veto agent` metric and creates its counters at 0.
pub fn register_agent() {
    metrics::describe_counter!(
        AGENT_RENEWALS_TOTAL,
        "Tokens written to the file from a refresh."
    );
    metrics::describe_counter!(
        AGENT_ISSUED_TOTAL,
        "Tokens written to the file from an Issue."
    );
    metrics::describe_counter!(
        AGENT_FAILURES_TOTAL,
        "Failed attempts to obtain, check or write a token, by reason."
    );
    metrics::describe_gauge!(
        AGENT_TOKEN_EXPIRY,
        "Expiry (unix seconds) of the token in the file; 0 when none."
    );
    metrics::describe_gauge!(
        AGENT_NEXT_REFRESH_SECONDS,
        metrics::Unit::Seconds,
        "Seconds until the token in the file is refreshed (negative: overdue)."
    );
    metrics::counter!(AGENT_RENEWALS_TOTAL).increment(0);
    metrics::counter!(AGENT_ISSUED_TOTAL).increment(0);
    for r in AGENT_FAILURE_REASONS {
        metrics::counter!(AGENT_FAILURES_TOTAL, "reason" => r).increment(0);
    }
}

/// Describes every edge metric and creates the edge's counters at 0.
pub fn register_edge(edge_id: &str) {
    describe(EDGE_METRICS);
    register_auth();
    for c in [
        EDGE_FEED_CONNECTS_TOTAL,
        EDGE_RESYNCS_TOTAL,
        EDGE_USAGE_DROPPED_TOTAL,
    ] {
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
