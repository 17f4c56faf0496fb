//! `veto.v1.FeedService`: one bidirectional stream per edge (docs/design.md,
//! "The feed").
//!
//! Each stream has a writer task that reads the node's bounded change log
//! at the edge's own cursor (snapshot if the cursor is behind the log),
//! and a reader that records acks and turns probes into sync replies: a
//! probe is answered only after a read-index round that started after the
//! probe arrived (confirmed by the leader), once this node has applied that
//! index and the writer has sent every change up to it on this stream.
//! Read-index rounds are shared by all probes waiting when a round starts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use veto_feed::session::writer::{Next, Start, Writer};
use veto_proto as pb;
use veto_proto::feed::change_to_pb;

use crate::error::Error;
use crate::feed_codec::{Encoded, EncodedStream};
use crate::node::{Node, ReadIndex};

mod registry;

/// Largest number of changes in one ChangeBatch message.
pub const MAX_BATCH_CHANGES: usize = 1024;
/// Messages buffered per edge stream before the writer waits.
pub const STREAM_BUFFER: usize = 64;
/// An edge that does not take a message for this long is disconnected.
pub const SLOW_EDGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest ack delay believed: an edge acks within a few milliseconds of
/// applying, so more is a bug or a lie, and must not make lag look smaller.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(50);
/// How long a new stream may take to send its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a probe waits for this node to apply the read index.
pub const PROBE_APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node knows about one edge.
#[derive(Debug, Clone)]
pub struct EdgeStat {
    /// Whether its stream is open now.
    pub connected: bool,
    /// Highest revision it acknowledged.
    pub applied: u64,
    /// When it last acknowledged.
    pub acked_at: Instant,
    /// When this node last answered one of its probes.
    pub answered_at: Option<Instant>,
    /// Streams opened by this edge on this node.
    pub connects: u64,
    /// The edge's cumulative verify answers by outcome (from its probes).
    pub verify_counts: HashMap<String, u64>,
}

/// Shared feed state of a node; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    node: Node,
    edges: registry::Registry,
    read_queue: Mutex<Vec<oneshot::Sender<Result<ReadIndex, String>>>>,
    read_notify: Notify,
    /// The most recently encoded batch: edges reading the same range share it.
    last_batch: Mutex<Option<(u64, u64, Encoded)>>,
    /// Recent propagation, per second, for dashboards.
    propagation: Mutex<veto_proto::propagation::Window>,
    /// Set when the node stops: every stream ends so edges move at once.
    closing: tokio::sync::watch::Sender<bool>,
    /// The edges each other member reported connected when it last
    /// answered, so a member that stops answering still has its edges
    /// named (as unknown) in a wait for all edges.
    member_edges: Mutex<HashMap<u64, Vec<String>>>,
    /// Usage the edges reported, until the next flush (`crate::usage`).
    usage: Arc<crate::usage::Pending>,
}

/// A view of the edges across the cluster.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// Every edge every answering member reports, each with the time of its
    /// latest ack on this node's clock.
    pub edges: Vec<(pb::EdgeInfo, Instant)>,
    /// Recent propagation histograms of the answering members, by second.
    pub seconds: Vec<veto_proto::propagation::Second>,
    /// Members that did not answer, with the edges they last reported
    /// connected (empty if never heard from).
    pub unanswered: Vec<(u64, Vec<String>)>,
}

/// The outcome of waiting for every edge to apply a revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeWait {
    /// Commit -> last ack, when every known edge confirmed and at least one did.
    pub propagation_ms: Option<f64>,
    /// Connected edges that had not applied the revision at the deadline.
    pub behind: Vec<String>,
    /// `edge@node` for edges last seen on a member that did not answer, or
    /// `?@node` for a member never heard from.
    pub unknown: Vec<String>,
    /// Edges that applied the revision.
    pub confirmed: u32,
}

