//! `veto-bench usage`: what per-token usage tracking costs (issue 18,
//! "Token usage, seen"). Three parts, each selectable with `--usage-parts`:
//!
//! - **memory**: a `veto_edge::usage::Usage` table bounded at 1,000,000
//!   tokens filled with 1,000,000 distinct random jtis; its own count of the
//!   bytes its maps hold, and this process's resident-set growth
//!   (`/proc/self/statm`) over the fill, against 64 MB.
//! - **overhead**: two edges of one cluster, one with tracking off
//!   (`usage_max_tokens = 0`) and one on (the default table, reporting every
//!   10 s), loaded with the same workloads so the machine's drift hits both.
//!   In-process verify on signature cache hits: pairs of one pass over the
//!   working set on each edge (about 25 ms), the order alternating, and the
//!   median of the pairs' differences against the 5 % budget (this VM's
//!   speed wanders by a quarter over seconds, which only pairs this short
//!   cancel). gRPC `Verify` closed loop at a fixed concurrency and gRPC
//!   `VerifyBatch`: alternating turns per round, the median of the rounds'
//!   on/off against the budget. `--usage-aa` runs both edges with tracking
//!   off: the control that shows what the method can resolve.
//! - **raft**: three edges, one per server, driven in-process at a fixed
//!   verify rate over a working set of distinct tokens (real tokens through
//!   `EdgeHandle::verify` when the set is no larger than the issued tokens,
//!   else synthetic jtis recorded straight into the edges' usage tables,
//!   which the servers report and skip at apply — the same Raft cost), with
//!   the default report and flush intervals; `RecordUsage` entries per second
//!   from the servers' `veto_usage_commands_total`.
//!
//! Run on demand, never as a test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tonic::transport::Channel;
use veto_core::usage::{Outcomes, UsageDelta};
use veto_core::Jti;
use veto_proto as pb;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::Cluster;

use crate::bench::{drive, BenchArgs};
use crate::common::{addr_text, batch_items, edge_opts, grpc_addrs, q};
use crate::edgebench::{cluster_with_key, issue_many, EdgeThread};
use crate::gatewaybench::verify_turn;

/// Live tokens issued: the overhead working set, and the largest real
/// working set of the Raft part.
const TOKENS: usize = 10_000;

/// Allowed slowdown with tracking on.
const BUDGET: f64 = 0.05;

/// Distinct tokens of the memory part, and its limit.
const MEMORY_TOKENS: usize = 1_000_000;
const MEMORY_LIMIT_MB: f64 = 64.0;

/// VerifyBatch: tokens per call and calls in flight.
const BATCH: usize = 1000;
const BATCH_IN_FLIGHT: usize = 4;

/// Passes over the working set per run of the memory part's record costs.
const INPROC_PASSES: usize = 20;

/// In-process pairs per round: one pass over the working set on each edge
/// (about 25 ms each here), in alternating order.
const INPROC_PAIRS: usize = 40;

/// The servers' default `usage_flush_interval_ms` (the bench does not
/// change it).
const SERVER_FLUSH: Duration = Duration::from_secs(10);

/// x86-64 Linux pages, the unit of `/proc/self/statm`.
const PAGE_BYTES: u64 = 4096;

/// `veto-bench usage`.
pub async fn run(args: &BenchArgs, json_out: bool) -> Result<()> {
    let parts = &args.usage_parts;
    for p in parts {
        anyhow::ensure!(
            matches!(p.as_str(), "memory" | "overhead" | "raft"),
            "unknown --usage-parts entry {p:?}: use memory, overhead, raft"
        );
    }
    let want = |p: &str| parts.iter().any(|x| x == p);
    let mut out = serde_json::Map::new();
    // First, while this process is quiet: nothing else allocates meanwhile.
    if want("memory") {
        eprintln!("memory: filling a usage table with {MEMORY_TOKENS} distinct jtis...");
        let m = memory(MEMORY_TOKENS)?;
        if !json_out {
            m.print();
        }
        out.insert("memory".into(), m.json());
    }
    if !want("overhead") && !want("raft") {
        return finish(json_out, out);
    }
    eprintln!("starting a 3-node cluster; issuing {TOKENS} tokens...");
    let (cluster, addr) = cluster_with_key().await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        issue_many(&addr, TOKENS)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    );
    if want("overhead") {
        let o = overhead(args, &cluster, &tokens).await?;
        if !json_out {
            o.print();
        }
        out.insert("overhead".into(), o.json());
    }
    if want("raft") {
        let mut rows = Vec::new();
        for &n in &args.usage_distinct {
            let r = raft_cost(
                &cluster,
                &tokens,
                n.max(1),
                args.usage_rate,
                args.usage_secs,
            )
            .await?;
            eprintln!("{}", r.line());
            rows.push(r);
        }
        if !json_out {
            print_raft(&rows);
        }
        out.insert(
            "raft".into(),
            serde_json::Value::Array(rows.iter().map(RaftRow::json).collect()),
        );
    }
    drop(cluster);
    finish(json_out, out)
}

