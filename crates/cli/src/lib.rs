//! The `veto` operator CLI: cluster, token, key, edge, backup, audit and
//! certificate commands, and `top`. Human output by default, `--json` for
//! scripts. The demo and the benchmarks are `veto-bench` (crates/bench).

pub mod backup;
pub mod top;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;

/// veto: API tokens that die everywhere, fast, observably.
#[derive(Debug, Parser)]
#[command(name = "veto", version)]
pub struct Cli {
    /// Control-plane gRPC address(es), comma-separated; the first that answers is used.
    #[arg(
        long,
        global = true,
        env = "VETO_ADDR",
        default_value = "127.0.0.1:7400"
    )]
    pub addr: String,
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Per-call timeout in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    pub timeout: u64,
    /// CA certificate (PEM) that signs the servers' certificates.
    #[arg(long, global = true, env = "VETO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Your client certificate (PEM; role `operator` for writes and admin calls).
    #[arg(long, global = true, env = "VETO_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Your private key (PEM).
    #[arg(long, global = true, env = "VETO_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Talk plaintext to servers started with --insecure.
    #[arg(long, global = true, env = "VETO_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Issue, refresh, revoke and inspect tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// List edges (every node given in --addr is asked) with their lag.
    Edges,
    /// Backups: save, inspect, restore.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Live terminal view of members, edges, propagation and verify rates
    /// (q to quit).
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Certificates: a development CA and every process's certificate.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// The audit trail: who issued, revoked and rotated what, and when.
    Audit(AuditArgs),
}

/// Arguments of `veto audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this token subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events by this actor, e.g. operator:alice.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events at or after this unix time.
    #[arg(long, default_value_t = 0)]
    pub since: i64,
    /// Only events at or before this unix time.
    #[arg(long, default_value_t = 0)]
    pub until: i64,
    /// Events per page (1..=1000).
    #[arg(long, default_value_t = 100)]
    pub page_size: u32,
    /// Start after this page token (from a previous --json page).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow next_page_token to the end instead of printing one page.
    #[arg(long)]
    pub all: bool,
}

/// `veto certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create DIR with a new CA (ca.pem, ca.key) and certificates for
    /// server-1..N, edge-1..N, operators and verify clients.
    Init {
        /// Output directory (must not hold a CA yet).
        #[arg(long)]
        dir: PathBuf,
        /// Server certificates to create.
        #[arg(long, default_value_t = 3)]
        servers: u32,
        /// Edge certificates to create.
        #[arg(long, default_value_t = 3)]
        edges: u32,
        /// Operator certificate names (repeatable).
        #[arg(long = "operator", default_values_t = ["operator".to_string()])]
        operators: Vec<String>,
        /// Verify-client certificate names (repeatable).
        #[arg(long = "client", default_values_t = ["client".to_string()])]
        clients: Vec<String>,
        /// Extra DNS names or IPs for server and edge certificates
        /// (localhost, 127.0.0.1 and ::1 are always included).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity of each certificate, in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue one more certificate with the CA in DIR (ca.pem, ca.key).
    Issue {
        /// Directory holding the CA; the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// server | edge | operator | client
        #[arg(long)]
        role: String,
        /// Name (certificate CN; an edge's name is its edge id).
        #[arg(long)]
        name: String,
        /// DNS names or IPs it serves as (servers and edges).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

/// `veto cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Initialise a new cluster. Members as ID=HOST:PORT; none means the addressed node alone.
    Init {
        /// Initial voters, e.g. 1=10.0.0.1:7400.
        #[arg(long = "member", value_parser = parse_member)]
        members: Vec<pb::Member>,
    },
    /// Show the addressed node's view of the cluster.
    Status,
    /// Add a learner.
    AddLearner {
        /// Node id.
        id: u64,
        /// Its gRPC address (host:port).
        #[arg(value_name = "ADDR")]
        member_addr: String,
        /// Return at once instead of waiting for it to catch up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Promote a learner to voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove a voter or learner.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Move leadership to a voter.
    TransferLeader {
        /// Node id.
        id: u64,
    },
    /// QUORUM LOSS ONLY: build a new cluster from one surviving node's data
    /// directory (offline; the survivor must be stopped). Everything in its
    /// snapshot and log is kept; the lost members are forgotten. Start
    /// veto-server on --data-dir afterwards, then add new members as learners.
    ForceNew {
        /// The stopped survivor's data directory (read only).
        #[arg(long)]
        survivor_data_dir: PathBuf,
        /// The survivor's node id.
        #[arg(long)]
        survivor_node_id: u64,
        /// The new directory, this node and the new cluster's voters
        /// (usually just this node).
        #[command(flatten)]
        seed: SeedArgs,
        /// Required: confirms the other members are gone for good.
        #[arg(long)]
        i_have_lost_quorum: bool,
    },
}

/// `veto snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent, checksummed backup of the state machine to FILE.
    Save {
        /// Output file.
        file: PathBuf,
    },
    /// Check a backup file and print its header.
    Inspect {
        /// Backup file.
        file: PathBuf,
    },
    /// Seed a new, empty data directory from a backup (offline; run once per
    /// node of the new cluster with the same --member list, then start them).
    Restore {
        /// Backup file.
        file: PathBuf,
        /// The new directory, this node and every voter of the new cluster.
        #[command(flatten)]
        seed: SeedArgs,
    },
}

/// Where and as whom an offline command seeds a new data directory.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// Data directory to create (must be empty or absent).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Node id that will run on --data-dir.
    #[arg(long)]
    pub node_id: u64,
    /// The new cluster's voters, ID=HOST:PORT.
    #[arg(long = "member", value_parser = parse_member, required = true)]
    pub members: Vec<pb::Member>,
}

