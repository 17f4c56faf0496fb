//! The `veto` operator CLI: cluster, token, key, edge, backup, audit and
//! certificate commands, and `top`. Human output by default, `--json` for
//! scripts. The demo and the benchmarks are `veto-bench` (crates/bench).

pub mod agent;
pub mod backup;
mod commands;
mod output;
pub mod top;

pub use output::propagation_line;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
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
    /// The audit trail: who issued, revoked and rotated what, and when;
    /// `veto audit verify` checks every node's hash chain.
    Audit(AuditArgs),
    /// Issuer policies and the signing-key rotation schedule.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Keep a workload's token in a file: issue or renew it, check it at an
    /// edge, replace the file atomically, serve /healthz and /metrics.
    Agent(agent::AgentArgs),
}

/// `veto policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Set what the `issuer` certificate NAME may issue (replaces its policy).
    SetIssuer {
        /// The issuer certificate's common name.
        name: String,
        /// A subject it may name exactly (repeatable).
        #[arg(long = "subject")]
        subjects: Vec<String>,
        /// A subject prefix it may name (repeatable), e.g. svc:ci-.
        #[arg(long = "subject-prefix")]
        subject_prefixes: Vec<String>,
        /// A scope it may grant (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Longest lifetime it may give a token, seconds.
        #[arg(long)]
        max_ttl: u64,
        /// A label key every token it issues must carry (repeatable).
        #[arg(long = "require-label")]
        required_labels: Vec<String>,
    },
    /// Remove the policy of issuer NAME (it can then do nothing).
    RemoveIssuer {
        /// The issuer certificate's common name.
        name: String,
    },
    /// List the issuer policies.
    List,
    /// Let the leader rotate signing keys by itself on this schedule.
    SetRotation {
        /// Age of the active key at which the next one signs, seconds.
        #[arg(long)]
        period: u64,
        /// Publish the next key this long before it signs (at least the
        /// longest JWKS cache of any verifier), seconds.
        #[arg(long)]
        publish_lead: u64,
        /// Activate anyway when an edge still lacks the key this long after
        /// the lead time (alerted on), seconds.
        #[arg(long, default_value_t = 300)]
        activation_timeout: u64,
    },
    /// Stop self-running rotation (keys then rotate only by hand).
    RotationOff,
}

/// `veto audit verify`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check every member's copy of the trail: each entry's hash, the chain
    /// without gaps from where retention cut it to the replicated head.
    /// Exits non-zero naming the first broken entry.
    Verify,
}

/// Arguments of `veto audit`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// verify: check the hash chain on every node.
    #[command(subcommand)]
    pub cmd: Option<AuditCmd>,
    /// Keep printing new events as they are applied (JSON lines with
    /// --json), until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Only events about this token subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events by this actor, e.g. operator:alice.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events of this action, e.g. revoked_token_used, revoke_token.
    #[arg(long)]
    pub action: Option<String>,
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
        /// server | edge | operator | client | issuer | auditor
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
    /// Issue a successor in the same family; the predecessor dies after the
    /// grace period. By jti (operator), or by presenting the token itself
    /// (--token-file: any certificate the CA signed, e.g. the holder's).
    Refresh {
        /// jti of the token to replace (or give --token-file).
        #[arg(required_unless_present = "token_file", conflicts_with = "token_file")]
        jti: Option<String>,
        /// Refresh by presenting the token, read from this file (`-`:
        /// stdin); the successor replaces nothing on disk: it is printed.
        #[arg(long)]
        token_file: Option<PathBuf>,
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
    /// Revoke every live token whose labels match a selector, e.g.
    /// `version=1.4` or `app=api,version!=2.0` (`key`, `!key` test presence).
    RevokeSelector {
        /// The selector.
        selector: String,
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
    /// How tokens are used: verifies, never-used tokens and revoked-token
    /// use attempts per owner (or subject), and the tokens holding scopes
    /// no request required (least privilege).
    Usage {
        /// Group by subject instead of owner.
        #[arg(long)]
        by_subject: bool,
        /// Least-privilege report over tokens issued at least this long ago
        /// (90s, 12h, 30d; default: all live tokens).
        #[arg(long, value_parser = parse_duration_secs)]
        window: Option<u64>,
        /// Most groups and most over-privileged tokens shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    List {
        /// Only this subject.
        #[arg(long)]
        sub: Option<String>,
        /// Only this family.
        #[arg(long)]
        family: Option<String>,
        /// Only this owner.
        #[arg(long)]
        owner: Option<String>,
        /// Only tokens whose labels match this selector (`version=1.4,app=api`).
        #[arg(long)]
        selector: Option<String>,
        /// Only tokens in this status: active, revoked, revoke-pending, expired.
        #[arg(long, value_parser = parse_status)]
        status: Option<i32>,
        /// Only tokens signed by this key id.
        #[arg(long)]
        kid: Option<String>,
        /// Only live tokens expiring within this many seconds.
        #[arg(long, default_value_t = 0)]
        expires_within: u64,
        /// Only tokens issued earlier and not verified valid for this long:
        /// seconds, or with a unit (90s, 12h, 30d).
        #[arg(long, value_parser = parse_duration_secs)]
        unused_for: Option<u64>,
        /// Only tokens never verified valid at any edge.
        #[arg(long)]
        never_used: bool,
        /// Page size (1..=1000).
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue from this page token.
        #[arg(long, default_value = "")]
        page_token: String,
    },
}

/// Seconds from `90`, `90s`, `15m`, `12h` or `30d`.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: a positive number of seconds, or with s, m, h or d"))
}

