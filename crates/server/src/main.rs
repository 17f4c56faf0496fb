//! `veto-server`: wires tracing, configuration and signals to the library.

use std::process::ExitCode;

use clap::Parser;
use veto_server::config::{Flags, Options};
use veto_server::Server;

/// sysexits EX_CONFIG-ish: bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let opts = match Options::load(&flags) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("veto-server: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if flags.dump_config {
        match toml::to_string_pretty(&opts) {
            Ok(t) => {
                print!("{t}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("veto-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let rt = match runtime(flags.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let otlp = flags.otlp_endpoint.clone();
    let served = rt.block_on(async move {
        // Logs (and spans, when an OTLP endpoint is set) from here on; the
        // exporter needs the runtime, so it starts inside it.
        let traces =
            veto_telemetry::trace::init("veto-server", otlp.as_deref(), "info,openraft=warn")?;
        let r = run(opts, flags.ready_file).await;
        traces.shutdown().await;
        r
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options, ready_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let server = Server::start(opts).await?;
    if let Some(p) = ready_file {
        let body = serde_json::json!({
            "grpc": server.grpc_addr.to_string(),
            "http": server.http_addr.to_string(),
            "pid": std::process::id(),
        });
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, body.to_string())?;
        std::fs::rename(&tmp, &p)?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

/// The async runtime: `workers` threads, 0 = one per CPU, 1 = current-thread.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}
