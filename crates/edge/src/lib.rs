//! The veto edge: an in-process replica of keys and revocations, fed by one
//! FeedService stream, answering verifies locally (docs/design.md, "The
//! feed").
//!
//! Embed it with [`Edge::start_embedded`] (no gRPC server: call
//! [`EdgeHandle::verify`] in-process), or run the `veto-edge` node, which
//! adds `VerifierService` and `/healthz` ([`Edge::start`]). The
//! subscription ([`subscription`]) connects to one control-plane node at a
//! time, fails over with jittered backoff, resumes from its applied
//! revision, resyncs from a snapshot on any gap or undecodable change, and
//! abandons a node whose probes go unanswered for longer than the bound.

pub mod config;
pub mod error;
pub mod ext_authz;
pub mod gateway;
pub mod hooks;
pub mod service;
pub mod subscription;
pub mod usage;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
pub use veto_runtime::clock::{unix_now, unix_now_ms};

use tokio::sync::watch;
use veto_core::token::{Leeway, Requirements};
use veto_feed::{Freshness, Policy, Replica, Verdict};

/// Edge configuration. Every limit carries its unit.
#[derive(Debug, Clone)]
pub struct Options {
    /// Stable id of this edge.
    pub edge_id: String,
    /// Control-plane gRPC addresses (host:port) to subscribe to.
    pub servers: Vec<String>,
    /// The propagation bound B.
    pub bound_ms: u64,
    /// Probe interval H.
    pub probe_interval_ms: u64,
    /// Fail closed (default) or open outside the bound.
    pub policy: Policy,
    /// Verified signatures remembered.
    pub sig_cache_entries: usize,
    /// Longest token accepted.
    pub max_token_bytes: usize,
    /// Most items in one VerifyBatch.
    pub max_batch_items: usize,
    /// Largest snapshot accepted from a server.
    pub max_snapshot_bytes: usize,
    /// Keep (time, revision) of every apply, for benchmarks (off by default;
    /// grows without bound while on).
    pub record_applies: bool,
    /// Record Prometheus metrics (on by default; off only to measure their
    /// cost in the verify benchmark).
    pub metrics: bool,
    /// TLS toward the servers and on the edge's own ports, or plaintext.
    /// The library defaults to plaintext; the `veto-edge` binary makes the
    /// choice explicit (`--tls-*` or `--insecure`).
    pub transport: veto_auth::Transport,
    /// Wall-clock tolerance for the time claims (`nbf`/`iat`, `exp`).
    /// Revocations never depend on the wall clock.
    pub leeway: Leeway,
    /// Warn (log and `/healthz`) when this edge's clock differs from the
    /// leader's by more than this, ms.
    pub clock_offset_warn_ms: u64,
    /// How the gateway hooks (ext_authz, forward-auth) find the token,
    /// what each route requires and which headers carry the identity.
    pub gateway: gateway::Gateway,
    /// Distinct tokens whose usage is tracked between two reports (0: no
    /// usage tracking). About 43 MB at 1,000,000 (`crate::usage`).
    pub usage_max_tokens: usize,
    /// How often usage is reported to the server, ms.
    pub usage_report_interval_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            edge_id: "edge".into(),
            servers: Vec::new(),
            bound_ms: 2_000,
            probe_interval_ms: 200,
            policy: Policy::FailClosed,
            sig_cache_entries: 100_000,
            max_token_bytes: 4096,
            max_batch_items: 1024,
            max_snapshot_bytes: 1 << 30,
            record_applies: false,
            metrics: true,
            transport: veto_auth::Transport::Insecure,
            leeway: Leeway::default(),
            clock_offset_warn_ms: DEFAULT_CLOCK_OFFSET_WARN_MS,
            gateway: gateway::Gateway::default(),
            usage_max_tokens: 1_000_000,
            usage_report_interval_ms: 10_000,
        }
    }
}

/// Default clock-offset warning threshold: well inside the default 60 s
/// `nbf` leeway, so an operator hears of a drifting clock before it refuses
/// new tokens.
pub const DEFAULT_CLOCK_OFFSET_WARN_MS: u64 = 10_000;

/// Clock samples kept; the estimate is the one with the shortest round trip.
const CLOCK_SAMPLES: usize = 16;

/// This edge's wall clock measured against the leader's, from probe replies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockOffset {
    /// Leader's clock minus this edge's, ms: positive when this edge is
    /// behind.
    pub offset_ms: f64,
    /// Half the round trip of the probe it came from: the offset is exact
    /// to within this, ms.
    pub uncertainty_ms: f64,
}

#[derive(Debug, Default)]
struct ClockSamples {
    recent: std::collections::VecDeque<ClockOffset>,
    warned: bool,
}