fn parse_status(s: &str) -> Result<i32, String> {
    Ok(match s {
        "active" => pb::TokenStatus::Active,
        "revoked" => pb::TokenStatus::Revoked,
        "revoke-pending" => pb::TokenStatus::RevokePending,
        "expired" => pb::TokenStatus::Expired,
        other => {
            return Err(format!(
                "{other:?}: use active, revoked, revoke-pending or expired"
            ))
        }
    } as i32)
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
    /// Who answers for the token (default: you, as your certificate's role:CN).
    #[arg(long, default_value = "")]
    pub owner: String,
    /// What the token is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// A label KEY=VALUE (repeatable), e.g. --label version=1.4.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    veto_core::labels::parse_pair(s).map_err(|e| e.to_string())
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

fn parse_member(s: &str) -> Result<pb::Member, String> {
    let (id, addr) = s.split_once('=').ok_or("expected ID=HOST:PORT")?;
    let node_id = id.parse().map_err(|_| format!("bad node id {id:?}"))?;
    Ok(pb::Member {
        node_id,
        addr: addr.to_owned(),
    })
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
    let admin = || async {
        Ok::<_, anyhow::Error>(AdminServiceClient::new(connect(&cli.addr, timeout).await?))
    };
    match cli.cmd {
        Cmd::Certs(c) => commands::certs(c, j),
        Cmd::Edges => commands::edges(&cli.addr, timeout, j).await,
        Cmd::Top { interval_ms } => {
            let addrs = cli
                .addr
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            top::run(addrs, Duration::from_millis(interval_ms.max(100))).await
        }
        Cmd::Snapshot(c) => commands::snapshot(c, &cli.addr, timeout, j).await,
        Cmd::Cluster(c @ ClusterCmd::ForceNew { .. }) => commands::force_new(c, j),
        Cmd::Cluster(c) => commands::cluster(c, admin().await?, j).await,
        Cmd::Keys(k) => commands::keys(k, admin().await?, j).await,
        Cmd::Audit(AuditArgs {
            cmd: Some(AuditCmd::Verify),
            ..
        }) => commands::audit_verify(&cli.addr, timeout, j).await,
        Cmd::Audit(a) => commands::audit(a, admin().await?, j).await,
        Cmd::Policy(p) => commands::policy(p, admin().await?, j).await,
        Cmd::Token(t) => {
            let ch = connect(&cli.addr, timeout).await?;
            commands::token(t, TokenServiceClient::new(ch), j).await
        }
        Cmd::Agent(a) => Ok(agent::run(a, &cli.addr, transport()?, timeout).await?),
    }
}
