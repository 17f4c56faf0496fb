//! The server side of the feed: a bounded, in-memory log of edge changes by
//! revision, from which every edge stream reads at its own cursor.
//!
//! The state machine advances it on every applied entry (with or without
//! changes), so `head` is always the applied revision. Changes older than
//! `base` have been dropped: a cursor behind `base` needs a snapshot. A slow
//! edge therefore never holds memory on the server: it either catches up
//! from the log or is sent a snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use veto_core::EdgeChange;

use crate::Batch;

/// What a cursor reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The cursor is behind the retained log: send a snapshot.
    Snapshot,
    /// Nothing new after the cursor.
    UpToDate,
    /// Changes after the cursor.
    Batch(Batch),
}

/// Bounded log of edge changes.
#[derive(Debug)]
pub struct ChangeLog {
    base: u64,
    head: u64,
    entries: VecDeque<(u64, EdgeChange)>,
    applied_at: VecDeque<(u64, Instant)>,
    /// W3C trace contexts of traced revisions still in the log.
    traces: VecDeque<(u64, Arc<BTreeMap<String, String>>)>,
    capacity: usize,
}

/// Trace contexts kept at most (only traced commands have one).
const MAX_TRACES: usize = 4096;

impl ChangeLog {
    /// A log starting at `revision` (everything up to it is in the state),
    /// keeping at most `capacity` changes.
    pub fn new(revision: u64, capacity: usize) -> Self {
        Self {
            base: revision,
            head: revision,
            entries: VecDeque::new(),
            applied_at: VecDeque::new(),
            traces: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The applied revision.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Oldest cursor that can still be served without a snapshot.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Records revision `revision` applied at `now` with its changes.
    pub fn advance(&mut self, revision: u64, changes: Vec<EdgeChange>, now: Instant) {
        self.advance_traced(revision, changes, now, None);
    }

    /// [`ChangeLog::advance`] for a command that carried a trace context:
    /// the context rides with the revision's changes to every edge.
    pub fn advance_traced(
        &mut self,
        revision: u64,
        changes: Vec<EdgeChange>,
        now: Instant,
        trace: Option<&BTreeMap<String, String>>,
    ) {
        if revision <= self.head {
            return;
        }
        if let Some(t) = trace.filter(|_| !changes.is_empty()) {
            self.traces.push_back((revision, Arc::new(t.clone())));
            if self.traces.len() > MAX_TRACES {
                self.traces.pop_front();
            }
        }
        self.head = revision;
        for c in changes {
            self.entries.push_back((revision, c));
        }
        while self.entries.len() > self.capacity {
            if let Some((r, _)) = self.entries.pop_front() {
                // Everything at revision r must go together.
                while self.entries.front().is_some_and(|(n, _)| *n == r) {
                    self.entries.pop_front();
                }
                self.base = r;
            }
        }
        while self.traces.front().is_some_and(|(r, _)| *r <= self.base) {
            self.traces.pop_front();
        }
        self.applied_at.push_back((revision, now));
        while self.applied_at.len() > self.capacity {
            self.applied_at.pop_front();
        }
    }

    /// A snapshot was installed at `revision`: nothing before it is held.
    pub fn reset(&mut self, revision: u64) {
        self.entries.clear();
        self.applied_at.clear();
        self.traces.clear();
        self.base = revision;
        self.head = revision;
    }

    /// When `revision` (or the first later revision held) was applied here.
    pub fn applied_at(&self, revision: u64) -> Option<Instant> {
        let i = self.applied_at.partition_point(|(r, _)| *r < revision);
        self.applied_at.get(i).map(|(_, t)| *t)
    }

    /// Trace contexts of the traced revisions in `(from, to]`.
    pub fn traces(&self, from: u64, to: u64) -> Vec<(u64, Arc<BTreeMap<String, String>>)> {
        let i = self.traces.partition_point(|(r, _)| *r <= from);
        self.traces
            .iter()
            .skip(i)
            .take_while(|(r, _)| *r <= to)
            .cloned()
            .collect()
    }

    /// Reads up to about `max_changes` changes after `cursor`, never
    /// splitting a revision.
    pub fn read(&self, cursor: u64, max_changes: usize) -> Read {
        if cursor < self.base {
            return Read::Snapshot;
        }
        if cursor >= self.head {
            return Read::UpToDate;
        }
        let start = self.entries.partition_point(|(r, _)| *r <= cursor);
        let mut changes: Vec<(u64, EdgeChange)> = Vec::new();
        let mut to = self.head;
        for (r, c) in self.entries.iter().skip(start) {
            if changes.len() >= max_changes.max(1) && changes.last().is_some_and(|(l, _)| l != r) {
                to = changes.last().map(|(l, _)| *l).unwrap_or(self.head);
                break;
            }
            changes.push((*r, c.clone()));
        }
        Read::Batch(Batch {
            from: cursor,
            to,
            changes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veto_core::Jti;

    fn rv(n: u8) -> EdgeChange {
        EdgeChange::TokenRevoked {
            jti: Jti([n; 16]),
            exp: 10,
            effective_at: 0,
            grace_ms: 0,
        }
    }

    #[test]
    fn cursors_read_in_order_and_fall_back_to_snapshot() {
        let t = Instant::now();
        let mut log = ChangeLog::new(5, 3);
        log.advance(6, vec![rv(6)], t);
        log.advance(7, vec![], t);
        log.advance(8, vec![rv(8)], t);
        assert_eq!(
            log.read(5, 10),
            Read::Batch(Batch {
                from: 5,
                to: 8,
                changes: vec![(6, rv(6)), (8, rv(8))]
            })
        );
        assert_eq!(
            log.read(6, 10),
            Read::Batch(Batch {
                from: 6,
                to: 8,
                changes: vec![(8, rv(8))]
            })
        );
        assert_eq!(log.read(8, 10), Read::UpToDate);
        // limited reads stop at a revision boundary
        assert_eq!(
            log.read(5, 1),
            Read::Batch(Batch {
                from: 5,
                to: 6,
                changes: vec![(6, rv(6))]
            })
        );
        // overflow drops the oldest: a cursor behind it needs a snapshot
        log.advance(9, vec![rv(9)], t);
        log.advance(10, vec![rv(10)], t);
        assert_eq!(log.base(), 6);
        assert_eq!(log.read(5, 10), Read::Snapshot);
        assert!(matches!(log.read(6, 10), Read::Batch(_)));
        log.reset(20);
        assert_eq!(log.read(10, 10), Read::Snapshot);
        assert_eq!(log.read(20, 10), Read::UpToDate);
    }

    #[test]
    fn trace_contexts_ride_with_their_revision_and_leave_with_it() {
        let t = Instant::now();
        let mut log = ChangeLog::new(0, 2);
        let tc: BTreeMap<String, String> = [("traceparent".to_string(), "00-ab-cd-01".to_string())]
            .into_iter()
            .collect();
        log.advance_traced(1, vec![rv(1)], t, Some(&tc));
        log.advance_traced(2, vec![], t, Some(&tc)); // no changes: nothing to carry
        log.advance(3, vec![rv(3)], t);
        let got = log.traces(0, 3);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1);
        assert_eq!(
            got[0].1.get("traceparent").map(String::as_str),
            Some("00-ab-cd-01")
        );
        assert!(log.traces(1, 3).is_empty());
        // revision 1 falls out of the bounded log: its context goes with it
        log.advance(4, vec![rv(4)], t);
        log.advance(5, vec![rv(5)], t);
        assert!(log.traces(0, 5).is_empty());
    }
}
