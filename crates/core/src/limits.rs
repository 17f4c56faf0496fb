//! Hard limits on input. Every limit has its unit in the name.

use serde::{Deserialize, Serialize};

/// Largest piece of a snapshot or backup in one gRPC message: feed
/// snapshots, Raft `InstallSnapshot` and backups are all sent in pieces
/// of at most this size.
pub const STREAM_CHUNK_BYTES: usize = 1 << 20;
/// Longest edge id; edge ids are `[A-Za-z0-9._-]`.
pub const MAX_EDGE_ID_BYTES: usize = 128;
/// Most scopes one verify item may require.
pub const MAX_REQUIRED_SCOPES: usize = 64;

/// Limits shared by the control plane and the edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest token string accepted anywhere.
    pub max_token_bytes: usize,
    /// Longest subject.
    pub max_subject_bytes: usize,
    /// Most scopes on one token.
    pub max_scopes: usize,
    /// Longest single scope.
    pub max_scope_bytes: usize,
    /// Longest audience.
    pub max_audience_bytes: usize,
    /// Longest revoke reason.
    pub max_reason_bytes: usize,
    /// Largest token lifetime.
    pub max_ttl_seconds: u64,
    /// Lifetime used when a request asks for 0.
    pub default_ttl_seconds: u64,
    /// Longest refresh grace period.
    pub max_grace_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_token_bytes: 4096,
            max_subject_bytes: 256,
            max_scopes: 64,
            max_scope_bytes: 128,
            max_audience_bytes: 256,
            max_reason_bytes: 512,
            max_ttl_seconds: 24 * 3600,
            default_ttl_seconds: 3600,
            max_grace_seconds: 3600,
        }
    }
}

impl Limits {
    /// Checks the limits are usable together; names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let nonzero = [
            ("max_token_bytes", self.max_token_bytes as u64),
            ("max_subject_bytes", self.max_subject_bytes as u64),
            ("max_scopes", self.max_scopes as u64),
            ("max_scope_bytes", self.max_scope_bytes as u64),
            ("max_audience_bytes", self.max_audience_bytes as u64),
            ("max_ttl_seconds", self.max_ttl_seconds),
            ("default_ttl_seconds", self.default_ttl_seconds),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(format!("limits.{name} must be greater than 0"));
            }
        }
        if self.default_ttl_seconds > self.max_ttl_seconds {
            return Err(format!(
                "limits.default_ttl_seconds ({}) must not exceed limits.max_ttl_seconds ({})",
                self.default_ttl_seconds, self.max_ttl_seconds
            ));
        }
        if self.max_ttl_seconds > 366 * 24 * 3600 {
            return Err("limits.max_ttl_seconds must be at most one year".into());
        }
        if self.max_token_bytes > 64 * 1024 {
            return Err("limits.max_token_bytes must be at most 65536".into());
        }
        Ok(())
    }
}
