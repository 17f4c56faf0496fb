//! veto's gRPC contract, generated from `proto/veto/v1/*.proto`.
//!
//! Everything the public services and the internal Raft transport exchange is
//! defined there; this crate only compiles it. Conversions between these wire
//! types and `veto-core`'s domain types live with the code that owns each
//! mapping (`veto-server`), so domain types never derive `prost::Message`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("veto.v1");
}

pub use v1::*;

/// The encoded `FileDescriptorSet` of `proto/veto/v1`, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/veto_v1_descriptor.bin"));

/// The subset of etcd's v3 API used by `veto-bench` to drive etcd.
#[allow(clippy::all, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

pub mod edges;
pub mod feed;
pub mod propagation;
pub mod standard;
pub mod usage;
