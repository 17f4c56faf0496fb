//! `veto.v1.VerifierService` over the local replica, and `/healthz`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use tonic::{Request, Response, Status};
use veto_core::token::Requirements;
use veto_feed::{Outcome, Verdict};
use veto_proto as pb;
use veto_proto::verifier_service_server::{VerifierService, VerifierServiceServer};

use crate::error::Error;
use crate::EdgeHandle;
use veto_core::limits::MAX_REQUIRED_SCOPES;
use veto_core::validate::Invalid;

/// Longest a `min_revision` wait may take when the call sets no deadline.
pub const DEFAULT_MIN_REVISION_WAIT: Duration = Duration::from_secs(5);

/// Who may call what on an edge: any client whose certificate the CA
/// signed may verify (no role needed); the health checks need none, and
/// reflection any certificate ([`veto_auth::standard_access`]); nothing
/// else is served.
pub fn policy(path: &str) -> veto_auth::Access {
    if let Some(a) = veto_auth::standard_access(path) {
        return a;
    }
    match path {
        "/veto.v1.VerifierService/Verify"
        | "/veto.v1.VerifierService/VerifyBatch"
        | crate::ext_authz::CHECK_PATH => veto_auth::Access::Authenticated,
        _ => veto_auth::Access::Deny,
    }
}

/// The gRPC service for `h`.
pub fn server(h: EdgeHandle) -> VerifierServiceServer<Service> {
    VerifierServiceServer::new(Service { h }).max_decoding_message_size(8 << 20)
}

/// The VerifierService implementation.
pub struct Service {
    h: EdgeHandle,
}

/// The wire form of a verdict's outcome.
pub fn outcome(o: Outcome) -> pb::Outcome {
    match o {
        Outcome::Valid => pb::Outcome::Valid,
        Outcome::Malformed => pb::Outcome::Malformed,
        Outcome::BadSignature => pb::Outcome::BadSignature,
        Outcome::UnknownKey => pb::Outcome::UnknownKey,
        Outcome::Expired => pb::Outcome::Expired,
        Outcome::NotYetValid => pb::Outcome::NotYetValid,
        Outcome::WrongAudience => pb::Outcome::WrongAudience,
        Outcome::InsufficientScope => pb::Outcome::InsufficientScope,
        Outcome::Revoked => pb::Outcome::Revoked,
        Outcome::Stale => pb::Outcome::Stale,
    }
}

fn deadline<T>(r: &Request<T>) -> Duration {
    // grpc-timeout: an integer and a unit (H M S m u n).
    let parse = |v: &str| -> Option<Duration> {
        let (n, unit) = v.split_at(v.len().checked_sub(1)?);
        let n: u64 = n.parse().ok()?;
        Some(match unit {
            "H" => Duration::from_secs(n * 3600),
            "M" => Duration::from_secs(n * 60),
            "S" => Duration::from_secs(n),
            "m" => Duration::from_millis(n),
            "u" => Duration::from_micros(n),
            "n" => Duration::from_nanos(n),
            _ => return None,
        })
    };
    r.metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
        .unwrap_or(DEFAULT_MIN_REVISION_WAIT)
        .min(Duration::from_secs(60))
}

impl Service {
    fn check(&self, r: &pb::VerifyRequest) -> Result<(), Error> {
        if r.required_scopes.len() > MAX_REQUIRED_SCOPES {
            let e = Invalid::new("required_scopes", format!("at most {MAX_REQUIRED_SCOPES}"));
            return Err(e.into());
        }
        let max = veto_core::Limits::default().max_audience_bytes;
        if r.audience.as_ref().is_some_and(|a| a.len() > max) {
            return Err(Invalid::new("audience", format!("at most {max} bytes")).into());
        }
        Ok(())
    }

    fn one(&self, r: &pb::VerifyRequest) -> pb::VerifyResponse {
        let req = Requirements {
            audience: r.audience.as_deref(),
            scopes: &r.required_scopes,
        };
        let v: Verdict = self.h.verify(&r.token, &req);
        let f = self.h.freshness();
        let mut out = pb::VerifyResponse {
            valid: v.outcome == Outcome::Valid,
            outcome: outcome(v.outcome) as i32,
            reason: v.reason,
            stale: v.stale,
            revision: self.h.revision(),
            fresh_age_ms: f.age.map(|a| a.as_secs_f64() * 1e3).unwrap_or(-1.0),
            ..Default::default()
        };
        if let Some(c) = v.claims {
            out.jti = c.jti.to_string();
            out.scopes = c.scopes().map(str::to_owned).collect();
            out.sub = c.sub;
            out.exp = c.exp;
            out.family = c.fam.to_string();
        }
        out
    }

    async fn wait_min(&self, min: u64, limit: Duration) -> Result<(), Error> {
        if min > self.h.revision() && !self.h.wait_revision(min, limit).await {
            return Err(Error::MinRevision {
                wanted: min,
                at: self.h.revision(),
            });
        }
        Ok(())
    }
}

