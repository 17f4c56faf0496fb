//! Server configuration, layered: defaults -> TOML file -> environment
//! (`VETO_*`) -> command-line flags. [`Options::validate`] names the bad field.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use veto_core::Limits;

/// Everything a control-plane node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Non-zero node id, unique in the cluster and stable across restarts.
    pub node_id: u64,
    /// Address the gRPC server listens on (Raft, TokenService, AdminService, FeedService).
    pub listen_addr: SocketAddr,
    /// Address other nodes and clients use to reach this node's gRPC server;
    /// defaults to `listen_addr`.
    pub advertise_addr: Option<String>,
    /// Address of the HTTP server (`/healthz`, `/readyz`, `/metrics`, JWKS).
    pub http_addr: SocketAddr,
    /// Data directory (RocksDB).
    pub data_dir: PathBuf,
    /// File holding the key-encryption key (64 hex characters or base64 of 32 bytes).
    pub kek_file: Option<PathBuf>,
    /// The key-encryption key itself (prefer `kek_file` or the `VETO_KEK` env).
    #[serde(skip_serializing)]
    pub kek: Option<String>,
    /// Files holding earlier KEKs, used only to open keys sealed before a
    /// KEK rotation until `veto keys rewrap` has re-sealed them.
    pub previous_kek_files: Vec<PathBuf>,
    /// Earlier KEKs themselves (env `VETO_PREVIOUS_KEK`, comma-separated).
    #[serde(skip_serializing)]
    pub previous_keks: Vec<String>,
    /// Input limits and token lifetimes.
    pub limits: Limits,
    /// Raft timings and log compaction.
    pub raft: RaftOptions,
    /// Seconds between expiry sweeps proposed by the leader.
    pub sweep_interval_seconds: u64,
    /// Clock-skew allowance: a revocation is kept this long past its token's exp.
    pub sweep_grace_seconds: u64,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// TLS material: the CA, this node's certificate (role `server`) and key.
    pub tls: veto_auth::TlsFiles,
    /// Serve plaintext without TLS or authorisation (local demos only).
    pub insecure: bool,
    /// Writes per second each client may send (0 = no limit).
    pub write_rate_per_second: u32,
    /// Burst of writes above that rate.
    pub write_burst: u32,
    /// Issue tokens in the scanner form `<prefix>_<jws>_<checksum>`
    /// (`veto_core::scan`; docs/operations.md, "Leaked tokens") under this
    /// prefix; unset (the default) issues plain JWS, as JWT libraries and
    /// JWKS verifiers expect. Verifiers accept both forms either way.
    pub token_prefix: Option<veto_core::scan::Prefix>,
    /// Leak reports from GitHub's secret scanning (`POST /v1/leaks/github`).
    pub leak_reports: LeakOptions,
    /// How long this node keeps its copy of the audit trail.
    pub audit: AuditOptions,
    /// How often the usage its edges reported is folded into the
    /// replicated state (one `RecordUsage` entry per 5,000 tokens), ms.
    pub usage_flush_interval_ms: u64,
}

/// Retention of the audit trail on this node: the oldest events go once
/// they are older than `max_age_seconds` or the trail is larger than
/// `max_bytes`, whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditOptions {
    /// Keep events this many seconds (0 = forever). Default 400 days.
    pub max_age_seconds: u64,
    /// Keep at most this many bytes of events (0 = no limit). Default 1 GiB.
    pub max_bytes: u64,
    /// How often retention runs, milliseconds.
    pub prune_interval_ms: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_age_seconds: 400 * 86_400,
            max_bytes: 1 << 30,
            prune_interval_ms: 60_000,
        }
    }
}

impl AuditOptions {
    /// The limits as the store takes them.
    pub fn retention(&self) -> veto_store::audit::Retention {
        veto_store::audit::Retention {
            max_age_seconds: (self.max_age_seconds > 0).then_some(self.max_age_seconds),
            max_bytes: (self.max_bytes > 0).then_some(self.max_bytes),
        }
    }
}

