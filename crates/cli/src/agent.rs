//! `veto agent`: keeps a workload's token in a file, renewed without hands.
//!
//! The agent holds at most one token in `--out`. When the file holds a
//! live token it renews it by presenting it (`TokenService.RefreshPresented`,
//! any CA-signed certificate) once `--refresh-at` of its lifetime has
//! passed; when it holds none it starts from `--bootstrap-token-file`
//! (renewed the same way) or issues one (`TokenService.Issue`, from
//! `--subject` and friends: a certificate allowed to issue). A new token
//! is first written to a side file (`.<name>.next`, mode 0600, fsynced)
//! so that a crash cannot lose a successor whose predecessor is already
//! rotated (presenting it again would revoke the whole family: refresh
//! reuse). It replaces `--out` (a rename in the same directory, then an
//! fsync of the directory) only once an `--edge` answers it valid; until
//! then the old file stays and the check is retried. The predecessor keeps
//! working for `--grace` seconds, so readers of the old file are not cut
//! off.
//!
//! Errors back off exponentially with jitter up to `--backoff-max-ms`; every
//! `--server` is tried in turn (any node forwards writes to the leader).
//! `--listen` serves `/healthz` and `/metrics` over plain HTTP. The token
//! string is never logged or exposed: logs and answers name its jti.

use std::collections::HashSet;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use rand::Rng as _;
use serde_json::json;
use tokio::sync::watch;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::token_service_client::TokenServiceClient;
use veto_proto::verifier_service_client::VerifierServiceClient;
use veto_telemetry as tm;

/// Longest token read from a file (the cluster's default token size limit).
const MAX_TOKEN_BYTES: usize = 4096;
/// The longest the agent sleeps before looking at its file again.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Arguments of `veto agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// File to keep the token in (replaced atomically, mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Control-plane gRPC address (repeatable or comma-separated; default:
    /// --addr). Each is tried in turn; any node forwards to the leader.
    #[arg(long = "server", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Edge gRPC address (repeatable or comma-separated): a new token
    /// replaces the file only once an edge answers it valid (and none
    /// refuses it). Without one the check is skipped.
    #[arg(long = "edge", value_delimiter = ',')]
    pub edges: Vec<String>,
    /// Issue a token for this subject when the file holds none (needs a
    /// certificate allowed to Issue).
    #[arg(long)]
    pub subject: Option<String>,
    /// Scope of issued tokens (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Audience of issued tokens.
    #[arg(long)]
    pub aud: Option<String>,
    /// Lifetime of issued tokens in seconds (0: the cluster default).
    /// Renewals keep the token's own lifetime, or this when shorter.
    #[arg(long, default_value_t = 0)]
    pub ttl: u64,
    /// Owner of issued tokens (default: the agent's certificate).
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Description of issued tokens.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Label KEY=VALUE of issued tokens (repeatable).
    #[arg(long = "label", value_parser = crate::parse_label)]
    pub labels: Vec<(String, String)>,
    /// A token provisioned by someone else to start from when the file
    /// holds none: the agent renews it by presenting it (which retires it
    /// after --grace) and never presents it again.
    #[arg(long)]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Renew once this fraction of the token's lifetime has passed (0 < f < 1).
    #[arg(long, default_value_t = 0.5)]
    pub refresh_at: f64,
    /// Seconds the replaced token keeps working after a renewal.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
    /// Serve /healthz and /metrics (plain HTTP) on this address, e.g.
    /// 127.0.0.1:9464.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Obtain or renew the token if it is missing, expired or due, write
    /// it, and exit (CI pipelines).
    #[arg(long)]
    pub once: bool,
    /// With --once: give up (exit 1) after this many failed attempts.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// First retry delay after a failure, ms; doubles with each failure in a
    /// row, with jitter.
    #[arg(long, default_value_t = 500)]
    pub backoff_min_ms: u64,
    /// Longest retry delay, ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_max_ms: u64,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A flag is out of range or missing.
    #[error("{0}")]
    Config(String),
    /// The health and metrics listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The --listen address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] tm::Error),
    /// The signal handlers could not be installed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    /// `--once` ran out of attempts.
    #[error("gave up after {attempts} failed attempts; last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// A token string: never printed (`Debug` redacts it).
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A token and the claims the agent schedules by.
#[derive(Debug, Clone)]
struct Held {
    token: Secret,
    jti: String,
    fam: String,
    iat: i64,
    exp: i64,
    aud: Option<String>,
}

