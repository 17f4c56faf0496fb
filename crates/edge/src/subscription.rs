//! The resilient feed subscription: one stream at a time, failover with
//! jittered backoff, resume from the applied revision, snapshot resync.

use std::time::{Duration, Instant};

use futures::FutureExt;
use prost::Message;
use sha2::Digest;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
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
    #[error("server stopped proving freshness")]
    NotFresh,
    #[error("resync needed: {0}")]
    Resync(String),
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
            End::Resync(why) => {
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

async fn session(h: &EdgeHandle, addr: &str, resync: bool) -> End {
    let opts = h.options().clone();
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
        Ok(Err(e)) => return End::Connect(e.to_string()),
        Err(_) => return End::Connect(format!("no connection within {setup:?}")),
    };
    let mut client = FeedServiceClient::new(ch).max_decoding_message_size(8 << 20);
    let (tx, rx) = mpsc::channel::<pb::EdgeMessage>(64);
    let from = if resync { 0 } else { h.revision() };
    let hello = pb::EdgeMessage {
        msg: Some(pb::edge_message::Msg::Hello(pb::Hello {
            edge_id: opts.edge_id.clone(),
            applied_revision: from,
        })),
    };
    if tx.send(hello).await.is_err() {
        return End::Stream("outbound closed".into());
    }
    let subscribed =
        tokio::time::timeout_at(setup_deadline, client.subscribe(ReceiverStream::new(rx))).await;
    let mut inbound = match subscribed {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(s)) => return End::Connect(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => return End::Connect(format!("no answer to Subscribe within {setup:?}")),
    };
    h.set_server(Some(addr.to_owned()));
    h.count_connect();
    let mut probe = tokio::time::interval(Duration::from_millis(opts.probe_interval_ms));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce: u64 = rand::random::<u32>() as u64;
    let session_start = Instant::now();
    let mut st = Session {
        last_answer: None,
        snap: Vec::new(),
        sent: std::collections::VecDeque::new(),
    };
    // Acks: at most one per ACK_INTERVAL. One due sooner waits (the newest
    // revision replacing an older one) and carries how long it waited.
    let mut last_ack: Option<Instant> = None;
    let mut pending_ack: Option<(u64, Instant)> = None;
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    loop {
        tokio::select! {
            _ = &mut ack_timer, if pending_ack.is_some() => {
                if let Some((rev, applied_at)) = pending_ack.take() {
                    if send_ack(&tx, rev, applied_at).is_err() {
                        return End::Stream("outbound stream closed".into());
                    }
                    last_ack = Some(Instant::now());
                }
            }
            _ = probe.tick() => {
                // A node that stopped answering probes (e.g. partitioned
                // from the leader) cannot keep this edge fresh: switch.
                let since = st.last_answer.unwrap_or(session_start);
                if since.elapsed() > bound {
                    return End::NotFresh;
                }
                nonce = nonce.wrapping_add(1);
                let sent_at = Instant::now();
                h.replica().probe_sent(nonce, sent_at);
                if st.sent.len() >= MAX_PROBES_TIMED {
                    st.sent.pop_front();
                }
                st.sent.push_back((nonce, sent_at, crate::unix_now_ms()));
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
                // ack once: acks are cumulative, and under load (messages
                // queued in the socket) one ack per drained run saves a
                // frame each way per batch without delaying any ack.
                let mut latest = None;
                let mut next = Some(m);
                let mut handled = 0usize;
                while let Some(m) = next {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => return End::Stream("server closed the stream".into()),
                        Err(s) => return End::Stream(format!("{:?}: {}", s.code(), s.message())),
                    };
                    match handle(h, &opts, addr, &mut st, m) {
                        Ok(Some(rev)) => {
                            // Waiters on min_revision need not wait for the run.
                            h.publish_revision(rev);
                            latest = Some(rev);
                        }
                        Ok(None) => {}
                        Err(end) => return end,
                    }
                    handled += 1;
                    next = if handled < MAX_DRAIN {
                        inbound.message().now_or_never()
                    } else {
                        None
                    };
                }
                if let Some(rev) = latest {
                    let now = Instant::now();
                    match last_ack {
                        Some(t) if now.saturating_duration_since(t) < ACK_INTERVAL => {
                            if pending_ack.is_none() {
                                ack_timer.as_mut().reset((t + ACK_INTERVAL).into());
                            }
                            pending_ack = Some((rev, now));
                        }
                        _ => {
                            if send_ack(&tx, rev, now).is_err() {
                                return End::Stream("outbound stream closed".into());
                            }
                            last_ack = Some(now);
                            pending_ack = None;
                        }
                    }
                }
            }
        }
    }
}

/// Probes whose send times are kept for clock-offset samples.
const MAX_PROBES_TIMED: usize = 64;

