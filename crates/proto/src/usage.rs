//! Usage deltas on the wire: an edge's `UsageReport` entries and a
//! server's `RecordUsage` request carry the same `TokenUsage`.

use veto_core::usage::UsageDelta;

use crate::TokenUsage;

/// The wire form of `d`; `edge` is left empty in an edge's own report
/// (the server attributes it to the stream's authenticated edge id).
pub fn token_usage(d: &UsageDelta, edge: &str) -> TokenUsage {
    TokenUsage {
        jti: d.jti.0.to_vec().into(),
        edge: edge.to_owned(),
        valid: d.outcomes.valid,
        revoked: d.outcomes.revoked,
        refused: d.outcomes.refused,
        first_unix: d.first,
        last_unix: d.last,
        scopes: d.scopes.iter().cloned().collect(),
    }
}
