//! The Raft command decoder and the state machine: bytes that decode (one
//! command, or a JSON array of them, as the seeds are) apply
//! deterministically on two replicas (same answers, same digest), and the
//! state survives a snapshot round trip. Bytes that are not commands go to
//! the snapshot decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veto_core::{Command, State};

fuzz_target!(|data: &[u8]| {
    let cmds = match serde_json::from_slice::<Vec<Command>>(data) {
        Ok(v) => v,
        Err(_) => match serde_json::from_slice::<Command>(data) {
            Ok(c) => vec![c],
            Err(_) => {
                let _ = State::from_snapshot_bytes(data);
                return;
            }
        },
    };
    let mut a = State::default();
    let mut b = State::default();
    for (i, cmd) in cmds.iter().enumerate() {
        let rev = i as u64 + 1;
        let (ra, rb) = (a.apply(rev, cmd), b.apply(rev, cmd));
        assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
    }
    assert_eq!(a.digest(), b.digest());
    let Ok(c) = State::from_snapshot_bytes(&a.to_snapshot_bytes()) else {
        panic!("a state's own snapshot does not decode");
    };
    assert_eq!(c.digest(), a.digest());
});