/// `veto token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Issue a token; prints the token string once.
    Issue(IssueArgs),
    /// Issue a successor in the same family; the predecessor dies after the grace period.
    Refresh {
        /// jti of the token to replace.
        jti: String,
        /// Lifetime of the successor (seconds, 0 = default).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
        /// Seconds the predecessor keeps working.
        #[arg(long, default_value_t = 0)]
        grace: u64,
    },
    /// Revoke one token, by jti or by presenting the token itself.
    Revoke {
        /// jti of the token (or give --token-file).
        #[arg(required_unless_present = "token_file", conflicts_with = "token_file")]
        jti: Option<String>,
        /// Revoke by presenting the token, read from this file (`-`: stdin):
        /// works even when the cluster holds no record of it. The token is
        /// never taken on the command line, where it would leak.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Reason for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Revoke every token of a subject issued up to now (or --before).
    RevokeSubject {
        /// The subject.
        sub: String,
        /// Unix seconds in a past second; default (0): every token issued
        /// before this revoke, exactly (by revision).
        #[arg(long, default_value_t = 0)]
        before: i64,
        /// Reason for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Revoke a whole rotation family.
    RevokeFamily {
        /// Family id.
        family: String,
        /// Reason for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show one token's record and status.
    Get {
        /// jti of the token.
        jti: String,
    },
    /// List tokens.
    List {
        /// Only this subject.
        #[arg(long)]
        sub: Option<String>,
        /// Only this family.
        #[arg(long)]
        family: Option<String>,
        /// Page size (1..=1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from this page token.
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

/// Waiting for the edges after a revoke.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Wait until every edge of every member has applied the revoke; print
    /// the measured propagation and any edge behind or unknown.
    #[arg(long)]
    pub wait_edges: bool,
    /// How long to wait for the edges, ms (at most 60000).
    #[arg(long, default_value_t = 10_000)]
    pub wait_timeout_ms: u64,
}

impl WaitArgs {
    fn wait_for(self) -> i32 {
        if self.wait_edges {
            pb::WaitFor::AllEdges as i32
        } else {
            pb::WaitFor::Unspecified as i32
        }
    }
}

/// Arguments of `veto token issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Subject.
    #[arg(long)]
    pub sub: String,
    /// Scope (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Audience.
    #[arg(long)]
    pub aud: Option<String>,
    /// Lifetime in seconds (0 = the cluster default).
    #[arg(long, default_value_t = 0)]
    pub ttl: u64,
}

/// `veto keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// List signing keys and their stages.
    List,
    /// Move a key through publish -> activate -> retire (or revoke it).
    Rotate {
        /// publish | activate | retire | revoke
        stage: String,
        /// Key id (not for publish).
        kid: Option<String>,
        /// Activate without waiting for edges / retire despite unexpired tokens.
        #[arg(long)]
        force: bool,
        /// Reason for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
        /// revoke: wait for the edges (see `veto token revoke`).
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// KEK rotation: re-seal every private key with the leader's current KEK
    /// (the leader must also hold the old one via --previous-kek-file).
    Rewrap,
}

fn certs_cmd(c: CertsCmd, j: bool) -> Result<()> {
    use veto_auth::certs;
    let written = match c {
        CertsCmd::Init {
            dir,
            servers,
            edges,
            operators,
            clients,
            hosts,
            days,
        } => {
            let mut spec = certs::InitSpec {
                servers,
                edges,
                operators,
                clients,
                days,
                ..certs::InitSpec::default()
            };
            for h in hosts {
                if !spec.hosts.contains(&h) {
                    spec.hosts.push(h);
                }
            }
            certs::init_dir(&dir, &spec)?
        }
        CertsCmd::Issue {
            dir,
            role,
            name,
            hosts,
            days,
        } => {
            let role = veto_auth::Role::parse(&role).with_context(|| {
                format!("unknown role {role:?}: server, edge, operator or client")
            })?;
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .with_context(|| format!("cannot read {}", dir.join(f).display()))
            };
            let ca = certs::Ca::load(&read("ca.pem")?, &read("ca.key")?)?;
            let leaf = ca.issue(&certs::LeafSpec::new(&name, role, &hosts, days))?;
            certs::write_leaf(&dir, &name, &leaf)?
        }
    };
    if j {
        println!("{}", json!({ "written": written }));
    } else {
        for w in &written {
            println!("wrote {}", w.display());
        }
    }
    Ok(())
}

fn parse_member(s: &str) -> Result<pb::Member, String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=HOST:PORT")?;
    let node_id = id.parse().map_err(|_| format!("bad node id {id:?}"))?;
    Ok(pb::Member {
        node_id,
        addr: addr.to_owned(),
    })
}

