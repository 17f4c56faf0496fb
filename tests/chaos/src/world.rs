//! The system under test: `veto-server` and `veto-edge` processes, each on
//! its own host of a [`Net`], started, killed (SIGKILL), paused and
//! restarted by the harness; voters and learners; edges fed by every voter
//! or by servers of the plan's choosing; processes on a skewed or jumping
//! wall clock ([`crate::clock`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use veto_proto as pb;
use veto_testkit::eventually;

use crate::clock::{self, Clock, ClockChange, Leeway};
use crate::net::{Net, Rule};

/// gRPC port of every process (each has its own address).
pub const GRPC_PORT: u16 = 7000;
/// HTTP port of every process.
pub const HTTP_PORT: u16 = 7080;

/// What to start.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// Voters.
    pub servers: usize,
    /// Edges.
    pub edges: usize,
    /// The edges' propagation bound B.
    pub bound: Duration,
    /// The edges' probe interval H.
    pub probe: Duration,
    /// Edges (by index) started with the test-only switch that makes them
    /// keep answering for `broken_bound` instead of `bound` (debug builds
    /// of `veto-edge` only), to prove the checker catches an overshoot.
    pub broken_edges: Vec<usize>,
    /// The bound the broken edges really apply.
    pub broken_bound: Duration,
    /// Learners: non-voting servers, started once the voters have a leader
    /// and added with `AdminService.AddLearner`. They are servers
    /// `servers..servers + learners` (node ids follow the voters').
    pub learners: usize,
    /// The servers (by index, voters or learners) an edge is given, in
    /// order, by edge index; an edge not listed gets every voter.
    pub edge_servers: BTreeMap<usize, Vec<usize>>,
    /// Wall clocks of servers (by index) run under libfaketime; a server
    /// not listed runs on the machine's clock, without the preload.
    pub server_clocks: BTreeMap<usize, Clock>,
    /// Wall clocks of edges (by index), as for servers.
    pub edge_clocks: BTreeMap<usize, Clock>,
    /// Clock leeways passed to every edge (`VETO_CLOCK_LEEWAY_SECS`,
    /// `VETO_EXP_LEEWAY_SECS`); `None` sets neither (the edges' defaults).
    pub leeway: Option<Leeway>,
    /// Hand the leadership to this voter (by index) before the edges
    /// start (`AdminService.TransferLeader`).
    pub initial_leader: Option<usize>,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            servers: 3,
            edges: 3,
            bound: Duration::from_millis(1500),
            probe: Duration::from_millis(150),
            broken_edges: Vec::new(),
            broken_bound: Duration::from_millis(3000),
            learners: 0,
            edge_servers: BTreeMap::new(),
            server_clocks: BTreeMap::new(),
            edge_clocks: BTreeMap::new(),
            leeway: None,
            initial_leader: None,
        }
    }
}

impl WorldOptions {
    /// Checks indexes against the counts.
    pub fn validate(&self) -> Result<()> {
        let all = self.servers + self.learners;
        for (e, list) in &self.edge_servers {
            if *e >= self.edges || list.is_empty() || list.iter().any(|s| *s >= all) {
                bail!(
                    "edge_servers: edge {e} -> {list:?} (edges {}, servers {all})",
                    self.edges
                );
            }
        }
        if let Some((s, _)) = self.server_clocks.iter().find(|(s, _)| **s >= all) {
            bail!("server_clocks: no server {s}");
        }
        if let Some((e, _)) = self.edge_clocks.iter().find(|(e, _)| **e >= self.edges) {
            bail!("edge_clocks: no edge {e}");
        }
        if self.initial_leader.is_some_and(|l| l >= self.servers) {
            bail!("initial_leader must be a voter");
        }
        Ok(())
    }
}

/// Server or edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `veto-server`.
    Server,
    /// `veto-edge`.
    Edge,
}

