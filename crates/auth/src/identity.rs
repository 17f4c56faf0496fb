//! Who a client certificate names: a role and a name.

use std::fmt;

/// The SAN URI prefix that carries a certificate's role.
pub const ROLE_URI_PREFIX: &str = "urn:veto:role:";

/// What a certificate holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A control-plane node: Raft, forwarding, everything a peer needs.
    Server,
    /// An edge verifier: subscribes to the feed, nothing else on servers.
    Edge,
    /// A human or automation with operator rights: writes and admin calls.
    Operator,
    /// A verify client: a service checking tokens at an edge. On the
    /// servers it may only refresh a token it presents.
    Client,
    /// Issues, refreshes and revokes tokens within the issuer policy kept
    /// under its certificate name in the replicated state; reads tokens.
    Issuer,
    /// Reads tokens, keys, edges, status, policies and the audit trail;
    /// changes nothing.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 6] = [
        Role::Server,
        Role::Edge,
        Role::Operator,
        Role::Client,
        Role::Issuer,
        Role::Auditor,
    ];

    /// The name used in certificates and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Edge => "edge",
            Role::Operator => "operator",
            Role::Client => "client",
            Role::Issuer => "issuer",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The SAN URI naming this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The certificate's subject common name.
    pub name: String,
    /// The role its SAN URI grants.
    pub role: Role,
}

/// Longest common name accepted as an identity name.
const MAX_NAME: usize = 64;

impl Identity {
    /// The identity of a DER certificate (already verified against the CA
    /// by rustls): its CN and exactly one `urn:veto:role:` URI. `None` when
    /// either is missing, the name is not printable ASCII, or the
    /// certificate names more than one role.
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_owned();
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return None;
        }
        let san = cert.subject_alternative_name().ok()??;
        let mut roles = san.value.general_names.iter().filter_map(|g| match g {
            GeneralName::URI(u) => u.strip_prefix(ROLE_URI_PREFIX),
            _ => None,
        });
        let role = Role::parse(roles.next()?)?;
        if roles.next().is_some() {
            return None;
        }
        Some(Identity { name, role })
    }

    /// The actor string recorded in the audit trail: `role:name`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role, self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}