impl Options {
    /// Checks the values; names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.edge_id.is_empty()
            && self.edge_id.len() <= 128
            && self
                .edge_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err("edge_id must be 1..=128 bytes of [A-Za-z0-9._-]".into());
        }
        if self.servers.is_empty() {
            return Err("servers: at least one control-plane address is required".into());
        }
        if self.probe_interval_ms == 0 || self.bound_ms <= self.probe_interval_ms {
            return Err(
                "bound_ms must exceed probe_interval_ms, which must be greater than 0".into(),
            );
        }
        if self.max_batch_items == 0 || self.max_token_bytes == 0 {
            return Err("max_batch_items and max_token_bytes must be greater than 0".into());
        }
        if !(100..=3_600_000).contains(&self.usage_report_interval_ms) {
            return Err("usage_report_interval_ms must be between 100 and 3600000".into());
        }
        if self.usage_max_tokens > 50_000_000 {
            return Err("usage_max_tokens must be at most 50000000".into());
        }
        self.gateway.validate().map_err(|e| e.to_string())
    }
}

/// Shared edge state; cheap to clone.
#[derive(Clone)]
pub struct EdgeHandle {
    inner: Arc<Inner>,
}

/// What one lock guards: the replica every verify reads and the usage
/// table every verify writes, so recording a verify takes no lock of its own.
struct Local {
    replica: Replica,
    /// Per-token usage until the next report (None when off).
    usage: Option<usage::Table>,
}

/// The lock on [`Local`], seen as the replica.
pub(crate) struct ReplicaGuard<'a>(MutexGuard<'a, Local>);

impl std::ops::Deref for ReplicaGuard<'_> {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.0.replica
    }
}

impl std::ops::DerefMut for ReplicaGuard<'_> {
    fn deref_mut(&mut self) -> &mut Replica {
        &mut self.0.replica
    }
}

struct Inner {
    local: Mutex<Local>,
    applied: watch::Sender<u64>,
    server: Mutex<Option<String>>,
    connects: AtomicU64,
    resyncs: AtomicU64,
    applies: Mutex<Vec<(Instant, u64)>>,
    /// `veto_verify_total` per outcome, resolved once (no allocation per verify).
    verify_counters: Vec<veto_telemetry::metrics::Counter>,
    /// The same counts, readable (reported to the server in probes).
    verify_counts: Vec<AtomicU64>,
    clock: Mutex<ClockSamples>,
    opts: Options,
}

impl Local {
    /// Records a verify in the usage table, if tracking is on.
    #[inline]
    fn track(&mut self, v: &Verdict, required: &[String], unix: i64) {
        if let (Some(u), Some(c)) = (&mut self.usage, &v.claims) {
            u.record(&c.jti, v.outcome, required, unix);
        }
    }
}

