//! HTTP endpoints: `/healthz`, `/readyz`, `/.well-known/jwks.json`,
//! `/metrics`, the JSON status (`/api/v1/status`, see docs/status-api.md)
//! the dashboard (`/ui`, assets compiled in) and RFC 7009 revocation
//! (`/oauth2/revoke`, [`crate::oauth`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use openraft::ServerState;

use crate::convert;
use crate::node::Node;
use veto_proto as pb;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct Http {
    pub(crate) node: Node,
    pub(crate) hub: crate::feed::Hub,
    metrics: veto_telemetry::Handle,
}

/// The HTTP router for `node`.
pub fn router(node: Node, hub: crate::feed::Hub, metrics: veto_telemetry::Handle) -> Router {
    let st = Http { node, hub, metrics };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/status", get(status_json))
        .route("/ui", get(ui_index))
        .route("/ui/", get(ui_index))
        .route("/ui/app.js", get(ui_js))
        .route("/ui/style.css", get(ui_css))
        .route(crate::oauth::REVOKE_PATH, post(crate::oauth::revoke))
        .with_state(st)
}

/// Prometheus text exposition; Raft and per-edge gauges are sampled now.
async fn metrics_text(State(h): State<Http>) -> impl IntoResponse {
    use veto_telemetry as t;
    use veto_telemetry::metrics::gauge;
    let m = h.node.metrics();
    gauge!(t::RAFT_TERM).set(m.current_term as f64);
    gauge!(t::RAFT_LEADER).set(m.current_leader.unwrap_or(0) as f64);
    gauge!(t::RAFT_IS_LEADER).set(if m.state == ServerState::Leader {
        1.0
    } else {
        0.0
    });
    gauge!(t::RAFT_COMMIT_INDEX)
        .set(m.local_committed.as_ref().map(|l| l.index).unwrap_or(0) as f64);
    gauge!(t::RAFT_APPLIED_INDEX).set(m.last_applied.as_ref().map(|l| l.index).unwrap_or(0) as f64);
    let local = h.hub.local_edges().edges;
    gauge!(t::EDGES_CONNECTED).set(local.iter().filter(|e| e.connected).count() as f64);
    let dir = h.node.options().data_dir.clone();
    if let Ok(bytes) = tokio::task::spawn_blocking(move || dir_size(&dir)).await {
        gauge!(t::ROCKSDB_SIZE_BYTES).set(bytes as f64);
    }
    // Only edges streaming now: a retired edge's series go idle and are
    // dropped by the exporter (see veto_telemetry::install).
    for e in local.into_iter().filter(|e| e.connected) {
        gauge!(t::EDGE_LAG_REVISIONS, "edge" => e.edge_id.clone()).set(e.lag_revisions as f64);
        if e.fresh_age_ms >= 0.0 {
            gauge!(t::EDGE_FRESH_AGE_SECONDS, "edge" => e.edge_id).set(e.fresh_age_ms / 1e3);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
}

const UI_HTML: &str = include_str!("../ui/index.html");
const UI_JS: &str = include_str!("../ui/app.js");
const UI_CSS: &str = include_str!("../ui/style.css");

async fn ui_index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        UI_HTML,
    )
}

async fn ui_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        UI_JS,
    )
}

async fn ui_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        UI_CSS,
    )
}

