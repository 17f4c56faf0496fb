//! Envoy external authorization (`envoy.service.auth.v3.Authorization`) on
//! the edge's gRPC port, from Envoy's published protos (the `envoy-types`
//! crate): Envoy, Istio's CUSTOM provider and any ext_authz client call
//! `Check` and get the same verdict `Verify` gives, with the same fail
//! closed rule past the bound.
//!
//! Requirements per route come, first found, from the check request's
//! context extensions (`veto_scopes`, `veto_audience`), its route or
//! connection metadata under the `veto` namespace (`scopes`, `audience`),
//! and the edge's `[gateway] routes`.

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption, Metadata,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};
use veto_core::token::Requirements;

use crate::gateway::{Decision, Denial, Required};
use crate::EdgeHandle;

/// The gRPC service name, for health and reflection listings.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The gRPC path of `Check`.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Context-extension keys read for per-route requirements.
pub const SCOPES_EXTENSION: &str = "veto_scopes";
/// See [`SCOPES_EXTENSION`].
pub const AUDIENCE_EXTENSION: &str = "veto_audience";
/// Metadata namespace read for per-route requirements.
pub const METADATA_NAMESPACE: &str = "veto";

/// The ext_authz service for `h`.
pub fn server(h: EdgeHandle) -> AuthorizationServer<ExtAuthz> {
    AuthorizationServer::new(ExtAuthz { h }).max_decoding_message_size(1 << 20)
}

/// `envoy.service.auth.v3.Authorization` over the local replica.
pub struct ExtAuthz {
    h: EdgeHandle,
}

fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    // Envoy sends `headers` (lower-case keys), or `header_map` when
    // `encode_raw_headers` is on.
    if let Some(v) = http.headers.get(name) {
        return Some(v);
    }
    http.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .or_else(|| {
            let m = http.header_map.as_ref()?;
            let h = m
                .headers
                .iter()
                .find(|h| h.key.eq_ignore_ascii_case(name))?;
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

fn metadata_string<'a>(m: Option<&'a Metadata>, key: &str) -> Option<&'a str> {
    let s = m?.filter_metadata.get(METADATA_NAMESPACE)?;
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// The requirements of `r`: its context extensions, else its route or
/// connection metadata, else the edge's route rules for its method and
/// (canonical) path.
fn required(
    r: &CheckRequest,
    method: &str,
    path: &str,
    h: &EdgeHandle,
) -> Result<Required, Denial> {
    let explicit = r.attributes.as_ref().and_then(|a| {
        let ext = |k: &str| a.context_extensions.get(k).map(String::as_str);
        let (scopes, aud) = (ext(SCOPES_EXTENSION), ext(AUDIENCE_EXTENSION));
        if scopes.is_some() || aud.is_some() {
            return Some(Required::parse(scopes, aud));
        }
        [&a.route_metadata_context, &a.metadata_context]
            .into_iter()
            .find_map(|m| {
                let scopes = metadata_string(m.as_ref(), "scopes");
                let aud = metadata_string(m.as_ref(), "audience");
                (scopes.is_some() || aud.is_some()).then(|| Required::parse(scopes, aud))
            })
    });
    h.options().gateway.requirements(method, path, explicit)
}

fn header_option(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn denied(d: Denial) -> CheckResponse {
    let code = match d.status {
        400 => Code::InvalidArgument,
        403 => Code::PermissionDenied,
        503 => Code::Unavailable,
        _ => Code::Unauthenticated,
    };
    let mut headers = Vec::new();
    if let Some(w) = d.www_authenticate {
        headers.push(header_option("www-authenticate", w));
    }
    if let Some(s) = d.retry_after {
        headers.push(header_option("retry-after", s.to_string()));
    }
    headers.push(header_option("content-type", "text/plain".into()));
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: d.reason.clone(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(d.status),
            }),
            headers,
            body: format!("{}\n", d.reason),
        })),
        ..Default::default()
    }
}

impl ExtAuthz {
    /// The answer to one check request.
    pub fn decide(&self, r: &CheckRequest) -> CheckResponse {
        let g = &self.h.options().gateway;
        let http = r
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|q| q.http.as_ref());
        let Some(http) = http else {
            return denied(g.no_token());
        };
        let token = header(http, &g.token_header).and_then(|v| g.token(v));
        let Some(token) = token else {
            return denied(g.no_token());
        };
        let req = match required(r, &http.method, &http.path, &self.h) {
            Ok(req) => req,
            Err(d) => return denied(d),
        };
        let v = self.h.verify(
            token,
            &Requirements {
                audience: req.audience.as_deref(),
                scopes: &req.scopes,
            },
        );
        match g.decide(&v, &req, self.h.revision()) {
            Decision::Allow(a) => CheckResponse {
                status: Some(rpc::Status {
                    code: Code::Ok as i32,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: a
                        .headers
                        .into_iter()
                        .map(|(k, v)| header_option(&k, v))
                        .collect(),
                    headers_to_remove: a.remove_headers,
                    ..Default::default()
                })),
                ..Default::default()
            },
            Decision::Deny(d) => denied(d),
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.decide(req.get_ref())))
    }
}