/// Most messages handled before one ack.
const MAX_DRAIN: usize = 64;

/// Shortest time between two acks. Under a steady stream of changes this
/// bounds acks to 200/s per edge instead of one per batch (each a frame to
/// write, read and account on both ends); the ack's `ack_delay_us` lets the
/// server subtract the wait, so measured lag and propagation are unchanged.
/// A revoke waiting for all edges may return up to this much later.
pub const ACK_INTERVAL: Duration = Duration::from_millis(5);

/// Queues an ack of `rev`, applied at `applied_at`. Acks are cumulative:
/// when the queue is full the next one supersedes this one; only a closed
/// stream is an error.
fn send_ack(tx: &mpsc::Sender<pb::EdgeMessage>, rev: u64, applied_at: Instant) -> Result<(), ()> {
    let delay = applied_at.elapsed().as_micros().min(u64::MAX as u128) as u64;
    let ack = pb::EdgeMessage {
        msg: Some(pb::edge_message::Msg::Ack(pb::Ack {
            applied_revision: rev,
            ack_delay_us: delay,
        })),
    };
    match tx.try_send(ack) {
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        _ => Ok(()),
    }
}

/// What one session carries between messages.
struct Session {
    /// When a probe of this session was last answered.
    last_answer: Option<Instant>,
    /// The snapshot being received.
    snap: Vec<u8>,
    /// Recent probes: nonce, monotonic and wall-clock (unix ms) send times.
    sent: std::collections::VecDeque<(u64, Instant, i64)>,
}

/// Applies one feed message; the revision now applied, if it moved.
fn handle(
    h: &EdgeHandle,
    opts: &crate::Options,
    addr: &str,
    st: &mut Session,
    m: pb::FeedMessage,
) -> Result<Option<u64>, End> {
    let applied = match m.msg {
        Some(pb::feed_message::Msg::Changes(b)) => {
            let mut changes = Vec::with_capacity(b.changes.len());
            for c in &b.changes {
                match change_from_pb(c) {
                    Ok(c) => changes.push(c),
                    Err(e) => return Err(End::Resync(e.to_string())),
                }
            }
            // A traced change (a revoke whose caller is traced)
            // gets a span here, a child of the commit's span.
            let spans: Vec<tracing::Span> = if veto_telemetry::trace::enabled() {
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
            } else {
                Vec::new()
            };
            let batch = Batch {
                from: b.from_revision,
                to: b.to_revision,
                changes,
            };
            if let Err(e) = h.replica().apply(&batch) {
                return Err(End::Resync(e.to_string()));
            }
            drop(spans);
            Some(batch.to)
        }
        Some(pb::feed_message::Msg::Snapshot(c)) => {
            if c.offset as usize != st.snap.len() {
                return Err(End::Resync("snapshot chunk out of order".into()));
            }
            if st.snap.len() + c.data.len() > opts.max_snapshot_bytes {
                return Err(End::Resync("snapshot over the size limit".into()));
            }
            st.snap.extend_from_slice(&c.data);
            if !c.last {
                None
            } else {
                let data = std::mem::take(&mut st.snap);
                if sha2::Sha256::digest(&data).as_slice() != c.sha256.as_ref() {
                    return Err(End::Resync("snapshot checksum mismatch".into()));
                }
                let b = match pb::ChangeBatch::decode(data.as_slice()) {
                    Ok(b) => b,
                    Err(e) => return Err(End::Resync(format!("snapshot decode: {e}"))),
                };
                let mut changes = Vec::with_capacity(b.changes.len());
                for ch in &b.changes {
                    match change_from_pb(ch) {
                        Ok((_, c)) => changes.push(c),
                        Err(e) => return Err(End::Resync(e.to_string())),
                    }
                }
                if let Err(e) = h.replica().install_snapshot(c.revision, &changes) {
                    return Err(End::Resync(e.to_string()));
                }
                tracing::info!(
                    revision = c.revision,
                    entries = changes.len(),
                    "installed snapshot"
                );
                Some(c.revision)
            }
        }
        Some(pb::feed_message::Msg::SyncReply(r)) => {
            let now = Instant::now();
            if h.replica().sync_reply(r.nonce, r.revision) {
                st.last_answer = Some(now);
            }
            if let Some(pos) = st.sent.iter().position(|(n, _, _)| *n == r.nonce) {
                let (_, at, wall) = st.sent[pos];
                st.sent.drain(..=pos);
                h.clock_sample(wall, now.saturating_duration_since(at), r.leader_unix_ms);
            }
            None
        }
        Some(pb::feed_message::Msg::Resync(r)) => return Err(End::Resync(r.reason)),
        None => return Err(End::Resync("unknown feed message".into())),
    };
    Ok(applied)
}
