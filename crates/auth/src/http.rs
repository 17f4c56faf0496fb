//! Serving an axum router over TLS.
//!
//! Client certificates are verified when presented but optional at the
//! handshake, so load balancers and Kubernetes probes can reach the health
//! paths (and outside verifiers the JWKS); every other path answers 401
//! without a verified certificate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use crate::{Identity, Role, Transport};

/// Most TLS handshakes in progress at once; connections beyond it are
/// closed at once, so a flood of idle connections cannot exhaust the
/// process's file descriptors (gRPC and Raft share them).
const MAX_HANDSHAKES: usize = 256;

/// Paths served without a client certificate: health probes, and the
/// JWKS (public keys, for verifiers outside veto).
pub const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/.well-known/jwks.json"];

/// The peer of one HTTPS connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Whether it presented a certificate the CA signed.
    pub verified: bool,
    /// The identity that certificate names.
    pub identity: Option<Identity>,
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a
/// slow client does not hold up the others), each bounded to 5 s, at most
/// [`MAX_HANDSHAKES`] at a time.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Wraps `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "HTTP accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%addr, "HTTPS handshake limit reached; connection closed");
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let hs = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream));
                    let hs = async move {
                        let r = hs.await;
                        drop(permit);
                        r
                    };
                    let tls = match hs.await {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "HTTPS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let certs = tls.get_ref().1.peer_certificates();
                    let first = certs.and_then(|c| c.first());
                    let peer = Peer {
                        addr,
                        verified: first.is_some(),
                        identity: first.and_then(|c| Identity::from_der(c)),
                    };
                    let _ = tx.send((tls, peer)).await;
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            verified: false,
            identity: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        s.remote_addr().clone()
    }
}

/// Paths any veto certificate may read (Prometheus scrapes with whichever
/// it is given); everything else (status API, dashboard) is for operators
/// and peers: it shows members, addresses and edges.
pub const METRICS_PATHS: &[&str] = &["/metrics"];

/// Path prefixes any veto certificate may reach, each answering for
/// itself: the edge's gateway and introspection hooks serve every role, as
/// gRPC `Verify` does (a gateway or OAuth client presents a `client`
/// certificate); the servers' RFC 7009 revocation endpoint checks for an
/// operator itself, so a refusal is the RFC's `invalid_client`.
pub const VERIFIER_PATHS: &[&str] = &["/v1/forward-auth", "/oauth2/introspect", "/oauth2/revoke"];

fn is_verifier_path(path: &str) -> bool {
    VERIFIER_PATHS.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

async fn require_cert(
    State(open): State<&'static [&'static str]>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if open.contains(&path) {
        return next.run(req).await;
    }
    if !peer.verified {
        metrics::counter!(veto_telemetry::AUTH_DENIED_TOTAL, "reason" => "unauthenticated")
            .increment(1);
        if path.starts_with("/oauth2/") {
            // RFC 6749 §5.2, as RFC 7662 §2.3 and RFC 7009 §2.2.1 ask.
            let mut r = crate::oauth::error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "a client certificate signed by the veto CA is required",
            );
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Mutual-TLS realm=\"veto\""),
            );
            return r;
        }
        return (
            StatusCode::UNAUTHORIZED,
            "a client certificate signed by the veto CA is required\n",
        )
            .into_response();
    }
    let role = peer.identity.as_ref().map(|i| i.role);
    let allowed = match role {
        Some(Role::Operator | Role::Server) => true,
        // Reads everything a server serves; writes (RFC 7009) are refused.
        Some(Role::Auditor) => !path.starts_with("/oauth2/revoke"),
        Some(_) => METRICS_PATHS.contains(&path) || is_verifier_path(path),
        // Like Verify: any certificate the CA signed may use the hooks.
        None => is_verifier_path(path),
    };
    if allowed {
        return next.run(req).await;
    }
    metrics::counter!(veto_telemetry::AUTH_DENIED_TOTAL, "reason" => "permission_denied")
        .increment(1);
    (
        StatusCode::FORBIDDEN,
        "this path needs an operator or server certificate (metrics and the edge's hooks: any veto role)\n",
    )
        .into_response()
}

/// Serves `app` on `listener` until `shutdown`: plaintext for an insecure
/// transport, else TLS with [`OPEN_PATHS`] open and the rest requiring a
/// client certificate.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    transport: &Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_open(listener, app, transport, OPEN_PATHS, shutdown).await
}

/// [`serve`] with `open` as the paths served without a client certificate
/// (a server adds its leak-report endpoint, which GitHub calls without one).
pub async fn serve_open(
    listener: TcpListener,
    app: Router,
    transport: &Transport,
    open: &'static [&'static str],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = transport
        .http_server_config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    match cfg {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(cfg) => {
            let app = app.layer(axum::middleware::from_fn_with_state(open, require_cert));
            axum::serve(
                TlsListener::new(listener, cfg)?,
                app.into_make_service_with_connect_info::<Peer>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
}
