//! Envoy's external authorization `Check`, called by a client generated
//! from Envoy's published protos (`envoy-types`), never from veto's code:
//! the same cases nginx sees, in ext_authz's terms.

use std::collections::HashMap;

use anyhow::{Context, Result};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tonic::transport::Channel;
use veto_testkit::{Cluster, ClusterOptions};

use crate::{gateway_edge, issue, jti, make_stale, revoke};

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

/// A check of `GET path` carrying `token` with per-route `extensions`.
fn check_request(path: &str, token: Option<&str>, extensions: &[(&str, &str)]) -> CheckRequest {
    let mut headers = HashMap::from([
        ("host".to_owned(), "shop.example".to_owned()),
        ("x-veto-subject".to_owned(), "mallory".to_owned()),
        ("x-veto-stale".to_owned(), "true".to_owned()),
    ]);
    if let Some(t) = token {
        headers.insert("authorization".into(), format!("Bearer {t}"));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

async fn check(
    c: &mut AuthorizationClient<Channel>,
    path: &str,
    token: Option<&str>,
    extensions: &[(&str, &str)],
) -> Result<CheckResponse> {
    Ok(c.check(check_request(path, token, extensions))
        .await?
        .into_inner())
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map(|s| s.code).unwrap_or(-1)
}

/// The headers an OK answer adds upstream, and those it removes.
fn ok_headers(r: &CheckResponse) -> Option<(HashMap<String, String>, Vec<String>)> {
    match r.http_response.as_ref()? {
        HttpResponse::OkResponse(ok) => Some((
            ok.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
            ok.headers_to_remove.clone(),
        )),
        _ => None,
    }
}

/// A denial's HTTP status and headers.
fn denied(r: &CheckResponse) -> Option<(i32, HashMap<String, String>)> {
    match r.http_response.as_ref()? {
        HttpResponse::DeniedResponse(d) => Some((
            d.status.as_ref().map(|s| s.code).unwrap_or(0),
            d.headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect(),
        )),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_check_allows_refuses_and_fails_closed() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let node = &cluster.nodes[2];
    let reader = issue(node, "svc:orders", &["read"], None).await?;
    let billing = issue(node, "svc:billing", &["read", "write"], Some("billing")).await?;
    let edge = gateway_edge(node, "envoy-edge").await?;
    let addr = edge.grpc_addr.context("edge without gRPC")?.to_string();
    let mut c = AuthorizationClient::new(veto_testkit::channel(&addr)?);

    // Valid: OK, the identity upstream (overwriting a forged header), the
    // token header removed (`strip_token_header`).
    let r = check(&mut c, "/orders/7", Some(&reader.token), &[]).await?;
    assert_eq!(code(&r), OK, "{r:?}");
    let (added, removed) = ok_headers(&r).context("no OkHttpResponse")?;
    let rec = reader.record.clone().unwrap_or_default();
    assert_eq!(
        added.get("x-veto-subject").map(String::as_str),
        Some("svc:orders")
    );
    assert_eq!(added.get("x-veto-scopes").map(String::as_str), Some("read"));
    assert_eq!(added.get("x-veto-jti"), Some(&rec.jti));
    assert_eq!(added.get("x-veto-kid"), Some(&rec.kid));
    assert!(added.contains_key("x-veto-revision"), "{added:?}");
    assert_eq!(
        removed,
        vec!["authorization".to_owned()],
        "the token header is removed upstream"
    );
    assert_eq!(
        added.get("x-veto-stale").map(String::as_str),
        Some("false"),
        "overwrites a forged mark"
    );
    let forged = r
        .http_response
        .as_ref()
        .and_then(|h| match h {
            HttpResponse::OkResponse(ok) => ok
                .headers
                .iter()
                .find(|h| h.header.as_ref().is_some_and(|v| v.key == "x-veto-subject")),
            _ => None,
        })
        .map(|h| h.append_action);
    assert_eq!(
        forged,
        Some(2),
        "OVERWRITE_IF_EXISTS_OR_ADD replaces a forged header"
    );

    // No token: 401 with the RFC 6750 challenge.
    let r = check(&mut c, "/orders/7", None, &[]).await?;
    assert_eq!(code(&r), UNAUTHENTICATED, "{r:?}");
    let (status, h) = denied(&r).context("no DeniedHttpResponse")?;
    assert_eq!(status, 401);
    assert_eq!(
        h.get("www-authenticate").map(String::as_str),
        Some("Bearer realm=\"veto\"")
    );

    // Scopes: from the route's context extensions, else the edge's rules.
    let r = check(
        &mut c,
        "/orders/7",
        Some(&reader.token),
        &[("veto_scopes", "write")],
    )
    .await?;
    assert_eq!(code(&r), PERMISSION_DENIED, "{r:?}");
    let (status, h) = denied(&r).context("no DeniedHttpResponse")?;
    assert_eq!(status, 403);
    let w = h.get("www-authenticate").cloned().unwrap_or_default();
    assert!(
        w.contains("error=\"insufficient_scope\"") && w.contains("scope=\"write\""),
        "{w}"
    );
    for p in [
        "/admin",
        "//admin",
        "/x/../admin/keys",
        "/%61dmin",
        "/admin%2Fkeys",
    ] {
        let r = check(&mut c, p, Some(&reader.token), &[]).await?;
        assert_eq!(code(&r), PERMISSION_DENIED, "{p}: {r:?}");
        assert_eq!(denied(&r).map(|d| d.0), Some(403), "{p}: {r:?}");
    }

    // Audience: a token for `billing` passes only where the route names it.
    let b = Some(billing.token.as_str());
    let r = check(
        &mut c,
        "/pay",
        b,
        &[("veto_audience", "billing"), ("veto_scopes", "write")],
    )
    .await?;
    assert_eq!(code(&r), OK, "{r:?}");
    let r = check(&mut c, "/pay", b, &[("veto_audience", "shipping")]).await?;
    assert_eq!(code(&r), UNAUTHENTICATED, "{r:?}");
    let (status, h) = denied(&r).context("no DeniedHttpResponse")?;
    assert_eq!(status, 401);
    assert!(
        h.get("www-authenticate")
            .is_some_and(|w| w.contains("wrong_audience")),
        "{h:?}"
    );

    // Revoked: denied from ack + B on.
    let ack = revoke(&cluster.nodes[0], &jti(&reader)).await?;
    let after = crate::refused_from_ack_plus_bound(ack, || {
        let mut c = c.clone();
        let t = reader.token.clone();
        async move { Ok(code(&check(&mut c, "/orders/7", Some(&t), &[]).await?) == OK) }
    })
    .await?;
    let r = check(&mut c, "/orders/7", Some(&reader.token), &[]).await?;
    assert_eq!(denied(&r).map(|d| d.0), Some(401), "{r:?}");
    eprintln!("ext_authz: {after} checks at or after ack + B, all denied");

    // Stale: UNAVAILABLE and 503 with Retry-After, even for a valid token.
    make_stale(&mut cluster, 3, &edge).await?;
    let r = check(&mut c, "/pay", b, &[("veto_audience", "billing")]).await?;
    assert_eq!(code(&r), UNAVAILABLE, "{r:?}");
    let (status, h) = denied(&r).context("no DeniedHttpResponse")?;
    assert_eq!(status, 503);
    assert_eq!(h.get("retry-after").map(String::as_str), Some("1"));
    Ok(())
}
