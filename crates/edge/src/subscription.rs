//! The resilient feed subscription: one stream at a time, failover with
//! jittered backoff, resume from the applied revision, snapshot resync.
//!
//! The rules of a session live in [`veto_feed::session::edge`]; this file
//! connects, converts protobuf to domain messages, moves them between the
//! socket and the session, and arms its timers.

use std::time::{Duration, Instant};

use futures::FutureExt;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use veto_feed::session::edge::{self as session, AckPlan, EdgeSession, FromServer, Handled};
use veto_feed::Batch;
use veto_proto as pb;
use veto_proto::feed::change_from_pb;
use veto_proto::feed_service_client::FeedServiceClient;

use crate::EdgeHandle;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("connect: {0}")]
    Connect(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error(transparent)]
    Session(#[from] session::End),
    #[error("shutdown")]
    Shutdown,
}

/// Runs until `shutdown` fires.
pub async fn run(h: EdgeHandle, mut shutdown: watch::Receiver<bool>) {
    let servers = h.options().servers.clone();
    let mut idx: usize = rand::random::<u32>() as usize % servers.len().max(1);
    let mut failures: u32 = 0;
    let mut resync = false;
    loop {
        let addr = servers[idx % servers.len()].clone();
        let started = Instant::now();
        let end = tokio::select! {
            e = session(&h, &addr, resync) => e,
            _ = shutdown.wait_for(|s| *s) => End::Shutdown,
        };
        h.set_server(None);
        h.replica().reset_stream();
        match &end {
            End::Shutdown => return,
            End::Session(session::End::Resync(why)) => {
                tracing::warn!(%addr, %why, "resyncing from a snapshot");
                h.count_resync();
                resync = true;
            }
            other => {
                tracing::info!(%addr, reason = %other, "feed session ended; failing over");
                resync = false;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        idx = idx.wrapping_add(1);
        // Jittered exponential backoff: 25 ms .. 2 s, x0.5..1.5. The first
        // retry after a long session is quick: another node is likely fine.
        let base = (25u64 << failures.min(7).saturating_sub(1)).min(2_000);
        let jitter = 0.5 + rand::random::<f64>();
        let wait = Duration::from_millis((base as f64 * jitter) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Connects to `addr` and opens the stream within the setup allowance.
async fn open(
    h: &EdgeHandle,
    addr: &str,
    from: u64,
) -> Result<
    (
        mpsc::Sender<pb::EdgeMessage>,
        tonic::Streaming<pb::FeedMessage>,
    ),
    End,
> {
    let opts = h.options();
    let bound = Duration::from_millis(opts.bound_ms);
    // A stalled server (SIGSTOP, a frozen VM) accepts TCP in its kernel and
    // then never answers, which would hold the edge here. A live one opens
    // a stream in a few round trips: allow a third of B (at least two probe
    // intervals, at most B), then try the next server.
    let setup = (bound / 3)
        .max(Duration::from_millis(opts.probe_interval_ms) * 2)
        .min(bound);
    let setup_deadline = tokio::time::Instant::now() + setup;
    // The peer must hold a server certificate, not just any from the CA.
    let connected = tokio::time::timeout_at(
        setup_deadline,
        opts.transport.channel(addr, veto_auth::Role::Server, |e| {
            e.connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
        }),
    )
    .await;
    let ch = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(End::Connect(e.to_string())),
        Err(_) => return Err(End::Connect(format!("no connection within {setup:?}"))),
    };
    let mut client = FeedServiceClient::new(ch).max_decoding_message_size(8 << 20);
    let (tx, rx) = mpsc::channel::<pb::EdgeMessage>(64);
    let hello = pb::EdgeMessage {
        msg: Some(pb::edge_message::Msg::Hello(pb::Hello {
            edge_id: opts.edge_id.clone(),
            applied_revision: from,
        })),
    };
    if tx.send(hello).await.is_err() {
        return Err(End::Stream("outbound closed".into()));
    }
    let subscribed =
        tokio::time::timeout_at(setup_deadline, client.subscribe(ReceiverStream::new(rx))).await;
    match subscribed {
        Ok(Ok(r)) => Ok((tx, r.into_inner())),
        Ok(Err(s)) => Err(End::Connect(format!("{:?}: {}", s.code(), s.message()))),
        Err(_) => Err(End::Connect(format!(
            "no answer to Subscribe within {setup:?}"
        ))),
    }
}

/// Decodes a whole snapshot's bytes (a `ChangeBatch`) into its changes.
fn decode_snapshot(bytes: &[u8]) -> Result<Vec<veto_core::EdgeChange>, String> {
    let b = pb::ChangeBatch::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    b.changes
        .iter()
        .map(|c| {
            change_from_pb(c)
                .map(|(_, ch)| ch)
                .map_err(|e| e.to_string())
        })
        .collect()
}

async fn session(h: &EdgeHandle, addr: &str, resync: bool) -> End {
    let opts = h.options().clone();
    let from = EdgeSession::hello_revision(&h.replica(), resync);
    let (tx, mut inbound) = match open(h, addr, from).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    h.set_server(Some(addr.to_owned()));
    h.count_connect();
    let mut probe = tokio::time::interval(Duration::from_millis(opts.probe_interval_ms));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut st = EdgeSession::new(
        Duration::from_millis(opts.bound_ms),
        opts.max_snapshot_bytes,
        Box::new(decode_snapshot),
        Instant::now(),
        rand::random::<u32>() as u64,
    );
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    let mut report = tokio::time::interval(Duration::from_millis(opts.usage_report_interval_ms));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report.reset();
    let mut backlog = Backlog::new(h);
    loop {
        tokio::select! {
            _ = report.tick(), if h.usage().is_some() => {
                match report_usage(h, &tx, &mut backlog) {
                    Ok(true) => {}
                    Ok(false) => report.reset_after(USAGE_RETRY),
                    Err(e) => return e,
                }
            }
            _ = &mut ack_timer, if st.ack_pending() => {
                if let Some(a) = st.ack_due(Instant::now()) {
                    if send_ack(&tx, a).is_err() {
                        return End::Stream("outbound stream closed".into());
                    }
                }
            }
            _ = probe.tick() => {
                let nonce = match st.probe(&mut h.replica(), Instant::now(), crate::unix_now_ms()) {
                    Ok(n) => n,
                    Err(e) => return e.into(),
                };
                let verify_counts = h.verify_counts().into_iter().map(|(k, n)| (k.to_string(), n)).collect();
                let m = pb::EdgeMessage { msg: Some(pb::edge_message::Msg::Probe(pb::SyncProbe { nonce, verify_counts })) };
                // A full queue only delays this probe's answer; a closed one
                // ends the session.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(m) {
                    return End::Stream("outbound stream closed".into());
                }
            }
            m = inbound.message() => {
                // Handle this message and every one already readable, then
                // ack once: acks are cumulative, and under load one ack per
                // drained run saves a frame each way per batch.
                let latest = match drain(h, &opts, addr, &mut st, &mut inbound, m) {
                    Ok(l) => l,
                    Err(end) => return end,
                };
                match st.after_run(latest, Instant::now()) {
                    AckPlan::None => {}
                    AckPlan::At(t) => ack_timer.as_mut().reset(t.into()),
                    AckPlan::Now(a) => {
                        if send_ack(&tx, a).is_err() {
                            return End::Stream("outbound stream closed".into());
                        }
                    }
                }
            }
        }
    }
}

/// Tokens per usage report message (well inside the servers' 64 KiB feed
/// message limit).
const USAGE_PER_MESSAGE: usize = 1000;

/// Outbound slots a usage report leaves free, so that acks and probes
/// never wait behind usage (a full queue would drop an ack).
const ACK_RESERVE: usize = 8;

/// When a report did not fit in the outbound queue, how soon the rest goes.
const USAGE_RETRY: Duration = Duration::from_millis(20);

/// Usage drained from the table and not sent yet: at most one drain's worth,
/// since the table is drained again only once this is empty. What a session
/// ends with goes back to the table for the next session.
struct Backlog<'a> {
    usage: Option<crate::usage::Tracker<'a>>,
    deltas: Vec<veto_core::usage::UsageDelta>,
}

impl<'a> Backlog<'a> {
    fn new(h: &'a EdgeHandle) -> Self {
        Self {
            usage: h.usage(),
            deltas: Vec::new(),
        }
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        if let Some(u) = &self.usage {
            if !self.deltas.is_empty() {
                u.restore(std::mem::take(&mut self.deltas));
            }
        }
    }
}

/// Sends the usage recorded since the last report, as far as the outbound
/// queue takes it while leaving [`ACK_RESERVE`] slots free: true when all
/// of it went, false when some waits in `backlog` for a retry.
fn report_usage(
    h: &EdgeHandle,
    tx: &mpsc::Sender<pb::EdgeMessage>,
    backlog: &mut Backlog<'_>,
) -> Result<bool, End> {
    let Some(u) = backlog.usage else {
        return Ok(true);
    };
    if backlog.deltas.is_empty() {
        backlog.deltas = u.drain(crate::unix_now());
        if h.options().metrics {
            veto_telemetry::metrics::gauge!(veto_telemetry::EDGE_USAGE_TRACKED, "edge" => h.options().edge_id.clone())
                .set(backlog.deltas.len() as f64);
            veto_telemetry::metrics::counter!(veto_telemetry::EDGE_USAGE_DROPPED_TOTAL, "edge" => h.options().edge_id.clone())
                .absolute(u.dropped());
        }
    }
    while !backlog.deltas.is_empty() {
        if tx.is_closed() {
            return Err(End::Stream("outbound stream closed".into()));
        }
        // This task is the queue's only sender: past this check the send
        // cannot find it full.
        if tx.capacity() <= ACK_RESERVE {
            return Ok(false);
        }
        let at = backlog.deltas.len().saturating_sub(USAGE_PER_MESSAGE);
        let chunk = backlog.deltas.split_off(at);
        let m = pb::EdgeMessage {
            msg: Some(pb::edge_message::Msg::Usage(pb::UsageReport {
                tokens: chunk
                    .iter()
                    .map(|d| veto_proto::usage::token_usage(d, ""))
                    .collect(),
                dropped_total: u.dropped(),
            })),
        };
        if let Err(e) = tx.try_send(m) {
            backlog.deltas.extend(chunk);
            return match e {
                mpsc::error::TrySendError::Closed(_) => {
                    Err(End::Stream("outbound stream closed".into()))
                }
                mpsc::error::TrySendError::Full(_) => Ok(false),
            };
        }
    }
    Ok(true)
}

/// Handles `first` and every message already readable (up to
/// [`MAX_DRAIN`]); the revision applied last, if it moved.
fn drain(
    h: &EdgeHandle,
    opts: &crate::Options,
    addr: &str,
    st: &mut EdgeSession,
    inbound: &mut tonic::Streaming<pb::FeedMessage>,
    first: Result<Option<pb::FeedMessage>, tonic::Status>,
) -> Result<Option<u64>, End> {
    let mut latest = None;
    let mut next = Some(first);
    let mut handled = 0usize;
    while let Some(m) = next {
        let m = match m {
            Ok(Some(m)) => m,
            Ok(None) => return Err(End::Stream("server closed the stream".into())),
            Err(s) => return Err(End::Stream(format!("{:?}: {}", s.code(), s.message()))),
        };
        if let Some(rev) = handle(h, opts, addr, st, m)? {
            // Waiters on min_revision need not wait for the run.
            h.publish_revision(rev);
            latest = Some(rev);
        }
        handled += 1;
        next = if handled < MAX_DRAIN {
            inbound.message().now_or_never()
        } else {
            None
        };
    }
    Ok(latest)
}

/// Most messages handled before one ack.
const MAX_DRAIN: usize = 64;

/// Queues an ack. Acks are cumulative: when the queue is full the next one
/// supersedes this one; only a closed stream is an error.
fn send_ack(tx: &mpsc::Sender<pb::EdgeMessage>, a: session::Ack) -> Result<(), ()> {
    let ack = pb::EdgeMessage {
        msg: Some(pb::edge_message::Msg::Ack(pb::Ack {
            applied_revision: a.revision,
            ack_delay_us: a.delay.as_micros().min(u64::MAX as u128) as u64,
        })),
    };
    match tx.try_send(ack) {
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        _ => Ok(()),
    }
}

/// Converts one feed message and hands it to the session; the revision now
/// applied, if it moved.
fn handle(
    h: &EdgeHandle,
    opts: &crate::Options,
    addr: &str,
    st: &mut EdgeSession,
    m: pb::FeedMessage,
) -> Result<Option<u64>, End> {
    let now = Instant::now();
    let msg = match m.msg {
        Some(pb::feed_message::Msg::Changes(b)) => {
            let mut changes = Vec::with_capacity(b.changes.len());
            for c in &b.changes {
                match change_from_pb(c) {
                    Ok(c) => changes.push(c),
                    Err(e) => return Err(session::End::Resync(e.to_string()).into()),
                }
            }
            // A traced change (a revoke whose caller is traced) gets a span
            // here, a child of the commit's span, around its apply.
            let spans = apply_spans(opts, addr, &b);
            let r = st.handle(
                &mut h.replica(),
                FromServer::Batch(Batch {
                    from: b.from_revision,
                    to: b.to_revision,
                    changes,
                }),
                now,
            );
            drop(spans);
            r
        }
        Some(pb::feed_message::Msg::Snapshot(c)) => {
            let r = st.handle(
                &mut h.replica(),
                FromServer::SnapshotChunk {
                    revision: c.revision,
                    offset: c.offset,
                    data: c.data.to_vec(),
                    last: c.last,
                    sha256: c.sha256.to_vec(),
                },
                now,
            );
            if let (true, Ok(Handled::Applied(rev))) = (c.last, &r) {
                tracing::info!(revision = rev, "installed snapshot");
            }
            r
        }
        Some(pb::feed_message::Msg::SyncReply(r)) => st.handle(
            &mut h.replica(),
            FromServer::SyncReply {
                nonce: r.nonce,
                revision: r.revision,
                leader_unix_ms: r.leader_unix_ms,
            },
            now,
        ),
        Some(pb::feed_message::Msg::Resync(r)) => {
            st.handle(&mut h.replica(), FromServer::Resync(r.reason), now)
        }
        None => st.handle(&mut h.replica(), FromServer::Unknown, now),
    };
    match msg? {
        Handled::Nothing => Ok(None),
        Handled::Applied(rev) => Ok(Some(rev)),
        Handled::Answered(sample) => {
            if let Some(s) = sample {
                h.clock_sample(s);
            }
            Ok(None)
        }
    }
}

/// Spans for the traced changes of a batch (when tracing is on).
fn apply_spans(opts: &crate::Options, addr: &str, b: &pb::ChangeBatch) -> Vec<tracing::Span> {
    if !veto_telemetry::trace::enabled() {
        return Vec::new();
    }
    b.changes
        .iter()
        .filter(|c| !c.trace_context.is_empty())
        .map(|c| {
            let span = tracing::info_span!(
                "edge.apply",
                otel.name = "edge.apply",
                edge.id = %opts.edge_id,
                revision = c.revision,
                server = %addr,
            );
            veto_telemetry::trace::set_parent(
                &span,
                c.trace_context
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            span
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(i: u64) -> veto_core::Jti {
        let mut j = [0u8; 16];
        j[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        j[8..].copy_from_slice(&i.to_le_bytes());
        veto_core::Jti(j)
    }

    /// An edge with usage tracking on (the default), never connected.
    fn tracking_edge() -> EdgeHandle {
        EdgeHandle::new(crate::Options {
            edge_id: "edge-t".into(),
            ..Default::default()
        })
    }

    /// One valid verify of each token in `range`.
    fn record(u: crate::usage::Tracker<'_>, range: std::ops::Range<u64>, now: i64) {
        for i in range {
            u.record(&jti(i), veto_feed::Outcome::Valid, &[], now);
        }
    }

    fn tokens_in(rx: &mut mpsc::Receiver<pb::EdgeMessage>) -> (usize, u64) {
        let (mut messages, mut verifies) = (0, 0);
        while let Ok(m) = rx.try_recv() {
            if let Some(pb::edge_message::Msg::Usage(r)) = m.msg {
                messages += 1;
                verifies += r.tokens.iter().map(|t| t.valid).sum::<u64>();
            }
        }
        (messages, verifies)
    }

    #[test]
    fn usage_reports_leave_room_for_acks_and_send_the_rest_later() {
        let h = tracking_edge();
        let u = h.usage().expect("usage tracking is on by default");
        let now = crate::unix_now();
        let n = 20 * USAGE_PER_MESSAGE as u64;
        record(u, 0..n, now);
        let (tx, mut rx) = mpsc::channel(16);
        let mut backlog = Backlog::new(&h);
        // 16 slots, 8 kept free: 8 messages go, 12 wait.
        assert!(!report_usage(&h, &tx, &mut backlog).unwrap());
        assert_eq!(tx.capacity(), ACK_RESERVE);
        assert_eq!(backlog.deltas.len(), 12 * USAGE_PER_MESSAGE);
        let ack = session::Ack {
            revision: 7,
            delay: Duration::ZERO,
        };
        assert!(send_ack(&tx, ack).is_ok());
        assert_eq!(tx.capacity(), ACK_RESERVE - 1, "the ack took a slot");
        // Verifies meanwhile stay in the table, not in the backlog.
        u.record(&jti(n), veto_feed::Outcome::Valid, &[], now);
        let (m1, v1) = tokens_in(&mut rx);
        assert_eq!((m1, v1), (8, 8 * USAGE_PER_MESSAGE as u64));
        assert!(!report_usage(&h, &tx, &mut backlog).unwrap());
        let (m2, v2) = tokens_in(&mut rx);
        assert_eq!(m2, 8);
        assert!(report_usage(&h, &tx, &mut backlog).unwrap());
        let (m3, v3) = tokens_in(&mut rx);
        assert_eq!((m3, v1 + v2 + v3), (4, n), "every verify once");
        // The next report drains the table again: the one recorded meanwhile.
        assert!(report_usage(&h, &tx, &mut backlog).unwrap());
        assert_eq!(tokens_in(&mut rx), (1, 1));
    }

    #[test]
    fn a_session_that_ends_with_a_backlog_returns_it_to_the_table() {
        let h = tracking_edge();
        let u = h.usage().expect("usage tracking is on by default");
        let now = crate::unix_now();
        let n = 12 * USAGE_PER_MESSAGE as u64;
        record(u, 0..n, now);
        let (tx, mut rx) = mpsc::channel(ACK_RESERVE + 2);
        {
            let mut backlog = Backlog::new(&h);
            assert!(!report_usage(&h, &tx, &mut backlog).unwrap());
            assert_eq!(tokens_in(&mut rx), (2, 2 * USAGE_PER_MESSAGE as u64));
        }
        drop(rx);
        let kept: u64 = u.drain(now).iter().map(|d| d.outcomes.valid).sum();
        assert_eq!(kept, n - 2 * USAGE_PER_MESSAGE as u64);
        // A closed stream ends the session, keeping the report.
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        u.record(&jti(0), veto_feed::Outcome::Valid, &[], now);
        let mut backlog = Backlog::new(&h);
        assert!(report_usage(&h, &tx, &mut backlog).is_err());
        drop(backlog);
        assert_eq!(u.drain(now).len(), 1);
    }
}
