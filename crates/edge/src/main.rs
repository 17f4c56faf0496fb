//! `veto-edge`: wires flags and signals to the `veto-edge` library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use veto_edge::{Edge, Options};
use veto_feed::Policy;

/// veto edge verifier node.
#[derive(Debug, Parser)]
#[command(name = "veto-edge", version)]
struct Flags {
    /// Stable edge id.
    #[arg(long, env = "VETO_EDGE_ID")]
    edge_id: String,
    /// Control-plane gRPC addresses, comma-separated.
    #[arg(long, env = "VETO_SERVERS", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// VerifierService listen address.
    #[arg(long, env = "VETO_EDGE_LISTEN_ADDR", default_value = "127.0.0.1:7500")]
    listen_addr: SocketAddr,
    /// HTTP listen address (/healthz).
    #[arg(long, env = "VETO_EDGE_HTTP_ADDR", default_value = "127.0.0.1:7580")]
    http_addr: SocketAddr,
    /// Propagation bound B in milliseconds.
    #[arg(long, env = "VETO_BOUND_MS", default_value_t = 2000)]
    bound_ms: u64,
    /// Probe interval H in milliseconds.
    #[arg(long, env = "VETO_PROBE_INTERVAL_MS", default_value_t = 200)]
    probe_interval_ms: u64,
    /// Answer (marked stale) instead of failing closed outside the bound.
    #[arg(long)]
    fail_open: bool,
    /// Seconds a token's nbf/iat may lie in this edge's future (its clock
    /// behind the issuer's) and still be accepted.
    #[arg(long, env = "VETO_CLOCK_LEEWAY_SECS", default_value_t = 60)]
    clock_leeway_secs: u64,
    /// Seconds past exp a token is still accepted (this edge's clock ahead
    /// of the issuer's). A token the cluster has swept as expired is
    /// refused whatever this says.
    #[arg(long, env = "VETO_EXP_LEEWAY_SECS", default_value_t = 0)]
    exp_leeway_secs: u64,
    /// Warn in the log and /healthz when this edge's clock differs from
    /// the leader's by more than this many milliseconds.
    #[arg(long, env = "VETO_CLOCK_OFFSET_WARN_MS", default_value_t = veto_edge::DEFAULT_CLOCK_OFFSET_WARN_MS)]
    clock_offset_warn_ms: u64,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Export traces over OTLP/gRPC to this endpoint; off unless this or
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set.
    #[arg(long, env = "VETO_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// CA certificate (PEM) that signs every veto certificate.
    #[arg(long, env = "VETO_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// This edge's certificate (PEM, role `edge`, CN = the edge id).
    #[arg(long, env = "VETO_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// This edge's private key (PEM).
    #[arg(long, env = "VETO_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Plaintext toward servers and clients, no client authentication
    /// (local demos and tests only; a warning is logged).
    #[arg(long, env = "VETO_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

fn main() -> ExitCode {
    let f = Flags::parse();
    let files = veto_auth::TlsFiles {
        ca: f.tls_ca.clone(),
        cert: f.tls_cert.clone(),
        key: f.tls_key.clone(),
    };
    let transport = match veto_auth::Transport::from_config(&files, f.insecure) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("veto-edge: invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let opts = Options {
        transport,
        edge_id: f.edge_id,
        servers: f.servers,
        bound_ms: f.bound_ms,
        probe_interval_ms: f.probe_interval_ms,
        policy: if f.fail_open {
            Policy::FailOpen
        } else {
            Policy::FailClosed
        },
        leeway: veto_core::token::Leeway {
            nbf_seconds: f.clock_leeway_secs,
            exp_seconds: f.exp_leeway_secs,
        },
        clock_offset_warn_ms: f.clock_offset_warn_ms,
        ..Options::default()
    };
    // Test-only (debug builds): an edge that applies another bound than the
    // one it is configured with, so the chaos harness can prove its checker
    // catches an edge that overshoots B. Release builds have no such switch.
    #[cfg(debug_assertions)]
    let opts = match std::env::var("VETO_TEST_ONLY_BOUND_MS").map(|v| v.parse::<u64>()) {
        Ok(Ok(ms)) => {
            eprintln!(
                "veto-edge: VETO_TEST_ONLY_BOUND_MS={ms}: this edge applies a bound of {ms} ms, \
                 not the configured one (tests only)"
            );
            Options {
                bound_ms: ms,
                ..opts
            }
        }
        _ => opts,
    };
    if let Err(e) = opts.validate() {
        eprintln!("veto-edge: invalid configuration: {e}");
        return ExitCode::from(64);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        let traces = veto_telemetry::trace::init("veto-edge", f.otlp_endpoint.as_deref(), "info")?;
        if !opts.transport.is_tls() {
            tracing::warn!(
                "--insecure: the feed and VerifierService are plaintext with no client authentication; \
                 for local demos and tests only"
            );
        }
        let edge = Edge::start(opts, f.listen_addr, f.http_addr).await?;
        if let Some(p) = f.ready_file {
            let body = serde_json::json!({
                "grpc": edge.grpc_addr.map(|a| a.to_string()),
                "http": edge.http_addr.map(|a| a.to_string()),
            });
            std::fs::write(&p, body.to_string())?;
        }
        // SIGINT or SIGTERM (what container runtimes send) stop it cleanly.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        edge.stop().await;
        traces.shutdown().await;
        anyhow::Ok(())
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}
