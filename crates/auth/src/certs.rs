//! A development CA and the certificates veto's processes use (rcgen).
//!
//! Every leaf carries its role as a SAN URI (`urn:veto:role:<role>`), its
//! name as the subject CN, and both server and client authentication
//! usages (servers and edges are also clients of their peers). Keys are
//! ECDSA P-256, written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
pub use time::{Duration, OffsetDateTime};

use crate::{Error, Role};

fn gen<E: std::fmt::Display>(e: E) -> Error {
    Error::Generate(e.to_string())
}

/// A certificate authority able to sign leaves.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Certificate.
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject CN: the identity's name in the audit trail.
    pub name: String,
    /// Role granted.
    pub role: Role,
    /// DNS names and IP addresses it may serve as.
    pub hosts: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A leaf valid from an hour ago for `days` days.
    pub fn new(name: &str, role: Role, hosts: &[String], days: i64) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            name: name.to_owned(),
            role,
            hosts: hosts.to_vec(),
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

impl Ca {
    /// A new self-signed CA valid for `days` days.
    pub fn generate(name: &str, days: i64) -> Result<Ca, Error> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "veto");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(days);
        let key = KeyPair::generate().map_err(gen)?;
        let cert = p.self_signed(&key).map_err(gen)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// A CA from its certificate and key (PEM), to issue more leaves.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Pem {
            what: "CA key",
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| Error::Pem {
            what: "CA certificate",
            detail: e.to_string(),
        })?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a leaf for `spec`.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, Error> {
        self.sign(spec, true)
    }

    /// Signs a leaf that names no role (`spec.role` is ignored): veto
    /// accepts its TLS handshake and then refuses every role-checked call.
    /// For testing that refusal, and for CAs shared with other systems.
    pub fn issue_without_role(&self, spec: &LeafSpec) -> Result<Leaf, Error> {
        self.sign(spec, false)
    }

    fn sign(&self, spec: &LeafSpec, with_role: bool) -> Result<Leaf, Error> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.name.as_str());
        dn.push(DnType::OrganizationName, "veto");
        p.distinguished_name = dn;
        let mut sans = Vec::new();
        if with_role {
            sans.push(SanType::URI(spec.role.uri().try_into().map_err(gen)?));
        }
        for h in &spec.hosts {
            sans.push(match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.as_str().try_into().map_err(gen)?),
            });
        }
        p.subject_alt_names = sans;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = spec.not_before;
        p.not_after = spec.not_after;
        let key = KeyPair::generate().map_err(gen)?;
        let cert = p.signed_by(&key, &self.issuer).map_err(gen)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What `veto certs init` creates.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// Server certificates `server-1` ... `server-N`.
    pub servers: u32,
    /// Edge certificates `edge-1` ... `edge-N`.
    pub edges: u32,
    /// Operator certificate names.
    pub operators: Vec<String>,
    /// Verify-client certificate names.
    pub clients: Vec<String>,
    /// Host names and IPs every server and edge certificate is valid for.
    pub hosts: Vec<String>,
    /// Validity of every leaf, in days.
    pub days: i64,
}

impl Default for InitSpec {
    fn default() -> Self {
        InitSpec {
            servers: 3,
            edges: 3,
            operators: vec!["operator".into()],
            clients: vec!["client".into()],
            hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            days: 365,
        }
    }
}

