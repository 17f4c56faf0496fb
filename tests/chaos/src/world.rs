//! The system under test: `veto-server` and `veto-edge` processes, each on
//! its own host of a [`Net`], started, killed (SIGKILL), paused and
//! restarted by the harness.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use veto_proto as pb;
use veto_testkit::eventually;

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
        }
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
    /// Log file (appended across restarts).
    pub log: PathBuf,
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
        .args(&p.args)
        .arg("--ready-file")
        .arg(&ready)
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // `ip netns exec` and `setpriv` exec the program, so this pid is the
    // server's or edge's own and SIGKILL reaches it.
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
    Ok(())
}

impl World {
    /// Starts the servers, initialises them as one cluster, then starts the
    /// edges and waits until every edge is fresh.
    pub async fn start(opts: WorldOptions) -> Result<Self> {
        let server_bin = veto_testkit::server_bin()?;
        let edge_bin = veto_testkit::bin_named("veto-edge", "VETO_EDGE_BIN")?;
        let dir = tempfile::Builder::new().prefix("veto-chaos-").tempdir()?;
        let mut net = Net::new()?;
        let kek = veto_testkit::new_kek();
        let mut servers = Vec::new();
        for i in 0..opts.servers {
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
            servers.push(Proc {
                kind: Kind::Server,
                index: i,
                host: i,
                grpc: format!("{}:{GRPC_PORT}", host.ip),
                log: data.with_extension("log"),
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
        let server_list: Vec<String> = servers.iter().map(|s| s.grpc.clone()).collect();
        let mut edges = Vec::new();
        for i in 0..opts.edges {
            let host = net.add_host(&format!("e{i}"))?;
            let mut env = vec![("RUST_LOG".to_string(), "info".to_string())];
            if opts.broken_edges.contains(&i) {
                env.push((
                    "VETO_TEST_ONLY_BOUND_MS".into(),
                    opts.broken_bound.as_millis().to_string(),
                ));
            }
            edges.push(Proc {
                kind: Kind::Edge,
                index: i,
                host: opts.servers + i,
                grpc: format!("{}:{GRPC_PORT}", host.ip),
                log: dir.path().join(format!("e{i}.log")),
                args: vec![
                    edge_bin.display().to_string(),
                    "--edge-id".into(),
                    format!("e{i}"),
                    "--servers".into(),
                    server_list.join(","),
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
            server_channels,
            edge_channels,
            _dir: dir,
        };
        for i in 0..w.servers.len() {
            w.start_server(i).await?;
        }
        let members = w
            .servers
            .iter()
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
        for i in 0..w.edges.len() {
            w.start_edge(i).await?;
        }
        w.wait_edges_fresh(Duration::from_secs(30)).await?;
        Ok(w)
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
            let mut req = tonic::Request::new(pb::EdgesRequest {});
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
