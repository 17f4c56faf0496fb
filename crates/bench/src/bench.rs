//! `veto-bench issue|revoke|all`: committed issue and revoke throughput and latency on a
//! local 3-node cluster (fsync on), and, in the same run, puts of the same
//! payload size at the same concurrency on a local 3-member etcd cluster
//! (Debian's `etcd-server`, data on disk).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::etcd::kv_client::KvClient;
use veto_proto::etcd::maintenance_client::MaintenanceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_testkit::{channel, eventually};

use crate::common::{micros, q, read_token};

/// Arguments of every benchmark.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure (the subcommand): issue, revoke, all (issue +
    /// revoke), verify, propagation, scale, overhead, gateways or usage.
    #[arg(skip)]
    pub what: String,
    /// Concurrency levels (in-flight calls), comma-separated.
    #[arg(long, default_value = "1,64", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Skip the etcd comparison.
    #[arg(long)]
    pub no_etcd: bool,
    /// etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Client connections to spread the calls over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// propagation: edge counts, comma-separated.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    pub edges: Vec<usize>,
    /// propagation: revokes (and etcd puts) per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// propagation: veto and etcd take turns this many times per edge
    /// count, splitting --duration-secs between the rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// verify: unary Verify requests per second (open loop).
    #[arg(long, default_value_t = 10_000)]
    pub verify_rate: u64,
    /// verify: run the cluster, the edge and the clients with mutual TLS
    /// (certificates from a throwaway CA) instead of plaintext.
    #[arg(long)]
    pub tls: bool,
    /// usage: which parts to run, comma-separated (memory, overhead, raft).
    #[arg(long, default_value = "memory,overhead,raft", value_delimiter = ',')]
    pub usage_parts: Vec<String>,
    /// usage: verifies per second driven for the Raft cost.
    #[arg(long, default_value_t = 100_000)]
    pub usage_rate: u64,
    /// usage: distinct tokens verified for the Raft cost, comma-separated
    /// (up to 10,000 real tokens; more are synthetic jtis).
    #[arg(long, default_value = "10000,1000000", value_delimiter = ',')]
    pub usage_distinct: Vec<usize>,
    /// usage: seconds measured per working set for the Raft cost (after a
    /// warm-up of one report and one flush interval).
    #[arg(long, default_value_t = 40)]
    pub usage_secs: u64,
    /// usage: A/A control: both overhead edges run with tracking off, to
    /// see how far two identical edges differ on this machine.
    #[arg(long)]
    pub usage_aa: bool,
}

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// System and operation.
    pub name: String,
    /// In-flight calls.
    pub concurrency: usize,
    /// Completed operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
}

/// The figures of one phase as a [`Sample`].
fn sample(name: &str, c: usize, h: &Histogram<u64>, errors: u64, elapsed: Duration) -> Sample {
    Sample {
        name: name.into(),
        concurrency: c,
        ops: h.len(),
        errors,
        ops_per_sec: h.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: q(h, 0.5),
        p99_ms: q(h, 0.99),
        p999_ms: q(h, 0.999),
    }
}

/// Prints the first few failed calls of a run (the table counts them all).
fn note_error(op: &str, s: &tonic::Status) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("{op} failed: {:?}: {}", s.code(), s.message());
    }
}

/// Notes a failed call (see [`note_error`]); `Some(true)` on success.
fn outcome<T>(op: &str, r: &Result<T, tonic::Status>) -> Option<bool> {
    if let Err(s) = r {
        note_error(op, s);
    }
    Some(r.is_ok())
}

/// Runs `c` workers for `dur`; each calls `op(worker, i)` until time is up
/// or it returns `None` (out of work).
pub(crate) async fn drive<F, Fut>(
    c: usize,
    dur: Duration,
    op: F,
) -> Result<(Histogram<u64>, u64, Duration)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for w in 0..c {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let s = Instant::now();
                match op(w, i).await {
                    None => break,
                    Some(true) => h.record(micros(s.elapsed()))?,
                    Some(false) => errors += 1,
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>((h, errors))
        }));
    }
    let mut h = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (wh, we) = t.await??;
        h.add(wh)?;
        errors += we;
    }
    Ok((h, errors, start.elapsed()))
}

