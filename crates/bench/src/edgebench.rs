//! Edge benchmarks: verify throughput and latency, revoke propagation to N
//! edges (against etcd watchers), and replica scale. Run on demand
//! (`veto-bench verify|propagation|scale`), never as tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use prost::Message;
use tokio_stream::StreamExt;
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_testkit::{channel, eventually, Cluster, ClusterOptions};

use crate::bench::{clients, BenchArgs, Etcd};
use crate::common::{
    addr_text, batch_items, edge_opts, grpc_addrs, issue_first, q, read_token, record_locked,
    snapshot, start_local_edge,
};

/// When each applied revision was seen at one edge (or watcher).
type Recorder = Arc<Mutex<Vec<(Instant, u64)>>>;

/// A local 3-node cluster (see [`cluster_with_key_opts`]) and its leader's
/// gRPC address.
pub(crate) async fn cluster_with_key() -> Result<(Cluster, String)> {
    cluster_with_key_opts(ClusterOptions::default()).await
}

/// [`cluster_with_key`] with options (e.g. environment for the servers).
pub(crate) async fn cluster_with_key_opts(mut opts: ClusterOptions) -> Result<(Cluster, String)> {
    // Every bench client calls from 127.0.0.1: the per-client write limit
    // (5,000/s by default) would measure the limiter, not the cluster.
    if !opts.env.iter().any(|(k, _)| k == "VETO_WRITE_RATE") {
        opts.env.push(("VETO_WRITE_RATE".into(), "0".into()));
    }
    let cluster = Cluster::start(opts).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addr = cluster.node(leader)?.grpc_addr.clone();
    // As the cluster's test operator (its certificate under TLS).
    let probe = TokenServiceClient::new(cluster.node(leader)?.channel()?);
    let warmup = pb::IssueRequest {
        sub: "warmup".into(),
        scopes: vec![],
        aud: None,
        ttl_seconds: 60,
        ..Default::default()
    };
    issue_first(&probe, warmup).await?;
    Ok((cluster, addr))
}

/// Issues `n` tokens at concurrency 64; returns (jti, token).
pub(crate) async fn issue_many(addr: &str, n: usize) -> Result<Vec<(String, String)>> {
    issue_many_as(&veto_auth::Transport::Insecure, addr, n).await
}

