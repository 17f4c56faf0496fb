//! Shared fixtures of veto's fuzz targets: the key the seed tokens are
//! signed with, and an edge replica that knows it and is fresh.

use std::time::{Duration, Instant};

use veto_core::{EdgeChange, Kid};
use veto_feed::{Policy, Replica};

/// The seed tokens' signing key (fixed, so seeds verify).
pub fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

/// The seed tokens' key id.
pub const KID: Kid = Kid([1u8; 16]);

/// A time inside the seed tokens' validity.
pub const NOW: i64 = 1_800_000_000;

/// A fresh replica at revision 1 that knows [`signing_key`] as [`KID`].
pub fn replica() -> Replica {
    let mut r = Replica::new(Duration::from_secs(2), Policy::FailClosed, 64, 4096);
    let pk = signing_key().verifying_key().to_bytes();
    if r
        .install_snapshot(
            1,
            &[EdgeChange::KeyPublished {
                kid: KID,
                public: pk,
            }],
        )
        .is_err()
    {
        unreachable!("the fixed key is a valid point");
    }
    r.probe_sent(1, Instant::now());
    r.sync_reply(1, 1);
    r
}