/// The leak-report endpoint (`crate::leak`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakOptions {
    /// GitHub's secret-scanning public keys: key identifier (as GitHub
    /// sends it in `Github-Public-Key-Identifier`) -> PEM file of the
    /// ECDSA P-256 public key. Empty: every report is refused (401).
    pub github_keys: std::collections::BTreeMap<String, PathBuf>,
    /// Largest report body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most tokens in one report (413 beyond; GitHub sends small batches).
    pub max_tokens: usize,
    /// How long a report waits for every edge to refuse its tokens, ms.
    pub wait_edges_ms: u64,
}

impl Default for LeakOptions {
    fn default() -> Self {
        Self {
            github_keys: Default::default(),
            max_body_bytes: 1024 * 1024,
            max_tokens: 1000,
            wait_edges_ms: 5_000,
        }
    }
}

/// Raft timing and compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftOptions {
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the latest snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Replicate over one pipelined `AppendStream` per follower (true) or
    /// one `AppendEntries` at a time (false: for A/B benchmarks, or a way
    /// back should replication misbehave). Env `VETO_RAFT_PIPELINE=0|1`.
    pub pipeline: bool,
    /// Purge the log only once at least this many entries can go.
    pub purge_batch_size: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs_since_last: 100_000,
            max_in_snapshot_log_to_keep: 1_000,
            pipeline: true,
            purge_batch_size: 256,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_id: 0,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7400)),
            advertise_addr: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7480)),
            data_dir: PathBuf::from("./veto-data"),
            kek_file: None,
            kek: None,
            previous_kek_files: Vec::new(),
            previous_keks: Vec::new(),
            limits: Limits::default(),
            raft: RaftOptions::default(),
            sweep_interval_seconds: 60,
            sweep_grace_seconds: 300,
            max_message_bytes: 4 * 1024 * 1024,
            tls: veto_auth::TlsFiles::default(),
            insecure: false,
            write_rate_per_second: 5_000,
            write_burst: 10_000,
            token_prefix: None,
            leak_reports: LeakOptions::default(),
            audit: AuditOptions::default(),
            usage_flush_interval_ms: 10_000,
        }
    }
}

pub use veto_runtime::config::ConfigError;
use veto_runtime::config::{overlay, read_text, read_toml};

/// `veto-server` command line. Every flag also reads a `VETO_*` variable.
#[derive(Debug, Parser, Default)]
#[command(name = "veto-server", version, about = "veto control-plane node")]
pub struct Flags {
    /// TOML config file; flags and environment override it.
    #[arg(long, env = "VETO_CONFIG")]
    pub config: Option<PathBuf>,
    /// Node id (non-zero, stable).
    #[arg(long, env = "VETO_NODE_ID")]
    pub node_id: Option<u64>,
    /// gRPC listen address, e.g. 127.0.0.1:7400 (port 0 picks a free port).
    #[arg(long, env = "VETO_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// gRPC address advertised to peers and clients.
    #[arg(long, env = "VETO_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// HTTP listen address.
    #[arg(long, env = "VETO_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "VETO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// File with the key-encryption key.
    #[arg(long, env = "VETO_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Runtime worker threads: 0 = one per CPU; 1 = a single-threaded runtime
    /// (best when several nodes share a small host, e.g. a local cluster).
    #[arg(long, env = "VETO_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// A file with an earlier KEK (repeatable), to open keys sealed before a
    /// KEK rotation until `veto keys rewrap` re-seals them.
    #[arg(long)]
    pub previous_kek_file: Vec<PathBuf>,
    /// Write the bound gRPC and HTTP addresses as JSON to this file once listening
    /// (for tools that start servers on port 0).
    #[arg(long, env = "VETO_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// Export traces over OTLP/gRPC to this endpoint (e.g.
    /// http://127.0.0.1:4317); off unless this or OTEL_EXPORTER_OTLP_ENDPOINT
    /// is set.
    #[arg(long, env = "VETO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// TLS files, or plaintext.
    #[command(flatten)]
    pub tls: veto_runtime::config::TlsFlags,
    /// Writes per second each client may send (0 = no limit).
    #[arg(long, env = "VETO_WRITE_RATE")]
    pub write_rate_per_second: Option<u32>,
    /// Issue tokens in the scanner form under this prefix
    /// (`[a-z][a-z0-9]{1,15}`, e.g. `veto`); see `token_prefix`.
    #[arg(long, env = "VETO_TOKEN_PREFIX")]
    pub token_prefix: Option<veto_core::scan::Prefix>,
    /// Pipelined Raft replication (`raft.pipeline`): true or false.
    #[arg(long, env = "VETO_RAFT_PIPELINE", value_parser = clap::builder::BoolishValueParser::new())]
    pub raft_pipeline: Option<bool>,
}