/// One process on one host.
pub struct Proc {
    /// Server or edge.
    pub kind: Kind,
    /// Index among its kind (server i has node id i + 1).
    pub index: usize,
    /// Index of its host in the [`Net`].
    pub host: usize,
    /// `ip:port` of its gRPC service.
    pub grpc: String,
    /// `ip:port` of its HTTP server.
    pub http: String,
    /// Log file (appended across restarts).
    pub log: PathBuf,
    /// A learner (non-voting server).
    pub learner: bool,
    /// Its wall clock, when it runs under libfaketime.
    pub clock: Option<Clock>,
    /// The offset its clock has now (base, or base + jump).
    pub offset_now: i64,
    /// Its libfaketime timestamp file, when it has a clock.
    clock_file: Option<PathBuf>,
    /// Runs the program on its clock (`env LD_PRELOAD=... `), or nothing.
    prefix: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    /// Whether it runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its name: `s1`.. for servers (node id), `e0`.. for edges.
    pub fn name(&self) -> String {
        match self.kind {
            Kind::Server => format!("s{}", self.index + 1),
            Kind::Edge => format!("e{}", self.index),
        }
    }
}

/// Channels to every server and edge (lazily connecting, with timeouts).
#[derive(Clone)]
pub struct Clients {
    /// By server index.
    pub servers: Vec<Channel>,
    /// By edge index.
    pub edges: Vec<Channel>,
}

/// Servers and edges on their hosts.
pub struct World {
    /// The hosts (servers first, then edges).
    pub net: Net,
    /// The servers, by index (node id = index + 1).
    pub servers: Vec<Proc>,
    /// The edges, by index.
    pub edges: Vec<Proc>,
    /// What was started.
    pub opts: WorldOptions,
    /// Every change of a process's wall-clock offset (initial ones first).
    pub clock_log: Vec<ClockChange>,
    server_channels: Vec<Channel>,
    edge_channels: Vec<Channel>,
    _dir: tempfile::TempDir,
}

