//! Who may call what on a control-plane node (docs/design.md, "Security").
//!
//! Applied by [`veto_auth::AuthLayer`] to every gRPC call when the node runs
//! with TLS. Peers (`server`) may call everything: that is how Raft and
//! forwarding work. Operators write tokens and run admin calls. Edges may
//! only subscribe to the feed. A verify client needs no rights here at
//! all: it verifies at an edge. Refresh is an operator call too: it names
//! the predecessor by jti, which is not secret (it is in the token and in
//! every Verify answer), so letting any certificate holder refresh would
//! let it mint a successor for someone else's token. An `issuer` may issue,
//! refresh and revoke single tokens and read them; the token service then
//! holds each call to the issuer policy named by its certificate. An
//! `auditor` reads (tokens, keys, edges, status, policies, the audit trail)
//! and writes nothing. Unknown methods are refused.

use veto_auth::{Access, Role};

const PEERS: &[Role] = &[Role::Server];
const OPERATORS: &[Role] = &[Role::Operator, Role::Server];
const FEED: &[Role] = &[Role::Edge, Role::Server];
const ISSUERS: &[Role] = &[Role::Operator, Role::Server, Role::Issuer];
const READERS: &[Role] = &[Role::Operator, Role::Server, Role::Issuer, Role::Auditor];
const ADMIN_READERS: &[Role] = &[Role::Operator, Role::Server, Role::Auditor];

const ADMIN_METHODS: &[&str] = &[
    "Init",
    "AddLearner",
    "Promote",
    "ChangeMembership",
    "Remove",
    "TransferLeader",
    "Status",
    "RotateSigningKey",
    "ListKeys",
    "Edges",
    "Backup",
    "RewrapKeys",
    "Audit",
    "SetIssuerPolicy",
    "ListIssuerPolicies",
    "SetRotationPolicy",
];
/// Admin reads an auditor may make (not Backup: it carries sealed keys).
const ADMIN_READS: &[&str] = &["Status", "ListKeys", "Edges", "Audit", "ListIssuerPolicies"];
/// Token calls an issuer may make (held to its policy).
const ISSUER_METHODS: &[&str] = &["Issue", "Refresh", "Revoke"];
const TOKEN_READS: &[&str] = &["Get", "List", "Usage"];
const TOKEN_METHODS: &[&str] = &[
    "Issue",
    "Refresh",
    "Revoke",
    "RevokeSubject",
    "RevokeFamily",
    "RevokeSelector",
    "Get",
    "List",
];
const RAFT_METHODS: &[&str] = &[
    "AppendEntries",
    "AppendStream",
    "Vote",
    "InstallSnapshot",
    "TransferLeader",
    "ReadIndex",
];