impl Options {
    /// Layers defaults, the TOML file, the environment and the flags.
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let mut o: Options = read_toml(flags.config.as_deref())?;
        overlay(&mut o.node_id, &flags.node_id);
        overlay(&mut o.listen_addr, &flags.listen_addr);
        if let Some(v) = &flags.advertise_addr {
            o.advertise_addr = Some(v.clone());
        }
        overlay(&mut o.http_addr, &flags.http_addr);
        overlay(&mut o.data_dir, &flags.data_dir);
        if let Some(v) = &flags.kek_file {
            o.kek_file = Some(v.clone());
        }
        if let Ok(v) = std::env::var("VETO_KEK") {
            o.kek = Some(v);
        }
        if !flags.previous_kek_file.is_empty() {
            o.previous_kek_files = flags.previous_kek_file.clone();
        }
        flags.tls.overlay(&mut o.tls, &mut o.insecure);
        overlay(&mut o.write_rate_per_second, &flags.write_rate_per_second);
        if let Some(v) = flags.raft_pipeline {
            o.raft.pipeline = v;
        }
        if let Some(p) = &flags.token_prefix {
            o.token_prefix = Some(p.clone());
        }
        if let Ok(v) = std::env::var("VETO_PREVIOUS_KEK") {
            o.previous_keks = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        o.validate()?;
        Ok(o)
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be set to a non-zero id (--node-id or VETO_NODE_ID)".into());
        }
        if self.kek.is_none() && self.kek_file.is_none() {
            return bad(
                "a key-encryption key is required: set kek_file (--kek-file) or VETO_KEK".into(),
            );
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return bad("raft.heartbeat_interval_ms must be greater than 0".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return bad(
                "raft.election_timeout_min_ms must exceed raft.heartbeat_interval_ms".into(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into(),
            );
        }
        if r.snapshot_logs_since_last == 0 {
            return bad("raft.snapshot_logs_since_last must be greater than 0".into());
        }
        if r.purge_batch_size == 0 {
            return bad("raft.purge_batch_size must be greater than 0".into());
        }
        if self.sweep_interval_seconds == 0 {
            return bad("sweep_interval_seconds must be greater than 0".into());
        }
        if !(100..=3_600_000).contains(&self.usage_flush_interval_ms) {
            return bad("usage_flush_interval_ms must be between 100 and 3600000".into());
        }
        if self.audit.prune_interval_ms < 10 {
            return bad("audit.prune_interval_ms must be at least 10".into());
        }
        if let Err(e) = self.transport_choice() {
            return bad(e);
        }
        if !(64 * 1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return bad("max_message_bytes must be between 65536 and 67108864".into());
        }
        self.leak_reports.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    fn transport_choice(&self) -> Result<(), String> {
        let t = &self.tls;
        let any = t.ca.is_some() || t.cert.is_some() || t.key.is_some();
        let all = t.ca.is_some() && t.cert.is_some() && t.key.is_some();
        match (any, all, self.insecure) {
            (true, _, true) => Err("tls and insecure are both set; choose one".into()),
            (true, false, false) => {
                Err("tls needs ca, cert and key (--tls-ca, --tls-cert, --tls-key)".into())
            }
            (false, _, false) => Err("no transport security: set tls (--tls-ca, --tls-cert, \
                 --tls-key; `veto certs init` makes a development set) or insecure (--insecure)"
                .into()),
            _ => Ok(()),
        }
    }

    /// Loads the TLS material (or plaintext when `insecure`).
    pub fn transport(&self) -> Result<veto_auth::Transport, ConfigError> {
        veto_auth::Transport::from_config(&self.tls, self.insecure)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The address peers and clients use for this node.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| bound.to_string())
    }

    /// Reads the key-encryption key from the env value or the file.
    pub fn load_kek(&self) -> Result<veto_core::Kek, ConfigError> {
        let text = match (&self.kek, &self.kek_file) {
            (Some(k), _) => k.clone(),
            (None, Some(p)) => read_text(p)?,
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "no key-encryption key configured".into(),
                ))
            }
        };
        veto_core::Kek::parse(&text).map_err(|e| ConfigError::Invalid(format!("kek: {e}")))
    }

    /// The earlier KEKs (files and `VETO_PREVIOUS_KEK`), oldest last.
    pub fn load_previous_keks(&self) -> Result<Vec<veto_core::Kek>, ConfigError> {
        let mut out = Vec::new();
        for p in &self.previous_kek_files {
            let text = read_text(p)?;
            out.push(veto_core::Kek::parse(&text).map_err(|e| {
                ConfigError::Invalid(format!("previous_kek_files {}: {e}", p.display()))
            })?);
        }
        for (i, t) in self.previous_keks.iter().enumerate() {
            out.push(veto_core::Kek::parse(t).map_err(|e| {
                ConfigError::Invalid(format!("VETO_PREVIOUS_KEK item {}: {e}", i + 1))
            })?);
        }
        Ok(out)
    }
}