impl Held {
    /// Reads a token (surrounding whitespace ignored). The error names the
    /// failed check, never the input.
    fn parse(text: &str) -> Result<Held, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty".into());
        }
        let p = veto_core::token::parse(t, MAX_TOKEN_BYTES).map_err(|e| e.to_string())?;
        Ok(Held {
            token: Secret(t.to_owned()),
            jti: p.claims.jti.to_string(),
            fam: p.claims.fam.to_string(),
            iat: p.claims.iat,
            exp: p.claims.exp,
            aud: p.claims.aud.clone(),
        })
    }

    fn lifetime(&self) -> i64 {
        (self.exp - self.iat).max(1)
    }

    /// When (unix ms) the agent renews it.
    fn refresh_due_ms(&self, refresh_at: f64) -> i64 {
        self.iat * 1000 + (self.lifetime() as f64 * 1000.0 * refresh_at) as i64
    }

    /// From when (unix ms) `/healthz` calls it overdue: halfway from the
    /// planned renewal to expiry.
    fn overdue_from_ms(&self, refresh_at: f64) -> i64 {
        let due = self.refresh_due_ms(refresh_at);
        due + (self.exp * 1000 - due) / 2
    }

    fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.exp * 1000
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The token in `path`: `None` when the file is absent or holds no
/// readable token (logged, without its content).
fn read_token_file(path: &Path) -> std::io::Result<Option<Held>> {
    match std::fs::read_to_string(path) {
        Ok(s) => match Held::parse(&s) {
            Ok(h) => Ok(Some(h)),
            Err(why) => {
                if !s.trim().is_empty() {
                    tracing::warn!(file = %path.display(), %why, "the file holds no usable token");
                }
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `contents` so that a reader sees the old file or
/// the whole new one: a new file (mode 0600) in the same directory,
/// written and fsynced, renamed over `path`, then the directory fsynced.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = write_then_rename(&tmp, path, contents).and_then(|()| sync_dir(&dir));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn write_then_rename(tmp: &Path, path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)
}

/// The side file a new token waits in until an edge accepted it.
fn pending_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(out).join(format!(".{name}.next"))
}

/// Exponential backoff with jitter: the n-th delay in a row is drawn from
/// [d/2, d] with d = min(max, min * 2^n).
#[derive(Debug)]
struct Backoff {
    min_ms: u64,
    max_ms: u64,
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let d = self
            .min_ms
            .saturating_mul(1u64 << self.failures.min(30))
            .min(self.max_ms)
            .max(1);
        self.failures = self.failures.saturating_add(1);
        let half = d / 2;
        Duration::from_millis(half + rand::thread_rng().gen_range(0..=d - half))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One failed attempt; `reason()` labels `veto_agent_failures_total`.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no server could be reached: {0}")]
    ServerUnreachable(String),
    #[error("{0}")]
    ServerError(String),
    #[error("{what} refused: {code:?}: {message}")]
    Refused {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("no edge could check the new token: {0}")]
    EdgeUnreachable(String),
    #[error("edge {addr} answered {outcome} for the new token: {reason}")]
    EdgeRejected {
        addr: String,
        outcome: &'static str,
        reason: String,
    },
    #[error("{0}")]
    File(String),
    #[error("{0}")]
    NoSource(String),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::ServerUnreachable(_) => "server_unreachable",
            Failure::ServerError(_) => "server_error",
            Failure::Refused { .. } => "refused",
            Failure::EdgeUnreachable(_) => "edge_unreachable",
            Failure::EdgeRejected { .. } => "edge_rejected",
            Failure::File(_) => "file",
            Failure::NoSource(_) => "no_source",
        }
    }
}

