//! Runs real `veto-server` processes on ephemeral 127.0.0.1 ports, for
//! integration tests, `veto-bench demo` and benchmarks.
//!
//! Each node gets its own data directory under one temporary directory and
//! binds port 0; it reports the bound addresses through a ready file, so
//! there are no port races. Every wait is bounded in time. Dropping a
//! [`Cluster`] kills its processes and removes its files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::{InitRequest, Member, Role, StatusRequest, StatusResponse};

/// Polls `f` every `every` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Where the `veto-server` binary is: `$VETO_SERVER_BIN`, else next to the
/// running executable (or one directory up, for test binaries in `deps/`).
pub fn server_bin() -> Result<PathBuf> {
    bin_named("veto-server", "VETO_SERVER_BIN")
}

/// Finds a workspace binary by name, honouring an env override.
pub fn bin_named(name: &str, env: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..2 {
        if let Some(d) = &dir {
            let cand = d.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    bail!(
        "cannot find the {name} binary next to {}; build it (cargo build --bins) or set {env}",
        exe.display()
    )
}

/// A lazily connecting channel to `addr` (host:port).
pub fn channel(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// One `veto-server` process.
pub struct Node {
    /// Raft node id.
    pub id: u64,
    /// gRPC address (host:port).
    pub grpc_addr: String,
    /// HTTP address (host:port).
    pub http_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file of the process (stdout and stderr).
    pub log_file: PathBuf,
    /// How test clients reach it (the operator certificate under TLS).
    pub client: veto_auth::Transport,
    child: Option<Child>,
}

impl Node {
    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// TokenService client.
    pub fn tokens(&self) -> Result<TokenServiceClient<Channel>> {
        Ok(TokenServiceClient::new(self.channel()?))
    }

    /// AdminService client.
    pub fn admin(&self) -> Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel()?))
    }

    /// A lazily connecting channel to this node as the test operator.
    pub fn channel(&self) -> Result<Channel> {
        Ok(self
            .client
            .channel_lazy(&self.grpc_addr, veto_auth::Role::Server, |ep| {
                ep.connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
            })?)
    }

    /// This node's status with the state digest, if it answers.
    pub async fn status_with_digest(&self) -> Option<StatusResponse> {
        let mut c = self.admin().ok()?;
        c.status(StatusRequest {
            include_digest: true,
        })
        .await
        .ok()
        .map(|r| r.into_inner())
    }

    /// This node's status, if it answers.
    pub async fn status(&self) -> Option<StatusResponse> {
        let mut c = self.admin().ok()?;
        c.status(StatusRequest::default())
            .await
            .ok()
            .map(|r| r.into_inner())
    }
}

/// Options for a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of voters.
    pub nodes: usize,
    /// Extra TOML appended to every node's config file.
    pub extra_config: String,
    /// Where to put data; a fresh temporary directory if None.
    pub base_dir: Option<PathBuf>,
    /// Extra environment for every server process (e.g. `VETO_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Run with TLS from this `veto certs init` directory (node N uses
    /// `server-N`, test clients `operator`); None = `--insecure`.
    pub tls_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            extra_config: String::new(),
            base_dir: None,
            env: Vec::new(),
            tls_dir: None,
        }
    }
}

/// A set of `veto-server` processes.
pub struct Cluster {
    /// The nodes, by position (node id = position + 1 for the initial ones).
    pub nodes: Vec<Node>,
    base: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    kek: String,
    extra_config: String,
    env: Vec<(String, String)>,
    tls_dir: Option<PathBuf>,
    bin: PathBuf,
}