async fn snapshot_cmd(c: SnapshotCmd, addr: &str, timeout: Duration, j: bool) -> Result<()> {
    let show = |h: &backup::Header, what: &str| {
        if j {
            println!("{}", serde_json::to_string(h).unwrap_or_default());
        } else {
            println!(
                "{what}: revision {}, {} bytes, sha256 {}, taken {} from {}",
                h.revision, h.bytes, h.sha256, h.created_unix, h.from
            );
        }
    };
    match c {
        SnapshotCmd::Save { file } => {
            let h = backup::save(addr, &file, timeout).await?;
            show(&h, &format!("saved {}", file.display()));
        }
        SnapshotCmd::Inspect { file } => {
            let (h, state) = backup::load(&file)?;
            show(&h, &format!("{} is intact", file.display()));
            if !j {
                println!(
                    "  {} tokens, {} revocations",
                    state.token_count(),
                    state.revocation_count()
                );
            }
        }
        SnapshotCmd::Restore {
            file,
            seed:
                SeedArgs {
                    data_dir,
                    node_id,
                    members,
                },
        } => {
            let h = backup::restore(&file, &data_dir, node_id, &members)?;
            show(&h, &format!("restored into {}", data_dir.display()));
        }
    }
    Ok(())
}

static TRANSPORT: std::sync::OnceLock<std::result::Result<veto_auth::Transport, String>> =
    std::sync::OnceLock::new();

/// Chooses how this process connects (from --tls-* or --insecure); the
/// first call wins.
pub fn set_transport(files: &veto_auth::TlsFiles, insecure: bool) {
    let _ = TRANSPORT
        .set(veto_auth::Transport::from_config(files, insecure).map_err(|e| e.to_string()));
}

fn transport() -> Result<&'static veto_auth::Transport> {
    match TRANSPORT.get() {
        Some(Ok(t)) => Ok(t),
        Some(Err(e)) => bail!("{e}"),
        None => bail!("no transport chosen: give --tls-ca/--tls-cert/--tls-key or --insecure"),
    }
}

/// A lazily connecting channel to `addr` with the chosen transport.
pub fn lazy_channel(addr: &str) -> Result<Channel> {
    Ok(
        transport()?.channel_lazy(addr, veto_auth::Role::Server, |ep| {
            ep.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
        })?,
    )
}

