//! HTTP endpoints: `/healthz`, `/readyz` and `/.well-known/jwks.json`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::ServerState;

use crate::convert;
use crate::node::Node;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct Http {
    node: Node,
    hub: crate::feed::Hub,
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
    for e in h.hub.local_edges().edges {
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
/// knows to be committed.
async fn readyz(State(Http { node, .. }): State<Http>) -> impl IntoResponse {
    let m = node.metrics();
    let member = m
        .membership_config
        .membership()
        .get_node(&node.id())
        .is_some();
    let committed = m.local_committed.as_ref().map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
    let why = if !member {
        Some("not a member of an initialised cluster".to_string())
    } else if m.current_leader.is_none() || m.state == ServerState::Candidate {
        Some("no leader known".to_string())
    } else if applied < committed {
        Some(format!("catching up: applied {applied} of {committed}"))
    } else {
        None
    };
    match why {
        None => (StatusCode::OK, format!("ready: applied {applied}\n")),
        Some(w) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {w}\n")),
    }
}

/// The public halves of every key that verifies tokens, as an RFC 7517 set.
async fn jwks(State(Http { node, .. }): State<Http>) -> impl IntoResponse {
    let keys: Vec<serde_json::Value> = node.state().read(|s| {
        s.keys()
            .filter(|k| k.state.accepts_tokens())
            .map(convert::jwk)
            .collect()
    });
    (
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        serde_json::json!({ "keys": keys }).to_string(),
    )
}