/// [`issue_many`] over `t` (the operator's certificate under TLS).
async fn issue_many_as(
    t: &veto_auth::Transport,
    addr: &str,
    n: usize,
) -> Result<Vec<(String, String)>> {
    let out = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    let workers = 64;
    for w in 0..workers {
        let mut c =
            TokenServiceClient::new(t.channel_lazy(addr, veto_auth::Role::Server, |e| {
                e.timeout(Duration::from_secs(30))
            })?);
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let r = c
                    .issue(read_token(format!("bench:{i}"), 3600))
                    .await?
                    .into_inner();
                let jti = r.record.map(|r| r.jti).unwrap_or_default();
                out.lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push((jti, r.token));
                i += workers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let v = std::mem::take(&mut *out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(v)
}

/// A Verify client.
type VerifyClient = VerifierServiceClient<tonic::transport::Channel>;

/// Tokens per VerifyBatch call in `verify`.
const VERIFY_BATCH: usize = 1000;

/// `veto-bench verify`.
pub async fn verify(args: &BenchArgs, json_out: bool) -> Result<()> {
    let dur = Duration::from_secs(args.duration_secs.max(1));
    eprintln!(
        "starting a 3-node cluster and one edge ({}); issuing 10,000 tokens...",
        if args.tls { "mutual TLS" } else { "plaintext" }
    );
    // With --tls: a throwaway CA; the servers, the edge and the clients
    // each use their own certificate, as in production.
    let certs = tempfile::Builder::new()
        .prefix("veto-bench-certs-")
        .tempdir()?;
    let (operator, edge_t, client_t) = verify_transports(args.tls, certs.path())?;
    let (cluster, addr) = cluster_with_key_opts(ClusterOptions {
        tls_dir: args.tls.then(|| certs.path().to_path_buf()),
        ..ClusterOptions::default()
    })
    .await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        issue_many_as(&operator, &addr, 10_000)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    );
    let mut opts = edge_opts("edge-1".into(), &grpc_addrs(&cluster), 5_000, 200);
    opts.transport = edge_t;
    let edge = EdgeThread::start(opts).await?;
    if !edge.handle.wait_fresh(Duration::from_secs(20)).await {
        anyhow::bail!("the edge never became fresh");
    }
    let inproc = in_process(&edge.handle, &tokens);
    let clients = verify_clients(&client_t, &addr_text(edge.grpc_addr), args.connections)?;
    let unary = unary_open_loop(&clients, &tokens, args.verify_rate, dur).await?;
    let batch = batch_loop(&clients, &tokens, dur).await?;
    print_verify(args, json_out, &inproc, &unary, &batch);
    edge.stop().await;
    drop(cluster);
    Ok(())
}

/// The transports of `verify` (operator, edge, client): with `tls`, from
/// certificates of a new CA in `dir`; otherwise plaintext.
fn verify_transports(
    tls: bool,
    dir: &std::path::Path,
) -> Result<(
    veto_auth::Transport,
    veto_auth::Transport,
    veto_auth::Transport,
)> {
    if !tls {
        let i = veto_auth::Transport::Insecure;
        return Ok((i.clone(), i.clone(), i));
    }
    let files = |name: &str| veto_auth::TlsFiles::in_dir(dir, name);
    veto_auth::certs::init_dir(
        dir,
        &veto_auth::certs::InitSpec {
            edges: 1,
            ..Default::default()
        },
    )?;
    Ok((
        veto_auth::Transport::from_config(&files("operator"), false)?,
        veto_auth::Transport::from_config(&files("edge-1"), false)?,
        veto_auth::Transport::from_config(&files("client"), false)?,
    ))
}

/// An edge on a runtime (and threads) of its own, as it would run in its
/// own process, so the load generator's tasks do not queue its work.
pub(crate) struct EdgeThread {
    /// The running edge.
    pub(crate) handle: veto_edge::EdgeHandle,
    /// Its Verify port.
    pub(crate) grpc_addr: Option<std::net::SocketAddr>,
    /// Its HTTP port.
    pub(crate) http_addr: Option<std::net::SocketAddr>,
    /// Tells the thread to stop the edge.
    stop_tx: tokio::sync::oneshot::Sender<()>,
    /// The thread.
    thread: std::thread::JoinHandle<Result<()>>,
}

impl EdgeThread {
    /// Starts the edge with `opts` on a new 2-thread runtime.
    pub(crate) async fn start(opts: veto_edge::Options) -> Result<Self> {
        let (edge_tx, edge_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let edge = start_local_edge(opts).await?;
                let _ = edge_tx.send((edge.handle.clone(), edge.grpc_addr, edge.http_addr));
                let _ = stop_rx.await;
                edge.stop().await;
                anyhow::Ok(())
            })
        });
        let (handle, grpc_addr, http_addr) = edge_rx.await.context("edge thread")?;
        Ok(Self {
            handle,
            grpc_addr,
            http_addr,
            stop_tx,
            thread,
        })
    }

    /// Stops the edge and waits for its thread.
    pub(crate) async fn stop(self) {
        let _ = self.stop_tx.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// In-process verify figures.
#[derive(Debug, Clone, Copy)]
struct InProcess {
    /// ns per verify on a signature cache miss.
    miss_ns: f64,
    /// ns per verify on a cache hit.
    hit_ns: f64,
    /// Verifies that were not VALID.
    bad: u64,
}

/// In-process verifies at `h`: the first pass misses the signature cache,
/// later passes hit.
fn in_process(h: &veto_edge::EdgeHandle, tokens: &[String]) -> InProcess {
    let req = veto_core::token::Requirements::default();
    let t = Instant::now();
    let mut bad = 0;
    for tok in tokens {
        if h.verify(tok, &req).outcome != veto_feed::Outcome::Valid {
            bad += 1;
        }
    }
    let miss_ns = t.elapsed().as_nanos() as f64 / tokens.len() as f64;
    let passes = 20;
    let t = Instant::now();
    for _ in 0..passes {
        for tok in tokens {
            if h.verify(tok, &req).outcome != veto_feed::Outcome::Valid {
                bad += 1;
            }
        }
    }
    let hit_ns = t.elapsed().as_nanos() as f64 / (tokens.len() * passes) as f64;
    InProcess {
        miss_ns,
        hit_ns,
        bad,
    }
}

/// `n` (at least one) lazily connecting Verify clients on `addr` over `t`.
fn verify_clients(t: &veto_auth::Transport, addr: &str, n: usize) -> Result<Vec<VerifyClient>> {
    Ok((0..n.max(1))
        .map(|_| {
            t.channel_lazy(addr, veto_auth::Role::Edge, |e| {
                e.connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
            })
            .map(VerifierServiceClient::new)
        })
        .collect::<Result<_, _>>()?)
}

/// Where the open-loop unary calls record their latencies (µs) and failures.
struct UnaryStats {
    /// From each call's scheduled send time.
    from_due: Mutex<Histogram<u64>>,
    /// From each call's actual send.
    from_send: Mutex<Histogram<u64>>,
    /// Calls that failed or did not answer valid.
    errors: AtomicU64,
}

/// Open-loop unary Verify figures.
struct Unary {
    /// Latency from the scheduled send time, µs.
    from_due: Histogram<u64>,
    /// Latency from the actual send, µs.
    from_send: Histogram<u64>,
    /// First send -> last reply.
    elapsed: Duration,
    /// Failed calls.
    errors: u64,
}

/// gRPC unary Verify, open loop at `rate` for `dur`; latency from the
/// scheduled send time.
async fn unary_open_loop(
    clients: &[VerifyClient],
    tokens: &[String],
    rate: u64,
    dur: Duration,
) -> Result<Unary> {
    let stats = Arc::new(UnaryStats {
        from_due: Mutex::new(Histogram::<u64>::new(3)?),
        from_send: Mutex::new(Histogram::<u64>::new(3)?),
        errors: AtomicU64::new(0),
    });
    let total = rate * dur.as_secs();
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let (pace_tx, mut pace_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now();
    let pacer = spawn_pacer(start, every, total, pace_tx);
    let mut sent = 0u64;
    let mut inflight = Vec::new();
    while let Some(due) = pace_rx.recv().await {
        let c = clients[sent as usize % clients.len()].clone();
        let tok = tokens[sent as usize % tokens.len()].clone();
        inflight.push(tokio::spawn(verify_one(c, tok, due, stats.clone())));
        sent += 1;
        if sent.is_multiple_of(1024) {
            inflight.retain(|t| !t.is_finished());
        }
    }
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    for t in inflight {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    Ok(Unary {
        from_due: snapshot(&stats.from_due)?,
        from_send: snapshot(&stats.from_send)?,
        elapsed,
        errors: stats.errors.load(Ordering::Relaxed),
    })
}

/// A pacing thread (OS sleeps, ~60 us granularity, not the 1 ms async timer)
/// that sends each of `total` requests' scheduled time, `every` apart from
/// `start`; latency counts from that time, so a slow response cannot hide
/// the requests queued behind it.
fn spawn_pacer(
    start: Instant,
    every: Duration,
    total: u64,
    pace_tx: tokio::sync::mpsc::UnboundedSender<Instant>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..total {
            let due = start + every * i as u32;
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                // No spinning: on 2 cores a spinning pacer would take a core
                // from the system under test.
                std::thread::sleep(due - now);
            }
            if pace_tx.send(due).is_err() {
                return;
            }
        }
    })
}