/// Connects to the first address that accepts a connection.
pub async fn connect(addrs: &str, timeout: Duration) -> Result<Channel> {
    let t = transport()?;
    let mut last = None;
    for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let connected = t
            .channel(a, veto_auth::Role::Server, |ep| {
                ep.connect_timeout(Duration::from_secs(2)).timeout(timeout)
            })
            .await;
        match connected {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(anyhow::anyhow!("{a}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no address given")))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn role(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Leader) => "leader",
        Ok(pb::Role::Follower) => "follower",
        Ok(pb::Role::Candidate) => "candidate",
        Ok(pb::Role::Learner) => "learner",
        Ok(pb::Role::Shutdown) => "shutdown",
        _ => "unknown",
    }
}

fn token_status(s: i32) -> &'static str {
    match pb::TokenStatus::try_from(s) {
        Ok(pb::TokenStatus::Active) => "active",
        Ok(pb::TokenStatus::Revoked) => "revoked",
        Ok(pb::TokenStatus::RevokePending) => "revoke-pending",
        Ok(pb::TokenStatus::Expired) => "expired",
        _ => "unknown",
    }
}

fn key_state(s: i32) -> &'static str {
    match pb::KeyState::try_from(s) {
        Ok(pb::KeyState::Published) => "published",
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Retiring) => "retiring",
        Ok(pb::KeyState::Retired) => "retired",
        Ok(pb::KeyState::Revoked) => "revoked",
        _ => "unknown",
    }
}

fn record_json(r: &pb::TokenRecord) -> serde_json::Value {
    json!({
        "jti": r.jti, "sub": r.sub, "scopes": r.scopes, "aud": r.aud, "iat": r.iat, "nbf": r.nbf,
        "exp": r.exp, "family": r.family, "kid": r.kid, "issued_revision": r.issued_revision,
        "successor": r.successor,
    })
}

fn info_json(t: &pb::TokenInfo) -> serde_json::Value {
    json!({
        "record": t.record.as_ref().map(record_json),
        "status": token_status(t.status),
        "revocation": t.revocation.as_ref().map(|r| json!({
            "kind": r.kind, "revision": r.revision, "effective_at_unix": r.effective_at_unix, "reason": r.reason,
        })),
        "revision": t.revision,
    })
}

fn membership_json(m: &Option<pb::MembershipInfo>) -> serde_json::Value {
    let m = m.clone().unwrap_or_default();
    let list = |v: &[pb::Member]| {
        v.iter()
            .map(|m| json!({"node_id": m.node_id, "addr": m.addr}))
            .collect::<Vec<_>>()
    };
    json!({ "voters": list(&m.voters), "learners": list(&m.learners) })
}

fn print_membership(json_out: bool, r: &pb::MembershipResponse) {
    if json_out {
        println!(
            "{}",
            json!({"revision": r.revision, "membership": membership_json(&r.membership)})
        );
        return;
    }
    let m = r.membership.clone().unwrap_or_default();
    println!("membership at revision {}", r.revision);
    for v in &m.voters {
        println!("  voter   {:>4}  {}", v.node_id, v.addr);
    }
    for l in &m.learners {
        println!("  learner {:>4}  {}", l.node_id, l.addr);
    }
}

fn revoke_json(r: &pb::RevokeResponse) -> serde_json::Value {
    json!({"revision": r.revision, "already_revoked": r.already_revoked, "commit_ms": r.commit_ms,
           "propagation_ms": r.propagation_ms, "edges_confirmed": r.edges_confirmed,
           "edges_behind": r.edges_behind, "edges_unknown": r.edges_unknown})
}

fn print_revoke(json_out: bool, r: &pb::RevokeResponse, waited: bool) {
    if json_out {
        println!("{}", revoke_json(r));
        return;
    }
    if r.already_revoked {
        println!("already revoked at revision {}", r.revision);
    } else {
        println!(
            "revoked at revision {} (committed in {:.2} ms)",
            r.revision, r.commit_ms
        );
    }
    if waited {
        println!("{}", propagation_line(r));
    }
}

