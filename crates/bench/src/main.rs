//! `veto-bench`: the demo and the benchmarks. Parses flags and hands off.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use veto_bench::bench::BenchArgs;
use veto_bench::demo::DemoArgs;

/// veto's local demo and benchmarks (each starts its own local cluster).
#[derive(Debug, Parser)]
#[command(name = "veto-bench", version)]
struct Cli {
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a local 3-node cluster and edges, issue a token, verify it,
    /// revoke it and show the measured propagation.
    Demo(DemoArgs),
    /// Committed issue and revoke throughput and latency, against etcd puts.
    All(BenchArgs),
    /// Committed issue throughput and latency, against etcd puts.
    Issue(BenchArgs),
    /// Committed revoke throughput and latency, against etcd puts.
    Revoke(BenchArgs),
    /// Verify throughput and latency at an edge (open loop).
    Verify(BenchArgs),
    /// Revoke-to-edge propagation against etcd watch delivery.
    Propagation(BenchArgs),
    /// An edge replica bootstrapping from snapshots of growing state.
    Scale(BenchArgs),
    /// What metrics and tracing cost on the verify path.
    Overhead(BenchArgs),
    /// The edge's gateway hooks (ext_authz Check, forward-auth) against gRPC
    /// Verify, and nginx with veto's auth_request against nginx alone.
    Gateways(BenchArgs),
    /// What per-token usage tracking costs: verify throughput on vs off,
    /// the edge table's memory at 1,000,000 tokens, Raft entries per second.
    Usage(BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (what, bench) = match cli.cmd {
        Cmd::Demo(d) => ("demo", Err(d)),
        Cmd::All(b) => ("all", Ok(b)),
        Cmd::Issue(b) => ("issue", Ok(b)),
        Cmd::Revoke(b) => ("revoke", Ok(b)),
        Cmd::Verify(b) => ("verify", Ok(b)),
        Cmd::Propagation(b) => ("propagation", Ok(b)),
        Cmd::Scale(b) => ("scale", Ok(b)),
        Cmd::Overhead(b) => ("overhead", Ok(b)),
        Cmd::Gateways(b) => ("gateways", Ok(b)),
        Cmd::Usage(b) => ("usage", Ok(b)),
    };
    // `overhead` installs its own subscriber (with OTLP export) midway.
    if what != "overhead" {
        veto_telemetry::trace::stderr_logs("warn");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match bench {
            Err(demo) => veto_bench::demo::run(demo, cli.json).await,
            Ok(mut b) => {
                b.what = what.to_owned();
                veto_bench::bench::run(b, cli.json).await
            }
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
