//! `veto`: the operator CLI. Thin: parses flags and hands off to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = veto_cli::Cli::parse();
    // The agent runs for long and reports what it does; commands print results.
    let logs = match cli.cmd {
        veto_cli::Cmd::Agent(_) => "info",
        _ => "warn",
    };
    veto_telemetry::trace::stderr_logs(logs);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(veto_cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veto: {e:#}");
            ExitCode::FAILURE
        }
    }
}