impl LeakOptions {
    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for id in self.github_keys.keys() {
            // It becomes part of the audit actor `leak-report:<id>`.
            let ok = (1..=100).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+/=-".contains(&b));
            if !ok {
                return Err(format!(
                    "leak_reports.github_keys: key id {id:?} must be 1 to 100 characters of [A-Za-z0-9._+/=-]"
                ));
            }
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err("leak_reports.max_body_bytes must be between 1024 and 16777216".into());
        }
        if !(1..=10_000).contains(&self.max_tokens) {
            return Err("leak_reports.max_tokens must be between 1 and 10000".into());
        }
        if self.wait_edges_ms > 60_000 {
            return Err("leak_reports.wait_edges_ms must be at most 60000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        let mut o = Options {
            node_id: 1,
            kek: Some("00".repeat(32)),
            insecure: true,
            ..Options::default()
        };
        assert!(o.validate().is_ok());
        o.raft.election_timeout_max_ms = 100;
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("raft.election_timeout_max_ms"), "{e}");
        let o = Options {
            node_id: 0,
            ..Options::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("node_id"));
    }

    #[test]
    fn toml_round_trip_and_unknown_fields_rejected() {
        let o = Options {
            node_id: 3,
            kek_file: Some("/k".into()),
            ..Options::default()
        };
        let text = toml::to_string(&o).unwrap();
        let back: Options = toml::from_str(&text).unwrap();
        assert_eq!(back, o);
        assert!(toml::from_str::<Options>("node_idd = 3").is_err());
    }

    #[test]
    fn token_prefix_and_leak_keys_are_checked() {
        let o: Options = toml::from_str(
            "node_id = 1\ninsecure = true\nkek = \"x\"\ntoken_prefix = \"veto\"\n\
             [leak_reports]\ngithub_keys = { \"90a4211f\" = \"/k.pem\" }\n",
        )
        .unwrap();
        assert_eq!(o.token_prefix.as_ref().map(|p| p.as_str()), Some("veto"));
        assert!(o.validate().is_ok());
        let back: Options = toml::from_str(
            &toml::to_string(&Options {
                kek: None,
                ..o.clone()
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(back.token_prefix, o.token_prefix);
        assert_eq!(back.leak_reports, o.leak_reports);
        for bad in ["Veto", "v", "ve_to", "a2345678901234567"] {
            let e = toml::from_str::<Options>(&format!("token_prefix = \"{bad}\"")).unwrap_err();
            assert!(e.to_string().contains("token prefix"), "{e}");
        }
        let mut o = o;
        o.leak_reports
            .github_keys
            .insert("bad id".into(), "/k.pem".into());
        let e = o.validate().unwrap_err().to_string();
        assert!(e.contains("leak_reports.github_keys"), "{e}");
    }
}