/// `n` (at least one) token clients on `addr`, each on its own connection.
pub(crate) fn clients(addr: &str, n: usize) -> Result<Vec<TokenServiceClient<Channel>>> {
    (0..n.max(1))
        .map(|_| Ok(TokenServiceClient::new(fresh_channel(addr)?)))
        .collect()
}

/// A new connection to `addr`.
fn fresh_channel(addr: &str) -> Result<Channel> {
    // A separate connection each (channel() would be one lazily shared HTTP/2 connection per call site).
    channel(addr)
}

/// Per worker, the jtis the issue phase issued (the revoke phase revokes them).
type Pool = Arc<std::sync::Mutex<Vec<Vec<String>>>>;

/// One phase's figures: latency histogram (µs), failed calls, elapsed time.
type Phase = (Histogram<u64>, u64, Duration);

/// Runs the benchmark.
pub async fn run(args: BenchArgs, json_out: bool) -> Result<()> {
    match args.what.as_str() {
        "verify" => crate::edgebench::verify(&args, json_out).await,
        "propagation" => crate::edgebench::propagation(&args, json_out).await,
        "scale" => crate::edgebench::scale(json_out).await,
        "overhead" => crate::overhead::run(&args, json_out).await,
        "gateways" => crate::gatewaybench::run(&args, json_out).await,
        "usage" => crate::usagebench::run(&args, json_out).await,
        _ => committed(&args, json_out).await,
    }
}

/// `issue`, `revoke` and `all`: committed writes against etcd puts.
async fn committed(args: &BenchArgs, json_out: bool) -> Result<()> {
    let dur = Duration::from_secs(args.duration_secs.max(1));
    let do_issue = matches!(args.what.as_str(), "all" | "issue");
    let do_revoke = matches!(args.what.as_str(), "all" | "revoke");
    if !do_issue && !do_revoke {
        bail!(
            "unknown benchmark {:?}: use issue, revoke or all",
            args.what
        );
    }
    eprintln!("starting a local 3-node veto cluster (fsync on)...");
    let (cluster, addr) = crate::edgebench::cluster_with_key().await?;

    let payload = revoke_entry_bytes();
    let etcd = if args.no_etcd {
        None
    } else {
        Some(Etcd::start(&args.etcd_bin, cluster.base_dir()).await?)
    };
    let mut results = Vec::new();
    for &c in &args.concurrency {
        let cl = Arc::new(clients(&addr, args.connections)?);
        // Issue: also builds the pool of tokens the revoke phase revokes.
        let pool: Pool = Arc::new(std::sync::Mutex::new(vec![Vec::new(); c]));
        let issue_dur = if do_issue { dur } else { dur / 2 };
        eprintln!(
            "veto issue, concurrency {c}, {} s...",
            issue_dur.as_secs_f64()
        );
        let (h, e, el) = issue_phase(cl.clone(), c, issue_dur, pool.clone()).await?;
        if do_issue {
            results.push(sample("veto issue", c, &h, e, el));
        }
        if do_revoke {
            eprintln!("veto revoke, concurrency {c}, up to {} s...", dur.as_secs());
            let pool: Arc<Vec<Vec<String>>> =
                Arc::new(pool.lock().map(|p| p.clone()).unwrap_or_default());
            let (h, e, el) = revoke_phase(cl.clone(), c, dur, pool).await?;
            results.push(sample("veto revoke", c, &h, e, el));
        }
        if let Some(etcd) = etcd.as_ref() {
            eprintln!(
                "etcd put ({payload} B values), concurrency {c}, {} s...",
                dur.as_secs()
            );
            let (h, e, el) = put_phase(etcd, args.connections, c, dur, payload).await?;
            results.push(sample("etcd put", c, &h, e, el));
        }
    }
    report(&results, &args.concurrency, payload, json_out)?;
    if let Some(e) = etcd {
        e.stop().await;
    }
    drop(cluster);
    Ok(())
}

