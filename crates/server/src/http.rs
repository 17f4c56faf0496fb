//! HTTP endpoints: `/healthz`, `/readyz` and `/.well-known/jwks.json`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use openraft::ServerState;

use crate::convert;
use crate::node::Node;

/// The HTTP router for `node`.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(node)
}

/// Live while Raft runs.
async fn healthz(State(node): State<Node>) -> impl IntoResponse {
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
async fn readyz(State(node): State<Node>) -> impl IntoResponse {
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
async fn jwks(State(node): State<Node>) -> impl IntoResponse {
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