/// Writes a file, private keys with mode 0600; refuses to overwrite.
pub fn write_new(path: &Path, body: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    if private {
        o.mode(0o600);
    }
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = o.open(path).map_err(err)?;
    f.write_all(body.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Writes `<name>.pem` and `<name>.key` for one leaf into `dir`.
pub fn write_leaf(dir: &Path, name: &str, leaf: &Leaf) -> Result<Vec<PathBuf>, Error> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_new(&cert, &leaf.cert_pem, false)?;
    write_new(&key, &leaf.key_pem, true)?;
    Ok(vec![cert, key])
}

/// Creates `dir` with `ca.pem`, `ca.key` and a certificate and key per
/// process of `spec`. Refuses a directory that already holds a CA.
pub fn init_dir(dir: &Path, spec: &InitSpec) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca = Ca::generate("veto development CA", spec.days.max(1) * 2)?;
    let mut written = Vec::new();
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    write_new(&ca_cert, ca.cert_pem(), false)?;
    write_new(&ca_key, &ca.key_pem(), true)?;
    written.extend([ca_cert, ca_key]);
    let mut leaves: Vec<(String, Role, Vec<String>)> = Vec::new();
    for i in 1..=spec.servers {
        leaves.push((format!("server-{i}"), Role::Server, spec.hosts.clone()));
    }
    for i in 1..=spec.edges {
        leaves.push((format!("edge-{i}"), Role::Edge, spec.hosts.clone()));
    }
    for o in &spec.operators {
        leaves.push((o.clone(), Role::Operator, Vec::new()));
    }
    for c in &spec.clients {
        leaves.push((c.clone(), Role::Client, Vec::new()));
    }
    for (name, role, hosts) in leaves {
        let leaf = ca.issue(&LeafSpec::new(&name, role, &hosts, spec.days))?;
        written.extend(write_leaf(dir, &name, &leaf)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, TlsFiles, Transport};

    #[test]
    fn leaves_carry_role_and_name_and_load_as_transport() -> Result<(), Error> {
        let ca = Ca::generate("test CA", 2)?;
        let leaf = ca.issue(&LeafSpec::new(
            "edge-7",
            Role::Edge,
            &["localhost".into(), "127.0.0.1".into()],
            1,
        ))?;
        let t = Transport::from_pem(ca.cert_pem().into(), leaf.cert_pem, leaf.key_pem)?;
        assert_eq!(
            t.own_identity(),
            Some(&Identity {
                name: "edge-7".into(),
                role: Role::Edge
            })
        );
        assert!(t.server_tls().is_some());
        assert!(t.http_server_config()?.is_some());
        Ok(())
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() -> Result<(), Error> {
        let ca = Ca::generate("test CA", 2)?;
        let a = ca.issue(&LeafSpec::new("a", Role::Operator, &[], 1))?;
        let b = ca.issue(&LeafSpec::new("b", Role::Operator, &[], 1))?;
        assert!(Transport::from_pem(ca.cert_pem().into(), a.cert_pem, b.key_pem).is_err());
        Ok(())
    }

    #[test]
    fn init_dir_writes_a_loadable_set_and_refuses_to_overwrite() -> Result<(), Error> {
        let d = tempfile::tempdir().map_err(|source| Error::Write {
            path: "tempdir".into(),
            source,
        })?;
        let files = init_dir(d.path(), &InitSpec::default())?;
        assert_eq!(files.len(), 2 + 2 * (3 + 3 + 1 + 1));
        for name in ["server-2", "edge-3", "operator", "client"] {
            let t = Transport::from_config(&TlsFiles::in_dir(d.path(), name), false)?;
            assert_eq!(t.own_identity().map(|i| i.name.as_str()), Some(name));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("ca.key"))
            .map_err(|source| Error::Write {
                path: "ca.key".into(),
                source,
            })?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(init_dir(d.path(), &InitSpec::default()).is_err());
        // A CA loaded back from disk signs leaves the set trusts.
        let ca = Ca::load(
            &std::fs::read_to_string(d.path().join("ca.pem")).unwrap_or_default(),
            &std::fs::read_to_string(d.path().join("ca.key")).unwrap_or_default(),
        )?;
        let leaf = ca.issue(&LeafSpec::new("edge-9", Role::Edge, &[], 1))?;
        assert_eq!(
            Identity::from_der(
                &rustls::pki_types::pem::PemObject::from_pem_slice(leaf.cert_pem.as_bytes())
                    .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
                    .unwrap_or_default()
            )
            .map(|i| i.role),
            Some(Role::Edge)
        );
        Ok(())
    }

    #[test]
    fn choosing_no_transport_or_both_is_an_error() {
        assert!(Transport::from_config(&TlsFiles::default(), false).is_err());
        assert!(matches!(
            Transport::from_config(&TlsFiles::default(), true),
            Ok(Transport::Insecure)
        ));
        let partial = TlsFiles {
            ca: Some("ca.pem".into()),
            ..TlsFiles::default()
        };
        assert!(Transport::from_config(&partial, false).is_err());
        assert!(Transport::from_config(&partial, true).is_err());
    }
}
