//! The claims veto puts in every token.

use serde::{Deserialize, Serialize};

use crate::Jti;

/// Token claims. `scope` is space-delimited as in RFC 8693.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Unique token id.
    pub jti: Jti,
    /// Subject.
    pub sub: String,
    /// Space-delimited scopes (may be empty).
    pub scope: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Not before, unix seconds.
    pub nbf: i64,
    /// Expires at, unix seconds. Always set.
    pub exp: i64,
    /// Rotation family.
    pub fam: Jti,
    /// Optional audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The revision the issuer had applied when it signed the token. A
    /// subject revoke at a later revision covers the token; one at or
    /// before it cannot (the issuer had seen it, and the state machine
    /// refuses to record a token signed without having seen a revoke of its
    /// subject). Ordering by revision, not by `iat`, makes the cutoff exact
    /// and independent of every clock. 0 in tokens from before this claim.
    #[serde(default)]
    pub rev: u64,
}

impl Claims {
    /// The scopes as a list.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// Whether every required scope is granted.
    pub fn has_scopes<'a>(&self, required: impl IntoIterator<Item = &'a str>) -> bool {
        required.into_iter().all(|r| self.scopes().any(|s| s == r))
    }
}