fn finish(json_out: bool, out: serde_json::Map<String, serde_json::Value>) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------- jtis

/// SplitMix64: a bijection of u64, so distinct inputs give distinct outputs.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `i`th jti of the random-looking sequence `seed`: distinct for
/// distinct `i` (its first half alone is), spread evenly over the shards.
fn synthetic_jti(seed: u64, i: u64) -> Jti {
    let a = splitmix(seed.wrapping_add(i.wrapping_mul(2)));
    let b = splitmix(seed.wrapping_add(i.wrapping_mul(2)).wrapping_add(1) ^ 0x5555);
    let mut j = [0u8; 16];
    j[..8].copy_from_slice(&a.to_le_bytes());
    j[8..].copy_from_slice(&b.to_le_bytes());
    Jti(j)
}

// ---------------------------------------------------------------- memory

/// This process's resident set, bytes, from `/proc/self/statm`.
fn resident_bytes() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").context("/proc/self/statm")?;
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .context("statm: no resident field")?
        .parse()
        .context("statm: resident field")?;
    Ok(pages * PAGE_BYTES)
}

/// Memory part figures.
struct Memory {
    tokens: usize,
    tracked: usize,
    dropped: u64,
    allocated_mb: f64,
    rss_growth_mb: f64,
    record_ns: f64,
    /// ns per record of a token already tracked (table of [`TOKENS`]).
    hit_ns: f64,
    /// ns per record when the table is out of the CPU's caches.
    cold_ns: Option<f64>,
}

fn mb(bytes: f64) -> f64 {
    bytes / 1_048_576.0
}

/// Fills a table bounded at `n` with `n` distinct jtis (generated on the
/// fly: nothing else is allocated meanwhile).
fn memory(n: usize) -> Result<Memory> {
    let now = veto_edge::unix_now();
    let before = resident_bytes()?;
    let mut u = veto_edge::usage::Table::new("edge-1", n, now);
    let t = Instant::now();
    for i in 0..n as u64 {
        u.record(&synthetic_jti(1, i), veto_feed::Outcome::Valid, &[], now);
    }
    let record_ns = t.elapsed().as_nanos() as f64 / n.max(1) as f64;
    let after = resident_bytes()?;
    let m = Memory {
        tokens: n,
        tracked: u.tracked(),
        dropped: u.dropped(),
        allocated_mb: mb(u.allocated_bytes() as f64),
        rss_growth_mb: mb(after.saturating_sub(before) as f64),
        record_ns,
        hit_ns: 0.0,
        cold_ns: None,
    };
    drop(u);
    Ok(Memory {
        hit_ns: record_hit_ns(TOKENS, INPROC_PASSES),
        cold_ns: record_cold_ns(TOKENS, INPROC_PASSES),
        ..m
    })
}

/// Like [`record_hit_ns`], but each record follows a pass over 16 random
/// cache lines of a 64 MB buffer (standing in for what a verify touches:
/// the signature cache, the replica), so the table is no longer in the
/// CPU's caches: thread CPU ns per record, the median difference of runs
/// with and without the records. `None` when schedstat is unreadable.
fn record_cold_ns(n: usize, passes: usize) -> Option<f64> {
    const LINES: usize = 16;
    let now = veto_edge::unix_now();
    let mut u = veto_edge::usage::Table::new("edge-1", n, now);
    let jtis: Vec<Jti> = (0..n as u64).map(|i| synthetic_jti(4, i)).collect();
    for j in &jtis {
        u.record(j, veto_feed::Outcome::Valid, &[], now);
    }
    let words = (64 << 20) / 8;
    let mut buf = vec![1u64; words];
    let mut run = |with_record: bool| -> Option<u64> {
        let mut x = 0x1234_5678u64;
        let t0 = thread_cpu_ns()?;
        for _ in 0..passes {
            for j in &jtis {
                for _ in 0..LINES {
                    x = splitmix(x);
                    let i = (x as usize) % words;
                    buf[i] = buf[i].wrapping_add(1);
                }
                if with_record {
                    u.record(std::hint::black_box(j), veto_feed::Outcome::Valid, &[], now);
                }
            }
        }
        std::hint::black_box(&buf);
        Some(thread_cpu_ns()?.saturating_sub(t0))
    };
    // Alternating pairs, the median difference: the VM's drift hits both.
    let mut diffs = Vec::new();
    for _ in 0..9 {
        let (without, with) = (run(false)?, run(true)?);
        diffs.push((with as f64 - without as f64) / (n * passes).max(1) as f64);
    }
    Some(median(diffs))
}