impl Hub {
    /// A hub for `node`; spawn [`Hub::run_read_index`] next to it.
    pub fn new(node: Node) -> Self {
        Self {
            inner: Arc::new(HubInner {
                node,
                edges: registry::Registry::default(),
                read_queue: Mutex::new(Vec::new()),
                read_notify: Notify::new(),
                last_batch: Mutex::new(None),
                propagation: Mutex::new(Default::default()),
                closing: tokio::sync::watch::channel(false).0,
                member_edges: Mutex::new(HashMap::new()),
                usage: Arc::default(),
            }),
        }
    }

    /// The usage the edges of this node reported, until flushed.
    pub fn pending_usage(&self) -> Arc<crate::usage::Pending> {
        self.inner.usage.clone()
    }

    /// A snapshot of the edge registry.
    pub fn edge_stats(&self) -> Vec<(String, EdgeStat)> {
        self.inner.edges.stats()
    }

    /// Waits until every edge connected to this node has applied
    /// `revision`, or `deadline`; woken by acks, connects and disconnects.
    pub async fn wait_local(&self, revision: u64, deadline: Instant) {
        let mut changed = self.inner.edges.changed();
        while !self.inner.edges.all_applied(revision) {
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline.into()) => return,
            }
        }
    }

    /// The encoded batch for `(cursor, head]`, if another stream built it.
    fn cached_batch(&self, cursor: u64, head: u64) -> Option<Encoded> {
        let last = self
            .inner
            .last_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((from, to, e)) if *from == cursor && *to == head && cursor < head => {
                Some(e.clone())
            }
            _ => None,
        }
    }

    /// The batch encoded once: every edge reading the same `(from, to]`
    /// (all caught-up edges, after each apply) gets the same bytes.
    fn encoded_batch(&self, b: &veto_feed::Batch, traces: &Traces) -> Encoded {
        let mut last = self
            .inner
            .last_batch
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((from, to, e)) = last.as_ref() {
            if *from == b.from && *to == b.to {
                return e.clone();
            }
        }
        let msg = pb::ChangeBatch {
            from_revision: b.from,
            to_revision: b.to,
            changes: b
                .changes
                .iter()
                .map(|(r, c)| {
                    let mut pc = change_to_pb(*r, c);
                    if let Some((_, t)) = traces.iter().find(|(tr, _)| tr == r) {
                        pc.trace_context = t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    }
                    pc
                })
                .collect(),
        };
        let e = Encoded::of(pb::feed_message::Msg::Changes(msg));
        *last = Some((b.from, b.to, e.clone()));
        e
    }

    /// Edges streaming from this node, with their lag.
    pub fn local_edges(&self) -> pb::EdgesResponse {
        let now = Instant::now();
        let node = &self.inner.node;
        let changes = node.state().changes();
        let head = changes.head();
        let edges = self
            .edge_stats()
            .into_iter()
            .map(|(id, s)| {
                let lag_revisions = head.saturating_sub(s.applied);
                let lag_ms = if lag_revisions == 0 {
                    0.0
                } else {
                    changes
                        .applied_at(s.applied + 1)
                        .map(|t| ms(now.saturating_duration_since(t)))
                        .unwrap_or(0.0)
                };
                pb::EdgeInfo {
                    edge_id: id,
                    node_id: node.id(),
                    applied_revision: s.applied,
                    lag_revisions,
                    lag_ms,
                    fresh_age_ms: s
                        .answered_at
                        .map(|t| ms(now.saturating_duration_since(t)))
                        .unwrap_or(-1.0),
                    connected: s.connected,
                    ack_age_ms: ms(now.saturating_duration_since(s.acked_at)),
                    verify_counts: s.verify_counts,
                }
            })
            .collect();
        drop(changes);
        pb::EdgesResponse {
            edges,
            commit_index: head,
            propagation: self
                .propagation(crate::node::unix_now() - veto_proto::propagation::WINDOW_S as i64)
                .iter()
                .map(|s| s.to_pb())
                .collect(),
        }
    }

    /// Waits until `deadline` for every edge of every member to apply
    /// `revision` (committed here at `committed`), and reports what it saw.
    /// An edge counts when it is connected to an answering member. The
    /// edges of a member that does not answer are unknown (and so is a
    /// member never heard from): they are reported, not waited for, and
    /// keep `propagation_ms` unset, as does a cluster with no edge at all.
    ///
    /// Driven by acks, not by polling: every member is asked once; then
    /// each member with an edge behind is asked again to answer when its
    /// own edges have applied `revision` (it waits on its acks), until none
    /// is behind or the deadline passes.
    pub async fn wait_edges(
        &self,
        revision: u64,
        committed: Instant,
        deadline: Instant,
    ) -> EdgeWait {
        let mut reports = self.reports(None, None).await;
        loop {
            let w = edge_wait(&self.view(&reports), revision, committed);
            if w.behind.is_empty() || Instant::now() >= deadline {
                return w;
            }
            let behind: HashSet<u64> = reports
                .iter()
                .filter_map(|(id, r)| match r {
                    Report::Answered { edges, .. }
                        if edges
                            .iter()
                            .any(|(e, _)| e.connected && e.applied_revision < revision) =>
                    {
                        Some(*id)
                    }
                    _ => None,
                })
                .collect();
            let again = self
                .reports(Some(&behind), Some((revision, deadline)))
                .await;
            for (id, r) in again {
                // A member that answered before and fails now keeps the
                // edges it last reported, as unknown.
                let r = match (r, reports.get(&id)) {
                    (Report::Unanswered(_), Some(Report::Answered { edges, .. })) => {
                        Report::Unanswered(connected_ids(edges))
                    }
                    (r, _) => r,
                };
                reports.insert(id, r);
            }
            // A member that answered early (its edges moved, or it predates
            // waiting) must not make this spin.
            tokio::time::sleep(ROUND_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Every edge on every member, every member's recent propagation
    /// histograms merged by second, and the members that did not answer.
    pub async fn cluster_view(&self) -> ClusterView {
        let reports = self.reports(None, None).await;
        self.view(&reports)
    }

    /// Asks `only` (every member if `None`, this node included) for its
    /// edges, each answering at once or, with `wait`, once its edges
    /// applied the revision or at the deadline.
    async fn reports(
        &self,
        only: Option<&HashSet<u64>>,
        wait: Option<(u64, Instant)>,
    ) -> BTreeMap<u64, Report> {
        let node = &self.inner.node;
        let me = node.id();
        let m = node.metrics();
        let wanted = |id: &u64| only.is_none_or(|o| o.contains(id));
        let mut calls = Vec::new();
        for (id, n) in m.membership_config.membership().nodes() {
            let id = *id;
            if id == me || !wanted(&id) {
                continue;
            }
            let ch = node.channel_to(&n.addr).ok();
            calls.push(async move { (id, remote_edges(ch, wait).await) });
        }
        let local = async {
            if !wanted(&me) {
                return None;
            }
            if let Some((revision, deadline)) = wait {
                self.wait_local(revision, deadline).await;
            }
            Some((self.local_edges(), Instant::now()))
        };
        let (local, remote) = futures::join!(local, futures::future::join_all(calls));
        let mut last = self
            .inner
            .member_edges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for (id, r) in local.map(|l| (me, Some(l))).into_iter().chain(remote) {
            let report = match r {
                Some((r, t)) => {
                    let edges: Vec<_> = r.edges.into_iter().map(|e| aged(e, t)).collect();
                    if id != me {
                        last.insert(id, connected_ids(&edges));
                    }
                    Report::Answered {
                        edges,
                        seconds: r.propagation,
                    }
                }
                None => Report::Unanswered(last.get(&id).cloned().unwrap_or_default()),
            };
            out.insert(id, report);
        }
        // Only members of the current membership are remembered.
        last.retain(|id, _| m.membership_config.membership().get_node(id).is_some());
        out
    }

    fn view(&self, reports: &BTreeMap<u64, Report>) -> ClusterView {
        let mut v = ClusterView::default();
        let mut seconds = Vec::new();
        for (id, r) in reports {
            match r {
                Report::Answered { edges, seconds: s } => {
                    v.edges.extend(edges.iter().cloned());
                    seconds.extend(s.iter().map(veto_proto::propagation::Second::from_pb));
                }
                Report::Unanswered(edges) => v.unanswered.push((*id, edges.clone())),
            }
        }
        v.seconds = veto_proto::propagation::merge(seconds);
        v
    }

    fn connected(&self, edge: &str, applied: u64) -> Result<(), registry::Full> {
        self.inner.edges.connected(edge, applied, Instant::now())
    }

    fn disconnected(&self, edge: &str) {
        self.inner.edges.disconnected(edge, Instant::now());
    }

    /// Records an ack of `applied`, sent `delay` after the edge applied it
    /// (a delay beyond [`MAX_ACK_DELAY`] is taken as that).
    fn ack(&self, edge: &str, applied: u64, delay: Duration) {
        let received = Instant::now();
        let now = received
            .checked_sub(delay.min(MAX_ACK_DELAY))
            .unwrap_or(received);
        if self.inner.edges.ack(edge, applied, now) {
            // Apply here -> ack, on this node's clock.
            if let Some(t) = self.inner.node.state().changes().applied_at(applied) {
                let d = now.saturating_duration_since(t).as_secs_f64();
                veto_telemetry::metrics::histogram!(veto_telemetry::PROPAGATION_SECONDS).record(d);
                self.inner
                    .propagation
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(crate::node::unix_now(), d * 1e3);
            }
        }
    }

    /// Ends every edge stream with UNAVAILABLE and refuses new ones: the
    /// node is stopping, and an edge should fail over now rather than wait
    /// for its probes to go unanswered for B.
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    fn probed(&self, edge: &str, mut counts: HashMap<String, u64>) {
        counts.retain(|k, _| veto_feed::Outcome::ALL.iter().any(|o| o.label() == k));
        if !counts.is_empty() {
            self.inner.edges.probed(edge, counts);
        }
    }

    /// This node's propagation histograms after `since` (unix s).
    pub fn propagation(&self, since: i64) -> Vec<veto_proto::propagation::Second> {
        self.inner
            .propagation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seconds(since)
    }

    fn answered(&self, edge: &str) {
        self.inner.edges.answered(edge, Instant::now());
    }

    /// A leader-confirmed commit index from a round that starts after this call.
    pub async fn read_index(&self) -> Result<ReadIndex, String> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .read_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        self.inner.read_notify.notify_one();
        rx.await
            .map_err(|_| "read-index task stopped".to_string())?
    }

    /// Runs read-index rounds for queued probes until `shutdown`.
    pub async fn run_read_index(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.inner.read_notify.notified() => {}
            }
            let waiters = std::mem::take(
                &mut *self
                    .inner
                    .read_queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if waiters.is_empty() {
                continue;
            }
            let r = self
                .inner
                .node
                .leader_read_index()
                .await
                .map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(r.clone());
            }
        }
    }
}

