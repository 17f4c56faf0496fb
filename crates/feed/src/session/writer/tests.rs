use std::time::Instant;

use veto_core::{EdgeChange, Jti};

use super::*;

fn revoked(n: u8) -> EdgeChange {
    EdgeChange::TokenRevoked {
        jti: Jti([n; 16]),
        exp: 10,
        effective_at: 0,
        grace_ms: 0,
    }
}

/// A log at revision 0 with one change at each of 1..=n.
fn log_to(n: u64, capacity: usize) -> ChangeLog {
    let mut log = ChangeLog::new(0, capacity);
    for r in 1..=n {
        log.advance(r, vec![revoked(r as u8)], Instant::now());
    }
    log
}

#[test]
fn a_new_edge_starts_with_a_snapshot() {
    let log = log_to(3, 100);
    let start = Writer::start(0, log.head());
    assert_eq!(start, Start::Snapshot);
    let mut w = Writer::new(0, start);
    // Even though the log could serve (0, 3] as a batch.
    assert_eq!(w.next(&log, 100), Next::Snapshot);
    w.sent_snapshot(3);
    assert_eq!(w.cursor(), 3);
    assert_eq!(w.next(&log, 100), Next::Idle);
}

#[test]
fn a_new_edge_on_an_empty_cluster_just_waits() {
    let log = ChangeLog::new(0, 100);
    let w = Writer::new(0, Writer::start(0, 0));
    assert_eq!(w.next(&log, 100), Next::Idle);
}

#[test]
fn batches_follow_the_cursor_in_order() {
    let log = log_to(5, 100);
    let mut w = Writer::new(2, Writer::start(2, log.head()));
    let Next::Batch(b) = w.next(&log, 2) else {
        panic!("expected a batch");
    };
    assert_eq!((b.from, b.to), (2, 4));
    assert_eq!(
        b.changes.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        [3, 4]
    );
    w.sent_batch(b.to);
    let Next::Batch(b) = w.next(&log, 2) else {
        panic!("expected a batch");
    };
    assert_eq!((b.from, b.to), (4, 5));
    w.sent_batch(b.to);
    assert_eq!(w.next(&log, 2), Next::Idle);
}

#[test]
fn a_cursor_behind_the_retained_log_gets_a_snapshot() {
    let log = log_to(10, 3); // keeps only the last 3 changes
    assert!(log.base() > 1);
    let mut w = Writer::new(1, Writer::start(1, log.head()));
    assert_eq!(w.next(&log, 100), Next::Snapshot);
    w.sent_snapshot(10);
    assert_eq!(w.next(&log, 100), Next::Idle);
}

#[test]
fn an_edge_ahead_of_the_cluster_is_replaced_and_one_ahead_of_this_node_waits() {
    let log = log_to(5, 100);
    assert_eq!(Writer::start(9, log.head()), Start::AskLeader);
    // The cluster's commit index is 7: this node lags, the edge's view is real.
    assert_eq!(Writer::placed(6, 7), Start::Resume);
    // The cluster never got to 9: another history.
    let start = Writer::placed(9, 7);
    assert_eq!(start, Start::Snapshot);
    let w = Writer::new(9, start);
    assert_eq!(w.next(&log, 100), Next::Snapshot);
}

#[test]
fn a_probe_is_answered_only_once_the_stream_sent_its_read_index() {
    let log = log_to(5, 100);
    let mut w = Writer::new(2, Start::Resume);
    w.confirmed(7, 4, 1_000);
    assert!(w.replies_due().is_empty(), "revision 4 is not sent yet");
    let Next::Batch(b) = w.next(&log, 1) else {
        panic!("expected a batch");
    };
    w.sent_batch(b.to); // cursor 3
    assert!(w.replies_due().is_empty(), "revision 4 is not sent yet");
    let Next::Batch(b) = w.next(&log, 100) else {
        panic!("expected a batch");
    };
    w.sent_batch(b.to); // cursor 5
    assert_eq!(
        w.replies_due(),
        vec![Reply {
            nonce: 7,
            revision: 5,
            leader_unix_ms: 1_000,
        }],
        "answered with everything sent, not just the read index"
    );
    assert!(w.replies_due().is_empty(), "answered once");
}

#[test]
fn replies_keep_probe_order() {
    let mut w = Writer::new(5, Start::Resume);
    w.confirmed(1, 7, 0);
    w.confirmed(2, 3, 0);
    // Probe 2's index is sent, but probe 1 came first and is not: both wait,
    // so an edge never sees a newer probe answered before an older one.
    assert!(w.replies_due().is_empty());
    w.sent_batch(7);
    let nonces: Vec<u64> = w.replies_due().iter().map(|r| r.nonce).collect();
    assert_eq!(nonces, [1, 2]);
}