/// A server's answer that another server (or a retry) would give as well.
fn definitive(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        InvalidArgument
            | NotFound
            | AlreadyExists
            | PermissionDenied
            | Unauthenticated
            | FailedPrecondition
            | OutOfRange
            | Unimplemented
            | ResourceExhausted
    )
}

/// How a new token was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Issue,
    Refresh,
}

/// A new token not yet in `--out`.
#[derive(Debug)]
struct Pending {
    held: Held,
    /// The revision it was applied at (0 when unknown): edges are asked
    /// to have applied it before answering.
    revision: u64,
    how: How,
    /// Whether the side file holds it.
    on_disk: bool,
    /// When (unix seconds) the token it replaces stops working, if known.
    predecessor_dies_at: Option<i64>,
}

/// What one step did.
enum Progress {
    /// A new token is in the file.
    Wrote,
    /// The file's token is current; look again after this long.
    NotDue(Duration),
}

struct Agent {
    args: AgentArgs,
    servers: Vec<String>,
    next_server: usize,
    edges: Vec<(String, Channel)>,
    transport: &'static veto_auth::Transport,
    timeout: Duration,
    pending_file: PathBuf,
    pending: Option<Pending>,
    /// Tokens never to present again: rotated already (a second refresh
    /// would revoke their family) or refused for good.
    dead: HashSet<String>,
    /// The idempotency key of the renewal in progress, by predecessor jti:
    /// a retry after a lost answer sends the same key and gets the same
    /// successor back instead of tripping refresh-reuse detection. Random,
    /// never derived from the token (a thief holding the token must not be
    /// able to compute it).
    renew_key: Option<(String, String)>,
}

impl Agent {
    /// One attempt: check and promote a waiting token, or renew or obtain
    /// one when due.
    async fn step(&mut self) -> Result<Progress, Failure> {
        if self.pending.is_some() {
            return self.finish_pending().await;
        }
        let now = now_ms();
        let current = read_token_file(&self.args.out)
            .map_err(|e| Failure::File(format!("reading {}: {e}", self.args.out.display())))?;
        match current {
            Some(h) if !h.expired(now) && !self.dead.contains(&h.jti) => {
                let due = h.refresh_due_ms(self.args.refresh_at);
                if now < due {
                    let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
                    return Ok(Progress::NotDue(wait));
                }
                tracing::info!(jti = %h.jti, exp = h.exp, "renewing the token");
                self.renew(&h).await?;
            }
            current => {
                if let Some(b) = self.bootstrap(current.as_ref())? {
                    tracing::info!(jti = %b.jti, exp = b.exp, "starting from the bootstrap token");
                    self.renew(&b).await?;
                } else if self.args.subject.is_some() {
                    self.issue().await?;
                } else {
                    return Err(Failure::NoSource(format!(
                        "{} holds no live token and there is neither a usable \
                         --bootstrap-token-file token nor a --subject to issue for",
                        self.args.out.display()
                    )));
                }
            }
        }
        self.finish_pending().await
    }

