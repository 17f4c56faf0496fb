//! TLS material and the transports built from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, Endpoint, ServerTlsConfig};

use crate::{Error, Identity, Role};

type Dss = rustls::DigitallySignedStruct;
type Signature = Result<HandshakeSignatureValid, rustls::Error>;

/// Where a process finds its TLS material: the CA that signs every veto
/// certificate, its own certificate (PEM, leaf first) and private key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// CA certificate(s) trusted for peers and clients.
    pub ca: Option<PathBuf>,
    /// This process's certificate chain.
    pub cert: Option<PathBuf>,
    /// This process's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The three files of `dir/{ca.pem, <name>.pem, <name>.key}`, the
    /// layout `veto certs init` writes.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}.key"))),
        }
    }

    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// How a process talks to its peers and clients.
#[derive(Clone)]
pub enum Transport {
    /// Plaintext, chosen explicitly with `--insecure`.
    Insecure,
    /// Mutual TLS with this material.
    Tls(Arc<Material>),
}

/// Loaded, validated TLS material.
pub struct Material {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    identity: Option<Identity>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Insecure => f.write_str("Transport::Insecure"),
            Transport::Tls(m) => write!(f, "Transport::Tls({:?})", m.identity),
        }
    }
}

fn read(what: &'static str, p: &Path) -> Result<String, Error> {
    std::fs::read_to_string(p).map_err(|source| Error::Read {
        what,
        path: p.to_owned(),
        source,
    })
}

impl Transport {
    /// The transport a process was configured for: TLS when all three
    /// files are given, plaintext only when `insecure` is set and no TLS
    /// file is, an error otherwise (no silent fallback to plaintext).
    pub fn from_config(files: &TlsFiles, insecure: bool) -> Result<Transport, Error> {
        match (files, insecure) {
            (f, true) if f.any() => Err(Error::Choice(
                "both TLS files and --insecure given; choose one".into(),
            )),
            (_, true) => Ok(Transport::Insecure),
            (
                TlsFiles {
                    ca: Some(ca),
                    cert: Some(cert),
                    key: Some(key),
                },
                false,
            ) => Transport::from_pem(
                read("CA certificate", ca)?,
                read("certificate", cert)?,
                read("private key", key)?,
            ),
            (f, false) if f.any() => Err(Error::Choice(
                "TLS needs all three of the CA (--tls-ca), certificate (--tls-cert) and key (--tls-key)".into(),
            )),
            _ => Err(Error::Choice(
                "no transport security configured: give --tls-ca, --tls-cert and --tls-key \
                 (`veto certs init` makes a development set), or --insecure for plaintext"
                    .into(),
            )),
        }
    }

