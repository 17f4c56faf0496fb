//! Why an edge refuses to answer a call, and its one mapping to
//! `tonic::Status`. A refusal to *answer* is not a verdict: a token that
//! fails verification gets a `VerifyResponse` with its outcome, while these
//! are calls the edge cannot or will not evaluate.

use tonic::{Code, Status};

/// A call the edge does not evaluate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid (too many scopes, too long).
    #[error(transparent)]
    Invalid(#[from] veto_core::validate::Invalid),
    /// The replica did not reach the requested `min_revision` in time.
    #[error("min_revision {wanted} not applied (edge at {at})")]
    MinRevision {
        /// The revision the caller asked for.
        wanted: u64,
        /// The edge's revision when the wait gave up.
        at: u64,
    },
    /// The edge cannot prove it is within the bound: it fails closed.
    #[error("STALE: {0}")]
    Stale(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::MinRevision { .. } => Code::DeadlineExceeded,
            Error::Stale(_) => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}