/// One unary Verify of `tok`, scheduled at `due`, recorded into `stats`.
async fn verify_one(mut c: VerifyClient, tok: String, due: Instant, stats: Arc<UnaryStats>) {
    let sent_at = Instant::now();
    let r = c
        .verify(pb::VerifyRequest {
            token: tok,
            required_scopes: vec![],
            audience: None,
            min_revision: 0,
        })
        .await;
    let ok = r.map(|r| r.into_inner().valid).unwrap_or(false);
    if ok {
        record_locked(&stats.from_due, due.elapsed());
        record_locked(&stats.from_send, sent_at.elapsed());
    } else {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// VerifyBatch figures.
struct Batch {
    /// Valid tokens per second.
    tokens_per_sec: f64,
    /// Per call latency, µs.
    per_call: Histogram<u64>,
}

/// gRPC VerifyBatch for `dur`: [`VERIFY_BATCH`] tokens per call, 8 in flight.
async fn batch_loop(
    clients: &[VerifyClient],
    tokens: &Arc<Vec<String>>,
    dur: Duration,
) -> Result<Batch> {
    let batch = VERIFY_BATCH;
    let bh = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let mut c = clients[w % clients.len()].clone();
        let (tokens, bh, done) = (tokens.clone(), bh.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = w * batch;
            while start.elapsed() < dur {
                let items = batch_items(&tokens, k, batch);
                let s = Instant::now();
                if let Ok(r) = c.verify_batch(pb::VerifyBatchRequest { items }).await {
                    let n = r.into_inner().results.iter().filter(|r| r.valid).count();
                    done.fetch_add(n as u64, Ordering::Relaxed);
                    record_locked(&bh, s.elapsed());
                }
                k += 8 * batch;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let tokens_per_sec = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    Ok(Batch {
        tokens_per_sec,
        per_call: snapshot(&bh)?,
    })
}

/// Prints the verify figures: one JSON object, or lines of text.
fn print_verify(
    args: &BenchArgs,
    json_out: bool,
    inproc: &InProcess,
    unary: &Unary,
    batch: &Batch,
) {
    let InProcess {
        miss_ns,
        hit_ns,
        bad,
    } = *inproc;
    let (un, us, bh) = (&unary.from_due, &unary.from_send, &batch.per_call);
    let achieved = un.len() as f64 / unary.elapsed.as_secs_f64();
    let (errs, batch_tps, batch) = (unary.errors, batch.tokens_per_sec, VERIFY_BATCH);
    if json_out {
        println!(
            "{}",
            serde_json::json!({
                "tls": args.tls,
                "inprocess_miss_ns": miss_ns, "inprocess_hit_ns": hit_ns, "inprocess_invalid": bad,
                "unary": {"target_rps": args.verify_rate, "achieved_rps": achieved,
                          "p50_ms": q(un, 0.5), "p99_ms": q(un, 0.99), "p999_ms": q(un, 0.999), "errors": errs,
                          "from_send_p50_ms": q(us, 0.5), "from_send_p99_ms": q(us, 0.99)},
                "batch": {"tokens_per_sec": batch_tps, "batch": batch, "p50_ms": q(bh, 0.5), "p99_ms": q(bh, 0.99)},
            })
        );
        return;
    }
    println!(
        "\nverify over 10,000 distinct live tokens, one edge, 3-node cluster, all on this machine ({})",
        if args.tls { "mutual TLS" } else { "plaintext" }
    );
    println!("in-process verify, signature cache miss: {miss_ns:>9.0} ns/op");
    println!(
        "in-process verify, signature cache hit:  {hit_ns:>9.0} ns/op   (miss/hit ratio {:.1})",
        miss_ns / hit_ns
    );
    println!(
        "gRPC Verify, open loop at {} req/s: achieved {achieved:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, errors {errs}",
        args.verify_rate,
        q(un, 0.5),
        q(un, 0.99),
        q(un, 0.999),
    );
    println!(
        "  the same calls timed from their actual send: p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms",
        q(us, 0.5),
        q(us, 0.99),
        q(us, 0.999)
    );
    println!(
        "gRPC VerifyBatch ({batch} per call, 8 in flight): {batch_tps:.0} tokens/s, per call p50 {:.2} ms, p99 {:.2} ms",
        q(bh, 0.5),
        q(bh, 0.99)
    );
    if bad > 0 {
        println!("warning: {bad} in-process verifies were not VALID");
    }
}

/// Latency stats over revokes: (all-edges, each-edge) histograms in µs.
fn propagation_stats(
    revokes: &[(Instant, u64)],
    per_edge: &[Vec<(Instant, u64)>],
) -> Result<(Histogram<u64>, Histogram<u64>, usize)> {
    let mut all = Histogram::<u64>::new(3)?;
    let mut each = Histogram::<u64>::new(3)?;
    let mut missing = 0;
    for (start, rev) in revokes {
        let mut worst = Duration::ZERO;
        let mut complete = true;
        for e in per_edge {
            let i = e.partition_point(|(_, r)| r < rev);
            match e.get(i) {
                Some((t, _)) => {
                    let d = t.saturating_duration_since(*start);
                    each.record(d.as_micros().max(1) as u64)?;
                    worst = worst.max(d);
                }
                None => complete = false,
            }
        }
        if complete {
            all.record(worst.as_micros().max(1) as u64)?;
        } else {
            missing += 1;
        }
    }
    Ok((all, each, missing))
}

/// One successful call of the open-loop driver.
#[derive(Debug, Clone, Copy)]
struct Call {
    start: Instant,
    revision: u64,
    replied: Instant,
}

/// (start, revision) pairs of `calls`, for [`propagation_stats`].
fn starts(calls: &[Call]) -> Vec<(Instant, u64)> {
    calls.iter().map(|c| (c.start, c.revision)).collect()
}

/// Call start -> reply, in µs.
fn reply_histogram(calls: &[Call]) -> Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3)?;
    for c in calls {
        h.record(
            c.replied
                .saturating_duration_since(c.start)
                .as_micros()
                .max(1) as u64,
        )?;
    }
    Ok(h)
}

/// Open-loop driver: calls `op(i)` every `1/rate` s for `dur`; returns
/// each success.
async fn open_loop<F, Fut>(rate: u64, dur: Duration, op: F) -> Vec<Call>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<u64>> + Send + 'static,
{
    let out = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    let mut i = 0usize;
    while start.elapsed() < dur {
        let due = start + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let fut = op(i);
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            let s = Instant::now();
            if let Some(revision) = fut.await {
                let replied = Instant::now();
                if let Ok(mut o) = out.lock() {
                    o.push(Call {
                        start: s,
                        revision,
                        replied,
                    });
                }
            }
        }));
        i += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let v = out.lock().map(|o| o.clone()).unwrap_or_default();
    v
}

