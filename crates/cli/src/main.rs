//! `veto`: the operator CLI. Thin: parses flags and hands off to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = veto_cli::Cli::parse();
    veto_telemetry::trace::stderr_logs("warn");
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