    /// The bootstrap token, when given, live, and not yet consumed.
    fn bootstrap(&self, current: Option<&Held>) -> Result<Option<Held>, Failure> {
        let Some(path) = &self.args.bootstrap_token_file else {
            return Ok(None);
        };
        let b = read_token_file(path)
            .map_err(|e| Failure::File(format!("reading {}: {e}", path.display())))?;
        let Some(b) = b else {
            return Ok(None);
        };
        if b.expired(now_ms()) || self.dead.contains(&b.jti) {
            return Ok(None);
        }
        // The file already holds (a successor of) it: consumed.
        if current.is_some_and(|c| c.fam == b.fam && c.iat >= b.iat) {
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// Renews `h` by presenting it; the successor becomes pending.
    async fn renew(&mut self, h: &Held) -> Result<(), Failure> {
        let ttl = match self.args.ttl {
            0 => 0,
            t => t.min(u64::try_from(h.lifetime()).unwrap_or(1)),
        };
        let key = match &self.renew_key {
            Some((jti, k)) if *jti == h.jti => k.clone(),
            _ => {
                let k = format!("{:032x}", rand::random::<u128>());
                self.renew_key = Some((h.jti.clone(), k.clone()));
                k
            }
        };
        let req = pb::RefreshPresentedRequest {
            token: h.token.0.clone(),
            ttl_seconds: ttl,
            grace_seconds: self.args.grace,
            idempotency_key: key,
        };
        let timeout = self.timeout;
        let answer = self
            .call("RefreshPresented", |mut c| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(timeout);
                async move { c.refresh_presented(r).await }
            })
            .await;
        let r = match answer {
            Ok(r) => r,
            Err(f) => {
                if let Failure::Refused { code, .. } = &f {
                    // Revoked, expired, rotated elsewhere or unknown: it
                    // cannot be renewed; start afresh next time.
                    if matches!(
                        code,
                        tonic::Code::FailedPrecondition
                            | tonic::Code::NotFound
                            | tonic::Code::Unauthenticated
                    ) {
                        tracing::error!(jti = %h.jti, error = %f, "the token cannot be renewed");
                        self.dead.insert(h.jti.clone());
                    }
                }
                return Err(f);
            }
        };
        // Rotated: presenting it again would revoke the whole family.
        self.dead.insert(h.jti.clone());
        let successor = r.successor.ok_or_else(|| {
            Failure::ServerError("RefreshPresented answered without a successor".into())
        })?;
        tracing::info!(
            predecessor = %h.jti,
            predecessor_revoked_at = r.predecessor_revoked_at_unix,
            revision = successor.revision,
            "renewed"
        );
        self.stage(successor, How::Refresh, Some(r.predecessor_revoked_at_unix))
    }

    /// Issues a new token from the flags; it becomes pending.
    async fn issue(&mut self) -> Result<(), Failure> {
        let a = &self.args;
        let req = pb::IssueRequest {
            sub: a.subject.clone().unwrap_or_default(),
            scopes: a.scopes.clone(),
            aud: a.aud.clone(),
            ttl_seconds: a.ttl,
            owner: a.owner.clone(),
            description: a.description.clone(),
            labels: a.labels.iter().cloned().collect(),
        };
        tracing::info!(sub = %req.sub, "issuing a token");
        let timeout = self.timeout;
        let r = self
            .call("Issue", |mut c| {
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(timeout);
                async move { c.issue(r).await }
            })
            .await?;
        self.stage(r, How::Issue, None)
    }

    /// Keeps a new token in memory and in the side file (best effort: a
    /// failure there only loses crash safety).
    fn stage(
        &mut self,
        r: pb::IssueResponse,
        how: How,
        predecessor_dies_at: Option<i64>,
    ) -> Result<(), Failure> {
        let held = Held::parse(&r.token).map_err(|e| {
            Failure::ServerError(format!("the server sent an unreadable token: {e}"))
        })?;
        let on_disk = match write_atomic(
            &self.pending_file,
            format!("{}\n", held.token.0).as_bytes(),
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(file = %self.pending_file.display(), error = %e, "cannot write the side file");
                false
            }
        };
        self.pending = Some(Pending {
            held,
            revision: r.revision,
            how,
            on_disk,
            predecessor_dies_at,
        });
        Ok(())
    }

    /// Checks the pending token at the edges and, if one accepts it, puts
    /// it in the file.
    async fn finish_pending(&mut self) -> Result<Progress, Failure> {
        let Some(p) = self.pending.take() else {
            return Ok(Progress::NotDue(Duration::ZERO));
        };
        if p.held.expired(now_ms()) {
            tracing::warn!(jti = %p.held.jti, "the new token expired before an edge accepted it");
            self.drop_pending(&p);
            return Ok(Progress::NotDue(Duration::ZERO));
        }
        match self.check_edges(&p).await {
            Ok(()) => {}
            // Keeping the file only helps while its token works.
            Err(f @ Failure::EdgeUnreachable(_)) if self.file_unusable(&p) => {
                tracing::warn!(
                    jti = %p.held.jti,
                    error = %f,
                    "the file's token no longer works and no edge could check the new one: writing it unchecked"
                );
                tm::metrics::counter!(tm::AGENT_FAILURES_TOTAL, "reason" => f.reason())
                    .increment(1);
            }
            Err(f) => return Err(self.keep_or_drop(p, f)),
        }
        self.promote(p)
    }