/// One row of the propagation table: system, edge count, calls, all-edges
/// and each-edge latency (µs), and calls some edge never applied.
type Row = (
    &'static str,
    usize,
    usize,
    Histogram<u64>,
    Histogram<u64>,
    usize,
);

/// What every edge count of `propagation` shares.
struct PropCtx<'a> {
    /// The benchmark's arguments.
    args: &'a BenchArgs,
    /// --duration-secs (at least 1 s), split between the rounds.
    dur: Duration,
    /// The veto cluster.
    cluster: &'a Cluster,
    /// The leader's gRPC address.
    addr: &'a str,
    /// The etcd cluster (absent with --no-etcd).
    etcd: Option<&'a Etcd>,
}

/// `veto-bench propagation`.
pub async fn propagation(args: &BenchArgs, json_out: bool) -> Result<()> {
    let dur = Duration::from_secs(args.duration_secs.max(1));
    let (cluster, addr) = cluster_with_key().await?;
    let etcd = if args.no_etcd {
        None
    } else {
        Some(Etcd::start(&args.etcd_bin, cluster.base_dir()).await?)
    };
    let ctx = PropCtx {
        args,
        dur,
        cluster: &cluster,
        addr: &addr,
        etcd: etcd.as_ref(),
    };
    let mut rows = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for &n in &args.edges {
        propagation_at(&ctx, n, &mut rows, &mut notes).await?;
    }
    print_propagation(args, dur, &rows, &notes, json_out)?;
    if let Some(e) = etcd {
        e.stop().await;
    }
    drop(cluster);
    Ok(())
}