/// What a wait for the edges measured, in one line.
pub fn propagation_line(r: &pb::RevokeResponse) -> String {
    match r.propagation_ms {
        Some(p) => format!(
            "applied by all {} edges {p:.2} ms after commit",
            r.edges_confirmed
        ),
        None => {
            let mut parts = vec![format!(
                "NOT confirmed everywhere: {} edges applied it",
                r.edges_confirmed
            )];
            if !r.edges_behind.is_empty() {
                parts.push(format!("behind: {}", r.edges_behind.join(", ")));
            }
            if !r.edges_unknown.is_empty() {
                parts.push(format!(
                    "unknown (member did not answer): {}",
                    r.edges_unknown.join(", ")
                ));
            }
            if r.edges_confirmed == 0 && r.edges_behind.is_empty() && r.edges_unknown.is_empty() {
                parts.push("no edge is connected".into());
            }
            parts.join("; ")
        }
    }
}

/// Reads a token to present from a file or stdin (`-`), trimmed.
fn read_token(path: &std::path::Path) -> Result<String> {
    let raw = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the token from stdin")?;
        s
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the token from {}", path.display()))?
    };
    let t = raw.trim();
    if t.is_empty() {
        bail!("no token in {}", path.display());
    }
    Ok(t.to_owned())
}

