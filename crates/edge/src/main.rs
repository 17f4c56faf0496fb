//! `veto-edge`: wires flags and signals to the `veto-edge` library.

use std::process::ExitCode;

use clap::Parser;
use veto_edge::config::{Config, Flags};
use veto_edge::{Edge, Options};

/// sysexits EX_CONFIG-ish: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let f = Flags::parse();
    let config = match Config::load(&f) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veto-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if f.dump_config {
        return match toml::to_string_pretty(&config) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("veto-edge: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match options(&config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("veto-edge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(f, config, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The edge's options from its configuration, checked.
fn options(config: &Config) -> Result<Options, String> {
    let opts = config.options().map_err(|e| e.to_string())?;
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
    opts.validate()
        .map_err(|e| format!("invalid configuration: {e}"))?;
    Ok(opts)
}

/// Runs the edge until SIGINT or SIGTERM (what container runtimes send).
async fn serve(f: Flags, config: Config, opts: Options) -> anyhow::Result<()> {
    let traces = veto_telemetry::trace::init("veto-edge", config.otlp_endpoint.as_deref(), "info")?;
    if !opts.transport.is_tls() {
        tracing::warn!(
            "--insecure: the feed and VerifierService are plaintext with no client authentication; \
             for local demos and tests only"
        );
    }
    let edge = Edge::start(opts, config.listen_addr, config.http_addr).await?;
    if let Some(p) = f.ready_file {
        let body = serde_json::json!({
            "grpc": edge.grpc_addr.map(|a| a.to_string()),
            "http": edge.http_addr.map(|a| a.to_string()),
        });
        std::fs::write(&p, body.to_string())?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    edge.stop().await;
    traces.shutdown().await;
    Ok(())
}
