//! The edge's HTTP hooks for gateways and OAuth clients:
//!
//! - `/v1/forward-auth` (any method, and any path below it): the
//!   forward-auth form nginx `auth_request`, Traefik `forwardAuth` and Caddy
//!   `forward_auth` expect — the status decides (200, 401, 403, 503), the
//!   identity rides in response headers, the original method and URI come
//!   from one configured header pair (`X-Forwarded-Method`/`-Uri` by
//!   default, as Traefik and Caddy send them; `X-Original-*` on request),
//!   and the query may name `scope` and `audience` for this hook. Route
//!   rules see the path in canonical form; one that has none is refused.
//! - `POST /oauth2/introspect`: RFC 7662 token introspection, with veto's
//!   revision and staleness as extension fields.

use std::collections::HashMap;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use veto_core::token::Requirements;
use veto_feed::Outcome;

use veto_auth::oauth;

use crate::gateway::{Decision, Denial, Gateway, Required};
use crate::service::Http;

/// The forward-auth path (and prefix).
pub const FORWARD_AUTH_PATH: &str = "/v1/forward-auth";
/// The RFC 7662 introspection path.
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";

/// The request the gateway is asking about: its method and URI, from the
/// configured header pair only ([`crate::gateway::ForwardHeaders`]), else
/// the forward-auth request's own method and the path below the hook.
fn original(g: &Gateway, h: &HeaderMap, method: &Method, uri: &Uri) -> (String, String) {
    let (m_name, u_name) = g.forward_headers.names();
    let get = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let m = get(m_name).unwrap_or(method.as_str()).to_owned();
    let path = match get(u_name) {
        Some(u) => u.to_owned(),
        None => match uri.path().strip_prefix(FORWARD_AUTH_PATH).unwrap_or("") {
            "" => "/".to_owned(),
            rest => rest.to_owned(),
        },
    };
    (m, path)
}

/// A 400 `invalid_request` refusal, with its RFC 6750 challenge.
fn invalid_request(g: &Gateway, why: &str) -> Denial {
    Denial {
        status: 400,
        www_authenticate: Some(format!(
            "Bearer realm=\"{}\", error=\"invalid_request\", error_description=\"{why}\"",
            g.realm
        )),
        reason: why.to_owned(),
        outcome: None,
        retry_after: None,
    }
}

fn refusal(d: Denial) -> Response {
    let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut r = (status, format!("{}\n", d.reason)).into_response();
    if let Some(w) = d
        .www_authenticate
        .and_then(|w| HeaderValue::from_str(&w).ok())
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, w);
    }
    if let Some(s) = d.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// The forward-auth hook.
pub(crate) async fn forward_auth(
    State(s): State<Http>,
    Query(q): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let g = &s.h.options().gateway;
    // One credential only (RFC 6750 §3.1): the upstream might read another.
    let mut values = headers.get_all(g.token_header.as_str()).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return refusal(invalid_request(g, "more than one token header"));
    }
    let token = first.and_then(|v| v.to_str().ok()).and_then(|v| g.token(v));
    let Some(token) = token else {
        return refusal(g.no_token());
    };
    let (m, path) = original(g, &headers, &method, &uri);
    let (qs, qa) = (q.get("scope"), q.get("audience"));
    let explicit = (qs.is_some() || qa.is_some())
        .then(|| Required::parse(qs.map(String::as_str), qa.map(String::as_str)));
    let req = match g.requirements(&m, &path, explicit) {
        Ok(req) => req,
        Err(d) => return refusal(d),
    };
    let v = s.h.verify(
        token,
        &Requirements {
            audience: req.audience.as_deref(),
            scopes: &req.scopes,
        },
    );
    match g.decide(&v, &req, s.h.revision()) {
        Decision::Allow(a) => {
            let mut r = StatusCode::OK.into_response();
            for (k, v) in a.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        Decision::Deny(d) => refusal(d),
    }
}

/// RFC 7662 introspection: `token` (and an ignored `token_type_hint`) in
/// an `application/x-www-form-urlencoded` body.
pub(crate) async fn introspect(State(s): State<Http>, req: Request) -> Response {
    let token = match oauth::token_param(req).await {
        Ok(t) => t,
        Err(answer) => return answer,
    };
    let v = s.h.verify_any_audience(&token);
    let revision = s.h.revision();
    if v.outcome == Outcome::Stale {
        return oauth::unavailable(&v.reason);
    }
    let fresh_age_ms =
        s.h.freshness()
            .age
            .map(|a| a.as_secs_f64() * 1e3)
            .unwrap_or(-1.0);
    let body = match (&v.outcome, &v.claims) {
        (Outcome::Valid, Some(c)) => {
            let mut b = json!({
                "active": true,
                "scope": c.scope,
                "sub": c.sub,
                "exp": c.exp,
                "iat": c.iat,
                "nbf": c.nbf,
                "jti": c.jti.to_string(),
                "token_type": "Bearer",
                "veto_family": c.fam.to_string(),
                "veto_revision": revision,
                "veto_stale": v.stale,
                "veto_fresh_age_ms": fresh_age_ms,
            });
            if let (Some(aud), Some(o)) = (&c.aud, b.as_object_mut()) {
                o.insert("aud".into(), json!(aud));
            }
            if let (Some(kid), Some(o)) = (v.kid, b.as_object_mut()) {
                o.insert("veto_kid".into(), json!(kid.to_string()));
            }
            b
        }
        // RFC 7662 §2.2: nothing more about a token that is not active.
        _ => json!({ "active": false, "veto_revision": revision, "veto_stale": v.stale }),
    };
    oauth::answer(body)
}