/// The cluster as this node sees it, with every member's edges and the
/// merged propagation of the last minutes (docs/status-api.md).
async fn status_json(State(h): State<Http>) -> impl IntoResponse {
    let m = h.node.metrics();
    let crate::feed::ClusterView { edges, seconds, .. } = h.hub.cluster_view().await;
    let edges: Vec<pb::EdgeInfo> = edges.into_iter().map(|(e, _)| e).collect();
    let totals = veto_proto::edges::verify_totals(&edges);
    let series: Vec<serde_json::Value> = seconds
        .iter()
        .map(|s| {
            serde_json::json!({
                "t_ms": s.unix_s * 1000, "count": s.count(),
                "p50_ms": s.quantile_ms(0.5), "p99_ms": s.quantile_ms(0.99), "max_ms": s.max_ms(),
            })
        })
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let now_s = (now_ms / 1000) as i64;
    // The figures the gauges were last set from (recomputed every 5 s);
    // before the first, counted here in pages so applies never wait long.
    let counted = h.node.usage_totals().unwrap_or_else(|| {
        let mut t = veto_core::usage::UsageTotals::default();
        let mut after = None;
        while let Some(next) = h
            .node
            .state()
            .read(|s| s.usage_totals_page(now_s, after, crate::rotation::USAGE_PAGE, &mut t))
        {
            after = Some(next);
        }
        t
    });
    let usage = usage_json(&counted);
    let keys = h.node.state().read(|s| keys_json(s, now_s));
    let body = serde_json::json!({
        "node_id": h.node.id(),
        "now_ms": now_ms,
        "leader": m.current_leader,
        "term": m.current_term,
        "members": members_json(&h, &m),
        "commit_index": m.local_committed.as_ref().map(|l| l.index).unwrap_or(0),
        "applied_index": m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
        "edges": edges_json(edges),
        "verify_totals": totals,
        "propagation": {"window_s": veto_proto::propagation::WINDOW_S, "series": series},
        "usage": usage,
        "keys": keys,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
}

/// Token usage over the live records of this node's replicated state (the
/// figures of the `veto_tokens_*` gauges).
fn usage_json(t: &veto_core::usage::UsageTotals) -> serde_json::Value {
    serde_json::json!({
        "active": t.active, "used": t.used, "never_used": t.never_used,
        "least_privilege": t.least_privilege,
        "least_privilege_ratio": t.least_privilege_ratio(),
        "revoked_attempts": t.revoked_attempts, "verifies": t.verifies,
    })
}

/// The signing key in use, when it was activated and when the rotation
/// policy replaces it (null without a policy), and a published successor.
/// A key activated before activation times were recorded has no age.
fn keys_json(s: &veto_core::State, now: i64) -> serde_json::Value {
    use veto_core::state::KeyState;
    let active = s.active_key();
    let activated = active.map(|k| k.activated_at).filter(|t| *t > 0);
    let next = match (s.rotation_policy(), active) {
        (Some(p), Some(k)) => Some(p.next_activation(k.activated_at)),
        _ => None,
    };
    let pending = s
        .keys()
        .filter(|k| k.state == KeyState::Published)
        .max_by_key(|k| k.published_revision)
        .map(|k| serde_json::json!({"kid": k.kid.to_string(), "published_unix": k.published_at}));
    serde_json::json!({
        "active_kid": active.map(|k| k.kid.to_string()),
        "active_key_age_seconds": activated.map(|t| now.saturating_sub(t).max(0)),
        "last_rotation_unix": activated,
        "next_rotation_unix": next,
        "pending": pending,
    })
}

/// Every member with its role as this node sees it and, on the leader,
/// how far its log matches.
fn members_json(
    h: &Http,
    m: &openraft::RaftMetrics<veto_store::TypeConfig>,
) -> Vec<serde_json::Value> {
    let mem = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = mem.voter_ids().collect();
    mem.nodes()
        .map(|(id, n)| {
            let voter = voters.contains(id);
            let state = if m.current_leader == Some(*id) {
                "leader"
            } else if *id == h.node.id() && m.state == ServerState::Candidate {
                "candidate"
            } else if !voter {
                "learner"
            } else if m.current_leader.is_some() {
                "follower"
            } else {
                "unknown"
            };
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.as_ref().map(|l| l.index));
            serde_json::json!({
                "id": id, "addr": n.addr, "voter": voter, "state": state,
                "matched_index": matched,
            })
        })
        .collect()
}

/// Every reported edge entry (moved edges under each node), sorted by id.
fn edges_json(edges: Vec<pb::EdgeInfo>) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = edges
        .into_iter()
        .map(|e| {
            let verify: std::collections::BTreeMap<_, _> = e.verify_counts.into_iter().collect();
            serde_json::json!({
                "edge_id": e.edge_id, "node_id": e.node_id, "connected": e.connected,
                "applied_revision": e.applied_revision, "lag_revisions": e.lag_revisions,
                "lag_ms": e.lag_ms, "fresh_age_ms": e.fresh_age_ms, "verify": verify,
            })
        })
        .collect();
    out.sort_by(|a, b| a["edge_id"].as_str().cmp(&b["edge_id"].as_str()));
    out
}

/// Bytes of the regular files under `dir` (RocksDB files, WAL, snapshots);
/// unreadable entries count as 0.
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a data directory is two levels deep.
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 64 {
            break;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Live while Raft runs.
async fn healthz(State(Http { node, .. }): State<Http>) -> impl IntoResponse {
    match node.metrics().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {e}\n"),
        ),
    }
}

/// Ready once the node is a member, knows a leader and has applied what it
/// knows to be committed: `Ok(applied)`, or why not. `/readyz` and the gRPC
/// health service both answer from this.
pub(crate) fn readiness(node: &Node) -> Result<u64, String> {
    let m = node.metrics();
    let member = m
        .membership_config
        .membership()
        .get_node(&node.id())
        .is_some();
    let committed = m.local_committed.as_ref().map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
    if !member {
        Err("not a member of an initialised cluster".to_string())
    } else if m.current_leader.is_none() || m.state == ServerState::Candidate {
        Err("no leader known".to_string())
    } else if applied < committed {
        Err(format!("catching up: applied {applied} of {committed}"))
    } else {
        Ok(applied)
    }
}

async fn readyz(State(Http { node, .. }): State<Http>) -> impl IntoResponse {
    match readiness(&node) {
        Ok(applied) => (StatusCode::OK, format!("ready: applied {applied}\n")),
        Err(w) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {w}\n")),
    }
}

/// The public halves of every key that verifies tokens, as an RFC 7517 set.
async fn jwks(State(Http { node, .. }): State<Http>) -> impl IntoResponse {
    let (keys, lead): (Vec<serde_json::Value>, Option<u64>) = node.state().read(|s| {
        (
            s.keys()
                .filter(|k| k.state.accepts_tokens())
                .map(convert::jwk)
                .collect(),
            s.rotation_policy().map(|p| p.publish_lead_seconds),
        )
    });
    // A cache honouring this header always sees a key before it signs:
    // keys rotating themselves are published `lead` seconds ahead.
    let max_age = lead.map_or(60, |l| (l / 2).clamp(1, 60));
    (
        [
            (
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/jwk-set+json"),
            ),
            (
                header::CACHE_CONTROL,
                axum::http::HeaderValue::from_str(&format!("max-age={max_age}"))
                    .unwrap_or_else(|_| axum::http::HeaderValue::from_static("max-age=60")),
            ),
        ],
        serde_json::json!({ "keys": keys }).to_string(),
    )
}