impl EdgeHandle {
    fn new(opts: Options) -> Self {
        let replica = Replica::new(
            Duration::from_millis(opts.bound_ms),
            opts.policy,
            opts.sig_cache_entries,
            opts.max_token_bytes,
        )
        .with_leeway(opts.leeway);
        let (applied, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                local: Mutex::new(Local {
                    replica,
                    usage: (opts.usage_max_tokens > 0).then(|| {
                        usage::Table::new(&opts.edge_id, opts.usage_max_tokens, unix_now())
                    }),
                }),
                applied,
                server: Mutex::new(None),
                connects: AtomicU64::new(0),
                resyncs: AtomicU64::new(0),
                applies: Mutex::new(Vec::new()),
                verify_counters: veto_feed::Outcome::ALL
                    .iter()
                    .map(|o| {
                        if !opts.metrics {
                            return veto_telemetry::metrics::Counter::noop();
                        }
                        veto_telemetry::metrics::counter!(
                            veto_telemetry::VERIFY_TOTAL,
                            "edge" => opts.edge_id.clone(),
                            "outcome" => o.label()
                        )
                    })
                    .collect(),
                verify_counts: veto_feed::Outcome::ALL
                    .iter()
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                clock: Mutex::new(ClockSamples::default()),
                opts,
            }),
        }
    }

    pub(crate) fn local(&self) -> MutexGuard<'_, Local> {
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn replica(&self) -> ReplicaGuard<'_> {
        ReplicaGuard(self.local())
    }

    /// The options it runs with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Verifies a token now.
    pub fn verify(&self, token: &str, req: &Requirements<'_>) -> Verdict {
        let unix = unix_now();
        let mut local = self.local();
        let v = local.replica.verify(token, req, Instant::now(), unix);
        local.track(&v, req.scopes, unix);
        drop(local);
        self.count(v.outcome);
        v
    }

    /// The usage table, when tracking is on.
    pub fn usage(&self) -> Option<usage::Tracker<'_>> {
        (self.inner.opts.usage_max_tokens > 0).then_some(usage::Tracker { edge: self })
    }

    /// Verifies a token for introspection (RFC 7662): every check of
    /// [`EdgeHandle::verify`] with no scope required, except the audience,
    /// which introspection leaves to the resource server: a token naming an
    /// audience is checked as if the request named it. Counted once.
    pub fn verify_any_audience(&self, token: &str) -> Verdict {
        let (now, unix) = (Instant::now(), unix_now());
        let mut local = self.local();
        let replica = &mut local.replica;
        let mut v = replica.verify(token, &Requirements::default(), now, unix);
        let aud = match (&v.outcome, &v.claims) {
            (veto_feed::Outcome::WrongAudience, Some(c)) => c.aud.clone(),
            _ => None,
        };
        if let Some(aud) = aud {
            let req = Requirements {
                audience: Some(&aud),
                scopes: &[],
            };
            v = replica.verify(token, &req, now, unix);
        }
        local.track(&v, &[], unix);
        drop(local);
        self.count(v.outcome);
        v
    }

    pub(crate) fn count(&self, o: veto_feed::Outcome) {
        self.inner.verify_counters[o as usize].increment(1);
        if let Some(c) = self.inner.verify_counts.get(o as usize) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Verify answers so far, by outcome label (only outcomes seen).
    pub fn verify_counts(&self) -> Vec<(&'static str, u64)> {
        veto_feed::Outcome::ALL
            .iter()
            .zip(self.inner.verify_counts.iter())
            .map(|(o, c)| (o.label(), c.load(std::sync::atomic::Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Revision applied.
    pub fn revision(&self) -> u64 {
        *self.inner.applied.borrow()
    }

    /// A receiver that sees every applied revision.
    pub fn subscribe_revision(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Freshness now.
    pub fn freshness(&self) -> Freshness {
        self.replica().freshness(Instant::now())
    }

    /// Waits until revision `rev` is applied, up to `limit`.
    pub async fn wait_revision(&self, rev: u64, limit: Duration) -> bool {
        let mut rx = self.inner.applied.subscribe();
        let wait = async move { rx.wait_for(|a| *a >= rev).await.is_ok() };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Waits until the edge can prove freshness, up to `limit`.
    pub async fn wait_fresh(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.freshness().fresh {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.freshness().fresh
    }

    /// The server the feed is on now, if connected.
    pub fn server(&self) -> Option<String> {
        self.inner
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Feed connections opened so far.
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Snapshot resyncs so far.
    pub fn resyncs(&self) -> u64 {
        self.inner.resyncs.load(Ordering::Relaxed)
    }

    /// Live revocations held.
    pub fn revocations(&self) -> usize {
        self.replica().revocations()
    }

    pub(crate) fn set_server(&self, s: Option<String>) {
        *self.inner.server.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub(crate) fn publish_revision(&self, rev: u64) {
        if self.inner.opts.record_applies {
            self.inner
                .applies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((Instant::now(), rev));
        }
        self.inner.applied.send_replace(rev);
    }

    /// The recorded applies (with `record_applies`), oldest first.
    pub fn recorded_applies(&self) -> Vec<(Instant, u64)> {
        self.inner
            .applies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This edge's clock against the leader's, if a probe reply carried
    /// the leader's time yet: the sample with the shortest round trip among
    /// the last few.
    pub fn clock_offset(&self) -> Option<ClockOffset> {
        let c = self.inner.clock.lock().unwrap_or_else(|p| p.into_inner());
        c.recent
            .iter()
            .min_by(|a, b| a.uncertainty_ms.total_cmp(&b.uncertainty_ms))
            .copied()
    }

    /// Whether the measured offset is past the configured threshold.
    pub fn clock_offset_alarming(&self) -> bool {
        self.clock_offset().is_some_and(|o| {
            o.offset_ms.abs() - o.uncertainty_ms > self.inner.opts.clock_offset_warn_ms as f64
        })
    }

    /// Records one clock sample from a probe reply.
    pub(crate) fn clock_sample(&self, s: veto_feed::session::edge::ClockSample) {
        let (offset_ms, uncertainty_ms) = s.offset_ms();
        let sample = ClockOffset {
            offset_ms,
            uncertainty_ms,
        };
        {
            let mut c = self.inner.clock.lock().unwrap_or_else(|p| p.into_inner());
            if c.recent.len() >= CLOCK_SAMPLES {
                c.recent.pop_front();
            }
            c.recent.push_back(sample);
        }
        let Some(best) = self.clock_offset() else {
            return;
        };
        let alarming = self.clock_offset_alarming();
        let mut c = self.inner.clock.lock().unwrap_or_else(|p| p.into_inner());
        if alarming && !c.warned {
            tracing::warn!(
                offset_ms = best.offset_ms,
                uncertainty_ms = best.uncertainty_ms,
                threshold_ms = self.inner.opts.clock_offset_warn_ms,
                nbf_leeway_s = self.inner.opts.leeway.nbf_seconds,
                exp_leeway_s = self.inner.opts.leeway.exp_seconds,
                "this edge's wall clock differs from the leader's past the threshold;                  exp/nbf checks use this clock (revocations do not)"
            );
        } else if !alarming && c.warned {
            tracing::info!(
                offset_ms = best.offset_ms,
                "this edge's wall clock is back within the threshold of the leader's"
            );
        }
        c.warned = alarming;
    }

    pub(crate) fn count_connect(&self) {
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        veto_telemetry::metrics::counter!(veto_telemetry::EDGE_FEED_CONNECTS_TOTAL, "edge" => self.inner.opts.edge_id.clone())
            .increment(1);
    }

    pub(crate) fn count_resync(&self) {
        self.inner.resyncs.fetch_add(1, Ordering::Relaxed);
        veto_telemetry::metrics::counter!(veto_telemetry::EDGE_RESYNCS_TOTAL, "edge" => self.inner.opts.edge_id.clone())
            .increment(1);
    }
}

/// A running edge.
pub struct Edge {
    /// Verify and inspect through this.
    pub handle: EdgeHandle,
    /// VerifierService address, if serving.
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP address, if serving.
    pub http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Edge {
    /// Starts the replica and its subscription, without any server.
    pub fn start_embedded(opts: Options) -> Result<Edge, StartError> {
        opts.validate().map_err(StartError::Invalid)?;
        // The recorder first: counters resolved before it would be no-ops.
        if opts.metrics {
            veto_telemetry::install()?;
            veto_telemetry::register_edge(&opts.edge_id);
        }
        let handle = EdgeHandle::new(opts);
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![tokio::spawn(subscription::run(handle.clone(), rx))];
        Ok(Edge {
            handle,
            grpc_addr: None,
            http_addr: None,
            shutdown,
            tasks,
        })
    }

    /// Starts the replica, its subscription, VerifierService and Envoy's
    /// ext_authz (with grpc.health.v1 and reflection) on `grpc`, and
    /// `/healthz`, `/metrics` and the HTTP hooks on `http`.
    pub async fn start(
        opts: Options,
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> Result<Edge, StartError> {
        let mut edge = Self::start_embedded(opts)?;
        let (grpc_addr, gl) = veto_runtime::bind(grpc).await?;
        let (http_addr, hl) = veto_runtime::bind(http).await?;
        edge.grpc_addr = Some(grpc_addr);
        edge.http_addr = Some(http_addr);
        let grpc_tasks = serve_grpc(&edge.handle, gl, edge.shutdown.subscribe())?;
        edge.tasks.extend(grpc_tasks);
        let http_task = serve_http(&edge.handle, hl, edge.shutdown.subscribe())?;
        edge.tasks.push(http_task);
        Ok(edge)
    }

    /// Stops the subscription and servers.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An option is out of range; the message names it.
    #[error("invalid edge options: {0}")]
    Invalid(String),
    /// The metrics recorder cannot be installed.
    #[error("metrics: {0}")]
    Telemetry(#[from] veto_telemetry::Error),
    /// A listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] veto_runtime::BindError),
    /// The gRPC port could not start (TLS refused, reflection).
    #[error(transparent)]
    Grpc(#[from] veto_runtime::grpc::ServeError),
}

/// Serves VerifierService and ext_authz, grpc.health.v1 for both
/// (following `/healthz`: NOT_SERVING while stale) and reflection (of
/// VerifierService: `envoy-types` publishes no descriptors) on `listener`
/// until `shutdown`.
fn serve_grpc(
    h: &EdgeHandle,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let fresh = h.clone();
    let port = veto_runtime::grpc::Port {
        name: "verifier",
        transport: h.options().transport.clone(),
        policy: service::policy,
        limit: None,
        services: vec![veto_proto::verifier_service_server::SERVICE_NAME],
        health_only: vec![ext_authz::SERVICE_NAME],
        routes: tonic::service::Routes::new(service::server(h.clone()))
            .add_service(ext_authz::server(h.clone())),
        ready: move || fresh.freshness().fresh,
    };
    Ok(veto_runtime::grpc::serve(port, listener, shutdown)?)
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
fn serve_http(
    h: &EdgeHandle,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let metrics = veto_telemetry::install()?;
    let app = service::http_router(h.clone(), metrics);
    let transport = h.options().transport.clone();
    Ok(tokio::spawn(async move {
        let r = veto_auth::http::serve(listener, app, &transport, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "edge HTTP server failed");
        }
    }))
}