    /// TLS from PEM text; checks that each part parses and that the key
    /// belongs with the certificate (rustls refuses a mismatch).
    pub fn from_pem(ca_pem: String, cert_pem: String, key_pem: String) -> Result<Transport, Error> {
        let ca = certs("CA certificate", &ca_pem)?;
        let chain = certs("certificate", &cert_pem)?;
        let key = private_key(&key_pem)?;
        // The CA must parse as trust anchors.
        root_store(ca)?;
        let identity = chain.first().and_then(|c| Identity::from_der(c));
        // Building a server config checks the key against the certificate.
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Config(format!("certificate and key: {e}")))?;
        Ok(Transport::Tls(Arc::new(Material {
            ca_pem,
            cert_pem,
            key_pem,
            identity,
        })))
    }

    /// The CA, certificate and key PEM text (TLS only).
    pub fn pem(&self) -> Option<(&str, &str, &str)> {
        match self {
            Transport::Tls(m) => Some((&m.ca_pem, &m.cert_pem, &m.key_pem)),
            Transport::Insecure => None,
        }
    }

    /// Whether this is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The identity this process's own certificate names, if any.
    pub fn own_identity(&self) -> Option<&Identity> {
        match self {
            Transport::Tls(m) => m.identity.as_ref(),
            Transport::Insecure => None,
        }
    }

    /// A lazily connecting channel to `addr` (`host:port`, or a URL whose
    /// scheme is ignored) whose peer must hold a certificate with the role
    /// `peer` (servers: `Role::Server`; an edge's VerifierService:
    /// `Role::Edge`), signed by the CA and valid for the host. `configure`
    /// sets timeouts and keep-alives on the endpoint. Plaintext when
    /// insecure (no identities to check).
    pub fn channel_lazy(
        &self,
        addr: &str,
        peer: Role,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, Error> {
        let ep = configure(plain_endpoint(addr)?);
        Ok(match self {
            Transport::Insecure => ep.connect_lazy(),
            Transport::Tls(m) => ep.connect_with_connector_lazy(m.connector(peer)?),
        })
    }

    /// Like [`Transport::channel_lazy`], but connects (and completes the
    /// TLS handshake, checking the peer's role) before returning.
    pub async fn channel(
        &self,
        addr: &str,
        peer: Role,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, Error> {
        let ep = configure(plain_endpoint(addr)?);
        let r = match self {
            Transport::Insecure => ep.connect().await,
            Transport::Tls(m) => ep.connect_with_connector(m.connector(peer)?).await,
        };
        r.map_err(|e| Error::Address {
            addr: addr.to_owned(),
            detail: error_chain(&e),
        })
    }

    /// The gRPC server's TLS: this certificate; a client certificate is
    /// verified against the CA when presented but optional at the
    /// handshake, so gRPC health probes work without one; the
    /// authorisation layer refuses every other call that comes without one
    /// (UNAUTHENTICATED).
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        match self {
            Transport::Insecure => None,
            Transport::Tls(m) => Some(
                ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(
                        &m.cert_pem,
                        &m.key_pem,
                    ))
                    .client_ca_root(Certificate::from_pem(&m.ca_pem))
                    .client_auth_optional(true)
                    .timeout(Duration::from_secs(10)),
            ),
        }
    }

    /// A rustls server config for the HTTP port: client certificates are
    /// verified when presented but optional, so health probes work; the
    /// HTTP layer then refuses every other path without one.
    pub fn http_server_config(&self) -> Result<Option<Arc<rustls::ServerConfig>>, Error> {
        let Transport::Tls(m) = self else {
            return Ok(None);
        };
        let roots = root_store(certs("CA certificate", &m.ca_pem)?)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
        let key = private_key(&m.key_pem)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs("certificate", &m.cert_pem)?, key)
            .map_err(|e| Error::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(cfg)))
    }
}

/// An `http://` endpoint: under TLS, [`TlsConnect`] does the TLS itself,
/// so tonic must not add its own.
fn plain_endpoint(addr: &str) -> Result<Endpoint, Error> {
    let hostport = addr.split_once("://").map(|(_, r)| r).unwrap_or(addr);
    Endpoint::from_shared(format!("http://{hostport}")).map_err(|e| Error::Address {
        addr: addr.to_owned(),
        detail: e.to_string(),
    })
}

/// An error with its sources, for messages that must say why a TLS
/// connection failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Material {
    /// A connector whose TLS requires the peer's certificate to name `peer`.
    fn connector(&self, peer: Role) -> Result<TlsConnect, Error> {
        let roots = root_store(certs("CA certificate", &self.ca_pem)?)?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
        let key = private_key(&self.key_pem)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RoleVerifier { inner, role: peer }))
            .with_client_auth_cert(certs("certificate", &self.cert_pem)?, key)
            .map_err(|e| Error::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConnect {
            config: Arc::new(cfg),
        })
    }
}

/// WebPKI verification (chain to the CA, validity, host name) plus the veto
/// role the peer must hold: an edge's or operator's key cannot pose as a
/// server, even at a server's address.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    role: Role,
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match Identity::from_der(end_entity) {
            Some(id) if id.role == self.role => Ok(ok),
            other => Err(rustls::Error::General(format!(
                "the peer's certificate names {}, not a veto {}",
                other
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "no veto role".into()),
                self.role
            ))),
        }
    }

    // Handshake signatures are checked exactly as webpki does.
    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &Dss) -> Signature {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &Dss) -> Signature {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects TCP, then TLS with [`RoleVerifier`] and this process's client
/// certificate, and hands the stream to tonic (which speaks HTTP/2 on it).
#[derive(Clone)]
struct TlsConnect {
    config: Arc<rustls::ClientConfig>,
}

type Stream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower::Service<http::Uri> for TlsConnect {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or("no host in the address")?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or("no port in the address")?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)?;
            let tls = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await??;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// The crypto provider of every rustls config here (ring, as tonic's).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: Vec<CertificateDer<'static>>) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Pem {
        what: "private key",
        detail: format!("no PEM private key: {e}"),
    })
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let v = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            detail: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(Error::Pem {
            what,
            detail: "no PEM CERTIFICATE block".into(),
        });
    }
    Ok(v)
}
