//! The token decoder, then the edge's whole verify path: any bytes give an
//! answer, never a panic, and only a token this key signed is valid.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use veto_core::token::{self, Requirements};
use veto_fuzz::{replica, signing_key, NOW};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let signed = match token::parse(s, 4096) {
        Ok(p) => {
            let ok = p.verify_signature(&signing_key().verifying_key()).is_ok();
            let _ = token::check_claims(
                &p.claims,
                NOW,
                &Requirements::default(),
                token::Leeway::default(),
            );
            ok
        }
        Err(_) => false,
    };
    let mut r = replica();
    let v = r.verify(s, &Requirements::default(), Instant::now(), NOW);
    if v.outcome == veto_feed::Outcome::Valid {
        assert!(
            signed,
            "the edge accepted a token whose signature does not verify"
        );
    }
});
