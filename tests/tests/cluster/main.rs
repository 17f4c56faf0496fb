//! The cluster as operators run it: membership changes and failover,
//! snapshots for late members, backup and restore, rolling restarts.

mod backup;
mod membership;
mod rolling_restart;
mod snapshot;