fn split(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// The access rule of a gRPC path on a server.
pub fn policy(path: &str) -> Access {
    if let Some(a) = veto_auth::standard_access(path) {
        return a;
    }
    let Some((svc, method)) = split(path) else {
        return Access::Deny;
    };
    match svc {
        "veto.v1.RaftService" if RAFT_METHODS.contains(&method) => Access::Roles(PEERS),
        "veto.v1.FeedService" if method == "Subscribe" => Access::Roles(FEED),
        "veto.v1.TokenService" if TOKEN_READS.contains(&method) => Access::Roles(READERS),
        "veto.v1.TokenService" if ISSUER_METHODS.contains(&method) => Access::Roles(ISSUERS),
        "veto.v1.TokenService" if TOKEN_METHODS.contains(&method) => Access::Roles(OPERATORS),
        // The holder proves possession by presenting the token itself.
        "veto.v1.TokenService" if method == "RefreshPresented" => Access::Authenticated,
        // Servers forward what their edges reported.
        "veto.v1.AdminService" if method == "RecordUsage" => Access::Roles(PEERS),
        "veto.v1.AdminService" if ADMIN_READS.contains(&method) => Access::Roles(ADMIN_READERS),
        "veto.v1.AdminService" if ADMIN_METHODS.contains(&method) => Access::Roles(OPERATORS),
        _ => Access::Deny,
    }
}

/// Whether a path changes state (counted against the per-client write
/// rate limit).
pub fn is_write(path: &str) -> bool {
    match split(path) {
        Some(("veto.v1.TokenService", m)) => !TOKEN_READS.contains(&m),
        Some(("veto.v1.AdminService", m)) => !matches!(m, "Backup") && !ADMIN_READS.contains(&m),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_may_only_subscribe_and_unknown_paths_are_denied() {
        let allows = |path: &str, role: Role| match policy(path) {
            Access::Roles(r) => r.contains(&role),
            Access::Public | Access::Authenticated => true,
            Access::Deny => false,
        };
        assert!(allows("/veto.v1.FeedService/Subscribe", Role::Edge));
        for m in TOKEN_METHODS {
            assert!(
                !allows(&format!("/veto.v1.TokenService/{m}"), Role::Edge),
                "{m}"
            );
            assert!(
                allows(&format!("/veto.v1.TokenService/{m}"), Role::Operator),
                "{m}"
            );
        }
        for m in ADMIN_METHODS {
            assert!(
                !allows(&format!("/veto.v1.AdminService/{m}"), Role::Edge),
                "{m}"
            );
            assert!(
                !allows(&format!("/veto.v1.AdminService/{m}"), Role::Client),
                "{m}"
            );
            assert!(
                allows(&format!("/veto.v1.AdminService/{m}"), Role::Operator),
                "{m}"
            );
        }
        for m in RAFT_METHODS {
            assert!(allows(&format!("/veto.v1.RaftService/{m}"), Role::Server));
            assert!(!allows(
                &format!("/veto.v1.RaftService/{m}"),
                Role::Operator
            ));
        }
        assert!(!allows("/veto.v1.TokenService/Refresh", Role::Client));
        // issuers: their token calls and reads, nothing wholesale, no admin
        for m in ["Issue", "Refresh", "Revoke", "Get", "List"] {
            assert!(
                allows(&format!("/veto.v1.TokenService/{m}"), Role::Issuer),
                "{m}"
            );
        }
        for m in ["RevokeSubject", "RevokeFamily", "RevokeSelector"] {
            assert!(
                !allows(&format!("/veto.v1.TokenService/{m}"), Role::Issuer),
                "{m}"
            );
        }
        // auditors: every read, no write
        for m in TOKEN_METHODS {
            let read = TOKEN_READS.contains(m);
            assert_eq!(
                allows(&format!("/veto.v1.TokenService/{m}"), Role::Auditor),
                read,
                "{m}"
            );
        }
        for m in ADMIN_METHODS {
            let read = ADMIN_READS.contains(m);
            assert_eq!(
                allows(&format!("/veto.v1.AdminService/{m}"), Role::Auditor),
                read,
                "{m}"
            );
            assert!(
                !allows(&format!("/veto.v1.AdminService/{m}"), Role::Issuer),
                "{m}"
            );
            assert_eq!(
                is_write(&format!("/veto.v1.AdminService/{m}")),
                !read && *m != "Backup",
                "{m}"
            );
        }
        assert!(!allows("/veto.v1.TokenService/Issue", Role::Client));
        assert_eq!(policy("/veto.v1.TokenService/Nope"), Access::Deny);
        assert_eq!(
            policy("/grpc.reflection.v1.ServerReflection/X"),
            Access::Deny
        );
        // probes need no certificate; reflection needs one, of any role
        assert_eq!(policy("/grpc.health.v1.Health/Check"), Access::Public);
        assert_eq!(policy("/grpc.health.v1.Health/Watch"), Access::Public);
        assert_eq!(
            policy("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Authenticated
        );
        assert_eq!(policy("/grpc.health.v1.Health/List"), Access::Deny);
        assert_eq!(policy("nonsense"), Access::Deny);
        assert!(is_write("/veto.v1.TokenService/Revoke"));
        assert!(!is_write("/veto.v1.TokenService/Get"));
        assert!(is_write("/veto.v1.AdminService/ChangeMembership"));
        assert!(!is_write("/veto.v1.AdminService/Audit"));
    }
}