/// What tracking adds to a verify of a token already in the table: ns per
/// `record` over `passes` passes on a table of `n` tokens (the overhead
/// part's working set), in this quiet process, without the noise of two
/// whole edges taking turns on a shared machine.
fn record_hit_ns(n: usize, passes: usize) -> f64 {
    let now = veto_edge::unix_now();
    let mut u = veto_edge::usage::Table::new("edge-1", n, now);
    let jtis: Vec<Jti> = (0..n as u64).map(|i| synthetic_jti(2, i)).collect();
    for j in &jtis {
        u.record(j, veto_feed::Outcome::Valid, &[], now);
    }
    let t = Instant::now();
    for _ in 0..passes {
        for j in &jtis {
            u.record(std::hint::black_box(j), veto_feed::Outcome::Valid, &[], now);
        }
    }
    t.elapsed().as_nanos() as f64 / (n * passes).max(1) as f64
}

impl Memory {
    fn ok(&self) -> bool {
        self.allocated_mb <= MEMORY_LIMIT_MB && self.rss_growth_mb <= MEMORY_LIMIT_MB
    }

    fn print(&self) {
        println!(
            "\nedge usage table, {} distinct tracked tokens (bound {}): {} tracked, {} dropped, {:.0} ns per record",
            self.tokens, self.tokens, self.tracked, self.dropped, self.record_ns
        );
        println!("  allocated_bytes()        {:>7.1} MB", self.allocated_mb);
        println!(
            "  process RSS growth       {:>7.1} MB  (/proc/self/statm, before/after the fill)",
            self.rss_growth_mb
        );
        println!("  limit {MEMORY_LIMIT_MB:.0} MB: {}", pass(self.ok()));
        println!(
            "  a verify of a token already tracked ({TOKENS}-token table): {:.0} ns per record",
            self.hit_ns
        );
        if let Some(c) = self.cold_ns {
            println!("  the same with the table out of the CPU's caches (16 random lines of a 64 MB buffer touched between records; thread CPU time, median of 9 pairs): {c:.0} ns per record");
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"tokens": self.tokens, "tracked": self.tracked, "dropped": self.dropped,
               "allocated_mb": self.allocated_mb, "rss_growth_mb": self.rss_growth_mb,
               "record_ns": self.record_ns, "hit_ns": self.hit_ns, "cold_ns": self.cold_ns, "limit_mb": MEMORY_LIMIT_MB, "pass": self.ok()})
    }
}

// ---------------------------------------------------------------- overhead

type VerifyClient = VerifierServiceClient<Channel>;

/// The workloads, measured in this order each round.
#[derive(Debug, Clone, Copy)]
enum Work {
    /// `EdgeHandle::verify` on signature cache hits, one thread.
    InProcess,
    /// gRPC `Verify`, closed loop.
    Verify,
    /// gRPC `VerifyBatch`.
    Batch,
}

const WORKS: [Work; 3] = [Work::InProcess, Work::Verify, Work::Batch];

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::InProcess => "in-process verify (cache hit)",
            Work::Verify => "gRPC Verify",
            Work::Batch => "gRPC VerifyBatch",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Work::InProcess => "verifies/s",
            Work::Verify => "req/s",
            Work::Batch => "tokens/s",
        }
    }
}

/// One edge's measurements of one workload over the rounds.
struct Series {
    /// Throughput per round.
    rates: Vec<f64>,
    /// In-process only: wall ns per verify of each one-pass slice, paired
    /// by index with the other edge's.
    slice_ns: Vec<f64>,
    /// Per call latency over every round, µs (gRPC only).
    h: Histogram<u64>,
    errors: u64,
}

impl Series {
    fn new() -> Result<Self> {
        Ok(Self {
            rates: Vec::new(),
            slice_ns: Vec::new(),
            h: Histogram::new(3)?,
            errors: 0,
        })
    }
}

/// In-process verify, tracking on against off, from paired passes.
struct Pairs {
    off_ns: f64,
    on_ns: f64,
    /// Median of the pairs' differences (on − off), ns per verify.
    diff_ns: f64,
    p25_ns: f64,
    p75_ns: f64,
    n: usize,
}

impl Pairs {
    /// What tracking adds to a verify, as a share of the verify.
    fn added(&self) -> f64 {
        self.diff_ns / self.off_ns.max(1e-9)
    }

    fn ok(&self) -> bool {
        self.added() <= BUDGET
    }
}

