//! `veto-edge` configuration, layered like the server's: defaults (from
//! [`Options::default`], the one place they live) -> TOML file
//! (`--config`) -> environment (`VETO_*`) -> command-line flags.
//! [`Config::options`] checks the result and names the bad field;
//! `veto-edge --dump-config` prints it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};
use veto_feed::Policy;

use crate::Options;

/// Everything the `veto-edge` binary can be told, as TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stable edge id (under TLS, the CN of its certificate).
    pub edge_id: String,
    /// Control-plane gRPC addresses.
    pub servers: Vec<String>,
    /// VerifierService (and gRPC health) listen address.
    pub listen_addr: SocketAddr,
    /// HTTP listen address (`/healthz`, `/metrics`).
    pub http_addr: SocketAddr,
    /// Propagation bound B, ms.
    pub bound_ms: u64,
    /// Probe interval H, ms.
    pub probe_interval_ms: u64,
    /// Answer (marked stale) instead of failing closed outside the bound.
    pub fail_open: bool,
    /// Seconds a token's nbf/iat may lie in this edge's future.
    pub clock_leeway_secs: u64,
    /// Seconds past exp a token is still accepted.
    pub exp_leeway_secs: u64,
    /// Warn when this edge's clock differs from the leader's by more, ms.
    pub clock_offset_warn_ms: u64,
    /// Verified signatures remembered.
    pub sig_cache_entries: usize,
    /// Longest token accepted, bytes.
    pub max_token_bytes: usize,
    /// Most items in one VerifyBatch.
    pub max_batch_items: usize,
    /// Largest snapshot accepted from a server, bytes.
    pub max_snapshot_bytes: usize,
    /// OTLP/gRPC trace endpoint (off when unset and
    /// OTEL_EXPORTER_OTLP_ENDPOINT is unset).
    pub otlp_endpoint: Option<String>,
    /// TLS material: the CA, this edge's certificate (role `edge`) and key.
    pub tls: veto_auth::TlsFiles,
    /// Plaintext, no client authentication (local demos and tests only).
    pub insecure: bool,
    /// The gateway hooks: token header and scheme, identity headers and
    /// per-route requirements (`[gateway]`, `[[gateway.routes]]`).
    pub gateway: crate::gateway::Gateway,
    /// Distinct tokens whose usage is tracked between two reports (0: off).
    pub usage_max_tokens: usize,
    /// How often usage is reported to the server, ms.
    pub usage_report_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let o = Options::default();
        Self {
            edge_id: String::new(),
            servers: Vec::new(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7500)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7580)),
            bound_ms: o.bound_ms,
            probe_interval_ms: o.probe_interval_ms,
            fail_open: o.policy == Policy::FailOpen,
            clock_leeway_secs: o.leeway.nbf_seconds,
            exp_leeway_secs: o.leeway.exp_seconds,
            clock_offset_warn_ms: o.clock_offset_warn_ms,
            sig_cache_entries: o.sig_cache_entries,
            max_token_bytes: o.max_token_bytes,
            max_batch_items: o.max_batch_items,
            max_snapshot_bytes: o.max_snapshot_bytes,
            otlp_endpoint: None,
            tls: veto_auth::TlsFiles::default(),
            insecure: false,
            gateway: o.gateway,
            usage_max_tokens: o.usage_max_tokens,
            usage_report_interval_ms: o.usage_report_interval_ms,
        }
    }
}

pub use veto_runtime::config::ConfigError;
use veto_runtime::config::{overlay as set, read_toml};

/// `veto-edge` command line. Every setting flag also reads a `VETO_*`
/// variable; both override the TOML file.
#[derive(Debug, Parser, Default)]
#[command(name = "veto-edge", version, about = "veto edge verifier node")]
pub struct Flags {
    /// TOML config file (keys as `--dump-config` prints them).
    #[arg(long, env = "VETO_EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub dump_config: bool,
    /// Write the bound addresses as JSON to this file once listening.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Stable edge id.
    #[arg(long, env = "VETO_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Control-plane gRPC addresses, comma-separated.
    #[arg(long, env = "VETO_SERVERS", value_delimiter = ',')]
    pub servers: Option<Vec<String>>,
    /// VerifierService listen address [default 127.0.0.1:7500].
    #[arg(long, env = "VETO_EDGE_LISTEN_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// HTTP listen address (/healthz, /metrics) [default 127.0.0.1:7580].
    #[arg(long, env = "VETO_EDGE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Propagation bound B in milliseconds [default 2000].
    #[arg(long, env = "VETO_BOUND_MS")]
    pub bound_ms: Option<u64>,
    /// Probe interval H in milliseconds [default 200].
    #[arg(long, env = "VETO_PROBE_INTERVAL_MS")]
    pub probe_interval_ms: Option<u64>,
    /// Answer (marked stale) instead of failing closed outside the bound.
    #[arg(long, env = "VETO_FAIL_OPEN", value_parser = clap::builder::BoolishValueParser::new())]
    pub fail_open: bool,
    /// Seconds a token's nbf/iat may lie in this edge's future (its clock
    /// behind the issuer's) and still be accepted [default 60].
    #[arg(long, env = "VETO_CLOCK_LEEWAY_SECS")]
    pub clock_leeway_secs: Option<u64>,
    /// Seconds past exp a token is still accepted (this edge's clock ahead
    /// of the issuer's); a token the cluster swept as expired is refused
    /// whatever this says [default 0].
    #[arg(long, env = "VETO_EXP_LEEWAY_SECS")]
    pub exp_leeway_secs: Option<u64>,
    /// Warn in the log and /healthz when this edge's clock differs from
    /// the leader's by more than this many milliseconds [default 10000].
    #[arg(long, env = "VETO_CLOCK_OFFSET_WARN_MS")]
    pub clock_offset_warn_ms: Option<u64>,
    /// Export traces over OTLP/gRPC to this endpoint; off unless this or
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set.
    #[arg(long, env = "VETO_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// TLS files, or plaintext.
    #[command(flatten)]
    pub tls: veto_runtime::config::TlsFlags,
}