/// Issues at concurrency `c` for `dur`, adding each jti to its worker's pool.
async fn issue_phase(
    cl: Arc<Vec<TokenServiceClient<Channel>>>,
    c: usize,
    dur: Duration,
    pool: Pool,
) -> Result<Phase> {
    drive(c, dur, move |w, i| {
        let mut client = cl[w % cl.len()].clone();
        let pool = pool.clone();
        async move {
            let r = client
                .issue(read_token(format!("bench:{w}:{i}"), 3600))
                .await;
            Some(match r {
                Ok(r) => {
                    let jti = r.into_inner().record.map(|r| r.jti).unwrap_or_default();
                    if let Ok(mut p) = pool.lock() {
                        p[w].push(jti);
                    }
                    true
                }
                Err(s) => {
                    note_error("issue", &s);
                    false
                }
            })
        }
    })
    .await
}

/// Revokes the pooled tokens at concurrency `c`, for up to `dur`.
async fn revoke_phase(
    cl: Arc<Vec<TokenServiceClient<Channel>>>,
    c: usize,
    dur: Duration,
    pool: Arc<Vec<Vec<String>>>,
) -> Result<Phase> {
    drive(c, dur, move |w, i| {
        let mut client = cl[w % cl.len()].clone();
        let jti = pool[w].get(i as usize).cloned();
        async move {
            let jti = jti?;
            let r = client
                .revoke(pb::RevokeRequest {
                    jti,
                    reason: "bench".into(),
                    ..Default::default()
                })
                .await;
            outcome("revoke", &r)
        }
    })
    .await
}

/// etcd puts of `payload`-byte values at concurrency `c` for `dur`.
async fn put_phase(
    etcd: &Etcd,
    connections: usize,
    c: usize,
    dur: Duration,
    payload: usize,
) -> Result<Phase> {
    let kvs: Arc<Vec<KvClient<Channel>>> = Arc::new(etcd.leader_kvs(connections)?);
    let value = Arc::new(vec![b'x'; payload]);
    drive(c, dur, move |w, i| {
        let mut kv = kvs[w % kvs.len()].clone();
        let value = value.clone();
        async move {
            let r = kv
                .put(veto_proto::etcd::PutRequest {
                    key: format!("bench/{c}/{w}/{i}").into_bytes(),
                    value: value.to_vec(),
                    lease: 0,
                    prev_kv: false,
                })
                .await;
            // (Reported under "revoke", as it always has been.)
            outcome("revoke", &r)
        }
    })
    .await
}

/// Prints the results: JSON, or a table with the veto / etcd ratios.
fn report(results: &[Sample], levels: &[usize], payload: usize, json_out: bool) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "\n{:<12} {:>5} {:>9} {:>7} {:>11} {:>9} {:>9} {:>9}",
        "op", "conc", "ops", "errors", "ops/s", "p50 ms", "p99 ms", "p999 ms"
    );
    for s in results {
        println!(
            "{:<12} {:>5} {:>9} {:>7} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
            s.name, s.concurrency, s.ops, s.errors, s.ops_per_sec, s.p50_ms, s.p99_ms, s.p999_ms
        );
    }
    for &c in levels {
        let get = |n: &str| {
            results
                .iter()
                .find(|s| s.name == n && s.concurrency == c)
                .map(|s| s.ops_per_sec)
        };
        if let Some(e) = get("etcd put") {
            for op in ["veto issue", "veto revoke"] {
                if let Some(v) = get(op) {
                    println!("ratio {op} / etcd put at concurrency {c}: {:.2}", v / e);
                }
            }
        }
    }
    println!("(etcd values are {payload} bytes, the size of a revoke entry in veto's log)");
    Ok(())
}

