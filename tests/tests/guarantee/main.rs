//! The guarantee: every edge refuses a revoked token from ack + B on —
//! through edge failover, kills of the server an edge streams from and of
//! the leader, and on clocks that disagree.

mod edge_clocks;
mod edges;
mod under_kills;
