//! RFC 7009 token revocation (`POST /oauth2/revoke`): a client presents a
//! token and the cluster revokes it, waiting (bounded) until every edge has
//! applied the revoke. It is `TokenService.Revoke` by token, run in
//! process with the caller's identity, so the same checks, audit actor,
//! leader forwarding and propagation measurement apply.
//!
//! Authority: under TLS only an operator certificate may revoke (the HTTP
//! layer already refuses callers without a certificate the CA signed); an
//! `--insecure` node has no identities and serves anyone, as its gRPC API
//! does.

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;
use tonic::Code;
use veto_auth::http::Peer;
use veto_auth::{oauth, Role};
use veto_proto as pb;
use veto_proto::token_service_server::TokenService;

use crate::http::Http;

/// The revocation endpoint's path.
pub const REVOKE_PATH: &str = "/oauth2/revoke";

/// The `reason` recorded in the audit for revokes through this endpoint.
pub const REVOKE_REASON: &str = "RFC 7009 revocation request";

/// `POST /oauth2/revoke` with `token` (and an optional `token_type_hint`,
/// which is ignored: veto has one kind of token) in a form body.
pub async fn revoke(State(h): State<Http>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let identity = peer.and_then(|p| p.identity);
    if h.node.transport().is_tls() && identity.as_ref().map(|i| i.role) != Some(Role::Operator) {
        let mut r = oauth::error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "revocation needs an operator certificate",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Mutual-TLS realm=\"veto\""),
        );
        return r;
    }
    let token = match oauth::token_param(req).await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let mut call = tonic::Request::new(pb::RevokeRequest {
        token: token.clone(),
        reason: REVOKE_REASON.into(),
        wait_for: pb::WaitFor::AllEdges as i32,
        ..Default::default()
    });
    if let Some(id) = identity {
        call.extensions_mut().insert(id);
    }
    let svc = crate::token_service::Service::new(h.node.clone(), h.hub.clone());
    match TokenService::revoke(&svc, call).await {
        Ok(r) => {
            let r = r.into_inner();
            let body = json!({
                "revoked": true,
                "already_revoked": r.already_revoked,
                "revision": r.revision,
                "commit_ms": r.commit_ms,
                "propagation_ms": r.propagation_ms,
                "edges_confirmed": r.edges_confirmed,
                "edges_behind": r.edges_behind.len(),
            });
            oauth::answer(body)
        }
        // RFC 7009 §2.2: an invalid token is not an error; there is
        // nothing to revoke.
        Err(s)
            if matches!(
                s.code(),
                Code::InvalidArgument | Code::Unauthenticated | Code::NotFound
            ) =>
        {
            oauth::answer(json!({ "revoked": false, "reason": s.message() }))
        }
        Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
            oauth::unavailable(s.message())
        }
        Err(s) => oauth::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            s.message(),
        ),
    }
}