/// Size of a typical revoke command as veto stores it in the log.
fn revoke_entry_bytes() -> usize {
    let cmd = veto_core::Command::RevokeToken {
        jti: veto_core::Jti([0xab; 16]),
        reason: "bench".into(),
        at: 1_800_000_000,
        actor: veto_core::Actor("anonymous@127.0.0.1:50000".into()),
        presented: None,
    };
    serde_json::to_vec(&cmd).map(|v| v.len()).unwrap_or(128)
}

/// A local 3-member etcd cluster.
pub(crate) struct Etcd {
    children: Vec<Child>,
    pub(crate) leader: String,
    /// Every member's client address.
    pub(crate) urls: Vec<String>,
    _dir: PathBuf,
}

/// A loopback port free at the time of asking.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Etcd {
    /// Starts three members (data under `base`/etcd) and waits until they
    /// accept puts and have a leader.
    pub(crate) async fn start(bin: &Path, base: &Path) -> Result<Etcd> {
        if !bin.is_file() {
            bail!("{} not found: install Debian's etcd-server (scripts/bench.sh does), or pass --no-etcd", bin.display());
        }
        let dir = base.join("etcd");
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
            .collect();
        let initial = initial.join(",");
        let mut children = Vec::new();
        let mut client_urls = Vec::new();
        for (i, &(cp, pp)) in ports.iter().enumerate() {
            children.push(spawn_member(bin, &dir, i, cp, pp, &initial)?);
            client_urls.push(format!("127.0.0.1:{cp}"));
        }
        wait_for_puts(&client_urls[0]).await?;
        let leader = eventually(
            "an etcd leader",
            Duration::from_secs(10),
            Duration::from_millis(100),
            || find_etcd_leader(&client_urls),
        )
        .await?;
        Ok(Etcd {
            children,
            leader,
            urls: client_urls,
            _dir: dir,
        })
    }

    /// A KV client on the leader (no proxying through a follower).
    pub(crate) fn leader_kv(&self) -> Result<KvClient<Channel>> {
        Ok(KvClient::new(channel(&self.leader)?))
    }

    /// `n` (at least one) KV clients on the leader.
    pub(crate) fn leader_kvs(&self, n: usize) -> Result<Vec<KvClient<Channel>>> {
        (0..n.max(1)).map(|_| self.leader_kv()).collect()
    }

    /// Kills every member and waits for it to exit.
    pub(crate) async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

/// Spawns member `e{i}` (client port `cp`, peer port `pp`) of the cluster
/// `initial`, with its data and log under `dir`.
fn spawn_member(
    bin: &Path,
    dir: &Path,
    i: usize,
    cp: u16,
    pp: u16,
    initial: &str,
) -> Result<Child> {
    let data = dir.join(format!("e{i}"));
    std::fs::create_dir_all(&data)?;
    let log = std::fs::File::create(dir.join(format!("e{i}.log")))?;
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    Command::new(bin)
        .args(["--name", &format!("e{i}")])
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", initial])
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "veto-bench",
        ])
        .args(["--log-level", "error"])
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))
}

/// Waits (up to 30 s) until the member at `url` accepts a put.
async fn wait_for_puts(url: &str) -> Result<()> {
    eventually(
        "etcd to accept puts",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async move {
            let mut kv = KvClient::new(channel(url).ok()?);
            kv.put(veto_proto::etcd::PutRequest {
                key: b"warmup".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
                prev_kv: false,
            })
            .await
            .ok()
        },
    )
    .await?;
    Ok(())
}

/// The client URL of the member that reports itself as leader.
async fn find_etcd_leader(urls: &[String]) -> Option<String> {
    for u in urls {
        let mut m = MaintenanceClient::new(channel(u).ok()?);
        if let Ok(s) = m.status(veto_proto::etcd::StatusRequest {}).await {
            let s = s.into_inner();
            if s.header.as_ref().map(|h| h.member_id) == Some(s.leader) {
                return Some(u.clone());
            }
        }
    }
    None
}
