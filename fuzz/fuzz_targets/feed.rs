//! The feed message decoder as an edge runs it: decode, convert each
//! change, apply the batch (or install the snapshot) to a replica. A batch
//! the replica refuses must leave it unchanged; one it takes moves it to
//! the batch's end revision.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use veto_feed::Batch;
use veto_proto::feed::change_from_pb;
use veto_proto::{feed_message::Msg, ChangeBatch, FeedMessage};
use veto_fuzz::replica;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = FeedMessage::decode(data) else {
        return;
    };
    let mut r = replica();
    let before = (r.revision(), r.revocations(), r.key_count());
    match m.msg {
        Some(Msg::Changes(b)) => {
            let Ok(changes) = b.changes.iter().map(change_from_pb).collect::<Result<Vec<_>, _>>() else {
                return;
            };
            let batch = Batch {
                from: b.from_revision,
                to: b.to_revision,
                changes,
            };
            match r.apply(&batch) {
                Ok(()) => assert_eq!(r.revision(), b.to_revision),
                Err(_) => assert_eq!((r.revision(), r.revocations(), r.key_count()), before),
            }
        }
        Some(Msg::Snapshot(c)) => {
            let Ok(b) = ChangeBatch::decode(&c.data[..]) else {
                return;
            };
            let Ok(changes) = b
                .changes
                .iter()
                .map(|c| change_from_pb(c).map(|(_, ch)| ch))
                .collect::<Result<Vec<_>, _>>()
            else {
                return;
            };
            match r.install_snapshot(c.revision, &changes) {
                Ok(()) => assert_eq!(r.revision(), c.revision),
                Err(_) => assert_eq!((r.revision(), r.revocations(), r.key_count()), before),
            }
        }
        Some(Msg::SyncReply(s)) => {
            r.probe_sent(s.nonce, Instant::now());
            r.sync_reply(s.nonce, s.revision);
        }
        _ => {}
    }
    let _ = r.verify("a.b.c", &Default::default(), Instant::now(), veto_fuzz::NOW);
});