impl Config {
    /// Layers the defaults, the TOML file, the environment and the flags
    /// (clap has already put each `VETO_*` variable under its flag).
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let mut c: Config = read_toml(flags.config.as_deref())?;
        set(&mut c.edge_id, &flags.edge_id);
        set(&mut c.servers, &flags.servers);
        set(&mut c.listen_addr, &flags.listen_addr);
        set(&mut c.http_addr, &flags.http_addr);
        set(&mut c.bound_ms, &flags.bound_ms);
        set(&mut c.probe_interval_ms, &flags.probe_interval_ms);
        set(&mut c.clock_leeway_secs, &flags.clock_leeway_secs);
        set(&mut c.exp_leeway_secs, &flags.exp_leeway_secs);
        set(&mut c.clock_offset_warn_ms, &flags.clock_offset_warn_ms);
        if flags.otlp_endpoint.is_some() {
            c.otlp_endpoint = flags.otlp_endpoint.clone();
        }
        flags.tls.overlay(&mut c.tls, &mut c.insecure);
        c.fail_open |= flags.fail_open;
        Ok(c)
    }

    /// The library options, with the TLS material loaded; the error names
    /// the bad field.
    pub fn options(&self) -> Result<Options, ConfigError> {
        if self.edge_id.is_empty() {
            return Err(ConfigError::Invalid(
                "edge_id is required (--edge-id or VETO_EDGE_ID)".into(),
            ));
        }
        let transport = veto_auth::Transport::from_config(&self.tls, self.insecure)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let o = Options {
            edge_id: self.edge_id.clone(),
            servers: self.servers.clone(),
            bound_ms: self.bound_ms,
            probe_interval_ms: self.probe_interval_ms,
            policy: if self.fail_open {
                Policy::FailOpen
            } else {
                Policy::FailClosed
            },
            sig_cache_entries: self.sig_cache_entries,
            max_token_bytes: self.max_token_bytes,
            max_batch_items: self.max_batch_items,
            max_snapshot_bytes: self.max_snapshot_bytes,
            transport,
            leeway: veto_core::token::Leeway {
                nbf_seconds: self.clock_leeway_secs,
                exp_seconds: self.exp_leeway_secs,
            },
            clock_offset_warn_ms: self.clock_offset_warn_ms,
            gateway: self.gateway.clone(),
            usage_max_tokens: self.usage_max_tokens,
            usage_report_interval_ms: self.usage_report_interval_ms,
            ..Options::default()
        };
        o.validate().map_err(ConfigError::Invalid)?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_then_flags_and_names_bad_fields() {
        let dir = std::env::temp_dir().join(format!("veto-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge.toml");
        std::fs::write(
            &file,
            "edge_id = \"e1\"\nservers = [\"a:1\"]\nbound_ms = 3000\ninsecure = true\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(file.clone()),
            bound_ms: Some(4000),
            ..Flags::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.edge_id, "e1");
        assert_eq!(c.bound_ms, 4000, "a flag beats the file");
        assert_eq!(c.probe_interval_ms, Options::default().probe_interval_ms);
        let o = c.options().unwrap();
        assert_eq!(o.bound_ms, 4000);
        // the printed configuration reads back as itself
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        std::fs::write(&file, "edge_idd = \"x\"\n").unwrap();
        assert!(matches!(
            Config::load(&flags),
            Err(ConfigError::Parse { .. })
        ));
        let bad = Config {
            probe_interval_ms: 5000,
            ..c
        };
        let e = bad.options().unwrap_err().to_string();
        assert!(e.contains("bound_ms"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
