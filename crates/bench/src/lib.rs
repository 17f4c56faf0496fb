//! `veto-bench`: the local demo and the benchmarks. Both start real
//! `veto-server` processes on loopback (through `veto-testkit`) and edges
//! in-process; nothing here is part of what operators run in production,
//! which is why it lives apart from the `veto` CLI.

pub mod bench;
mod common;
pub mod demo;
pub mod edgebench;
pub mod gatewaybench;
pub mod overhead;
pub mod usagebench;
