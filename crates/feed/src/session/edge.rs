//! The edge's end of one feed stream, without I/O.
//!
//! The async shell (`veto-edge`'s subscription) moves bytes and timers; every
//! rule of the edge's side of the protocol (docs/design.md, "The feed") is
//! here: the `Hello` cursor, probes every H and the switch-over when none is
//! answered within B, strict batch order (a gap or disorder ends the session
//! for a snapshot resync), snapshot chunks in order, within a size limit and
//! under their checksum, the freshness proof, the leader's clock sample, and
//! ack pacing (at most one ack per [`ACK_INTERVAL`], the newest revision
//! replacing older ones and carrying how long it waited).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::{Batch, EdgeChange, Replica};

/// Shortest time between two acks. Under a steady stream of changes this
/// bounds acks to 200/s per edge instead of one per batch; the ack's delay
/// lets the server subtract the wait, so measured lag is unchanged.
pub const ACK_INTERVAL: Duration = Duration::from_millis(5);

/// Probes whose send times are kept (for clock samples).
const MAX_PROBES_TIMED: usize = 64;

/// Why a session ends. The shell fails over to the next server; after
/// [`End::Resync`] it asks that server for a snapshot (`Hello` at 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    /// The server stopped proving freshness: no probe answered within B.
    #[error("server stopped proving freshness")]
    NotFresh,
    /// The edge's view must be rebuilt from a snapshot.
    #[error("resync needed: {0}")]
    Resync(String),
}

/// A message from the server, decoded into domain types by the shell.
#[derive(Debug, Clone, PartialEq)]
pub enum FromServer {
    /// Changes in `(from, to]`.
    Batch(Batch),
    /// One chunk of a snapshot.
    SnapshotChunk {
        /// Revision the snapshot reflects.
        revision: u64,
        /// Offset of this chunk.
        offset: u64,
        /// The chunk's bytes.
        data: Vec<u8>,
        /// Whether this is the last chunk.
        last: bool,
        /// SHA-256 of the whole snapshot, on the last chunk.
        sha256: Vec<u8>,
    },
    /// The answer to probe `nonce`.
    SyncReply {
        /// The probe's nonce.
        nonce: u64,
        /// Every change up to this revision was sent on this stream.
        revision: u64,
        /// The leader's clock at the read-index round (unix ms, 0 unknown).
        leader_unix_ms: i64,
    },
    /// The server asks for a snapshot resync.
    Resync(String),
    /// A message this edge does not understand.
    Unknown,
}

/// What handling one message produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Nothing the shell must act on.
    Nothing,
    /// The replica moved to this revision.
    Applied(u64),
    /// A probe was answered; with the leader's clock, a clock sample.
    Answered(Option<ClockSample>),
}

/// One measurement of this edge's wall clock against the leader's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockSample {
    /// This edge's wall clock when the probe left, unix ms.
    pub sent_wall_ms: i64,
    /// The probe's round trip.
    pub rtt: Duration,
    /// The leader's clock in between, unix ms.
    pub leader_unix_ms: i64,
}

impl ClockSample {
    /// Leader minus edge, ms, and its error bound (half the round trip).
    pub fn offset_ms(&self) -> (f64, f64) {
        let half = self.rtt.as_secs_f64() * 1e3 / 2.0;
        (
            self.leader_unix_ms as f64 - (self.sent_wall_ms as f64 + half),
            half,
        )
    }
}

/// An ack to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The revision applied.
    pub revision: u64,
    /// How long after the apply it is sent.
    pub delay: Duration,
}

/// What to do about acks after a run of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPlan {
    /// Nothing new to acknowledge.
    None,
    /// Send this ack now.
    Now(Ack),
    /// An ack is pending; wake [`EdgeSession::ack_due`] at this time.
    At(Instant),
}

/// Decodes a complete snapshot's bytes into the changes that rebuild it.
pub type SnapshotDecoder = Box<dyn Fn(&[u8]) -> Result<Vec<EdgeChange>, String> + Send>;

/// One feed stream, from the edge's side.
pub struct EdgeSession {
    bound: Duration,
    started: Instant,
    last_answer: Option<Instant>,
    nonce: u64,
    sent: VecDeque<(u64, Instant, i64)>,
    snap: Vec<u8>,
    max_snapshot_bytes: usize,
    decode: SnapshotDecoder,
    last_ack: Option<Instant>,
    pending_ack: Option<(u64, Instant)>,
}

impl std::fmt::Debug for EdgeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSession")
            .field("bound", &self.bound)
            .field("last_answer", &self.last_answer)
            .field("nonce", &self.nonce)
            .field("snapshot_bytes", &self.snap.len())
            .field("pending_ack", &self.pending_ack)
            .finish()
    }
}

impl EdgeSession {
    /// A session opened at `now`, probing with nonces after `first_nonce`.
    pub fn new(
        bound: Duration,
        max_snapshot_bytes: usize,
        decode: SnapshotDecoder,
        now: Instant,
        first_nonce: u64,
    ) -> Self {
        Self {
            bound,
            started: now,
            last_answer: None,
            nonce: first_nonce,
            sent: VecDeque::new(),
            snap: Vec::new(),
            max_snapshot_bytes,
            decode,
            last_ack: None,
            pending_ack: None,
        }
    }

