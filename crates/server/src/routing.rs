//! Transparent forwarding of writes to the leader.
//!
//! A write that reaches a follower is re-sent, with the caller's metadata,
//! to the leader's gRPC endpoint; the caller never retries by hand. A
//! forwarded request carries `x-veto-forwarded` and is never forwarded again.

use tonic::metadata::MetadataValue;
use tonic::Request;

/// Header marking a request forwarded by a follower.
pub const FORWARDED: &str = "x-veto-forwarded";
/// Header naming the caller for the audit trail.
pub const ACTOR: &str = "x-veto-actor";

/// Whether the request was already forwarded once.
pub fn is_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED)
}

/// The caller as recorded in the audit trail. With TLS it is the client
/// certificate's identity (`operator:alice`); the `x-veto-actor` header is
/// believed only from a peer server forwarding a write (or on an
/// `--insecure` node, which has no identities). Else
/// `anonymous@<peer address>`.
pub fn actor<T>(r: &Request<T>) -> veto_core::Actor {
    let identity = r.extensions().get::<veto_auth::Identity>();
    if let Some(id) = identity {
        if id.role != veto_auth::Role::Server || !is_forwarded(r) {
            return veto_core::Actor(id.actor());
        }
    }
    if let Some(a) = r.metadata().get(ACTOR).and_then(|v| v.to_str().ok()) {
        // The same characters a certificate name may have (role:CN).
        if !a.is_empty() && a.len() <= 128 && a.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return veto_core::Actor(a.to_owned());
        }
    }
    if let Some(id) = identity {
        return veto_core::Actor(id.actor());
    }
    let peer = r
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    veto_core::Actor(format!("anonymous@{peer}"))
}

/// A copy of `r` for the leader, keeping the actor and the deadline.
pub fn forward<T: Clone>(r: &Request<T>) -> Request<T> {
    let mut out = Request::new(r.get_ref().clone());
    let a = actor(r);
    if let Ok(v) = MetadataValue::try_from(a.0.as_str()) {
        out.metadata_mut().insert(ACTOR, v);
    }
    out.metadata_mut()
        .insert(FORWARDED, MetadataValue::from_static("1"));
    if let Some(t) = r.metadata().get("grpc-timeout") {
        out.metadata_mut().insert("grpc-timeout", t.clone());
    }
    // The leader's span continues this node's trace.
    for (k, v) in veto_telemetry::trace::current_context().unwrap_or_default() {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            out.metadata_mut().insert(k, v);
        }
    }
    out
}

/// The server span of one RPC (`veto.v1.TokenService/Revoke`), a child of
/// the caller's trace when its metadata carries `traceparent`.
pub fn rpc_span<T>(method: &'static str, r: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        forwarded = is_forwarded(r),
    );
    if veto_telemetry::trace::enabled() {
        let headers = ["traceparent", "tracestate"]
            .into_iter()
            .filter_map(|k| Some((k, r.metadata().get(k)?.to_str().ok()?)));
        veto_telemetry::trace::set_parent(&span, headers);
    }
    span
}

/// Runs `$local` here if this node leads, else forwards `$req` with
/// `$client::$method`. Retries once if leadership moved between the check
/// and the write.
#[macro_export]
macro_rules! routed {
    ($node:expr, $req:ident, $client:ident, $method:ident, $local:expr) => {{
        let forwarded = $crate::routing::is_forwarded(&$req);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match $node.route(forwarded).await.map_err(tonic::Status::from)? {
                $crate::node::Route::Local => match $local.await {
                    Err($crate::error::Error::NotLeader(_)) if !forwarded && attempt < 3 => {
                        continue
                    }
                    r => break r.map(tonic::Response::new).map_err(tonic::Status::from),
                },
                $crate::node::Route::Forward(ch) => {
                    let mut c = $client::new(ch);
                    break c.$method($crate::routing::forward(&$req)).await;
                }
            }
        }
    }};
}

/// The tonic trait impl of a service whose RPCs are one call each to an
/// inherent `*_local` method. `routed` RPCs run on the leader (forwarded
/// there by [`routed!`]); `local` RPCs answer from this node. Every RPC
/// gets its server span. `$s` and `$r` name the service and the request
/// (a `&Request` for routed RPCs, the owned `Request` for local ones) in
/// the body, which is an expression of a future of `Result<Reply, Error>`.
/// Anything after the lists (associated types, streaming RPCs) is copied
/// into the impl as written.
#[macro_export]
macro_rules! rpc_service {
    (
        impl $trait:path, client $client:ident, for $svc:ty;
        routed {
            $( $m:ident($in:ty) -> $out:ty, $name:literal = |$s:ident, $r:ident| $body:expr; )*
        }
        local {
            $( $lm:ident($lin:ty) -> $lout:ty, $lname:literal = |$ls:ident, $lr:ident| $lbody:expr; )*
        }
        $($rest:tt)*
    ) => {
        #[tonic::async_trait]
        impl $trait for $svc {
            $(
                async fn $m(
                    &self,
                    req: tonic::Request<$in>,
                ) -> ::std::result::Result<tonic::Response<$out>, tonic::Status> {
                    let span = $crate::routing::rpc_span($name, &req);
                    let call = async {
                        let $s = self;
                        #[allow(unused_variables)]
                        let $r = &req;
                        $crate::routed!(self.node, req, $client, $m, $body)
                    };
                    tracing::Instrument::instrument(call, span).await
                }
            )*
            $(
                async fn $lm(
                    &self,
                    req: tonic::Request<$lin>,
                ) -> ::std::result::Result<tonic::Response<$lout>, tonic::Status> {
                    let span = $crate::routing::rpc_span($lname, &req);
                    let call = async {
                        let $ls = self;
                        let $lr = req;
                        $lbody.await.map(tonic::Response::new).map_err(tonic::Status::from)
                    };
                    tracing::Instrument::instrument(call, span).await
                }
            )*
            $($rest)*
        }
    };
}