    /// After a failed check: keeps `p` for another check, or drops it when
    /// an edge refuses it for good.
    fn keep_or_drop(&mut self, p: Pending, f: Failure) -> Failure {
        let dead = matches!(
            &f,
            Failure::EdgeRejected { outcome, .. }
                if matches!(*outcome, "REVOKED" | "EXPIRED" | "BAD_SIGNATURE" | "MALFORMED")
        );
        if dead {
            tracing::error!(jti = %p.held.jti, error = %f, "an edge refuses the new token; dropping it");
            self.dead.insert(p.held.jti.clone());
            self.drop_pending(&p);
        } else {
            self.pending = Some(p);
        }
        f
    }

    /// Whether the file's token no longer works: missing, expired, or the
    /// predecessor `p` replaces, past its grace.
    fn file_unusable(&self, p: &Pending) -> bool {
        let now = now_ms();
        if p.predecessor_dies_at.is_some_and(|t| now >= t * 1000) {
            return true;
        }
        match read_token_file(&self.args.out) {
            Ok(Some(h)) => h.expired(now),
            _ => true,
        }
    }

    /// Puts `p` in the file: renames the side file over it (or writes it
    /// whole when the side file could not be written).
    fn promote(&mut self, p: Pending) -> Result<Progress, Failure> {
        let out = &self.args.out;
        let whole = || write_atomic(out, format!("{}\n", p.held.token.0).as_bytes());
        let promoted = if p.on_disk {
            match std::fs::rename(&self.pending_file, out) {
                // Someone removed the side file: write the token whole.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => whole(),
                r => r.and_then(|()| sync_dir(&parent_dir(out))),
            }
        } else {
            whole()
        };
        if let Err(e) = promoted {
            let f = Failure::File(format!("writing {}: {e}", out.display()));
            // A failed rename leaves the side file as it was.
            self.pending = Some(p);
            return Err(f);
        }
        let counter = match p.how {
            How::Refresh => tm::AGENT_RENEWALS_TOTAL,
            How::Issue => tm::AGENT_ISSUED_TOTAL,
        };
        tm::metrics::counter!(counter).increment(1);
        tracing::info!(
            jti = %p.held.jti,
            exp = p.held.exp,
            how = ?p.how,
            file = %out.display(),
            "wrote a new token"
        );
        Ok(Progress::Wrote)
    }

    fn drop_pending(&self, p: &Pending) {
        if p.on_disk {
            let _ = std::fs::remove_file(&self.pending_file);
        }
    }

    /// Passes when an edge answers the token valid and none refuses it;
    /// edges that cannot answer (down, stale) are skipped.
    async fn check_edges(&self, p: &Pending) -> Result<(), Failure> {
        if self.edges.is_empty() {
            return Ok(());
        }
        let mut valid = 0;
        let mut unreachable = Vec::new();
        for (addr, ch) in &self.edges {
            let mut c = VerifierServiceClient::new(ch.clone());
            let mut req = tonic::Request::new(pb::VerifyRequest {
                token: p.held.token.0.clone(),
                required_scopes: vec![],
                audience: p.held.aud.clone(),
                min_revision: p.revision,
            });
            req.set_timeout(self.timeout);
            match c.verify(req).await {
                Ok(r) if r.get_ref().valid => valid += 1,
                Ok(r) => {
                    let r = r.into_inner();
                    let outcome = pb::Outcome::try_from(r.outcome)
                        .unwrap_or(pb::Outcome::Unspecified)
                        .as_str_name();
                    return Err(Failure::EdgeRejected {
                        addr: addr.clone(),
                        outcome: outcome.strip_prefix("OUTCOME_").unwrap_or(outcome),
                        reason: r.reason,
                    });
                }
                Err(s) => {
                    tracing::debug!(edge = %addr, code = ?s.code(), message = s.message(), "edge did not answer");
                    unreachable.push(format!("{addr}: {:?}: {}", s.code(), s.message()));
                }
            }
        }
        if valid == 0 {
            return Err(Failure::EdgeUnreachable(unreachable.join("; ")));
        }
        tracing::debug!(jti = %p.held.jti, edges = valid, "edges accept the new token");
        Ok(())
    }