impl Cluster {
    /// Starts `opts.nodes` servers, initialises them as one cluster and waits
    /// for a leader.
    pub async fn start(opts: ClusterOptions) -> Result<Self> {
        let (tmp, base) = match &opts.base_dir {
            Some(b) => {
                std::fs::create_dir_all(b)?;
                (None, b.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("veto-cluster-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let kek = hex_key();
        let mut c = Cluster {
            nodes: Vec::new(),
            base,
            _tmp: tmp,
            kek,
            extra_config: opts.extra_config,
            env: opts.env,
            tls_dir: opts.tls_dir,
            bin: server_bin()?,
        };
        for id in 1..=opts.nodes as u64 {
            c.spawn_new(id).await?;
        }
        let members = c
            .nodes
            .iter()
            .map(|n| Member {
                node_id: n.id,
                addr: n.grpc_addr.clone(),
            })
            .collect();
        let mut admin = c.nodes[0].admin()?;
        admin.init(InitRequest { members }).await.context("init")?;
        c.wait_leader(Duration::from_secs(20)).await?;
        Ok(c)
    }

    /// Starts `members` (node id -> gRPC address, from [`free_addr`]) on data
    /// directories that `seed(id, db_dir)` fills first (restored backups,
    /// recovered survivors). No Init: the seeded membership elects a leader.
    pub async fn start_seeded(
        members: &std::collections::BTreeMap<u64, String>,
        kek: Option<&str>,
        seed: impl Fn(u64, &Path) -> Result<()>,
    ) -> Result<Self> {
        let t = tempfile::Builder::new().prefix("veto-cluster-").tempdir()?;
        let base = t.path().to_path_buf();
        let mut c = Cluster {
            nodes: Vec::new(),
            base,
            _tmp: Some(t),
            // Signing keys are sealed with the KEK of the cluster that made them.
            kek: kek.map(str::to_string).unwrap_or_else(hex_key),
            extra_config: String::new(),
            env: Vec::new(),
            tls_dir: None,
            bin: server_bin()?,
        };
        for (id, addr) in members {
            let data_dir = c.base.join(format!("n{id}"));
            std::fs::create_dir_all(&data_dir)?;
            seed(*id, &data_dir.join("db"))?;
            let node = c.launch(*id, &data_dir, addr, "127.0.0.1:0").await?;
            c.nodes.push(node);
        }
        c.wait_leader(Duration::from_secs(20)).await?;
        Ok(c)
    }

    /// Nodes (re)started from now on use this KEK (KEK rotation).
    pub fn set_kek(&mut self, kek: &str) {
        self.kek = kek.to_string();
    }

    /// Sets (Some) or removes (None) an environment variable for nodes
    /// (re)started from now on.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// How test clients connect: the operator certificate under TLS.
    pub fn client_transport(&self) -> Result<veto_auth::Transport> {
        Ok(match &self.tls_dir {
            Some(d) => veto_auth::Transport::from_config(
                &veto_auth::TlsFiles::in_dir(d, "operator"),
                false,
            )?,
            None => veto_auth::Transport::Insecure,
        })
    }

    /// The key-encryption key every node of this cluster uses.
    pub fn kek(&self) -> &str {
        &self.kek
    }

    /// Stops a node gracefully (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self, id: u64) -> Result<()> {
        if let Some(mut c) = self.take_child(id)? {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            match tokio::time::timeout(Duration::from_secs(15), c.wait()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => {
                    c.start_kill()?;
                    bail!("node {id} did not stop within 15 s of SIGTERM");
                }
            }
        }
        Ok(())
    }

    /// Base directory of the cluster's files.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// Starts a new node process with id `id` (not yet a member).
    pub async fn spawn_new(&mut self, id: u64) -> Result<&Node> {
        let data_dir = self.base.join(format!("n{id}"));
        std::fs::create_dir_all(&data_dir)?;
        let node = self
            .launch(id, &data_dir, "127.0.0.1:0", "127.0.0.1:0")
            .await?;
        self.nodes.push(node);
        self.nodes.last().ok_or_else(|| anyhow!("no node"))
    }

    /// Writes node `id`'s configuration file next to its data directory.
    fn write_config(&self, id: u64, data_dir: &Path, grpc: &str, http: &str) -> Result<PathBuf> {
        let cfg = data_dir.with_extension("toml");
        let security = match &self.tls_dir {
            Some(d) => {
                let f = veto_auth::TlsFiles::in_dir(d, &format!("server-{id}"));
                let show = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                };
                format!(
                    "tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
                    show(&f.ca),
                    show(&f.cert),
                    show(&f.key)
                )
            }
            None => "insecure = true".to_string(),
        };
        let text = format!(
            "node_id = {id}\nlisten_addr = \"{grpc}\"\nhttp_addr = \"{http}\"\ndata_dir = \"{}\"\n{security}\n{}\n",
            data_dir.join("db").display(),
            self.extra_config
        );
        std::fs::write(&cfg, text)?;
        Ok(cfg)
    }

    async fn launch(&self, id: u64, data_dir: &Path, grpc: &str, http: &str) -> Result<Node> {
        let cfg = self.write_config(id, data_dir, grpc, http)?;
        let ready = data_dir.with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let log_file = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&cfg)
            .arg("--ready-file")
            .arg(&ready)
            .env("VETO_KEK", &self.kek)
            // Several nodes share this host: one runtime thread each avoids
            // cross-core wake-ups (measured: +30% revokes/s on 2 cores).
            .env(
                "VETO_WORKER_THREADS",
                std::env::var("VETO_WORKER_THREADS").unwrap_or_else(|_| "1".into()),
            )
            .env(
                "RUST_LOG",
                std::env::var("VETO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        let mut child = Some(child);
        let addrs = wait_ready(id, &ready, &log_file, &mut child).await?;
        let get = |k: &str| {
            addrs[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("ready file lacks {k}"))
        };
        Ok(Node {
            id,
            grpc_addr: get("grpc")?,
            http_addr: get("http")?,
            data_dir: data_dir.to_path_buf(),
            log_file,
            client: self.client_transport()?,
            child,
        })
    }

    /// The node with this id.
    pub fn node(&self, id: u64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    /// The process of node `id`, taken out of it (None if not running).
    fn take_child(&mut self, id: u64) -> Result<Option<Child>> {
        Ok(self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .child
            .take())
    }

    /// Kills a node with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        if let Some(mut c) = self.take_child(id)? {
            c.start_kill()?;
            tokio::time::timeout(Duration::from_secs(10), c.wait()).await??;
        }
        Ok(())
    }

    /// Restarts a killed node on its data directory and former ports.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))?;
        if self.nodes[i].child.is_some() {
            bail!("node {id} is running");
        }
        let (dir, grpc, http) = {
            let n = &self.nodes[i];
            (n.data_dir.clone(), n.grpc_addr.clone(), n.http_addr.clone())
        };
        let node = self.launch(id, &dir, &grpc, &http).await?;
        self.nodes[i] = node;
        Ok(())
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_leader(&self, limit: Duration) -> Result<u64> {
        eventually("a leader", limit, Duration::from_millis(50), || async {
            let mut leader = None;
            for n in self.nodes.iter().filter(|n| n.is_running()) {
                let s = n.status().await?;
                if s.leader_id == 0 {
                    return None;
                }
                if *leader.get_or_insert(s.leader_id) != s.leader_id {
                    return None;
                }
            }
            let l = leader?;
            let s = self.node(l).ok()?.status().await?;
            (s.role == Role::Leader as i32).then_some(l)
        })
        .await
    }

    /// Waits until every running node has applied at least `revision`.
    pub async fn wait_applied(&self, revision: u64, limit: Duration) -> Result<()> {
        eventually(
            "all nodes applied",
            limit,
            Duration::from_millis(20),
            || async {
                for n in self.nodes.iter().filter(|n| n.is_running()) {
                    if n.status().await?.applied_index < revision {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// A running node that is not the leader.
    pub async fn follower(&self) -> Result<&Node> {
        let leader = self.wait_leader(Duration::from_secs(20)).await?;
        self.nodes
            .iter()
            .find(|n| n.is_running() && n.id != leader)
            .ok_or_else(|| anyhow!("no running follower"))
    }
}

/// A free 127.0.0.1 port, as `host:port` (bound and released: a seeded
/// node's address must be known before it starts).
pub fn free_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

/// A minimal HTTP/1.1 GET on loopback: returns the status code and body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let r = http_request(addr, "GET", path, &[], "").await?;
    Ok((r.status, r.body))
}

/// An HTTP answer as [`http_request`] reads it.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on loopback (`Connection: close`, 5 s limits) with
/// extra `headers` and a `body` (sent with its length when not empty).
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<HttpAnswer> {
    use std::fmt::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    if !body.is_empty() {
        let _ = write!(req, "Content-Length: {}\r\n", body.len());
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A fresh random key-encryption key (64 hex characters).
pub fn new_kek() -> String {
    hex_key()
}

fn hex_key() -> String {
    let k: [u8; 32] = rand::random();
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits for a starting node's ready file; fails with its log if it exits.
async fn wait_ready(
    id: u64,
    ready: &Path,
    log_file: &Path,
    child: &mut Option<Child>,
) -> Result<serde_json::Value> {
    let addrs: serde_json::Value = eventually(
        "node ready file",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let ready = ready.to_path_buf();
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            async move {
                if exited.is_some() {
                    return Some(serde_json::Value::Null);
                }
                let t = std::fs::read_to_string(&ready).ok()?;
                serde_json::from_str(&t).ok()
            }
        },
    )
    .await?;
    if addrs.is_null() {
        let log = std::fs::read_to_string(log_file).unwrap_or_default();
        bail!("veto-server {id} exited during start:\n{log}");
    }
    Ok(addrs)
}
