//! What `veto-server` and `veto-edge` do the same way: their configuration
//! is layered alike (`config`), they read the wall clock alike (`clock`),
//! and their gRPC ports carry the same auth layer, `grpc.health.v1` and
//! reflection (`grpc`).

pub mod clock;
pub mod config;
pub mod grpc;

use std::net::SocketAddr;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Cause.
    pub source: std::io::Error,
}

/// Binds `addr` and returns the address actually bound (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> Result<(SocketAddr, tokio::net::TcpListener), BindError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((bound, l))
}