fn stale_status(r: &pb::VerifyResponse) -> Option<Status> {
    (r.outcome == pb::Outcome::Stale as i32).then(|| Error::Stale(r.reason.clone()).into())
}

#[tonic::async_trait]
impl VerifierService for Service {
    async fn verify(
        &self,
        req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let limit = deadline(&req);
        let r = req.into_inner();
        self.check(&r)?;
        self.wait_min(r.min_revision, limit).await?;
        let out = self.one(&r);
        if let Some(s) = stale_status(&out) {
            return Err(s);
        }
        Ok(Response::new(out))
    }

    async fn verify_batch(
        &self,
        req: Request<pb::VerifyBatchRequest>,
    ) -> Result<Response<pb::VerifyBatchResponse>, Status> {
        let limit = deadline(&req);
        let r = req.into_inner();
        let max = self.h.options().max_batch_items;
        if r.items.len() > max {
            return Err(
                Error::from(Invalid::new("items", format!("at most {max} per batch"))).into(),
            );
        }
        for i in &r.items {
            self.check(i)?;
        }
        let min = r.items.iter().map(|i| i.min_revision).max().unwrap_or(0);
        self.wait_min(min, limit).await?;
        let mut results = Vec::with_capacity(r.items.len());
        for i in &r.items {
            let out = self.one(i);
            if let Some(s) = stale_status(&out) {
                return Err(s);
            }
            results.push(out);
        }
        Ok(Response::new(pb::VerifyBatchResponse { results }))
    }
}

/// `/healthz`: 200 while fresh, 503 with the reason when not; `/metrics`;
/// the gateway and OAuth hooks ([`crate::hooks`]).
pub fn http_router(h: EdgeHandle, metrics: veto_telemetry::Handle) -> axum::Router {
    use crate::hooks::{forward_auth, introspect, FORWARD_AUTH_PATH, INTROSPECT_PATH};
    axum::Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route(FORWARD_AUTH_PATH, any(forward_auth))
        .route(&format!("{FORWARD_AUTH_PATH}/{{*rest}}"), any(forward_auth))
        .route(INTROSPECT_PATH, post(introspect))
        .with_state(Http { h, metrics })
}

/// What the edge's HTTP handlers share.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) h: EdgeHandle,
    metrics: veto_telemetry::Handle,
}

/// The Prometheus page, with the replica's gauges set just before.
async fn metrics_page(State(s): State<Http>) -> impl IntoResponse {
    use veto_telemetry::metrics::gauge;
    let h = &s.h;
    let id = h.options().edge_id.clone();
    gauge!(veto_telemetry::EDGE_APPLIED_REVISION, "edge" => id.clone()).set(h.revision() as f64);
    let f = h.freshness();
    if let Some(age) = f.age {
        gauge!(veto_telemetry::EDGE_FRESHNESS_AGE_SECONDS, "edge" => id.clone())
            .set(age.as_secs_f64());
    }
    gauge!(veto_telemetry::EDGE_STALE, "edge" => id.clone()).set(if f.fresh { 0.0 } else { 1.0 });
    if let Some(o) = h.clock_offset() {
        gauge!(veto_telemetry::EDGE_CLOCK_OFFSET_SECONDS, "edge" => id.clone())
            .set(o.offset_ms / 1e3);
        gauge!(veto_telemetry::EDGE_CLOCK_OFFSET_UNCERTAINTY_SECONDS, "edge" => id.clone())
            .set(o.uncertainty_ms / 1e3);
    }
    gauge!(veto_telemetry::EDGE_BOUND_SECONDS, "edge" => id).set(h.options().bound_ms as f64 / 1e3);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
}

/// 200 while fresh, 503 when not; the body says why, and warns about a
/// skewed wall clock.
async fn healthz(State(s): State<Http>) -> impl IntoResponse {
    let h = &s.h;
    let f = h.freshness();
    let server = h.server().unwrap_or_else(|| "none".into());
    let age = f
        .age
        .map(|a| format!("{} ms", a.as_millis()))
        .unwrap_or_else(|| "never".into());
    let clock = match h.clock_offset() {
        Some(o) => format!("{:+.0} ms (±{:.0} ms)", o.offset_ms, o.uncertainty_ms),
        None => "unknown".into(),
    };
    let mut body = format!(
        "revision {} server {server} fresh_age {age} clock_offset {clock}\n",
        h.revision()
    );
    // A skewed clock does not make the edge unhealthy (no revocation
    // depends on it) but it bends exp/nbf: say so.
    if h.clock_offset_alarming() {
        let o = h.options();
        body.push_str(&format!(
            "warning: this edge's wall clock differs from the leader's by more than {} ms; \
             exp/nbf are judged on it (leeway nbf {} s, exp {} s)\n",
            o.clock_offset_warn_ms, o.leeway.nbf_seconds, o.leeway.exp_seconds
        ));
    }
    if f.fresh {
        (StatusCode::OK, format!("ok: {body}"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("stale: {body}"))
    }
}