/// Overhead part figures: per workload, (off, on).
struct Overhead {
    /// A/A control: the "on" edge has tracking off too.
    aa: bool,
    rounds: u32,
    turn: Duration,
    concurrency: usize,
    series: Vec<(Work, Series, Series)>,
}

/// Edge index of each configuration.
const OFF: usize = 0;
const ON: usize = 1;

async fn overhead(
    args: &BenchArgs,
    cluster: &Cluster,
    tokens: &Arc<Vec<String>>,
) -> Result<Overhead> {
    let rounds = args.rounds.max(1);
    let turn = Duration::from_secs(args.duration_secs.max(1)) / rounds;
    let c = args.concurrency.iter().copied().max().unwrap_or(64).max(1);
    eprintln!("overhead: two edges (usage tracking off / on), {rounds} rounds of {turn:?} per workload and edge, Verify at {c} in flight...");
    let servers = grpc_addrs(cluster);
    let mut edges = Vec::new();
    // With --usage-aa both run with tracking off: the control.
    let on_max = if args.usage_aa { 0 } else { 1_000_000 };
    for (id, max) in [("usage-off", 0usize), ("usage-on", on_max)] {
        let mut opts = edge_opts(id.into(), &servers, 5_000, 200);
        opts.usage_max_tokens = max;
        let e = EdgeThread::start(opts).await?;
        anyhow::ensure!(
            e.handle.wait_fresh(Duration::from_secs(20)).await,
            "edge {id} never became fresh"
        );
        edges.push(e);
    }
    anyhow::ensure!(
        edges[OFF].handle.usage().is_none() && edges[ON].handle.usage().is_some() != args.usage_aa,
        "usage tracking is not off/on as configured"
    );
    // Warm both signature caches (each verify of the "on" edge is tracked
    // from here on, as in production).
    let req = veto_core::token::Requirements::default();
    for e in &edges {
        for t in tokens.iter() {
            e.handle.verify(t, &req);
        }
    }
    let clients: Vec<Arc<Vec<VerifyClient>>> = edges
        .iter()
        .map(|e| {
            let addr = addr_text(e.grpc_addr);
            (0..args.connections.max(1))
                .map(|_| veto_testkit::channel(&addr).map(VerifierServiceClient::new))
                .collect::<Result<Vec<_>>>()
                .map(Arc::new)
        })
        .collect::<Result<_>>()?;
    let mut series = Vec::new();
    for w in WORKS {
        series.push((w, Series::new()?, Series::new()?));
    }
    for r in 0..rounds {
        // Alternate which edge goes first, so neither always follows the other.
        let order = if r % 2 == 0 { [OFF, ON] } else { [ON, OFF] };
        let mut line = format!("round {}:", r + 1);
        for (w, off, on) in series.iter_mut() {
            if matches!(w, Work::InProcess) {
                let (a, b) = in_process(&edges[OFF].handle, &edges[ON].handle, tokens, r);
                for (s, ns) in [(&mut *off, a), (&mut *on, b)] {
                    let total: f64 = ns.iter().sum();
                    s.rates.push(1e9 * ns.len() as f64 / total.max(1e-9));
                    s.slice_ns.extend(ns);
                }
            }
            for &e in &order {
                let s = if e == OFF { &mut *off } else { &mut *on };
                let rate = match *w {
                    Work::InProcess => continue,
                    Work::Verify => {
                        let (h, errors, el) = verify_turn(&clients[e], tokens, c, turn).await?;
                        s.errors += errors;
                        let rate = h.len() as f64 / el.as_secs_f64();
                        s.h.add(h)?;
                        rate
                    }
                    Work::Batch => {
                        let (h, errors, el) = batch_turn(&clients[e], tokens, turn).await?;
                        s.errors += errors;
                        let rate = (h.len() as usize * BATCH) as f64 / el.as_secs_f64();
                        s.h.add(h)?;
                        rate
                    }
                };
                s.rates.push(rate);
            }
            let (a, b) = (
                off.rates.last().copied().unwrap_or(0.0),
                on.rates.last().copied().unwrap_or(0.0),
            );
            line += &format!(
                "  {}: off {a:.0} on {b:.0} ({:.3})",
                w.label(),
                b / a.max(1e-9)
            );
        }
        eprintln!("{line}");
    }
    let tracked = edges[ON].handle.usage().map(|u| u.tracked()).unwrap_or(0);
    eprintln!("the tracking edge holds {tracked} tokens since its last report");
    for e in edges {
        e.stop().await;
    }
    Ok(Overhead {
        aa: args.usage_aa,
        rounds,
        turn,
        concurrency: c,
        series,
    })
}