fn lazy(addr: &str, timeout: Duration) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn spawn(p: &mut Proc, ns: &str) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)?;
    let ready = p.log.with_extension("ready");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new("ip");
    // setpriv: the process dies with the harness's thread that started it,
    // even when the harness itself is killed and cannot clean up
    cmd.args(["netns", "exec", ns, "setpriv", "--pdeathsig", "KILL"])
        .args(&p.prefix)
        .args(&p.args)
        .arg("--ready-file")
        .arg(&ready)
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // `ip netns exec`, `setpriv` (and `env`, for a clock fault) exec the
    // program, so this pid is the server's or edge's own and SIGKILL
    // reaches it.
    let mut child = cmd.spawn().context("spawn ip netns exec")?;
    let name = p.name();
    let up = eventually(
        "a ready file",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let exited = child.try_wait().ok().flatten();
            let ok = ready.exists();
            async move {
                if exited.is_some() {
                    return Some(false);
                }
                ok.then_some(true)
            }
        },
    )
    .await?;
    if !up {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        bail!(
            "{name} exited during start:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    p.child = Some(child);
    p.paused = false;
    if p.clock.is_some() {
        // the offset must really be in effect: read it back
        clock::check_offset(&name, &p.http, p.offset_now).await?;
    }
    Ok(())
}

/// A process's clock settings: its timestamp file (written with its offset)
/// and the `env` prefix that preloads libfaketime.
fn clock_setup(
    dir: &Path,
    name: &str,
    clock: Option<Clock>,
    lib: &Option<PathBuf>,
) -> Result<(Option<PathBuf>, Vec<String>)> {
    let (Some(c), Some(lib)) = (clock, lib) else {
        return Ok((None, Vec::new()));
    };
    let file = dir.join(format!("{name}.faketime"));
    clock::write_offset(&file, c.offset_secs)?;
    let prefix = clock::env_args(lib, &file);
    Ok((Some(file), prefix))
}

impl World {
    /// Starts the servers, initialises them as one cluster, then starts the
    /// edges and waits until every edge is fresh.
    pub async fn start(opts: WorldOptions) -> Result<Self> {
        opts.validate()?;
        let server_bin = veto_testkit::server_bin()?;
        let edge_bin = veto_testkit::bin_named("veto-edge", "VETO_EDGE_BIN")?;
        // fail before building anything when a clock fault cannot be had
        let lib = if opts.server_clocks.is_empty() && opts.edge_clocks.is_empty() {
            None
        } else {
            Some(clock::libfaketime()?)
        };
        let dir = tempfile::Builder::new().prefix("veto-chaos-").tempdir()?;
        let mut net = Net::new()?;
        let kek = veto_testkit::new_kek();
        let mut servers = Vec::new();
        let mut clock_log = Vec::new();
        for i in 0..opts.servers + opts.learners {
            let host = net.add_host(&format!("s{}", i + 1))?;
            let data = dir.path().join(format!("s{}", i + 1));
            std::fs::create_dir_all(&data)?;
            let cfg = data.with_extension("toml");
            std::fs::write(
                &cfg,
                format!(
                    "node_id = {}\nlisten_addr = \"{ip}:{GRPC_PORT}\"\nhttp_addr = \"{ip}:{HTTP_PORT}\"\n\
                     data_dir = \"{}\"\ninsecure = true\n",
                    i + 1,
                    data.join("db").display(),
                    ip = host.ip,
                ),
            )?;
            let clock = opts.server_clocks.get(&i).copied();
            let (clock_file, prefix) =
                clock_setup(dir.path(), &format!("s{}", i + 1), clock, &lib)?;
            if let Some(c) = clock {
                let now = std::time::Instant::now();
                clock_log.push(ClockChange {
                    kind: Kind::Server,
                    index: i,
                    offset_secs: c.offset_secs,
                    from: now,
                    to: now,
                });
            }
            servers.push(Proc {
                kind: Kind::Server,
                index: i,
                host: i,
                grpc: format!("{}:{GRPC_PORT}", host.ip),
                http: format!("{}:{HTTP_PORT}", host.ip),
                log: data.with_extension("log"),
                learner: i >= opts.servers,
                clock,
                offset_now: clock.map_or(0, |c| c.offset_secs),
                clock_file,
                prefix,
                args: vec![
                    server_bin.display().to_string(),
                    "--config".into(),
                    cfg.display().to_string(),
                ],
                env: vec![
                    ("VETO_KEK".into(), kek.clone()),
                    ("VETO_WORKER_THREADS".into(), "1".into()),
                    ("RUST_LOG".into(), "info".into()),
                ],
                child: None,
                paused: false,
            });
        }
        let voters: Vec<usize> = (0..opts.servers).collect();
        let mut edges = Vec::new();
        for i in 0..opts.edges {
            let host = net.add_host(&format!("e{i}"))?;
            let list: Vec<String> = opts
                .edge_servers
                .get(&i)
                .unwrap_or(&voters)
                .iter()
                .map(|&s| servers[s].grpc.clone())
                .collect();
            let mut env = vec![("RUST_LOG".to_string(), "info".to_string())];
            if let Some(l) = opts.leeway {
                env.push(("VETO_CLOCK_LEEWAY_SECS".into(), l.nbf_secs.to_string()));
                env.push(("VETO_EXP_LEEWAY_SECS".into(), l.exp_secs.to_string()));
            }
            let clock = opts.edge_clocks.get(&i).copied();
            let (clock_file, prefix) = clock_setup(dir.path(), &format!("e{i}"), clock, &lib)?;
            if let Some(c) = clock {
                let now = std::time::Instant::now();
                clock_log.push(ClockChange {
                    kind: Kind::Edge,
                    index: i,
                    offset_secs: c.offset_secs,
                    from: now,
                    to: now,
                });
            }
            if opts.broken_edges.contains(&i) {
                env.push((
                    "VETO_TEST_ONLY_BOUND_MS".into(),
                    opts.broken_bound.as_millis().to_string(),
                ));
            }
            edges.push(Proc {
                kind: Kind::Edge,
                index: i,
                host: opts.servers + opts.learners + i,
                grpc: format!("{}:{GRPC_PORT}", host.ip),
                http: format!("{}:{HTTP_PORT}", host.ip),
                log: dir.path().join(format!("e{i}.log")),
                learner: false,
                clock,
                offset_now: clock.map_or(0, |c| c.offset_secs),
                clock_file,
                prefix,
                args: vec![
                    edge_bin.display().to_string(),
                    "--edge-id".into(),
                    format!("e{i}"),
                    "--servers".into(),
                    list.join(","),
                    "--listen-addr".into(),
                    format!("{}:{GRPC_PORT}", host.ip),
                    "--http-addr".into(),
                    format!("{}:{HTTP_PORT}", host.ip),
                    "--bound-ms".into(),
                    opts.bound.as_millis().to_string(),
                    "--probe-interval-ms".into(),
                    opts.probe.as_millis().to_string(),
                    "--insecure".into(),
                ],
                env,
                child: None,
                paused: false,
            });
        }
        let server_channels = servers
            .iter()
            .map(|s| lazy(&s.grpc, Duration::from_secs(3)))
            .collect::<Result<Vec<_>>>()?;
        let edge_channels = edges
            .iter()
            .map(|e| lazy(&e.grpc, Duration::from_secs(2)))
            .collect::<Result<Vec<_>>>()?;
        let mut w = World {
            net,
            servers,
            edges,
            opts,
            clock_log,
            server_channels,
            edge_channels,
            _dir: dir,
        };
        let n_voters = w.opts.servers;
        for i in 0..n_voters {
            w.start_server(i).await?;
        }
        let members = w
            .servers
            .iter()
            .filter(|s| !s.learner)
            .map(|s| pb::Member {
                node_id: s.index as u64 + 1,
                addr: s.grpc.clone(),
            })
            .collect();
        w.admin(0)
            .init(pb::InitRequest { members })
            .await
            .context("init")?;
        w.wait_leader(Duration::from_secs(30)).await?;
        // the bootstrap signing key, before edges subscribe
        eventually(
            "the first signing key",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async { w.status(0).await.filter(|s| !s.active_kid.is_empty()) },
        )
        .await?;
        for i in n_voters..w.servers.len() {
            w.add_learner(i).await?;
        }
        if let Some(l) = w.opts.initial_leader {
            w.transfer_leader(l).await?;
        }
        for i in 0..w.edges.len() {
            w.start_edge(i).await?;
        }
        w.wait_edges_fresh(Duration::from_secs(30)).await?;
        Ok(w)
    }

    /// Starts server `i` and adds it as a learner (blocking until it caught
    /// up), then waits until it names the leader.
    async fn add_learner(&mut self, i: usize) -> Result<()> {
        // before it runs: a server that is no member yet names no leader
        let leader = self.wait_leader(Duration::from_secs(30)).await?;
        self.start_server(i).await?;
        let mut req = tonic::Request::new(pb::AddLearnerRequest {
            member: Some(pb::Member {
                node_id: i as u64 + 1,
                addr: self.servers[i].grpc.clone(),
            }),
            blocking: true,
        });
        req.set_timeout(Duration::from_secs(30));
        let m = self
            .admin(leader)
            .add_learner(req)
            .await
            .with_context(|| format!("adding s{} as a learner", i + 1))?
            .into_inner();
        let listed = m
            .membership
            .is_some_and(|m| m.learners.iter().any(|l| l.node_id == i as u64 + 1));
        if !listed {
            bail!("s{} is not listed as a learner after AddLearner", i + 1);
        }
        eventually(
            "the learner to follow the leader",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let st = self.status(i).await?;
                (st.leader_id != 0 && st.role == pb::Role::Learner as i32).then_some(())
            },
        )
        .await
    }

    /// Hands the leadership to voter `to` and waits until everyone names it.
    pub async fn transfer_leader(&self, to: usize) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let l = self.wait_leader(Duration::from_secs(20)).await?;
            if l == to {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("s{} did not take the leadership in 30 s", to + 1);
            }
            let mut req = tonic::Request::new(pb::TransferLeaderRequest {
                to_node_id: to as u64 + 1,
            });
            req.set_timeout(Duration::from_secs(5));
            // a refusal or a timeout is retried until the deadline
            let _ = self.admin(l).transfer_leader(req).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sets process `i`'s wall-clock offset (it must run under
    /// libfaketime) and records the change; takes effect at its next clock
    /// call, and at every restart from now on.
    pub fn set_clock(&mut self, kind: Kind, i: usize, offset_secs: i64) -> Result<()> {
        let p = self.proc_mut(kind, i)?;
        let file = p
            .clock_file
            .clone()
            .ok_or_else(|| anyhow!("{} has no clock fault", p.name()))?;
        let from = std::time::Instant::now();
        clock::write_offset(&file, offset_secs)?;
        let to = std::time::Instant::now();
        p.offset_now = offset_secs;
        self.clock_log.push(ClockChange {
            kind,
            index: i,
            offset_secs,
            from,
            to,
        });
        Ok(())
    }

    /// Steps every clock that jumps by its jump; returns how many.
    pub fn jump_clocks(&mut self) -> Result<usize> {
        let mut n = 0;
        for kind in [Kind::Server, Kind::Edge] {
            let targets: Vec<(usize, i64)> = self
                .procs(kind)
                .iter()
                .filter_map(|p| {
                    let c = p.clock?;
                    (c.jump_secs != 0).then_some((p.index, c.offset_secs + c.jump_secs))
                })
                .collect();
            for (i, o) in targets {
                self.set_clock(kind, i, o)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Puts every clock back on its base offset.
    pub fn reset_clocks(&mut self) -> Result<()> {
        for kind in [Kind::Server, Kind::Edge] {
            let targets: Vec<(usize, i64)> = self
                .procs(kind)
                .iter()
                .filter_map(|p| {
                    let c = p.clock?;
                    (p.offset_now != c.offset_secs).then_some((p.index, c.offset_secs))
                })
                .collect();
            for (i, o) in targets {
                self.set_clock(kind, i, o)?;
            }
        }
        Ok(())
    }

    fn procs(&self, kind: Kind) -> &[Proc] {
        match kind {
            Kind::Server => &self.servers,
            Kind::Edge => &self.edges,
        }
    }

    /// Indexes of the learners.
    pub fn learner_indexes(&self) -> Vec<usize> {
        self.servers
            .iter()
            .filter(|s| s.learner)
            .map(|s| s.index)
            .collect()
    }

    async fn start_server(&mut self, i: usize) -> Result<()> {
        let ns = self.net.hosts()[self.servers[i].host].ns.clone();
        spawn(&mut self.servers[i], &ns).await
    }

    async fn start_edge(&mut self, i: usize) -> Result<()> {
        let ns = self.net.hosts()[self.edges[i].host].ns.clone();
        spawn(&mut self.edges[i], &ns).await
    }

    fn proc_mut(&mut self, kind: Kind, i: usize) -> Result<&mut Proc> {
        match kind {
            Kind::Server => self.servers.get_mut(i),
            Kind::Edge => self.edges.get_mut(i),
        }
        .ok_or_else(|| anyhow!("no {kind:?} {i}"))
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self, kind: Kind, i: usize) -> Result<()> {
        let p = self.proc_mut(kind, i)?;
        if let Some(mut c) = p.child.take() {
            c.start_kill()?;
            tokio::time::timeout(Duration::from_secs(10), c.wait()).await??;
        }
        p.paused = false;
        Ok(())
    }

    /// Restarts a killed process on its host, data and address.
    pub async fn restart(&mut self, kind: Kind, i: usize) -> Result<()> {
        if self.proc_mut(kind, i)?.is_running() {
            bail!("{kind:?} {i} is running");
        }
        match kind {
            Kind::Server => self.start_server(i).await,
            Kind::Edge => self.start_edge(i).await,
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&mut self, kind: Kind, i: usize, stop: bool) -> Result<()> {
        let p = self.proc_mut(kind, i)?;
        let pid = p
            .child
            .as_ref()
            .and_then(|c| c.id())
            .ok_or_else(|| anyhow!("{} is not running", p.name()))?;
        crate::net::run(
            "kill",
            &[if stop { "-STOP" } else { "-CONT" }, &pid.to_string()],
        )?;
        p.paused = stop;
        Ok(())
    }

    /// Resumes every paused process and restarts every killed one.
    pub async fn revive_all(&mut self) -> Result<()> {
        for kind in [Kind::Server, Kind::Edge] {
            let n = match kind {
                Kind::Server => self.servers.len(),
                Kind::Edge => self.edges.len(),
            };
            for i in 0..n {
                let p = self.proc_mut(kind, i)?;
                if p.paused {
                    self.pause(kind, i, false)?;
                } else if !p.is_running() {
                    self.restart(kind, i).await?;
                }
            }
        }
        Ok(())
    }

    /// A TokenService client of server `i` (3 s per call).
    pub fn tokens(&self, i: usize) -> pb::token_service_client::TokenServiceClient<Channel> {
        pb::token_service_client::TokenServiceClient::new(self.server_channels[i].clone())
    }

    /// An AdminService client of server `i`.
    pub fn admin(&self, i: usize) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.server_channels[i].clone())
    }

    /// A VerifierService client of edge `i` (2 s per call).
    pub fn verifier(
        &self,
        i: usize,
    ) -> pb::verifier_service_client::VerifierServiceClient<Channel> {
        pb::verifier_service_client::VerifierServiceClient::new(self.edge_channels[i].clone())
    }

    /// Server `i`'s status (with the digest when asked), if it answers in 1 s.
    pub async fn status_of(&self, i: usize, digest: bool) -> Option<pb::StatusResponse> {
        let mut req = tonic::Request::new(pb::StatusRequest {
            include_digest: digest,
        });
        req.set_timeout(Duration::from_secs(1));
        self.admin(i).status(req).await.ok().map(|r| r.into_inner())
    }

    /// Server `i`'s status, if it answers in 1 s.
    pub async fn status(&self, i: usize) -> Option<pb::StatusResponse> {
        self.status_of(i, false).await
    }

    /// Index of the server every running server names as leader.
    pub async fn wait_leader(&self, limit: Duration) -> Result<usize> {
        eventually("a leader", limit, Duration::from_millis(50), || async {
            let mut leader = None;
            for s in self.servers.iter().filter(|s| s.is_running() && !s.paused) {
                let st = self.status(s.index).await?;
                if st.leader_id == 0 || *leader.get_or_insert(st.leader_id) != st.leader_id {
                    return None;
                }
            }
            let l = leader? as usize - 1;
            let st = self.status(l).await?;
            (st.role == pb::Role::Leader as i32).then_some(l)
        })
        .await
    }

    /// Waits until every running edge answers a verify without STALE.
    pub async fn wait_edges_fresh(&self, limit: Duration) -> Result<()> {
        eventually(
            "every edge fresh",
            limit,
            Duration::from_millis(50),
            || async {
                for e in self.edges.iter().filter(|e| e.is_running()) {
                    let mut req = tonic::Request::new(pb::VerifyRequest {
                        token: "x".into(),
                        ..Default::default()
                    });
                    req.set_timeout(Duration::from_secs(1));
                    // a stale edge refuses with UNAVAILABLE: any answer is fresh
                    self.verifier(e.index).verify(req).await.ok()?;
                }
                Some(())
            },
        )
        .await
    }

    /// The server edge `edge` streams from: of the servers that list it as
    /// connected, the one with its most recent ack (a server that lost the
    /// stream may not have noticed yet).
    pub async fn feed_server_of(&self, edge: usize) -> Option<usize> {
        let name = format!("e{edge}");
        let mut best: Option<(f64, usize)> = None;
        for s in self.servers.iter().filter(|s| s.is_running() && !s.paused) {
            let mut req = tonic::Request::new(pb::EdgesRequest::default());
            req.set_timeout(Duration::from_secs(1));
            let Ok(r) = self.admin(s.index).edges(req).await else {
                continue;
            };
            for e in r.into_inner().edges {
                if e.edge_id == name && e.connected && e.node_id == s.index as u64 + 1 {
                    let age = e.ack_age_ms;
                    if best.is_none_or(|(b, _)| age < b) {
                        best = Some((age, s.index));
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Host indexes of the servers.
    pub fn server_hosts(&self) -> Vec<usize> {
        self.servers.iter().map(|s| s.host).collect()
    }

    /// Host indexes of the edges.
    pub fn edge_hosts(&self) -> Vec<usize> {
        self.edges.iter().map(|e| e.host).collect()
    }

    /// Drops `percent` of what each of `hosts` sends to other hosts.
    pub fn loss(&mut self, hosts: &[usize], percent: u8) -> Result<()> {
        for &h in hosts {
            self.net.add_rules(h, &[Rule::Loss(percent)])?;
        }
        Ok(())
    }

    /// Cloneable clients of every server and edge, for workload tasks.
    pub fn clients(&self) -> Clients {
        Clients {
            servers: self.server_channels.clone(),
            edges: self.edge_channels.clone(),
        }
    }

    /// Where the logs are.
    pub fn log_dir(&self) -> &Path {
        self._dir.path()
    }

    /// Keeps the logs (the temporary directory is not removed) and returns
    /// their directory.
    pub fn keep_logs(self) -> PathBuf {
        let World { _dir, .. } = self;
        _dir.keep()
    }
}
