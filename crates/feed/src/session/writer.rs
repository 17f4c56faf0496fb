//! The server's end of one feed stream, without I/O.
//!
//! The async shell (`veto-server`'s feed writer) encodes and sends; the
//! rules are here: where a new stream starts (a snapshot for a new edge or
//! one whose view comes from another history), what to send next from the
//! change log (a snapshot when the cursor is behind what the log holds,
//! else the next batch in order), and the probe rule — a probe is answered
//! only once the leader confirmed a read index after the probe arrived and
//! every change up to that index was sent on this stream, with the revision
//! sent so far.

use std::collections::VecDeque;

use crate::log::{ChangeLog, Read};
use crate::Batch;

/// Where a new stream starts, given the edge's `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Stream from the edge's revision (batches, or a snapshot if the log
    /// no longer holds it).
    Resume,
    /// Replace the edge's view with a snapshot.
    Snapshot,
    /// The edge is ahead of this node's log: ask the leader for the
    /// cluster's commit index, then call [`Writer::placed`].
    AskLeader,
}

/// What to send next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A snapshot of the node's state (its revision becomes the cursor).
    Snapshot,
    /// This batch, in revision order from the cursor.
    Batch(Batch),
    /// Nothing until the node applies more.
    Idle,
}

/// A probe answer due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The probe's nonce.
    pub nonce: u64,
    /// Every change up to this revision was sent on this stream.
    pub revision: u64,
    /// The leader's clock when it confirmed the read index (unix ms).
    pub leader_unix_ms: i64,
}

/// One feed stream, from the server's side.
#[derive(Debug, Clone)]
pub struct Writer {
    cursor: u64,
    force_snapshot: bool,
    /// Probes the leader confirmed: (nonce, read index, leader's clock), in
    /// arrival order.
    confirmed: VecDeque<(u64, u64, i64)>,
}

impl Writer {
    /// Where a stream opened by an edge at `hello_revision` starts on a node
    /// whose log head is `head`. A new edge (revision 0) gets a snapshot, so
    /// its view is replaced at once; an edge ahead of this node either meets
    /// a lagging node or a cluster whose history restarted lower (restored,
    /// rebuilt): only the leader can tell.
    pub fn start(hello_revision: u64, head: u64) -> Start {
        if hello_revision == 0 {
            Start::Snapshot
        } else if hello_revision > head {
            Start::AskLeader
        } else {
            Start::Resume
        }
    }

    /// A writer for an edge at `hello_revision`, started as `start` says
    /// (after [`Writer::placed`] for [`Start::AskLeader`]).
    pub fn new(hello_revision: u64, start: Start) -> Self {
        Self {
            cursor: hello_revision,
            force_snapshot: start == Start::Snapshot,
            confirmed: VecDeque::new(),
        }
    }

    /// For [`Start::AskLeader`]: an edge ahead of the cluster's commit index
    /// holds a view from another history and must be replaced; one ahead of
    /// this node only waits for it to catch up.
    pub fn placed(hello_revision: u64, cluster_commit: u64) -> Start {
        if hello_revision > cluster_commit {
            Start::Snapshot
        } else {
            Start::Resume
        }
    }

    /// The revision sent so far on this stream.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// What to send next from `log` (at most `max_changes` in a batch).
    pub fn next(&self, log: &ChangeLog, max_changes: usize) -> Next {
        if self.force_snapshot && log.head() > 0 {
            return Next::Snapshot;
        }
        match log.read(self.cursor, max_changes) {
            Read::Snapshot => Next::Snapshot,
            Read::Batch(b) => Next::Batch(b),
            Read::UpToDate => Next::Idle,
        }
    }

    /// A snapshot at `revision` was sent.
    pub fn sent_snapshot(&mut self, revision: u64) {
        self.cursor = revision;
        self.force_snapshot = false;
    }

    /// Everything up to `to` was sent (a batch, or the same range encoded by
    /// another stream).
    pub fn sent_batch(&mut self, to: u64) {
        self.cursor = to;
        self.force_snapshot = false;
    }

    /// Whether the next step must be a snapshot whatever the log holds.
    pub fn must_snapshot(&self) -> bool {
        self.force_snapshot
    }

    /// The leader confirmed `read_index` for probe `nonce` in a round that
    /// started after the probe arrived, and this node has applied it.
    pub fn confirmed(&mut self, nonce: u64, read_index: u64, leader_unix_ms: i64) {
        self.confirmed
            .push_back((nonce, read_index, leader_unix_ms));
    }

    /// Answers due now: confirmed probes, in order, whose read index this
    /// stream has sent everything up to. Each carries the cursor.
    pub fn replies_due(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Some(&(nonce, index, leader_unix_ms)) = self.confirmed.front() {
            if index > self.cursor {
                break;
            }
            self.confirmed.pop_front();
            out.push(Reply {
                nonce,
                revision: self.cursor,
                leader_unix_ms,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