/// Runs one CLI invocation.
pub async fn run(cli: Cli) -> Result<()> {
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let j = cli.json;
    set_transport(
        &veto_auth::TlsFiles {
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
        },
        cli.insecure,
    );
    match cli.cmd {
        Cmd::Certs(c) => return certs_cmd(c, j),
        Cmd::Edges => {}
        Cmd::Top { interval_ms } => {
            let addrs = cli
                .addr
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            return top::run(addrs, Duration::from_millis(interval_ms.max(100))).await;
        }
        Cmd::Snapshot(c) => return snapshot_cmd(c, &cli.addr, timeout, j).await,
        Cmd::Cluster(ClusterCmd::ForceNew {
            survivor_data_dir,
            survivor_node_id,
            seed:
                SeedArgs {
                    data_dir,
                    node_id,
                    members,
                },
            i_have_lost_quorum,
        }) => {
            if !i_have_lost_quorum {
                anyhow::bail!(
                    "force-new discards the other members and every write only they held; \
                     run it only when a majority is gone for good, with --i-have-lost-quorum"
                );
            }
            eprintln!(
                "WARNING: building a new cluster from {} alone; members not listed are forgotten",
                survivor_data_dir.display()
            );
            let rev = backup::force_new(
                &survivor_data_dir,
                survivor_node_id,
                &data_dir,
                node_id,
                &members,
            )?;
            if j {
                println!("{}", json!({"revision": rev, "data_dir": data_dir}));
            } else {
                println!(
                    "seeded {} at revision {rev} with {} member(s); start veto-server --node-id {node_id} on it",
                    data_dir.display(),
                    members.len()
                );
            }
            return Ok(());
        }
        _ => {}
    }
    let ch = connect(&cli.addr, timeout).await?;
    let mut admin = AdminServiceClient::new(ch.clone());
    let mut tokens = TokenServiceClient::new(ch);
    match cli.cmd {
        Cmd::Cluster(c) => match c {
            ClusterCmd::Init { members } => {
                let r = admin
                    .init(pb::InitRequest { members })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!("{}", json!({"leader_id": r.leader_id}));
                } else {
                    println!("cluster initialised; leader is node {}", r.leader_id);
                }
            }
            ClusterCmd::Status => {
                let s = admin
                    .status(pb::StatusRequest::default())
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        json!({
                            "node_id": s.node_id, "role": role(s.role), "term": s.term, "leader_id": s.leader_id,
                            "leader_addr": s.leader_addr, "commit_index": s.commit_index,
                            "applied_index": s.applied_index, "last_log_index": s.last_log_index,
                            "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
                            "membership": membership_json(&s.membership), "tokens": s.tokens,
                            "revocations": s.revocations, "active_kid": s.active_kid,
                        })
                    );
                } else {
                    println!("node {} ({}), term {}", s.node_id, role(s.role), s.term);
                    println!("leader      {} {}", s.leader_id, s.leader_addr);
                    println!("commit      {}", s.commit_index);
                    println!("applied     {}", s.applied_index);
                    println!(
                        "last log    {}  (snapshot {}, purged {})",
                        s.last_log_index, s.snapshot_index, s.purged_index
                    );
                    println!("tokens      {}  revocations {}", s.tokens, s.revocations);
                    println!(
                        "active key  {}",
                        if s.active_kid.is_empty() {
                            "-"
                        } else {
                            &s.active_kid
                        }
                    );
                    let m = s.membership.unwrap_or_default();
                    for v in &m.voters {
                        println!("  voter   {:>4}  {}", v.node_id, v.addr);
                    }
                    for l in &m.learners {
                        println!("  learner {:>4}  {}", l.node_id, l.addr);
                    }
                }
            }
            ClusterCmd::AddLearner {
                id,
                member_addr: addr,
                no_wait,
            } => {
                let r = admin
                    .add_learner(pb::AddLearnerRequest {
                        member: Some(pb::Member { node_id: id, addr }),
                        blocking: !no_wait,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_membership(j, &r);
            }
            ClusterCmd::Promote { id } => {
                let r = admin
                    .promote(pb::PromoteRequest { node_id: id })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_membership(j, &r);
            }
            ClusterCmd::Remove { id } => {
                let r = admin
                    .remove(pb::RemoveRequest { node_id: id })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_membership(j, &r);
            }
            ClusterCmd::ForceNew { .. } => {}
            ClusterCmd::TransferLeader { id } => {
                let r = admin
                    .transfer_leader(pb::TransferLeaderRequest { to_node_id: id })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!("{}", json!({"leader_id": r.leader_id}));
                } else {
                    println!("leader is now node {}", r.leader_id);
                }
            }
        },
        Cmd::Token(t) => match t {
            TokenCmd::Issue(a) => {
                let r = tokens
                    .issue(pb::IssueRequest {
                        sub: a.sub,
                        scopes: a.scopes,
                        aud: a.aud,
                        ttl_seconds: a.ttl,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let rec = r.record.clone().unwrap_or_default();
                if j {
                    println!(
                        "{}",
                        json!({"token": r.token, "record": record_json(&rec), "revision": r.revision})
                    );
                } else {
                    println!("{}", r.token);
                    eprintln!(
                        "jti {}  sub {}  exp {}  kid {}  revision {}",
                        rec.jti, rec.sub, rec.exp, rec.kid, r.revision
                    );
                }
            }
            TokenCmd::Refresh { jti, ttl, grace } => {
                let r = tokens
                    .refresh(pb::RefreshRequest {
                        jti,
                        ttl_seconds: ttl,
                        grace_seconds: grace,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let s = r.successor.unwrap_or_default();
                let rec = s.record.clone().unwrap_or_default();
                if j {
                    println!(
                        "{}",
                        json!({"token": s.token, "record": record_json(&rec), "revision": s.revision,
                               "predecessor_revoked_at_unix": r.predecessor_revoked_at_unix})
                    );
                } else {
                    println!("{}", s.token);
                    eprintln!(
                        "jti {}  family {}  revision {}  predecessor refused from {}",
                        rec.jti, rec.family, s.revision, r.predecessor_revoked_at_unix
                    );
                }
            }
            TokenCmd::Revoke {
                jti,
                token_file,
                reason,
                wait,
            } => {
                let token = token_file.as_deref().map(read_token).transpose()?;
                let r = tokens
                    .revoke(pb::RevokeRequest {
                        jti: jti.unwrap_or_default(),
                        reason,
                        wait_for: wait.wait_for(),
                        wait_timeout_ms: wait.wait_timeout_ms,
                        token: token.unwrap_or_default(),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_revoke(j, &r, wait.wait_edges);
            }
            TokenCmd::RevokeSubject {
                sub,
                before,
                reason,
                wait,
            } => {
                let r = tokens
                    .revoke_subject(pb::RevokeSubjectRequest {
                        sub,
                        before_unix: before,
                        reason,
                        wait_for: wait.wait_for(),
                        wait_timeout_ms: wait.wait_timeout_ms,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_revoke(j, &r, wait.wait_edges);
            }
            TokenCmd::RevokeFamily {
                family,
                reason,
                wait,
            } => {
                let r = tokens
                    .revoke_family(pb::RevokeFamilyRequest {
                        family,
                        reason,
                        wait_for: wait.wait_for(),
                        wait_timeout_ms: wait.wait_timeout_ms,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_revoke(j, &r, wait.wait_edges);
            }
            TokenCmd::Get { jti } => {
                let r = tokens
                    .get(pb::GetTokenRequest { jti })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!("{}", info_json(&r));
                } else {
                    print_info(&r);
                }
            }
            TokenCmd::List {
                sub,
                family,
                page_size,
                page_token,
            } => {
                let r = tokens
                    .list(pb::ListTokensRequest {
                        sub,
                        family,
                        page_size,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        json!({"tokens": r.tokens.iter().map(info_json).collect::<Vec<_>>(),
                               "next_page_token": r.next_page_token, "revision": r.revision})
                    );
                } else {
                    println!(
                        "{:<32}  {:<14}  {:<20}  {:>10}",
                        "jti", "status", "sub", "exp"
                    );
                    for t in &r.tokens {
                        let rec = t.record.clone().unwrap_or_default();
                        println!(
                            "{:<32}  {:<14}  {:<20}  {:>10}",
                            rec.jti,
                            token_status(t.status),
                            rec.sub,
                            rec.exp
                        );
                    }
                    if !r.next_page_token.is_empty() {
                        println!("more: --page-token {}", r.next_page_token);
                    }
                }
            }
        },
        Cmd::Keys(k) => match k {
            KeysCmd::Rewrap => {
                let r = admin
                    .rewrap_keys(pb::RewrapKeysRequest {})
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j {
                    println!(
                        "{}",
                        json!({"rewrapped": r.rewrapped, "kek_fingerprint": r.kek_fingerprint, "revision": r.revision})
                    );
                } else if r.rewrapped.is_empty() {
                    println!("every key is already sealed with KEK {}", r.kek_fingerprint);
                } else {
                    println!(
                        "re-sealed {} key(s) with KEK {} (revision {}): {}",
                        r.rewrapped.len(),
                        r.kek_fingerprint,
                        r.revision,
                        r.rewrapped.join(", ")
                    );
                }
            }
            KeysCmd::List => {
                let r = admin
                    .list_keys(pb::ListKeysRequest {})
                    .await
                    .map_err(status_err)?
                    .into_inner();
                print_keys(j, &r.keys, r.revision);
            }
            KeysCmd::Rotate {
                stage,
                kid,
                force,
                reason,
                wait,
            } => {
                let stage = match stage.as_str() {
                    "publish" => pb::KeyStage::Publish,
                    "activate" => pb::KeyStage::Activate,
                    "retire" => pb::KeyStage::Retire,
                    "revoke" => pb::KeyStage::Revoke,
                    other => {
                        bail!("unknown stage {other:?}: use publish, activate, retire or revoke")
                    }
                };
                if wait.wait_edges && stage != pb::KeyStage::Revoke {
                    bail!("--wait-edges applies to the revoke stage only (activate always waits for the edges unless --force)");
                }
                let r = admin
                    .rotate_signing_key(pb::RotateSigningKeyRequest {
                        stage: stage as i32,
                        kid: kid.unwrap_or_default(),
                        force,
                        wait_timeout_ms: if stage == pb::KeyStage::Revoke {
                            wait.wait_timeout_ms
                        } else {
                            0
                        },
                        reason,
                        wait_for: wait.wait_for(),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if j && wait.wait_edges {
                    if let Some(e) = &r.edges {
                        println!("{}", revoke_json(e));
                    }
                } else if !j {
                    println!("key {} at revision {}", r.kid, r.revision);
                    if let (true, Some(e)) = (wait.wait_edges, &r.edges) {
                        println!("{}", propagation_line(e));
                    }
                }
                print_keys(j, &r.keys, r.revision);
            }
        },
        Cmd::Audit(a) => {
            let mut token = a.page_token.clone();
            loop {
                let r = admin
                    .audit(pb::AuditRequest {
                        subject: a.subject.clone().unwrap_or_default(),
                        actor: a.actor.clone().unwrap_or_default(),
                        since_unix: a.since,
                        until_unix: a.until,
                        page_size: a.page_size,
                        page_token: token.clone(),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for e in &r.events {
                    if j {
                        println!(
                            "{}",
                            json!({"revision": e.revision, "at_unix": e.at_unix, "actor": e.actor,
                                "action": e.action, "subject": e.subject, "target": e.target,
                                "reason": e.reason})
                        );
                    } else {
                        println!(
                            "{:>8}  {:>10}  {:<24} {:<15} {:<20} {}{}",
                            e.revision,
                            e.at_unix,
                            e.actor,
                            e.action,
                            e.subject,
                            e.target,
                            if e.reason.is_empty() {
                                String::new()
                            } else {
                                format!("  ({})", e.reason)
                            }
                        );
                    }
                }
                token = r.next_page_token;
                if token.is_empty() || !a.all {
                    if !token.is_empty() {
                        if j {
                            println!("{}", json!({ "next_page_token": token }));
                        } else {
                            println!("more: --page-token {token}");
                        }
                    }
                    break;
                }
            }
        }
        Cmd::Edges => {
            let mut all = Vec::new();
            for a in cli.addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                let Ok(ch) = connect(a, timeout).await else {
                    continue;
                };
                if let Ok(r) = AdminServiceClient::new(ch)
                    .edges(pb::EdgesRequest::default())
                    .await
                {
                    all.extend(r.into_inner().edges);
                }
            }
            all.sort_by(|a, b| {
                (a.edge_id.as_str(), !a.connected).cmp(&(b.edge_id.as_str(), !b.connected))
            });
            if j {
                let v: Vec<_> = all
                    .iter()
                    .map(|e| json!({"edge_id": e.edge_id, "node_id": e.node_id, "connected": e.connected,
                                     "applied_revision": e.applied_revision, "lag_revisions": e.lag_revisions,
                                     "lag_ms": e.lag_ms, "fresh_age_ms": e.fresh_age_ms, "ack_age_ms": e.ack_age_ms}))
                    .collect();
                println!("{}", json!({ "edges": v }));
            } else {
                println!(
                    "{:<16} {:>5} {:>9} {:>10} {:>8} {:>9} {:>10}",
                    "edge", "node", "connected", "applied", "lag rev", "lag ms", "fresh age"
                );
                for e in &all {
                    println!(
                        "{:<16} {:>5} {:>9} {:>10} {:>8} {:>9.1} {:>10}",
                        e.edge_id,
                        e.node_id,
                        e.connected,
                        e.applied_revision,
                        e.lag_revisions,
                        e.lag_ms,
                        if e.fresh_age_ms < 0.0 {
                            "-".to_string()
                        } else {
                            format!("{:.0} ms", e.fresh_age_ms)
                        }
                    );
                }
            }
        }
        Cmd::Top { .. } | Cmd::Snapshot(_) | Cmd::Certs(_) => {}
    }
    Ok(())
}

fn print_info(t: &pb::TokenInfo) {
    let rec = t.record.clone().unwrap_or_default();
    println!("jti        {}", rec.jti);
    println!("status     {}", token_status(t.status));
    println!("sub        {}", rec.sub);
    println!("scopes     {}", rec.scopes.join(" "));
    if let Some(a) = &rec.aud {
        println!("aud        {a}");
    }
    println!("iat/exp    {} / {}", rec.iat, rec.exp);
    println!("family     {}", rec.family);
    println!("kid        {}", rec.kid);
    println!("issued at  revision {}", rec.issued_revision);
    if let Some(s) = &rec.successor {
        println!("successor  {s}");
    }
    if let Some(r) = &t.revocation {
        println!(
            "revoked    by {} at revision {}, from {} ({})",
            r.kind, r.revision, r.effective_at_unix, r.reason
        );
    }
}

fn print_keys(j: bool, keys: &[pb::KeyInfo], revision: u64) {
    if j {
        let ks: Vec<_> = keys
            .iter()
            .map(|k| json!({"kid": k.kid, "state": key_state(k.state), "public_key": k.public_key,
                            "published_revision": k.published_revision, "max_token_exp": k.max_token_exp}))
            .collect();
        println!("{}", json!({"keys": ks, "revision": revision}));
        return;
    }
    println!(
        "{:<32}  {:<10}  {:>9}  {:>12}",
        "kid", "state", "published", "max exp"
    );
    for k in keys {
        println!(
            "{:<32}  {:<10}  {:>9}  {:>12}",
            k.kid,
            key_state(k.state),
            k.published_revision,
            k.max_token_exp
        );
    }
}