/// The FeedService implementation.
#[derive(Clone)]
pub struct Service {
    hub: Hub,
}

impl Service {
    /// Serves feeds from `hub`.
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Pause between wait rounds (only when a member answered before its
/// edges caught up).
const ROUND_PAUSE: Duration = Duration::from_millis(10);
/// Longest a member's answer to a plain (non-waiting) `Edges` call takes.
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// One member's answer about its edges.
#[derive(Debug, Clone)]
enum Report {
    /// Its edges (each with its latest ack on this node's clock) and its
    /// recent propagation.
    Answered {
        edges: Vec<(pb::EdgeInfo, Instant)>,
        seconds: Vec<pb::PropagationSecond>,
    },
    /// It did not answer: the edges it last reported connected.
    Unanswered(Vec<String>),
}

/// An edge reported at `reported`, with its latest ack aged by the report's
/// own `ack_age_ms`.
fn aged(e: pb::EdgeInfo, reported: Instant) -> (pb::EdgeInfo, Instant) {
    let t = reported
        .checked_sub(Duration::from_secs_f64(e.ack_age_ms.max(0.0) / 1e3))
        .unwrap_or(reported);
    (e, t)
}

fn connected_ids(edges: &[(pb::EdgeInfo, Instant)]) -> Vec<String> {
    edges
        .iter()
        .filter(|(e, _)| e.connected)
        .map(|(e, _)| e.edge_id.clone())
        .collect()
}

/// A member's `Edges` answer and when it arrived; with `wait`, the member
/// answers once its edges applied the revision or at the deadline.
async fn remote_edges(
    ch: Option<tonic::transport::Channel>,
    wait: Option<(u64, Instant)>,
) -> Option<(pb::EdgesResponse, Instant)> {
    let mut c = veto_proto::admin_service_client::AdminServiceClient::new(ch?);
    let (req, timeout) = match wait {
        None => (pb::EdgesRequest::default(), REPORT_TIMEOUT),
        Some((revision, deadline)) => {
            let left = deadline.saturating_duration_since(Instant::now());
            (
                pb::EdgesRequest {
                    wait_revision: revision,
                    wait_timeout_ms: left.as_millis().min(u32::MAX as u128) as u32,
                },
                left + REPORT_TIMEOUT,
            )
        }
    };
    let mut req = Request::new(req);
    req.set_timeout(timeout);
    let r = c.edges(req).await.ok()?;
    Some((r.into_inner(), Instant::now()))
}

/// What a wait for `revision` saw in `view`.
fn edge_wait(view: &ClusterView, revision: u64, committed: Instant) -> EdgeWait {
    let live: Vec<&(pb::EdgeInfo, Instant)> =
        view.edges.iter().filter(|(e, _)| e.connected).collect();
    let seen = |id: &str| live.iter().any(|(e, _)| e.edge_id == id);
    let mut behind: Vec<String> = live
        .iter()
        .filter(|(e, _)| e.applied_revision < revision)
        .map(|(e, _)| e.edge_id.clone())
        .collect();
    behind.sort();
    behind.dedup();
    let mut unknown = Vec::new();
    // A member that does not answer may hold edges nobody else sees
    // (it may be cut off, not dead): it is always named, with the edges
    // it last reported that no answering member has now.
    for (node, edges) in &view.unanswered {
        let missing: Vec<String> = edges
            .iter()
            .filter(|e| !seen(e))
            .map(|e| format!("{e}@{node}"))
            .collect();
        if missing.is_empty() {
            unknown.push(format!("?@{node}"));
        }
        unknown.extend(missing);
    }
    let confirmed: Vec<Instant> = live
        .iter()
        .filter(|(e, _)| e.applied_revision >= revision)
        .map(|(_, t)| *t)
        .collect();
    let complete = behind.is_empty() && unknown.is_empty() && !confirmed.is_empty();
    EdgeWait {
        propagation_ms: complete.then(|| {
            confirmed
                .iter()
                .map(|t| ms(t.saturating_duration_since(committed)))
                .fold(0.0, f64::max)
        }),
        behind,
        unknown,
        confirmed: confirmed.len().min(u32::MAX as usize) as u32,
    }
}

type Out = mpsc::Sender<Result<Encoded, Status>>;

/// Resolves once the hub is closing (the watch guard is not held across
/// the caller's awaits).
async fn until_closing(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

async fn send(tx: &Out, m: pb::feed_message::Msg) -> Result<(), ()> {
    send_encoded(tx, Encoded::of(m)).await
}

async fn send_encoded(tx: &Out, m: Encoded) -> Result<(), ()> {
    match tokio::time::timeout(SLOW_EDGE_TIMEOUT, tx.send(Ok(m))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Trace contexts of traced revisions in a batch.
type Traces = Vec<(u64, Arc<std::collections::BTreeMap<String, String>>)>;

enum Step {
    Snapshot(u64, Vec<veto_core::EdgeChange>),
    Cached(Encoded, u64),
    Batch(veto_feed::Batch, Traces),
    Idle,
}

async fn send_snapshot(
    tx: &Out,
    revision: u64,
    changes: Vec<veto_core::EdgeChange>,
) -> Result<(), ()> {
    veto_telemetry::metrics::counter!(veto_telemetry::FEED_SNAPSHOTS_TOTAL).increment(1);
    let batch = pb::ChangeBatch {
        from_revision: 0,
        to_revision: revision,
        changes: changes.iter().map(|c| change_to_pb(revision, c)).collect(),
    };
    let data = bytes::Bytes::from(batch.encode_to_vec());
    let digest = bytes::Bytes::copy_from_slice(&sha2::Sha256::digest(&data));
    let mut off = 0;
    loop {
        let end = (off + veto_core::limits::STREAM_CHUNK_BYTES).min(data.len());
        let last = end == data.len();
        let chunk = pb::SnapshotChunk {
            revision,
            offset: off as u64,
            data: data.slice(off..end),
            last,
            sha256: if last {
                digest.clone()
            } else {
                bytes::Bytes::new()
            },
        };
        send(tx, pb::feed_message::Msg::Snapshot(chunk)).await?;
        if last {
            return Ok(());
        }
        off = end;
    }
}

/// Where a new stream starts ([`Writer::start`]); asks the leader when the
/// edge is ahead of this node. `None`: no leader to place it, the stream
/// was closed.
async fn place(hub: &Hub, edge: &str, hello_revision: u64, tx: &Out) -> Option<Start> {
    let head = hub.inner.node.state().changes().head();
    let start = Writer::start(hello_revision, head);
    if start != Start::AskLeader {
        return Some(start);
    }
    match hub.read_index().await {
        Ok(r) => {
            let placed = Writer::placed(hello_revision, r.index);
            if placed == Start::Snapshot {
                tracing::warn!(%edge, cursor = hello_revision, commit = r.index, "edge is ahead of the cluster; replacing its view with a snapshot");
            }
            Some(placed)
        }
        Err(e) => {
            tracing::info!(%edge, error = %e, "no leader to place an edge ahead of this node; closing its stream");
            let e = Error::Unavailable("no leader; subscribe to another node".into());
            let _ = tx.try_send(Err(e.into()));
            None
        }
    }
}

/// The next step for `w`: the batch another stream already encoded for the
/// same range, else what [`Writer::next`] says from the change log (its own
/// lock); the state lock is taken only to build a snapshot.
fn next_step(hub: &Hub, w: &Writer) -> Step {
    let state = hub.inner.node.state();
    let quick = {
        let log = state.changes();
        let cached = (!w.must_snapshot())
            .then(|| hub.cached_batch(w.cursor(), log.head()))
            .flatten();
        match cached {
            Some(e) => Some(Step::Cached(e, log.head())),
            None => match w.next(&log, MAX_BATCH_CHANGES) {
                Next::Snapshot => None,
                Next::Batch(b) => {
                    let t = log.traces(b.from, b.to);
                    Some(Step::Batch(b, t))
                }
                Next::Idle => Some(Step::Idle),
            },
        }
    };
    quick.unwrap_or_else(|| {
        state.read_with_changes(|s, _| Step::Snapshot(s.revision, s.edge_snapshot()))
    })
}

/// Sends until the stream is caught up with the node's log. `Err`: the edge
/// is too slow or gone.
async fn catch_up(hub: &Hub, w: &mut Writer, tx: &Out) -> Result<(), ()> {
    loop {
        match next_step(hub, w) {
            Step::Snapshot(rev, changes) => {
                if w.cursor() > 0 {
                    // An edge with state, behind the retained log.
                    veto_telemetry::metrics::counter!(veto_telemetry::FEED_RESYNCS_TOTAL)
                        .increment(1);
                }
                w.sent_snapshot(rev);
                send_snapshot(tx, rev, changes).await?;
            }
            Step::Cached(e, to) => {
                w.sent_batch(to);
                send_encoded(tx, e).await?;
            }
            Step::Batch(b, traces) => {
                w.sent_batch(b.to);
                send_encoded(tx, hub.encoded_batch(&b, &traces)).await?;
            }
            Step::Idle => return Ok(()),
        }
    }
}

/// The async shell around one stream's [`Writer`]: sends what it says,
/// answers the probes it says are due, and waits for the node to apply
/// more, a probe confirmed, the edge gone or the node stopping.
async fn writer(
    hub: Hub,
    edge: String,
    hello_revision: u64,
    tx: Out,
    mut probes: mpsc::Receiver<(u64, ReadIndex)>,
) {
    let mut applied = hub.inner.node.state().subscribe_applied();
    let mut closing = hub.inner.closing.subscribe();
    let Some(start) = place(&hub, &edge, hello_revision, &tx).await else {
        return;
    };
    let mut w = Writer::new(hello_revision, start);
    loop {
        if catch_up(&hub, &mut w, &tx).await.is_err() {
            tracing::info!(%edge, "edge too slow or gone; closing its stream");
            return;
        }
        for r in w.replies_due() {
            let m = pb::feed_message::Msg::SyncReply(pb::SyncReply {
                nonce: r.nonce,
                revision: r.revision,
                leader_unix_ms: r.leader_unix_ms,
            });
            if send(&tx, m).await.is_err() {
                return;
            }
            hub.answered(&edge);
        }
        tokio::select! {
            r = applied.changed() => if r.is_err() { return },
            p = probes.recv() => match p {
                Some((nonce, r)) => w.confirmed(nonce, r.index, r.leader_unix_ms),
                None => return,
            },
            _ = tx.closed() => return,
            _ = until_closing(&mut closing) => {
                // Never wait on a stalled edge while the node stops.
                let e = Error::Unavailable("this node is stopping; subscribe to another".into());
                let _ = tx.try_send(Err(e.into()));
                return;
            }
        }
    }
}

async fn probe_worker(hub: Hub, mut rx: mpsc::Receiver<u64>, out: mpsc::Sender<(u64, ReadIndex)>) {
    let state = hub.inner.node.state().clone();
    while let Some(nonce) = rx.recv().await {
        let Ok(r) = hub.read_index().await else {
            // Partitioned from the leader: the probe stays unanswered and
            // the edge's freshness runs out, as it must.
            continue;
        };
        let mut applied = state.subscribe_applied();
        let index = r.index;
        let wait = async move { applied.wait_for(|a| *a >= index).await.is_ok() };
        let ok = tokio::time::timeout(PROBE_APPLY_TIMEOUT, wait).await;
        if ok != Ok(true) {
            continue;
        }
        if out.send((nonce, r)).await.is_err() {
            return;
        }
    }
}

impl Service {
    /// Handles one `Subscribe` stream.
    pub async fn subscribe(
        &self,
        req: Request<Streaming<pb::EdgeMessage>>,
    ) -> Result<Response<EncodedStream>, Status> {
        let (hello, inbound) = self.accept(req).await?;
        let edge = hello.edge_id.clone();
        self.hub
            .connected(&edge, hello.applied_revision)
            .map_err(|e| Error::Exhausted(e.to_string()))?;
        veto_telemetry::metrics::counter!(veto_telemetry::FEED_CONNECTS_TOTAL).increment(1);
        tracing::info!(%edge, applied = hello.applied_revision, "edge subscribed");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (probe_in, probe_rx) = mpsc::channel::<u64>(16);
        let (replies_tx, replies_rx) = mpsc::channel::<(u64, ReadIndex)>(16);
        tokio::spawn(writer(
            self.hub.clone(),
            edge.clone(),
            hello.applied_revision,
            tx.clone(),
            replies_rx,
        ));
        tokio::spawn(probe_worker(self.hub.clone(), probe_rx, replies_tx));
        tokio::spawn(read_edge(self.hub.clone(), edge, inbound, tx, probe_in));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Reads and checks the stream's `Hello`: a valid edge id, the caller's
    /// own (under TLS an edge may only speak for itself: its certificate's
    /// name is its edge id, so it cannot ack, or hide, for another edge),
    /// on a node that is running in an initialised cluster.
    async fn accept(
        &self,
        req: Request<Streaming<pb::EdgeMessage>>,
    ) -> Result<(pb::Hello, Streaming<pb::EdgeMessage>), Status> {
        let caller = req
            .extensions()
            .get::<veto_auth::Identity>()
            .filter(|i| i.role == veto_auth::Role::Edge)
            .map(|i| i.name.clone());
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Error::Timeout(format!("no Hello within {HELLO_TIMEOUT:?}")))??
            .ok_or_else(|| Error::Protocol("stream closed before Hello".into()))?;
        let Some(pb::edge_message::Msg::Hello(hello)) = first.msg else {
            return Err(Error::Protocol("the first message must be Hello".into()).into());
        };
        veto_core::validate::edge_id("hello.edge_id", &hello.edge_id).map_err(Error::from)?;
        if let Some(name) = caller.filter(|n| *n != hello.edge_id) {
            veto_telemetry::metrics::counter!(veto_telemetry::AUTH_DENIED_TOTAL, "reason" => "permission_denied")
                .increment(1);
            return Err(Error::PermissionDenied(format!(
                "edge certificate {name:?} may not subscribe as edge {:?}",
                hello.edge_id
            ))
            .into());
        }
        if *self.hub.inner.closing.borrow() {
            return Err(
                Error::Unavailable("this node is stopping; subscribe to another".into()).into(),
            );
        }
        let m = self.hub.inner.node.metrics();
        if m.membership_config
            .membership()
            .voter_ids()
            .next()
            .is_none()
        {
            return Err(Error::Uninitialised.into());
        }
        Ok((hello, inbound))
    }
}

/// Reads the edge's probes and acks until the stream ends, the writer
/// stops or the node closes; then marks the edge disconnected.
async fn read_edge(
    hub: Hub,
    edge: String,
    mut inbound: Streaming<pb::EdgeMessage>,
    tx: Out,
    probe_in: mpsc::Sender<u64>,
) {
    let mut closing = hub.inner.closing.subscribe();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = tx.closed() => break,
            _ = until_closing(&mut closing) => break,
        };
        match msg.map(|m| m.and_then(|m| m.msg)) {
            Ok(Some(pb::edge_message::Msg::Probe(p))) => {
                // A full queue means probes pile up faster than rounds
                // finish; dropping one only delays freshness.
                let _ = probe_in.try_send(p.nonce);
                hub.probed(&edge, p.verify_counts);
            }
            Ok(Some(pb::edge_message::Msg::Usage(u))) => {
                // Attributed to the stream's (authenticated) edge id.
                hub.inner
                    .usage
                    .add(crate::usage::deltas_of(Some(&edge), &u.tokens));
            }
            Ok(Some(pb::edge_message::Msg::Ack(a))) => hub.ack(
                &edge,
                a.applied_revision,
                Duration::from_micros(a.ack_delay_us),
            ),
            Ok(Some(pb::edge_message::Msg::Hello(_))) => {
                let e = Error::Protocol("expected SyncProbe or Ack after Hello".into());
                let _ = tx.send(Err(e.into())).await;
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    hub.disconnected(&edge);
    tracing::info!(%edge, "edge stream closed");
}
