//! openraft over gRPC: the client side ([`network`]) and the server side
//! ([`service`]) of `veto.v1.RaftService`. Payloads are openraft's own types
//! as JSON inside protobuf `bytes`, so the wire follows the pinned openraft.

pub mod network;
pub mod service;

use veto_store::TypeConfig;

/// openraft's snapshot type for veto: the serialised state.
pub type SnapshotData = Vec<u8>;
/// A full snapshot.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