/// Measures propagation to `n` edges (and `n` etcd watchers), adding the
/// rows and the notes.
async fn propagation_at(
    ctx: &PropCtx<'_>,
    n: usize,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let args = ctx.args;
    let need = (args.rate * args.duration_secs + 100) as usize;
    eprintln!("N = {n}: issuing {need} tokens, starting {n} edges...");
    let toks = Arc::new(issue_many(ctx.addr, need).await?);
    let edges = start_caught_up_edges(ctx.cluster, n).await?;
    let watchers = match ctx.etcd {
        Some(etcd) => Some(EtcdWatchers::start(etcd, n, args.connections).await?),
        None => None,
    };
    let rounds = args.rounds.max(1);
    let slice = ctx.dur / rounds;
    eprintln!(
        "N = {n}: revokes{} at {}/s, {rounds} rounds of {:.1} s each...",
        if watchers.is_some() {
            " and etcd puts in turn"
        } else {
            ""
        },
        args.rate,
        slice.as_secs_f64()
    );
    let turn = RevokeTurn {
        rate: args.rate,
        slice,
        toks,
        clients: Arc::new(clients(ctx.addr, args.connections)?),
        next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let (revokes, puts) = take_turns(&turn, &edges, watchers.as_ref(), rounds).await;
    let last = last_revision(&revokes);
    for e in &edges {
        let what = "edge applied the last revoke";
        let (limit, every) = (Duration::from_secs(30), Duration::from_millis(10));
        let _ = wait_edge_at(&e.handle, last, what, limit, every).await;
    }
    let (row, note) = veto_row(ctx.cluster, &edges, &revokes, n).await?;
    notes.push(note);
    rows.push(row);
    for e in edges {
        e.stop().await;
    }
    if let Some(w) = watchers {
        let revs = puts;
        let per = w.finish(&revs).await;
        let (all, each, missing) = propagation_stats(&starts(&revs), &per)?;
        let reply = reply_histogram(&revs)?;
        notes.push(format!(
            "etcd N = {n}: reply p50/p99 {:.2}/{:.2} ms",
            q(&reply, 0.5),
            q(&reply, 0.99),
        ));
        rows.push(("etcd", n, revs.len(), all, each, missing));
    }
    Ok(())
}

/// Starts `n` embedded edges on `cluster`, each recording its own applies
/// inline (as the etcd watchers record inline on receipt: no extra task in
/// the path), and waits until each has caught up with the leader.
async fn start_caught_up_edges(cluster: &Cluster, n: usize) -> Result<Vec<veto_edge::Edge>> {
    let servers = grpc_addrs(cluster);
    let mut edges = Vec::new();
    for i in 0..n {
        let mut opts = edge_opts(format!("bench-{i}"), &servers, 10_000, 1_000);
        opts.record_applies = true;
        let e = veto_edge::Edge::start_embedded(opts).map_err(|e| anyhow::anyhow!(e))?;
        edges.push(e);
    }
    let head = cluster
        .node(cluster.wait_leader(Duration::from_secs(10)).await?)?
        .status()
        .await
        .map(|s| s.applied_index)
        .unwrap_or(0);
    for e in &edges {
        let (limit, every) = (Duration::from_secs(120), Duration::from_millis(50));
        wait_edge_at(&e.handle, head, "edge caught up", limit, every).await?;
    }
    Ok(edges)
}

/// Waits (up to `limit`, polling every `every`) for `h` to apply revision `rev`.
async fn wait_edge_at(
    h: &veto_edge::EdgeHandle,
    rev: u64,
    what: &str,
    limit: Duration,
    every: Duration,
) -> Result<()> {
    eventually(what, limit, every, || {
        let h = h.clone();
        async move { (h.revision() >= rev).then_some(()) }
    })
    .await
}

/// The highest revision among `calls` (0 if none).
fn last_revision(calls: &[Call]) -> u64 {
    calls.iter().map(|r| r.revision).max().unwrap_or(0)
}

/// veto's turns: open-loop revokes of the issued tokens, in order.
struct RevokeTurn {
    /// Revokes per second.
    rate: u64,
    /// Length of a turn.
    slice: Duration,
    /// The tokens to revoke, (jti, token).
    toks: Arc<Vec<(String, String)>>,
    /// Token clients to spread the calls over.
    clients: Arc<Vec<TokenServiceClient<tonic::transport::Channel>>>,
    /// Index of the next token to revoke.
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl RevokeTurn {
    /// One turn of revokes; it ends when every edge has applied its last
    /// revoke, so its tail does not load the other system's turn.
    async fn run(&self, edges: &[veto_edge::Edge]) -> Vec<Call> {
        let toks = self.toks.clone();
        let clients = self.clients.clone();
        let next = self.next.clone();
        let calls = open_loop(self.rate, self.slice, move |i| {
            let mut c = clients[i % clients.len()].clone();
            let k = next.fetch_add(1, Ordering::Relaxed);
            let jti = toks.get(k).map(|t| t.0.clone()).unwrap_or_default();
            async move {
                c.revoke(pb::RevokeRequest {
                    jti,
                    ..Default::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner().revision)
            }
        })
        .await;
        let last = last_revision(&calls);
        for e in edges {
            let what = "edge applied the turn's last revoke";
            let (limit, every) = (Duration::from_secs(30), Duration::from_millis(5));
            let _ = wait_edge_at(&e.handle, last, what, limit, every).await;
        }
        calls
    }
}

/// `rounds` rounds in which veto's revokes and (with `watchers`) etcd's puts
/// take turns; returns (revokes, puts).
async fn take_turns(
    turn: &RevokeTurn,
    edges: &[veto_edge::Edge],
    watchers: Option<&EtcdWatchers>,
    rounds: u32,
) -> (Vec<Call>, Vec<Call>) {
    let mut revokes = Vec::new();
    let mut puts = Vec::new();
    for round in 0..rounds {
        // The VM drifts by more than the difference measured: both
        // systems take turns, in alternating order, so each sees the
        // same conditions.
        for veto_turn in [round % 2 == 0, round % 2 == 1] {
            if veto_turn {
                revokes.extend(turn.run(edges).await);
            } else if let Some(w) = watchers {
                let calls = w.round(turn.rate, turn.slice).await;
                w.wait_for(&calls).await;
                puts.extend(calls);
            } else {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (revokes, puts)
}

/// veto's row for `n` edges, and a note on where the time goes: edges on
/// the leader see a change right after its apply; edges on a follower wait
/// for the follower to learn the commit index and apply too.
async fn veto_row(
    cluster: &Cluster,
    edges: &[veto_edge::Edge],
    revokes: &[Call],
    n: usize,
) -> Result<(Row, String)> {
    let per_edge: Vec<Vec<(Instant, u64)>> =
        edges.iter().map(|e| e.handle.recorded_applies()).collect();
    let starts_v = starts(revokes);
    let (all, each, missing) = propagation_stats(&starts_v, &per_edge)?;
    let leader_addr = match cluster.wait_leader(Duration::from_secs(5)).await {
        Ok(id) => cluster.node(id).ok().map(|n| n.grpc_addr.clone()),
        Err(_) => None,
    };
    let subset = |leader: bool| -> Result<(usize, f64, f64)> {
        let recs: Vec<Vec<(Instant, u64)>> = edges
            .iter()
            .zip(&per_edge)
            .filter(|(e, _)| {
                (e.handle.server().is_some() && e.handle.server() == leader_addr) == leader
            })
            .map(|(_, r)| r.clone())
            .collect();
        if recs.is_empty() {
            return Ok((0, 0.0, 0.0));
        }
        let (a, _, _) = propagation_stats(&starts_v, &recs)?;
        Ok((recs.len(), q(&a, 0.5), q(&a, 0.99)))
    };
    let (ln, l50, l99) = subset(true)?;
    let (fol, f50, f99) = subset(false)?;
    let reply = reply_histogram(revokes)?;
    let note = format!(
        "veto N = {n}: reply p50/p99 {:.2}/{:.2} ms; all-edges p50/p99 over the {ln} edges on the leader {l50:.2}/{l99:.2} ms, over the {fol} on followers {f50:.2}/{f99:.2} ms",
        q(&reply, 0.5),
        q(&reply, 0.99),
    );
    Ok((("veto", n, revokes.len(), all, each, missing), note))
}

/// Prints the propagation rows: JSON, or a table with the veto / etcd
/// ratios and the notes.
fn print_propagation(
    args: &BenchArgs,
    dur: Duration,
    rows: &[Row],
    notes: &[String],
    json_out: bool,
) -> Result<()> {
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(sys, n, ops, all, each, missing)| serde_json::json!({
                "system": sys, "edges": n, "ops": ops, "incomplete": missing,
                "all_p50_ms": q(all, 0.5), "all_p99_ms": q(all, 0.99), "all_p999_ms": q(all, 0.999),
                "each_p50_ms": q(each, 0.5), "each_p99_ms": q(each, 0.99),
            }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("\npropagation at {} ops/s for {} s: call start -> all edges applied, and -> each edge applied (ms)", args.rate, dur.as_secs());
    println!(
        "{:<6} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "system", "N", "ops", "all p50", "all p99", "all p999", "each p50", "each p99", "lost"
    );
    for (sys, n, ops, all, each, missing) in rows {
        println!(
            "{:<6} {:>6} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6}",
            sys,
            n,
            ops,
            q(all, 0.5),
            q(all, 0.99),
            q(all, 0.999),
            q(each, 0.5),
            q(each, 0.99),
            missing
        );
    }
    for &n in &args.edges {
        let get = |s: &str| {
            rows.iter()
                .find(|r| r.0 == s && r.1 == n)
                .map(|r| q(&r.3, 0.99))
        };
        if let (Some(v), Some(e)) = (get("veto"), get("etcd")) {
            println!("N = {n}: all-edges p99 veto / etcd = {:.2}", v / e);
        }
    }
    for n in notes {
        println!("{n}");
    }
    Ok(())
}

/// N etcd watchers on one prefix (standing in for N edges), spread over
/// the members, each recording when it receives an event.
struct EtcdWatchers {
    records: Vec<Recorder>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    kvs: Vec<veto_proto::etcd::kv_client::KvClient<tonic::transport::Channel>>,
    prefix: String,
    next_key: Arc<std::sync::atomic::AtomicUsize>,
}

impl EtcdWatchers {
    async fn start(etcd: &Etcd, n: usize, connections: usize) -> Result<Self> {
        use veto_proto::etcd::watch_client::WatchClient;
        use veto_proto::etcd::{watch_request, WatchCreateRequest, WatchRequest};
        let prefix = format!("prop{n}/");
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let records: Vec<Recorder> = (0..n).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        let mut tasks = Vec::new();
        // Watchers spread over every member, as veto's edges spread over every node.
        for (i, rec) in records.iter().enumerate() {
            let mut w = WatchClient::new(channel(&etcd.urls[i % etcd.urls.len()])?);
            let req = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: prefix.clone().into_bytes(),
                        range_end: end.clone(),
                        start_revision: 0,
                    },
                )),
            };
            let (rec, ready) = (rec.clone(), ready_tx.clone());
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.send(req).await;
                let Ok(resp) = w
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                else {
                    return;
                };
                let mut s = resp.into_inner();
                while let Some(Ok(m)) = s.next().await {
                    if m.created {
                        let _ = ready.send(()).await;
                    }
                    if let Some(rev) = m
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref().map(|k| k.mod_revision))
                        .max()
                    {
                        if let Ok(mut v) = rec.lock() {
                            v.push((Instant::now(), rev as u64));
                        }
                    }
                }
                drop(tx);
            }));
        }
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .context("etcd watch create")?;
        }
        let kvs = etcd.leader_kvs(connections)?;
        Ok(Self {
            records,
            tasks,
            kvs,
            prefix,
            next_key: Arc::default(),
        })
    }

    /// Puts (each the size of a revoke entry) at `rate` for `dur`.
    async fn round(&self, rate: u64, dur: Duration) -> Vec<Call> {
        let kvs = self.kvs.clone();
        let prefix = self.prefix.clone();
        let next = self.next_key.clone();
        let value = vec![b'x'; 131];
        open_loop(rate, dur, move |i| {
            let mut kv = kvs[i % kvs.len()].clone();
            let k = next.fetch_add(1, Ordering::Relaxed);
            let key = format!("{prefix}{k}").into_bytes();
            let value = value.clone();
            async move {
                kv.put(veto_proto::etcd::PutRequest {
                    key,
                    value,
                    lease: 0,
                    prev_kv: false,
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().header.map(|h| h.revision as u64))
            }
        })
        .await
    }

    /// Waits (up to 30 s) for every watcher to see the last put of `calls`.
    async fn wait_for(&self, calls: &[Call]) {
        let last = calls.iter().map(|r| r.revision).max().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.records.iter().all(|r| {
                r.lock()
                    .map(|v| v.last().is_some_and(|x| x.1 >= last))
                    .unwrap_or(true)
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the last put of `calls`, stops the watchers, and returns
    /// what each recorded.
    async fn finish(self, calls: &[Call]) -> Vec<Vec<(Instant, u64)>> {
        self.wait_for(calls).await;
        for t in self.tasks {
            t.abort();
        }
        self.records
            .iter()
            .map(|r| r.lock().map(|v| v.clone()).unwrap_or_default())
            .collect()
    }
}

/// This process's resident set size, MB (0 if unknown).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// A snapshot of `n` live token revocations as a server encodes it on the wire.
fn snapshot_wire(n: usize) -> Vec<u8> {
    let changes: Vec<pb::Change> = (0..n)
        .map(|i| {
            let mut j = [0u8; 16];
            j[..8].copy_from_slice(&(i as u64).to_be_bytes());
            veto_proto::feed::change_to_pb(
                n as u64,
                &veto_core::EdgeChange::TokenRevoked {
                    jti: veto_core::Jti(j),
                    exp: 2_000_000_000,
                    effective_at: 1,
                    grace_ms: 0,
                },
            )
        })
        .collect();
    pb::ChangeBatch {
        from_revision: 0,
        to_revision: n as u64,
        changes,
    }
    .encode_to_vec()
}

/// `veto-bench scale`: an edge replica bootstrapping from a snapshot of
/// 1,000,000 live token revocations: decode + install time and RSS.
pub async fn scale(json_out: bool) -> Result<()> {
    let n = 1_000_000usize;
    let base_rss = rss_mb();
    let encoded = snapshot_wire(n);
    let snapshot_mb = encoded.len() as f64 / 1048576.0;
    let before = rss_mb();
    let t = Instant::now();
    let mut replica = veto_feed::Replica::new(
        Duration::from_secs(2),
        veto_feed::Policy::FailClosed,
        100_000,
        4096,
    );
    {
        let b = pb::ChangeBatch::decode(encoded.as_slice())?;
        let mut changes = Vec::with_capacity(b.changes.len());
        for c in &b.changes {
            changes.push(veto_proto::feed::change_from_pb(c)?.1);
        }
        replica
            .install_snapshot(b.to_revision, &changes)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let install = t.elapsed();
    drop(encoded);
    let after = rss_mb();
    if json_out {
        println!(
            "{}",
            serde_json::json!({"revocations": replica.revocations(), "snapshot_mb": snapshot_mb,
                               "bootstrap_s": install.as_secs_f64(), "process_rss_mb": after, "rss_before_snapshot_mb": base_rss})
        );
    } else {
        println!(
            "edge replica with {} live revocations:",
            replica.revocations()
        );
        println!("  snapshot on the wire       {snapshot_mb:.1} MB");
        println!(
            "  decode + install           {:.2} s",
            install.as_secs_f64()
        );
        println!("  process RSS after install  {after:.1} MB (was {base_rss:.1} MB before building the snapshot, {before:.1} MB with it)");
    }
    Ok(())
}
