use std::time::{Duration, Instant};

use sha2::Digest;
use veto_core::{EdgeChange, Jti, Kid};

use super::*;
use crate::Policy;

const B: Duration = Duration::from_secs(2);

fn replica() -> Replica {
    Replica::new(B, Policy::FailClosed, 16, 4096)
}

fn key_change() -> EdgeChange {
    EdgeChange::KeyPublished {
        kid: Kid([1; 16]),
        public: ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    }
}

/// A decoder that reads one key change per 32-byte block (enough to drive
/// the session's snapshot rules without protobuf).
fn decoder() -> SnapshotDecoder {
    Box::new(|bytes: &[u8]| {
        if !bytes.len().is_multiple_of(32) {
            return Err("not whole blocks".into());
        }
        Ok(bytes.chunks(32).map(|_| key_change()).collect())
    })
}

fn session(now: Instant) -> EdgeSession {
    EdgeSession::new(B, 1 << 20, decoder(), now, 100)
}

fn batch(from: u64, to: u64, revs: &[u64]) -> FromServer {
    FromServer::Batch(Batch {
        from,
        to,
        changes: revs
            .iter()
            .map(|r| {
                (
                    *r,
                    EdgeChange::TokenRevoked {
                        jti: Jti([*r as u8; 16]),
                        exp: i64::MAX,
                        effective_at: 0,
                        grace_ms: 0,
                    },
                )
            })
            .collect(),
    })
}

fn chunk(offset: u64, data: &[u8], last: bool, sha: Vec<u8>) -> FromServer {
    FromServer::SnapshotChunk {
        revision: 9,
        offset,
        data: data.to_vec(),
        last,
        sha256: sha,
    }
}

#[test]
fn hello_resumes_from_the_replica_unless_resyncing() {
    let mut r = replica();
    let t = Instant::now();
    let mut s = session(t);
    s.handle(&mut r, batch(0, 4, &[2]), t).unwrap();
    assert_eq!(EdgeSession::hello_revision(&r, false), 4);
    assert_eq!(EdgeSession::hello_revision(&r, true), 0);
}

#[test]
fn batches_apply_in_order_and_a_gap_or_disorder_ends_the_session() {
    let mut r = replica();
    let t = Instant::now();
    let mut s = session(t);
    assert_eq!(
        s.handle(&mut r, batch(0, 3, &[1, 3]), t),
        Ok(Handled::Applied(3))
    );
    let gap = s.handle(&mut r, batch(5, 6, &[6]), t);
    assert!(matches!(gap, Err(End::Resync(_))), "{gap:?}");
    assert_eq!(r.revision(), 3, "a refused batch changes nothing");
    let disorder = s.handle(&mut r, batch(3, 6, &[6, 5]), t);
    assert!(matches!(disorder, Err(End::Resync(_))), "{disorder:?}");
    assert_eq!(r.revision(), 3);
    assert!(matches!(
        s.handle(&mut r, FromServer::Resync("history".into()), t),
        Err(End::Resync(_))
    ));
    assert!(matches!(
        s.handle(&mut r, FromServer::Unknown, t),
        Err(End::Resync(_))
    ));
}

#[test]
fn a_snapshot_installs_only_whole_in_order_and_under_its_checksum() {
    let t = Instant::now();
    let data = [0u8; 64];
    let sha = sha2::Sha256::digest(data).to_vec();
    // In order, checksum right: installed at its revision.
    let mut r = replica();
    let mut s = session(t);
    assert_eq!(
        s.handle(&mut r, chunk(0, &data[..32], false, vec![]), t),
        Ok(Handled::Nothing)
    );
    assert_eq!(r.revision(), 0, "nothing applies before the last chunk");
    assert_eq!(
        s.handle(&mut r, chunk(32, &data[32..], true, sha.clone()), t),
        Ok(Handled::Applied(9))
    );
    assert_eq!((r.revision(), r.key_count()), (9, 1));
    // A chunk out of order.
    let mut r = replica();
    let mut s = session(t);
    s.handle(&mut r, chunk(0, &data[..32], false, vec![]), t)
        .unwrap();
    assert!(matches!(
        s.handle(&mut r, chunk(0, &data[32..], true, sha.clone()), t),
        Err(End::Resync(_))
    ));
    // A wrong checksum.
    let mut r = replica();
    let mut s = session(t);
    assert!(matches!(
        s.handle(&mut r, chunk(0, &data, true, vec![0; 32]), t),
        Err(End::Resync(_))
    ));
    assert_eq!(r.revision(), 0);
    // Over the size limit.
    let mut r = replica();
    let mut s = EdgeSession::new(B, 40, decoder(), t, 0);
    assert!(matches!(
        s.handle(&mut r, chunk(0, &data, true, sha.clone()), t),
        Err(End::Resync(_))
    ));
    // Bytes that do not decode.
    let odd = [1u8; 33];
    let mut r = replica();
    let mut s = session(t);
    assert!(matches!(
        s.handle(
            &mut r,
            chunk(0, &odd, true, sha2::Sha256::digest(odd).to_vec()),
            t
        ),
        Err(End::Resync(_))
    ));
    assert_eq!(r.revision(), 0);
}

