//! One gRPC port as every veto process serves it: the process's own
//! services behind the auth layer, `grpc.health.v1` following the process's
//! readiness, and server reflection listing exactly what the port serves.

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;

/// Why a gRPC port could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS configuration was refused.
    #[error("gRPC TLS configuration: {0}")]
    Tls(#[from] tonic::transport::Error),
    /// The reflection service cannot be built from the descriptors.
    #[error(transparent)]
    Reflection(#[from] veto_proto::standard::ReflectionError),
}

/// What one port serves and how it guards it.
pub struct Port<R> {
    /// What the port is, for logs ("verifier", "control plane").
    pub name: &'static str,
    /// TLS material, or plaintext when insecure.
    pub transport: veto_auth::Transport,
    /// Who may call what.
    pub policy: veto_auth::Policy,
    /// The per-client write limit, if any.
    pub limit: Option<veto_auth::WriteLimit>,
    /// The full names of the process's own services (for health and
    /// reflection).
    pub services: Vec<&'static str>,
    /// Services served whose descriptors the process does not carry
    /// (Envoy's ext_authz, from `envoy-types`): in health, not reflection.
    pub health_only: Vec<&'static str>,
    /// The process's own services.
    pub routes: Routes,
    /// Whether the process is ready (health is SERVING while it is).
    pub ready: R,
}

/// Serves `port` on `listener` until `shutdown`; returns the health
/// reporter's task and the server's.
pub fn serve<R>(
    port: Port<R>,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, ServeError>
where
    R: Fn() -> bool + Send + 'static,
{
    let (health, health_svc) = veto_proto::standard::health();
    let reflection_v1 = veto_proto::standard::reflection_v1(&port.services)?;
    let reflection_v1alpha = veto_proto::standard::reflection_v1alpha(&port.services)?;
    let mut healthy = port.services;
    healthy.extend(port.health_only);
    let health_task = tokio::spawn(veto_proto::standard::report_health(
        health,
        healthy,
        port.ready,
        shutdown.clone(),
    ));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = port.transport.server_tls() {
        builder = builder.tls_config(tls)?;
    }
    let routes = port
        .routes
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut rx = shutdown;
    let serve = builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .layer(veto_auth::AuthLayer::new(
            port.policy,
            port.transport.is_tls(),
            port.limit,
        ))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        );
    let name = port.name;
    let grpc_task = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, port = name, "gRPC server failed");
        }
    });
    Ok(vec![health_task, grpc_task])
}
