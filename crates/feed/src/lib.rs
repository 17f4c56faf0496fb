//! The edge side of the feed protocol, without I/O (docs/design.md, "The feed").
//!
//! A [`Replica`] holds what an edge needs to verify tokens — public keys,
//! token revocations, subject cutoffs, family revocations — and applies
//! [`Batch`]es of [`EdgeChange`]s strictly in revision order: a batch that
//! does not start at the replica's revision is refused ([`Error::Gap`]) and
//! the caller resyncs. Freshness follows the probe rule: `fresh_at` is the
//! local monotonic send time of the newest answered probe whose revision the
//! replica has applied; a verify at `now` is inside the bound iff
//! `now - fresh_at <= bound`. Time is passed in (`Instant`, unix seconds), so
//! everything here is tested without sockets or sleeps.

mod cache;
pub mod log;
mod replica;
pub mod session;

pub use cache::SigCache;
pub use log::{ChangeLog, Read};
pub use replica::{Batch, Error, Freshness, Outcome, Policy, Replica, Verdict};
pub use veto_core::EdgeChange;