    /// Calls `f` on each server in turn, starting at the last one that
    /// answered, until one answers or refuses for good. Each attempt
    /// connects first, so a server that is down is skipped before anything
    /// is sent to it.
    async fn call<T, F, Fut>(&mut self, what: &'static str, f: F) -> Result<T, Failure>
    where
        F: Fn(TokenServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.servers.len();
        let mut connected = false;
        let mut last = Vec::new();
        for i in 0..n {
            let idx = (self.next_server + i) % n;
            let addr = &self.servers[idx];
            let ch = self
                .transport
                .channel(addr, veto_auth::Role::Server, |ep| {
                    ep.connect_timeout(Duration::from_secs(2))
                        .timeout(self.timeout)
                        .tcp_nodelay(true)
                })
                .await;
            let ch = match ch {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::debug!(server = %addr, error = %e, "cannot connect");
                    last.push(e.to_string());
                    continue;
                }
            };
            connected = true;
            match f(TokenServiceClient::new(ch)).await {
                Ok(r) => {
                    self.next_server = idx;
                    return Ok(r.into_inner());
                }
                Err(s) if definitive(s.code()) => {
                    self.next_server = idx;
                    return Err(Failure::Refused {
                        what,
                        code: s.code(),
                        message: s.message().to_owned(),
                    });
                }
                Err(s) => {
                    tracing::warn!(server = %addr, call = what, code = ?s.code(), message = s.message(), "call failed; trying the next server");
                    last.push(format!("{addr}: {what}: {:?}: {}", s.code(), s.message()));
                }
            }
        }
        let last = last.join("; ");
        Err(if connected {
            Failure::ServerError(last)
        } else {
            Failure::ServerUnreachable(last)
        })
    }

    /// Adopts a side file left by an earlier run (a successor not yet
    /// checked at the edges) unless the file already holds something newer.
    fn adopt_side_file(&mut self) {
        let p = match read_token_file(&self.pending_file) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(file = %self.pending_file.display(), error = %e, "cannot read the side file");
                return;
            }
        };
        let current = read_token_file(&self.args.out).ok().flatten();
        let newer = current
            .as_ref()
            .is_none_or(|c| c.jti != p.jti && p.iat >= c.iat);
        if p.expired(now_ms()) || !newer {
            let _ = std::fs::remove_file(&self.pending_file);
            return;
        }
        if let Some(c) = current.filter(|c| c.fam == p.fam) {
            // The file's token was rotated into this one already.
            self.dead.insert(c.jti);
        }
        tracing::info!(jti = %p.jti, "resuming with a new token not yet checked at the edges");
        self.pending = Some(Pending {
            held: p,
            revision: 0,
            how: How::Refresh,
            on_disk: true,
            predecessor_dies_at: None,
        });
    }
}

/// What `/healthz` answers for the token in the file.
fn health(h: Option<&Held>, refresh_at: f64, now: i64) -> (StatusCode, serde_json::Value) {
    let Some(h) = h else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "no_token"}),
        );
    };
    let due = h.refresh_due_ms(refresh_at);
    let status = if h.expired(now) {
        "expired"
    } else if now >= h.overdue_from_ms(refresh_at) {
        "refresh_overdue"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        json!({
            "status": status,
            "jti": h.jti,
            "exp": h.exp,
            "refresh_at": due / 1000,
            "expires_in_seconds": (h.exp * 1000 - now) as f64 / 1000.0,
        }),
    )
}

