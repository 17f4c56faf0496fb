//! `veto-chaos`: a longer chaos run of rotating faults, printing the figures
//! per fault as Markdown (for docs/reliability.md) and failing when the
//! checker finds a violation.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use veto_chaos::clock::{Clock, Leeway};
use veto_chaos::scenario::summarize;
use veto_chaos::workload::Rates;
use veto_chaos::world::WorldOptions;
use veto_chaos::{Fault, Plan};

/// Rotating faults over real veto processes in network namespaces (root).
#[derive(Debug, Parser)]
#[command(name = "veto-chaos")]
struct Flags {
    /// Voters (3 or 5).
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Edges.
    #[arg(long, default_value_t = 3)]
    edges: usize,
    /// Total run time in seconds (faults rotate until then).
    #[arg(long, default_value_t = 1800)]
    duration_secs: u64,
    /// How long each fault stays on, seconds.
    #[arg(long, default_value_t = 8)]
    hold_secs: u64,
    /// Quiet time after each recovery, seconds.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// The edges' bound B, ms.
    #[arg(long, default_value_t = 1500)]
    bound_ms: u64,
    /// The edges' probe interval H, ms.
    #[arg(long, default_value_t = 150)]
    probe_ms: u64,
    /// Run an edge on a wall clock off the machine's, with libfaketime:
    /// `INDEX:SECONDS` (e.g. `0:-90`), or `INDEX:SECONDS:JUMP` for a clock
    /// that steps by JUMP seconds at each clock-jump fault. Repeatable.
    #[arg(long = "edge-clock", value_parser = parse_clock)]
    edge_clocks: Vec<(usize, Clock)>,
    /// The same for a server.
    #[arg(long = "server-clock", value_parser = parse_clock)]
    server_clocks: Vec<(usize, Clock)>,
    /// The edges' nbf/iat and exp leeway, seconds (their defaults if unset:
    /// 60 and 0); the checker holds them to it.
    #[arg(long)]
    leeway_secs: Option<u64>,
}

/// `INDEX:SECONDS[:JUMP]`.
fn parse_clock(s: &str) -> Result<(usize, Clock), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |x: &str| x.parse::<i64>().map_err(|e| format!("{x:?}: {e}"));
    let (index, clock) = match parts.as_slice() {
        [i, off] => (i, Clock::offset(num(off)?)),
        [i, off, jump] => (i, Clock::jumping(num(off)?, num(jump)?)),
        _ => return Err(format!("{s:?} is not INDEX:SECONDS[:JUMP]")),
    };
    let index = index.parse().map_err(|e| format!("{index:?}: {e}"))?;
    Ok((index, clock))
}

fn main() -> ExitCode {
    let f = Flags::parse();
    // A clock that jumps needs its fault in the rotation.
    let mut faults = Fault::ALL.to_vec();
    if f.edge_clocks
        .iter()
        .chain(&f.server_clocks)
        .any(|(_, c)| c.jump_secs != 0)
    {
        faults.push(Fault::ClockJump);
    }
    let plan = Plan {
        world: WorldOptions {
            servers: f.servers,
            edges: f.edges,
            bound: Duration::from_millis(f.bound_ms),
            probe: Duration::from_millis(f.probe_ms),
            edge_clocks: f.edge_clocks.iter().copied().collect(),
            server_clocks: f.server_clocks.iter().copied().collect(),
            leeway: f.leeway_secs.map(|s| Leeway {
                nbf_secs: s,
                exp_secs: s,
            }),
            ..WorldOptions::default()
        },
        rates: Rates {
            // nothing may expire before the final checks (the servers cap
            // lifetimes at 24 h, so runs are capped at 20 h below)
            ttl: Duration::from_secs((f.duration_secs + 3600).min(24 * 3600)),
            ..Rates::default()
        },
        faults,
        hold: Duration::from_secs(f.hold_secs),
        settle: Duration::from_secs(f.settle_secs),
        total: Some(Duration::from_secs(f.duration_secs)),
    };
    if f.duration_secs > 20 * 3600 {
        eprintln!("veto-chaos: --duration-secs is at most 72000 (tokens live at most 24 h)");
        return ExitCode::from(64);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("veto-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGINT or SIGTERM end the run early; dropping it kills the processes
    // and removes the namespaces.
    let r = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = veto_chaos::run(plan) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        }
    });
    match r {
        Ok(mut r) => {
            r.figures = summarize(&r.figures);
            println!(
                "veto-chaos: {} servers, {} edges, B = {} ms, H = {} ms, faults held {} s\n",
                f.servers, f.edges, f.bound_ms, f.probe_ms, f.hold_secs
            );
            println!("{}", r.markdown());
            for v in &r.violations {
                println!("VIOLATION: {v}");
            }
            // a run where the workload did nothing proves nothing
            let idle = r.issues == 0 || r.verifies.1 == 0 || r.revokes.is_empty();
            if idle {
                println!("the workload did not run (no issues, revokes or answered verifies)");
            }
            if r.violations.is_empty() && !idle {
                ExitCode::SUCCESS
            } else {
                println!("logs kept in {}", r.logs.display());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("veto-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}
