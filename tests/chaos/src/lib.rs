//! veto's chaos harness.
//!
//! Starts `veto-server` × 3 or × 5 and `veto-edge` × N as real processes,
//! each in its own network namespace joined to one bridge ([`net`]), runs a
//! workload of issues, revokes of every kind and verifies at every edge
//! ([`workload`]) while faults come and go ([`scenario`]): kill -9 of the
//! leader, a follower or an edge; the leader or an edge partitioned; the
//! server an edge streams from isolated; symmetric and asymmetric packet
//! loss; a one-way cut; a full-cluster restart; a stalled (SIGSTOPped)
//! leader; a learner killed; wall clocks skewed or jumping ([`clock`],
//! with libfaketime). Every operation is recorded with invocation and
//! completion times on the harness clock, and [`checker`] checks the
//! history: nothing acknowledged is lost, no edge accepts a token at or
//! after revoke ack + B, no fresh edge refuses a valid token (nor one its
//! clock leeway covers), and the servers' state digests agree after
//! healing. It needs root, iproute2 and nftables (and, for clock
//! faults, libfaketime).

pub mod checker;
pub mod clock;
pub mod net;
pub mod scenario;
pub mod workload;
pub mod world;

pub use scenario::{run, Fault, Plan, Report};