    /// The revision to put in `Hello`: the replica's, or 0 to ask for a
    /// snapshot after a resync.
    pub fn hello_revision(replica: &Replica, resync: bool) -> u64 {
        if resync {
            0
        } else {
            replica.revision()
        }
    }

    /// A probe tick at `now` (`wall_ms`: this edge's unix ms): the nonce of
    /// the probe to send, or [`End::NotFresh`] when no probe of this session
    /// was answered for longer than B (switch servers).
    pub fn probe(&mut self, replica: &mut Replica, now: Instant, wall_ms: i64) -> Result<u64, End> {
        let since = self.last_answer.unwrap_or(self.started);
        if now.saturating_duration_since(since) > self.bound {
            return Err(End::NotFresh);
        }
        self.nonce = self.nonce.wrapping_add(1);
        replica.probe_sent(self.nonce, now);
        if self.sent.len() >= MAX_PROBES_TIMED {
            self.sent.pop_front();
        }
        self.sent.push_back((self.nonce, now, wall_ms));
        Ok(self.nonce)
    }

    /// Handles one message received at `now`.
    pub fn handle(
        &mut self,
        replica: &mut Replica,
        msg: FromServer,
        now: Instant,
    ) -> Result<Handled, End> {
        match msg {
            FromServer::Batch(b) => {
                replica.apply(&b).map_err(|e| End::Resync(e.to_string()))?;
                Ok(Handled::Applied(b.to))
            }
            FromServer::SnapshotChunk {
                revision,
                offset,
                data,
                last,
                sha256,
            } => self.chunk(replica, revision, offset, &data, last, &sha256),
            FromServer::SyncReply {
                nonce,
                revision,
                leader_unix_ms,
            } => {
                if replica.sync_reply(nonce, revision) {
                    self.last_answer = Some(now);
                }
                let Some(pos) = self.sent.iter().position(|(n, _, _)| *n == nonce) else {
                    return Ok(Handled::Answered(None));
                };
                let (_, at, wall) = self.sent[pos];
                self.sent.drain(..=pos);
                let sample = (leader_unix_ms > 0).then(|| ClockSample {
                    sent_wall_ms: wall,
                    rtt: now.saturating_duration_since(at),
                    leader_unix_ms,
                });
                Ok(Handled::Answered(sample))
            }
            FromServer::Resync(why) => Err(End::Resync(why)),
            FromServer::Unknown => Err(End::Resync("unknown feed message".into())),
        }
    }

    fn chunk(
        &mut self,
        replica: &mut Replica,
        revision: u64,
        offset: u64,
        data: &[u8],
        last: bool,
        sha256: &[u8],
    ) -> Result<Handled, End> {
        if offset != self.snap.len() as u64 {
            return Err(End::Resync("snapshot chunk out of order".into()));
        }
        if self.snap.len().saturating_add(data.len()) > self.max_snapshot_bytes {
            return Err(End::Resync("snapshot over the size limit".into()));
        }
        self.snap.extend_from_slice(data);
        if !last {
            return Ok(Handled::Nothing);
        }
        let whole = std::mem::take(&mut self.snap);
        if sha2::Sha256::digest(&whole).as_slice() != sha256 {
            return Err(End::Resync("snapshot checksum mismatch".into()));
        }
        let changes = (self.decode)(&whole).map_err(|e| End::Resync(format!("snapshot: {e}")))?;
        replica
            .install_snapshot(revision, &changes)
            .map_err(|e| End::Resync(e.to_string()))?;
        Ok(Handled::Applied(revision))
    }

    /// After a run of messages that left the replica at `applied` (if it
    /// moved): acks are cumulative and paced, one per [`ACK_INTERVAL`].
    pub fn after_run(&mut self, applied: Option<u64>, now: Instant) -> AckPlan {
        let Some(rev) = applied else {
            return AckPlan::None;
        };
        match self.last_ack {
            Some(t) if now.saturating_duration_since(t) < ACK_INTERVAL => {
                let first = self.pending_ack.is_none();
                self.pending_ack = Some((rev, now));
                if first {
                    AckPlan::At(t + ACK_INTERVAL)
                } else {
                    // The timer set for the first pending ack still stands.
                    AckPlan::None
                }
            }
            _ => {
                self.last_ack = Some(now);
                self.pending_ack = None;
                AckPlan::Now(Ack {
                    revision: rev,
                    delay: Duration::ZERO,
                })
            }
        }
    }

    /// The pending ack, once its timer fired at `now`, carrying its wait.
    pub fn ack_due(&mut self, now: Instant) -> Option<Ack> {
        let (rev, applied_at) = self.pending_ack.take()?;
        self.last_ack = Some(now);
        Some(Ack {
            revision: rev,
            delay: now.saturating_duration_since(applied_at),
        })
    }

    /// Whether an ack waits for its timer.
    pub fn ack_pending(&self) -> bool {
        self.pending_ack.is_some()
    }
}

#[cfg(test)]
mod tests;