#[test]
fn an_answer_proves_freshness_only_once_its_revision_is_applied() {
    let mut r = replica();
    let t0 = Instant::now();
    let mut s = session(t0);
    let n = s.probe(&mut r, t0, 1_000).unwrap();
    let answered = s.handle(
        &mut r,
        FromServer::SyncReply {
            nonce: n,
            revision: 4,
            leader_unix_ms: 0,
        },
        t0 + Duration::from_millis(10),
    );
    assert_eq!(answered, Ok(Handled::Answered(None)));
    assert!(!r.freshness(t0).fresh, "revision 4 is not applied yet");
    s.handle(&mut r, batch(0, 4, &[4]), t0).unwrap();
    assert!(r.freshness(t0).fresh);
    assert_eq!(r.fresh_at(), Some(t0), "fresh from the probe's send time");
}

#[test]
fn no_answer_within_the_bound_switches_servers() {
    let mut r = replica();
    let t0 = Instant::now();
    let mut s = session(t0);
    // Probes keep going while the session is young.
    assert!(s.probe(&mut r, t0 + B, 0).is_ok());
    assert_eq!(
        s.probe(&mut r, t0 + B + Duration::from_millis(1), 0),
        Err(End::NotFresh)
    );
    // An answer restarts the count.
    let mut s = session(t0);
    let n = s.probe(&mut r, t0, 0).unwrap();
    let t1 = t0 + Duration::from_secs(1);
    s.handle(
        &mut r,
        FromServer::SyncReply {
            nonce: n,
            revision: 0,
            leader_unix_ms: 0,
        },
        t1,
    )
    .unwrap();
    assert!(s.probe(&mut r, t1 + B, 0).is_ok());
    assert_eq!(
        s.probe(&mut r, t1 + B + Duration::from_millis(1), 0),
        Err(End::NotFresh)
    );
    // An answer to an unknown nonce proves nothing.
    let mut s = session(t0);
    s.probe(&mut r, t0, 0).unwrap();
    s.handle(
        &mut r,
        FromServer::SyncReply {
            nonce: 12345,
            revision: 0,
            leader_unix_ms: 0,
        },
        t1,
    )
    .unwrap();
    assert_eq!(
        s.probe(&mut r, t0 + B + Duration::from_millis(1), 0),
        Err(End::NotFresh)
    );
}

#[test]
fn a_reply_carrying_the_leader_clock_is_a_clock_sample() {
    let mut r = replica();
    let t0 = Instant::now();
    let mut s = session(t0);
    let n = s.probe(&mut r, t0, 10_000).unwrap();
    let got = s
        .handle(
            &mut r,
            FromServer::SyncReply {
                nonce: n,
                revision: 0,
                leader_unix_ms: 100_020,
            },
            t0 + Duration::from_millis(40),
        )
        .unwrap();
    let Handled::Answered(Some(sample)) = got else {
        panic!("{got:?}");
    };
    let (offset, uncertainty) = sample.offset_ms();
    assert!((offset - 90_000.0).abs() < 1e-6, "{offset}");
    assert!((uncertainty - 20.0).abs() < 1e-6, "{uncertainty}");
}

#[test]
fn acks_are_paced_and_the_newest_revision_wins() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(s.after_run(None, t0), AckPlan::None);
    // The first ack goes at once.
    assert_eq!(
        s.after_run(Some(3), t0),
        AckPlan::Now(Ack {
            revision: 3,
            delay: Duration::ZERO
        })
    );
    // One due 1 ms later waits for the interval...
    let t1 = t0 + Duration::from_millis(1);
    assert_eq!(s.after_run(Some(4), t1), AckPlan::At(t0 + ACK_INTERVAL));
    // ...and a newer revision replaces it without another timer.
    let t2 = t0 + Duration::from_millis(2);
    assert_eq!(s.after_run(Some(6), t2), AckPlan::None);
    assert!(s.ack_pending());
    let fire = t0 + ACK_INTERVAL;
    assert_eq!(
        s.ack_due(fire),
        Some(Ack {
            revision: 6,
            delay: fire - t2
        }),
        "the ack carries how long it waited after the apply"
    );
    assert_eq!(s.ack_due(fire), None);
    // After the interval, the next goes at once again.
    let later = fire + ACK_INTERVAL;
    assert!(matches!(
        s.after_run(Some(7), later),
        AckPlan::Now(Ack { revision: 7, .. })
    ));
}