#[derive(Clone)]
struct HttpState {
    out: PathBuf,
    refresh_at: f64,
    metrics: tm::Handle,
}

async fn file_token(out: &Path) -> Option<Held> {
    let s = tokio::fs::read_to_string(out).await.ok()?;
    Held::parse(&s).ok()
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let h = file_token(&s.out).await;
    let (code, body) = health(h.as_ref(), s.refresh_at, now_ms());
    (code, Json(body))
}

fn set_gauges(h: Option<&Held>, refresh_at: f64, now: i64) {
    let (exp, next) = match h {
        Some(h) => (
            h.exp as f64,
            (h.refresh_due_ms(refresh_at) - now) as f64 / 1000.0,
        ),
        None => (0.0, 0.0),
    };
    tm::metrics::gauge!(tm::AGENT_TOKEN_EXPIRY).set(exp);
    tm::metrics::gauge!(tm::AGENT_NEXT_REFRESH_SECONDS).set(next);
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let h = file_token(&s.out).await;
    set_gauges(h.as_ref(), s.refresh_at, now_ms());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn serve_http(addr: SocketAddr, out: PathBuf, refresh_at: f64) -> Result<(), AgentError> {
    let handle = tm::install()?;
    tm::register_agent();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen { addr, source })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(HttpState {
            out,
            refresh_at,
            metrics: handle,
        });
    tracing::info!(%addr, "serving /healthz and /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the health and metrics server failed");
        }
    });
    Ok(())
}

/// A receiver that turns true on SIGTERM or Ctrl-C.
fn stop_signal() -> Result<watch::Receiver<bool>, AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Sleeps for `d`; true if told to stop meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        Ok(_) = stop.wait_for(|s| *s) => true,
    }
}

fn check_args(a: &AgentArgs, servers: &[String]) -> Result<(), AgentError> {
    let bad = |m: &str| Err(AgentError::Config(m.to_owned()));
    if !(a.refresh_at > 0.0 && a.refresh_at < 1.0) {
        return bad("--refresh-at must be above 0 and below 1");
    }
    if a.out.file_name().is_none() {
        return bad("--out must name a file");
    }
    if !parent_dir(&a.out).is_dir() {
        return Err(AgentError::Config(format!(
            "--out: directory {} does not exist",
            parent_dir(&a.out).display()
        )));
    }
    if servers.is_empty() {
        return bad("no server address: give --server (or --addr)");
    }
    if a.backoff_min_ms == 0 || a.backoff_max_ms < a.backoff_min_ms {
        return bad("--backoff-min-ms must be above 0 and at most --backoff-max-ms");
    }
    if a.once && a.attempts == 0 {
        return bad("--attempts must be at least 1");
    }
    Ok(())
}

