//! Compiles `proto/veto/v1/*.proto` with a vendored protoc, so no system
//! protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = ["token", "admin", "feed", "verifier", "raft"]
        .map(|f| root.join("veto/v1").join(format!("{f}.proto")));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    // The descriptor set serves gRPC server reflection (grpcurl, grpcui).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".veto.v1")
        .file_descriptor_set_path(out.join("veto_v1_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    // etcd's KV/Maintenance subset, used only by `veto-bench` to drive etcd.
    let etcd = root.join("bench/etcd.proto");
    println!("cargo:rerun-if-changed={}", etcd.display());
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[etcd], &[root])?;
    Ok(())
}
