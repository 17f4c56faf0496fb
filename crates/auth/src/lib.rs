//! Transport security for veto (docs/design.md, "Security").
//!
//! - [`Transport`]: TLS material loaded once (rustls with ring, through
//!   tonic's `tls-ring`), or plaintext when `--insecure` was asked for
//!   explicitly. It builds the gRPC server config (client certificates
//!   required), client endpoints (mutual TLS) and the HTTP acceptor.
//! - [`Identity`] and [`Role`]: who a client certificate names. The role is
//!   a SAN URI `urn:veto:role:<role>`, the name is the subject CN.
//! - [`AuthLayer`]: a tower layer in front of every gRPC service that maps
//!   each method to the roles allowed to call it (deny by default), applies
//!   a per-client write rate limit, counts refusals and hands the caller's
//!   identity to the handlers for the audit trail.
//! - [`certs`]: a development CA and node, edge, operator and client
//!   certificates (rcgen), behind `veto certs init`.
//! - [`http`]: serves an axum router over TLS; `/healthz`, `/readyz` and
//!   the JWKS answer without a client certificate, everything else needs one.

pub mod certs;
pub mod http;
mod identity;
mod layer;
pub mod oauth;
mod tls;

pub use identity::{Identity, Role, ROLE_URI_PREFIX};
pub use layer::{standard_access, Access, AuthLayer, AuthService, Policy, WriteLimit};
pub use tls::{TlsFiles, Transport};

use std::path::PathBuf;

/// A transport-security failure, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Path given.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The PEM input holds nothing usable.
    #[error("{what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Neither TLS material nor `--insecure` was given, or both were.
    #[error("{0}")]
    Choice(String),
    /// rustls or tonic refused the material.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// An endpoint address could not be used.
    #[error("bad address {addr:?}: {detail}")]
    Address {
        /// Address given.
        addr: String,
        /// Why.
        detail: String,
    },
}
