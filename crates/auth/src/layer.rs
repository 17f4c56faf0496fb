//! The authorisation layer in front of every gRPC service.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::{Identity, Role};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any caller, with or without a client certificate: the gRPC health
    /// checks, as the HTTP probes (a presented certificate is still
    /// verified at the handshake).
    Public,
    /// Any caller whose certificate the CA signed (the TLS handshake
    /// already proved it); no role needed.
    Authenticated,
    /// Only these roles.
    Roles(&'static [Role]),
    /// Not served by this process: unknown methods land here and get
    /// UNIMPLEMENTED with a message, whether or not TLS is on.
    Deny,
}

/// Maps a gRPC path (`/veto.v1.TokenService/Issue`) to its access rule.
pub type Policy = fn(&str) -> Access;

/// The rule for the standard services every veto gRPC port serves beside
/// its own: `grpc.health.v1.Health` for probes (Kubernetes gRPC probes,
/// grpc_health_probe) needs no certificate, like `/healthz`; server
/// reflection (grpcurl, grpcui) needs one signed by the CA, like any
/// other call. `None` for every other path.
pub fn standard_access(path: &str) -> Option<Access> {
    match path {
        "/grpc.health.v1.Health/Check" | "/grpc.health.v1.Health/Watch" => Some(Access::Public),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => {
            Some(Access::Authenticated)
        }
        _ => None,
    }
}

/// A per-client rate limit on write methods.
#[derive(Debug, Clone, Copy)]
pub struct WriteLimit {
    /// Sustained writes per second per client.
    pub per_second: u32,
    /// Burst above the sustained rate.
    pub burst: u32,
    /// Which paths count as writes.
    pub is_write: fn(&str) -> bool,
}

/// Builds [`AuthService`]s; cheap to clone.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

struct Shared {
    policy: Policy,
    tls: bool,
    limit: Option<Limiter>,
    // Parsed identities by certificate bytes; a connection's certificate
    // is parsed once, not on every call.
    cache: Mutex<HashMap<Vec<u8>, Option<Identity>>>,
}

const CACHE_MAX: usize = 4096;

/// Which paths are writes, and the per-client buckets.
type Limiter = (fn(&str) -> bool, DefaultKeyedRateLimiter<String>);

impl AuthLayer {
    /// A layer applying `policy` when `tls` (plaintext servers have no
    /// identities: every call passes and handlers see none), and `limit`
    /// on writes either way (keyed by identity, or by peer IP in
    /// plaintext).
    pub fn new(policy: Policy, tls: bool, limit: Option<WriteLimit>) -> AuthLayer {
        let limit = limit.and_then(|l| {
            let rate = NonZeroU32::new(l.per_second)?;
            let burst = NonZeroU32::new(l.burst.max(l.per_second))?;
            let q = Quota::per_second(rate).allow_burst(burst);
            Some((l.is_write, RateLimiter::keyed(q)))
        });
        AuthLayer {
            shared: Arc::new(Shared {
                policy,
                tls,
                limit,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the gRPC routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn deny(reason: &'static str, status: Status) -> Status {
    metrics::counter!(veto_telemetry::AUTH_DENIED_TOTAL, "reason" => reason).increment(1);
    status
}

impl Shared {
    fn identity(&self, der: &[u8]) -> Option<Identity> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = c.get(der) {
            return i.clone();
        }
        let id = Identity::from_der(der);
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(der.to_vec(), id.clone());
        id
    }

    /// The caller's identity (TLS) if the call is allowed.
    fn check<B>(&self, req: &http::Request<B>) -> Result<Option<Identity>, Status> {
        let path = req.uri().path();
        let policy = (self.policy)(path);
        if policy == Access::Deny {
            // Not an authorisation question: nothing here serves it.
            return Err(Status::unimplemented(format!(
                "{path} is not a method this veto process serves"
            )));
        }
        if policy == Access::Public {
            return Ok(None);
        }
        let (identity, peer_ip) = self.caller(req)?;
        if let (true, Access::Roles(roles)) = (self.tls, policy) {
            check_roles(identity.as_ref(), roles, path)?;
        }
        self.check_rate(path, identity.as_ref(), peer_ip)?;
        Ok(identity)
    }

    /// Who is calling: under TLS the identity of the client certificate
    /// (required), and the peer's address for rate limiting.
    fn caller<B>(
        &self,
        req: &http::Request<B>,
    ) -> Result<(Option<Identity>, Option<IpAddr>), Status> {
        let ext = req.extensions();
        if !self.tls {
            let ip = ext
                .get::<TcpConnectInfo>()
                .and_then(|i| i.remote_addr())
                .map(|a| a.ip());
            return Ok((None, ip));
        }
        let info = ext.get::<TlsConnectInfo<TcpConnectInfo>>();
        let der = info.and_then(|i| i.peer_certs()).and_then(|c| {
            let first = c.first()?;
            Some(first.as_ref().to_vec())
        });
        let Some(der) = der else {
            return Err(deny(
                "unauthenticated",
                Status::unauthenticated("a client certificate signed by the veto CA is required"),
            ));
        };
        Ok((
            self.identity(&der),
            info.and_then(|i| i.get_ref().remote_addr()).map(|a| a.ip()),
        ))
    }

    /// The per-client write rate limit (writes forwarded by a server were
    /// limited at the first hop).
    fn check_rate(
        &self,
        path: &str,
        identity: Option<&Identity>,
        peer_ip: Option<IpAddr>,
    ) -> Result<(), Status> {
        let Some((is_write, limiter)) = &self.limit else {
            return Ok(());
        };
        let peer_is_server = identity.is_some_and(|i| i.role == Role::Server);
        if !is_write(path) || peer_is_server {
            return Ok(());
        }
        let key = match (identity, peer_ip) {
            (Some(i), _) => i.actor(),
            (None, Some(ip)) => ip_key(ip),
            (None, None) => "unknown".to_owned(),
        };
        if limiter.check_key(&key).is_err() {
            return Err(deny(
                "rate_limited",
                Status::resource_exhausted(format!(
                    "write rate limit for {key} exceeded; retry later"
                )),
            ));
        }
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        Ok(())
    }
}

/// The certificate must name one of `roles`.
fn check_roles(identity: Option<&Identity>, roles: &[Role], path: &str) -> Result<(), Status> {
    let Some(id) = identity else {
        return Err(deny(
            "permission_denied",
            Status::permission_denied(
                "the client certificate names no veto role (SAN URI urn:veto:role:<role>) or CN",
            ),
        ));
    };
    if !roles.contains(&id.role) {
        let want: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(deny(
            "permission_denied",
            Status::permission_denied(format!(
                "{id} may not call {path}; it needs the role {}",
                want.join(" or ")
            )),
        ));
    }
    Ok(())
}

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.shared.check(&req) {
            Ok(identity) => {
                if let Some(id) = identity {
                    req.extensions_mut().insert(id);
                }
                // The clone is the one that was not polled ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}