fn split_addrs(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs `veto agent` until SIGTERM or Ctrl-C (or, with `--once`, one
/// renewal). `default_servers` is the CLI's `--addr` list.
pub async fn run(
    args: AgentArgs,
    default_servers: &str,
    transport: &'static veto_auth::Transport,
    timeout: Duration,
) -> Result<(), AgentError> {
    let mut servers = split_addrs(&args.servers);
    if servers.is_empty() {
        servers = split_addrs(&[default_servers.to_owned()]);
    }
    check_args(&args, &servers)?;
    let mut edges = Vec::new();
    for addr in split_addrs(&args.edges) {
        let ch = transport
            .channel_lazy(&addr, veto_auth::Role::Edge, |ep| {
                ep.connect_timeout(Duration::from_secs(2))
                    .timeout(timeout)
                    .tcp_nodelay(true)
            })
            .map_err(|e| AgentError::Config(format!("--edge {addr}: {e}")))?;
        edges.push((addr, ch));
    }
    if edges.is_empty() {
        tracing::warn!("no --edge given: new tokens replace the file unchecked");
    }
    let mut stop = stop_signal()?;
    if let Some(addr) = args.listen {
        serve_http(addr, args.out.clone(), args.refresh_at).await?;
    }
    tracing::info!(
        out = %args.out.display(),
        servers = ?servers,
        edges = ?edges.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        refresh_at = args.refresh_at,
        grace = args.grace,
        once = args.once,
        "veto agent starting"
    );
    let mut backoff = Backoff {
        min_ms: args.backoff_min_ms,
        max_ms: args.backoff_max_ms,
        failures: 0,
    };
    let once = args.once;
    let attempts = args.attempts;
    let mut agent = Agent {
        pending_file: pending_path(&args.out),
        args,
        servers,
        next_server: 0,
        edges,
        transport,
        timeout,
        pending: None,
        dead: HashSet::new(),
        renew_key: None,
    };
    agent.adopt_side_file();
    let mut failed = 0u32;
    loop {
        let wait = match agent.step().await {
            Ok(Progress::Wrote) => {
                backoff.reset();
                failed = 0;
                if once {
                    return Ok(());
                }
                Duration::ZERO
            }
            Ok(Progress::NotDue(wait)) => {
                backoff.reset();
                failed = 0;
                if once && wait > Duration::ZERO {
                    tracing::info!(
                        file = %agent.args.out.display(),
                        due_in_seconds = wait.as_secs(),
                        "the token is current; nothing to do"
                    );
                    return Ok(());
                }
                wait.min(MAX_IDLE)
            }
            Err(f) => {
                tm::metrics::counter!(tm::AGENT_FAILURES_TOTAL, "reason" => f.reason())
                    .increment(1);
                failed += 1;
                if once && failed >= attempts {
                    return Err(AgentError::GaveUp {
                        attempts: failed,
                        last: f.to_string(),
                    });
                }
                let d = backoff.next_delay();
                tracing::warn!(error = %f, reason = f.reason(), retry_in_ms = d.as_millis() as u64, "attempt failed");
                d
            }
        };
        if wait > Duration::ZERO && sleep_or_stop(wait, &mut stop).await {
            tracing::info!("stopping");
            return Ok(());
        }
        if *stop.borrow() {
            tracing::info!("stopping");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(iat: i64, exp: i64) -> Held {
        Held {
            token: Secret("t".into()),
            jti: "j".into(),
            fam: "f".into(),
            iat,
            exp,
            aud: None,
        }
    }

    #[test]
    fn health_is_ok_until_halfway_from_the_planned_refresh_to_expiry() {
        let h = held(1_000, 1_100);
        assert_eq!(h.refresh_due_ms(0.5), 1_050_000);
        assert_eq!(h.overdue_from_ms(0.5), 1_075_000);
        assert_eq!(health(Some(&h), 0.5, 1_060_000).0, StatusCode::OK);
        let (c, b) = health(Some(&h), 0.5, 1_080_000);
        assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b["status"], "refresh_overdue");
        assert_eq!(health(Some(&h), 0.5, 1_100_000).1["status"], "expired");
        assert_eq!(health(None, 0.5, 0).1["status"], "no_token");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff {
            min_ms: 100,
            max_ms: 1_000,
            failures: 0,
        };
        let d: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        for (i, ms) in d.iter().enumerate() {
            let cap = (100u128 << i).min(1_000);
            assert!(
                *ms >= cap / 2 && *ms <= cap,
                "{i}: {ms} not in [{}, {cap}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay().as_millis() <= 100);
    }

    #[test]
    fn atomic_write_replaces_the_file_with_mode_0600_and_leaves_nothing_else() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("token");
        std::fs::write(&out, "old\n").expect("write");
        write_atomic(&out, b"new\n").expect("atomic write");
        assert_eq!(std::fs::read_to_string(&out).expect("read"), "new\n");
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("token")]);
        assert_eq!(pending_path(&out), dir.path().join(".token.next"));
    }

    #[test]
    fn a_secret_is_never_printed() {
        let h = held(0, 1);
        assert!(!format!("{h:?}").contains("token: Secret(\"t\")"));
        assert!(format!("{:?}", Secret("abc".into())) == "Secret(..)");
    }
}
