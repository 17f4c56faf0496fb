//! `server::Error` and its one deliberate mapping to `tonic::Status`, so a
//! client can tell "retry (maybe elsewhere)" from "your input is wrong".

use tonic::{Code, Status};
use veto_core::command::Rejection;
use veto_core::validate::Invalid;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is invalid.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The state machine refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// This node is not the leader and could not forward.
    #[error("this node is not the leader{}", .0.as_ref().map(|l| format!(" (leader is node {l})")).unwrap_or_default())]
    NotLeader(Option<u64>),
    /// Leadership changed while the entry was in flight: it may or may not
    /// have been committed.
    #[error("leadership changed while the write was in flight; its outcome is unknown (check, then retry)")]
    Discarded,
    /// No leader is known: an election is in progress or quorum is lost.
    #[error("no leader is known (election in progress or quorum lost); retry")]
    NoLeader,
    /// The node is not part of an initialised cluster yet.
    #[error("this node is not part of an initialised cluster")]
    Uninitialised,
    /// The cluster has no active signing key.
    #[error("no active signing key: publish and activate one (veto keys rotate)")]
    NoActiveKey,
    /// A precondition outside the state machine failed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation is not available in this build or configuration.
    #[error("{0}")]
    Unimplemented(String),
    /// Raft reported a fatal error (storage failure, shutting down).
    #[error("raft: {0}")]
    Fatal(String),
    /// The key-encryption key does not open a signing key.
    #[error("signing key unavailable: {0}")]
    Kek(#[from] veto_core::kek::Error),
    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A presented credential (a token to revoke) does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// A stream or call was malformed beyond one field (no Hello first,
    /// an unexpected message).
    #[error("{0}")]
    Protocol(String),
    /// The caller's certificate may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// This node cannot serve the call now; another node may.
    #[error("{0}")]
    Unavailable(String),
    /// A bounded resource of this node is full.
    #[error("{0}")]
    Exhausted(String),
    /// This node failed to record something it must (disk, state).
    #[error("{0}")]
    Internal(String),
    /// The leader's answer to a call this node forwarded, passed on as is.
    #[error("{}", .0.message())]
    Forwarded(Status),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        if let Error::Forwarded(s) = e {
            return s;
        }
        let code = match &e {
            Error::Forwarded(s) => s.code(),
            Error::Invalid(_) => Code::InvalidArgument,
            Error::Rejected(Rejection::NotFound { .. }) => Code::NotFound,
            Error::Rejected(Rejection::AlreadyExists { .. }) => Code::AlreadyExists,
            Error::Rejected(Rejection::FailedPrecondition(_)) => Code::FailedPrecondition,
            Error::Rejected(Rejection::Conflict(_)) => Code::Aborted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Protocol(_) => Code::InvalidArgument,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::Internal(_) => Code::Internal,
            Error::NotLeader(_) | Error::NoLeader | Error::Uninitialised | Error::Discarded => {
                Code::Unavailable
            }
            Error::NoActiveKey | Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Fatal(_) | Error::Kek(_) => Code::Internal,
            Error::Timeout(_) => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}

/// Result alias for the services.
pub type Result<T, E = Error> = std::result::Result<T, E>;