/// This thread's time on a CPU, ns (`/proc/thread-self/schedstat`): unlike
/// wall time, it leaves out the time the VM or the other threads took. This
/// VM's scheduler accounts it in 4 ms steps: only for runs of seconds.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// [`INPROC_PAIRS`] pairs of one pass of in-process verifies over every
/// token on each edge, the order alternating from pair to pair (and
/// starting with `round`'s parity): wall ns per verify of each pass, (off,
/// on). Passes this short (about 25 ms) each see the machine as the other
/// pass of their pair does; a pass the VM preempted is an outlier the
/// median of the pairs leaves out.
fn in_process(
    off: &veto_edge::EdgeHandle,
    on: &veto_edge::EdgeHandle,
    tokens: &[String],
    round: u32,
) -> (Vec<f64>, Vec<f64>) {
    let req = veto_core::token::Requirements::default();
    let pass = |h: &veto_edge::EdgeHandle| {
        let t = Instant::now();
        for tok in tokens {
            std::hint::black_box(h.verify(tok, &req));
        }
        t.elapsed().as_nanos() as f64 / tokens.len().max(1) as f64
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..INPROC_PAIRS {
        if (i + round as usize).is_multiple_of(2) {
            a.push(pass(off));
            b.push(pass(on));
        } else {
            b.push(pass(on));
            a.push(pass(off));
        }
    }
    (a, b)
}

/// gRPC `VerifyBatch` of [`BATCH`] tokens, [`BATCH_IN_FLIGHT`] in flight,
/// for `dur`; a call counts when every token is valid.
async fn batch_turn(
    clients: &Arc<Vec<VerifyClient>>,
    tokens: &Arc<Vec<String>>,
    dur: Duration,
) -> Result<(Histogram<u64>, u64, Duration)> {
    let (clients, tokens) = (clients.clone(), tokens.clone());
    drive(BATCH_IN_FLIGHT, dur, move |w, i| {
        let mut cl = clients[w % clients.len()].clone();
        let k = (w + i as usize * BATCH_IN_FLIGHT) * BATCH;
        let items = batch_items(&tokens, k, BATCH);
        async move {
            let r = cl.verify_batch(pb::VerifyBatchRequest { items }).await;
            Some(r.is_ok_and(|r| r.into_inner().results.iter().all(|x| x.valid)))
        }
    })
    .await
}

impl Overhead {
    /// In-process pairs: (median off ns per verify, median on, median of
    /// the pairs' on − off, its 25th and 75th percentiles, pairs).
    fn pairs(&self) -> Option<Pairs> {
        let (_, off, on) = self
            .series
            .iter()
            .find(|(w, _, _)| matches!(w, Work::InProcess))?;
        if off.slice_ns.is_empty() || off.slice_ns.len() != on.slice_ns.len() {
            return None;
        }
        let mut d: Vec<f64> = on
            .slice_ns
            .iter()
            .zip(&off.slice_ns)
            .map(|(b, a)| b - a)
            .collect();
        d.sort_by(f64::total_cmp);
        let at = |q: f64| d[((d.len() - 1) as f64 * q).round() as usize];
        Some(Pairs {
            off_ns: median(off.slice_ns.clone()),
            on_ns: median(on.slice_ns.clone()),
            diff_ns: at(0.5),
            p25_ns: at(0.25),
            p75_ns: at(0.75),
            n: d.len(),
        })
    }

    /// A workload's verdict: in-process from the paired passes; over gRPC
    /// from the median of the rounds' on/off (each round's two turns ran
    /// back to back, so the VM's drift between rounds cancels out).
    fn within_budget(&self, w: Work, paired: f64) -> bool {
        match w {
            Work::InProcess => self.pairs().is_some_and(|p| p.ok()),
            _ => paired >= 1.0 - BUDGET,
        }
    }

    /// Per workload: (median off, median on, on/off, median of per-round on/off).
    fn summary(&self) -> Vec<(Work, f64, f64, f64, f64)> {
        self.series
            .iter()
            .map(|(w, off, on)| {
                let (a, b) = (median(off.rates.clone()), median(on.rates.clone()));
                let paired: Vec<f64> = off
                    .rates
                    .iter()
                    .zip(&on.rates)
                    .map(|(x, y)| y / x.max(1e-9))
                    .collect();
                (*w, a, b, b / a.max(1e-9), median(paired))
            })
            .collect()
    }

    fn print(&self) {
        if self.aa {
            println!("\nA/A CONTROL (--usage-aa): the \"on\" edge runs with tracking off too");
        }
        println!(
            "\nusage tracking on vs off: two edges of one cluster, {} rounds alternating which goes first, {:?} per workload and edge; {TOKENS} live tokens; Verify closed loop at {} in flight; VerifyBatch {BATCH} tokens per call, {BATCH_IN_FLIGHT} in flight",
            self.rounds, self.turn, self.concurrency
        );
        for (w, off, on) in &self.series {
            let f = |s: &Series| {
                s.rates
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!("  {} per round ({}):", w.label(), w.unit());
            println!("    off: {}", f(off));
            println!("    on:  {}", f(on));
        }
        println!(
            "\n{:<30} {:>12} {:>12} {:>8} {:>9} {:>19} {:>19} {:>6}",
            "workload",
            "off median",
            "on median",
            "on/off",
            "paired",
            "off p50/p99 ms",
            "on p50/p99 ms",
            "5 %"
        );
        for ((w, off, on, ratio, paired), (_, so, sn)) in self.summary().iter().zip(&self.series) {
            let lat = |s: &Series| match w {
                Work::InProcess => format!("{:.0} ns/op", 1e9 / median(s.rates.clone()).max(1e-9)),
                _ => format!("{:.2} / {:.2}", q(&s.h, 0.5), q(&s.h, 0.99)),
            };
            println!(
                "{:<30} {:>12.0} {:>12.0} {:>8.3} {:>9.3} {:>19} {:>19} {:>6}",
                w.label(),
                off,
                on,
                ratio,
                paired,
                lat(so),
                lat(sn),
                pass(self.within_budget(*w, *paired))
            );
        }
        let errors: u64 = self
            .series
            .iter()
            .map(|(_, a, b)| a.errors + b.errors)
            .sum();
        println!("(on/off: ratio of the medians; paired: median of each round's on/off, the verdict over gRPC; in-process, the verdict is the paired passes below; failed or not-valid calls: {errors})");
        if let Some(p) = self.pairs() {
            println!(
                "in-process verify, {} paired one-pass runs (wall ns per verify, alternating edges): off {:.0}, on {:.0}; on − off per pair: median {:+.1} ns (p25 {:+.1}, p75 {:+.1}); tracking adds {:.2} %: {}",
                p.n,
                p.off_ns,
                p.on_ns,
                p.diff_ns,
                p.p25_ns,
                p.p75_ns,
                p.added() * 100.0,
                pass(p.ok())
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .summary()
            .iter()
            .zip(&self.series)
            .map(|((w, off, on, ratio, paired), (_, so, sn))| {
                json!({"workload": w.label(), "unit": w.unit(),
                       "off_rounds": so.rates, "on_rounds": sn.rates,
                       "off_median": off, "on_median": on, "ratio": ratio, "paired_ratio": paired,
                       "off_p50_ms": q(&so.h, 0.5), "off_p99_ms": q(&so.h, 0.99),
                       "on_p50_ms": q(&sn.h, 0.5), "on_p99_ms": q(&sn.h, 0.99),
                       "errors": so.errors + sn.errors, "pass": self.within_budget(*w, *paired)})
            })
            .collect();
        let pairs = self.pairs().map(|p| {
            json!({"pairs": p.n, "off_ns": p.off_ns, "on_ns": p.on_ns, "median_diff_ns": p.diff_ns,
                   "p25_diff_ns": p.p25_ns, "p75_diff_ns": p.p75_ns, "added": p.added(), "pass": p.ok()})
        });
        json!({"aa_control": self.aa, "in_process_pairs": pairs, "rounds": self.rounds, "turn_s": self.turn.as_secs_f64(),
               "verify_concurrency": self.concurrency, "budget": BUDGET, "results": rows})
    }
}

// ---------------------------------------------------------------- raft

/// Raft part figures for one working set.
struct RaftRow {
    distinct: usize,
    synthetic: bool,
    edges: usize,
    target_rate: u64,
    verify_rate: f64,
    secs: f64,
    commands: f64,
    deltas: f64,
    /// serde_json bytes of a `RecordUsage` command of the mean size seen.
    bytes_per_entry: usize,
    /// Distinct (token, edge) pairs verified per report interval.
    pairs_per_interval: f64,
    report_s: f64,
    edge_dropped: u64,
    rss_mb: f64,
}

impl RaftRow {
    fn entries_per_s(&self) -> f64 {
        self.commands / self.secs
    }

    fn deltas_per_s(&self) -> f64 {
        self.deltas / self.secs
    }

    fn deltas_per_entry(&self) -> f64 {
        self.deltas / self.commands.max(1e-9)
    }

    fn line(&self) -> String {
        format!(
            "raft: {} distinct ({}), {:.0} verifies/s over {:.0} s: {:.2} RecordUsage entries/s, {:.0} deltas/s ({:.0} per entry, ~{} B per entry)",
            self.distinct,
            if self.synthetic { "synthetic jtis" } else { "real tokens" },
            self.verify_rate,
            self.secs,
            self.entries_per_s(),
            self.deltas_per_s(),
            self.deltas_per_entry(),
            self.bytes_per_entry
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({"distinct_tokens": self.distinct, "synthetic_jtis": self.synthetic, "edges": self.edges,
               "target_verifies_per_s": self.target_rate, "verifies_per_s": self.verify_rate,
               "measured_s": self.secs, "usage_commands": self.commands, "usage_deltas": self.deltas,
               "entries_per_s": self.entries_per_s(), "deltas_per_s": self.deltas_per_s(),
               "deltas_per_entry": self.deltas_per_entry(), "bytes_per_entry": self.bytes_per_entry,
               "log_bytes_per_s": self.entries_per_s() * self.bytes_per_entry as f64,
               "expected_deltas_per_s": self.pairs_per_interval / self.report_s,
               "edge_dropped": self.edge_dropped, "bench_rss_mb": self.rss_mb})
    }
}

fn print_raft(rows: &[RaftRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\nRaft cost of usage: 3 edges (one per server), in-process verifies, default intervals (edge report {:.0} s, server flush {} s); counters summed over the servers' /metrics",
        rows[0].report_s,
        SERVER_FLUSH.as_secs()
    );
    println!(
        "{:>10} {:>10} {:>11} {:>6} {:>11} {:>11} {:>11} {:>11} {:>12} {:>11} {:>9}",
        "distinct",
        "jtis",
        "verifies/s",
        "s",
        "entries/s",
        "deltas/s",
        "expected/s",
        "deltas/ent",
        "B/entry",
        "log KB/s",
        "RSS MB"
    );
    for r in rows {
        println!(
            "{:>10} {:>10} {:>11.0} {:>6.0} {:>11.2} {:>11.0} {:>11.0} {:>11.0} {:>12} {:>11.0} {:>9.0}",
            r.distinct,
            if r.synthetic { "synthetic" } else { "real" },
            r.verify_rate,
            r.secs,
            r.entries_per_s(),
            r.deltas_per_s(),
            r.pairs_per_interval / r.report_s,
            r.deltas_per_entry(),
            r.bytes_per_entry,
            r.entries_per_s() * r.bytes_per_entry as f64 / 1024.0,
            r.rss_mb
        );
    }
    println!("(expected/s: distinct (token, edge) pairs verified per report interval, per second — what a lossless pipeline would fold; B/entry: serde_json size of a RecordUsage command of the mean size, what the log stores per entry before openraft's own fields; RSS: this process, which runs the edges, after the measurement)");
}

/// The servers' usage counters, summed: (commands, deltas).
async fn usage_counters(cluster: &Cluster) -> Result<(f64, f64)> {
    let (mut c, mut d) = (0.0, 0.0);
    for n in &cluster.nodes {
        let (status, body) = veto_testkit::http_get(&n.http_addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "{} /metrics: HTTP {status}", n.http_addr);
        c += metric_sum(&body, veto_telemetry::USAGE_COMMANDS_TOTAL);
        d += metric_sum(&body, veto_telemetry::USAGE_DELTAS_TOTAL);
    }
    Ok((c, d))
}

/// The sum of every sample of `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// This process's resident set, MB (0 if unknown).
fn rss_mb() -> f64 {
    resident_bytes().map(|b| mb(b as f64)).unwrap_or(0.0)
}

/// A thread verifying at a fixed rate, round-robin over edges.
struct Driver {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Driver {
    /// Verify `i` goes to edge `i % edges` with working-set entry
    /// `i % distinct`: real tokens through `EdgeHandle::verify`, or (with
    /// `real` None) synthetic jtis recorded into the edge's usage table.
    fn start(
        handles: Vec<veto_edge::EdgeHandle>,
        real: Option<Arc<Vec<String>>>,
        distinct: usize,
        rate: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let req = veto_core::token::Requirements::default();
            let seed = splitmix(distinct as u64 ^ veto_edge::unix_now() as u64);
            let (e, n) = (handles.len().max(1) as u64, distinct.max(1) as u64);
            let start = Instant::now();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let target = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                let unix = veto_edge::unix_now();
                while i < target && !(i.is_multiple_of(4096) && s.load(Ordering::Relaxed)) {
                    let h = &handles[(i % e) as usize];
                    let k = i % n;
                    match &real {
                        Some(t) => {
                            std::hint::black_box(h.verify(&t[k as usize], &req));
                        }
                        None => {
                            if let Some(u) = h.usage() {
                                u.record(
                                    &synthetic_jti(seed, k),
                                    veto_feed::Outcome::Valid,
                                    &[],
                                    unix,
                                );
                            }
                        }
                    }
                    i += 1;
                    if i.is_multiple_of(256) {
                        d.store(i, Ordering::Relaxed);
                    }
                }
                d.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Self { stop, done, thread }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread;
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// serde_json bytes of a `RecordUsage` command of `deltas` deltas from
/// `edge`, each counting `valid` verifies.
fn entry_bytes(deltas: usize, edge: &str, valid: u64) -> usize {
    let now = veto_edge::unix_now();
    let d: Vec<UsageDelta> = (0..deltas as u64)
        .map(|i| UsageDelta {
            jti: synthetic_jti(7, i),
            edge: edge.to_owned(),
            outcomes: Outcomes {
                valid,
                revoked: 0,
                refused: 0,
            },
            first: now,
            last: now + 9,
            scopes: Default::default(),
        })
        .collect();
    serde_json::to_vec(&veto_core::Command::RecordUsage { deltas: d, at: now })
        .map(|v| v.len())
        .unwrap_or(0)
}

/// Three edges, one per server, verifying `distinct` tokens at `rate` for
/// a warm-up (one report and one flush interval) and then `secs` measured.
async fn raft_cost(
    cluster: &Cluster,
    tokens: &Arc<Vec<String>>,
    distinct: usize,
    rate: u64,
    secs: u64,
) -> Result<RaftRow> {
    let real = (distinct <= tokens.len()).then(|| Arc::new(tokens[..distinct].to_vec()));
    eprintln!(
        "raft: {distinct} distinct tokens ({}), {rate} verifies/s over 3 edges...",
        if real.is_some() {
            "real"
        } else {
            "synthetic jtis"
        }
    );
    let mut edges = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let id = format!("usage-{distinct}-{i}");
        let e = EdgeThread::start(edge_opts(
            id.clone(),
            std::slice::from_ref(&node.grpc_addr),
            5_000,
            200,
        ))
        .await?;
        anyhow::ensure!(
            e.handle.wait_fresh(Duration::from_secs(20)).await,
            "edge {id} never became fresh"
        );
        edges.push(e);
    }
    let handles: Vec<veto_edge::EdgeHandle> = edges.iter().map(|e| e.handle.clone()).collect();
    let report = Duration::from_millis(handles[0].options().usage_report_interval_ms);
    if let Some(t) = &real {
        // Signature cache misses here, hits during the measurement.
        let req = veto_core::token::Requirements::default();
        for h in &handles {
            for tok in t.iter() {
                h.verify(tok, &req);
            }
        }
    }
    let driver = Driver::start(handles.clone(), real.clone(), distinct, rate);
    // One report and one flush interval, so the pipeline is full.
    tokio::time::sleep(report + SERVER_FLUSH + Duration::from_secs(2)).await;
    let (c0, d0) = usage_counters(cluster).await?;
    let (v0, t0) = (driver.done(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
    let (c1, d1) = usage_counters(cluster).await?;
    let (v1, el) = (driver.done(), t0.elapsed());
    driver.stop().await;
    let rss = rss_mb();
    let edge_dropped = handles
        .iter()
        .filter_map(|h| h.usage().map(|u| u.dropped()))
        .sum();
    for e in edges {
        e.stop().await;
    }
    let verify_rate = (v1 - v0) as f64 / el.as_secs_f64();
    let n_edges = handles.len();
    // Verify i goes to edge i % 3 with token i % distinct: the pairs cycle
    // every 3 × distinct verifies.
    let per_interval = verify_rate * report.as_secs_f64();
    let pairs = per_interval.min((n_edges * distinct) as f64);
    let (commands, deltas) = (c1 - c0, d1 - d0);
    let mean = if commands > 0.0 {
        (deltas / commands).round() as usize
    } else {
        0
    };
    let valid = (per_interval / pairs.max(1.0)).round().max(1.0) as u64;
    Ok(RaftRow {
        distinct,
        synthetic: real.is_none(),
        edges: n_edges,
        target_rate: rate,
        verify_rate,
        secs: el.as_secs_f64(),
        commands,
        deltas,
        bytes_per_entry: entry_bytes(mean, &format!("usage-{distinct}-0"), valid),
        pairs_per_interval: pairs,
        report_s: report.as_secs_f64(),
        edge_dropped,
        rss_mb: rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_jtis_are_distinct() {
        let mut s = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(s.insert(synthetic_jti(3, i).0));
        }
    }

    #[test]
    fn metric_sum_adds_every_labelled_sample() {
        let t = "# HELP veto_usage_commands_total x\nveto_usage_commands_total 3\nveto_usage_commands_total{a=\"b\"} 2\nveto_usage_commands_totalx 9\n";
        assert_eq!(metric_sum(t, "veto_usage_commands_total"), 5.0);
    }
}
