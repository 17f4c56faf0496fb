use super::*;
use ed25519_dalek::SigningKey;

const NOW: i64 = 1_800_000_000;

fn key() -> (Kid, SigningKey) {
    (Kid([1; 16]), SigningKey::from_bytes(&[7; 32]))
}

fn claims(n: u8, sub: &str, iat: i64) -> Claims {
    Claims {
        jti: Jti([n; 16]),
        sub: sub.into(),
        scope: "read".into(),
        iat,
        nbf: iat,
        exp: iat + 3600,
        fam: Jti([n; 16]),
        aud: None,
    }
}

fn fresh_replica(t0: Instant) -> Replica {
    let (kid, sk) = key();
    let mut r = Replica::new(Duration::from_secs(2), Policy::FailClosed, 1024, 4096);
    r.apply(&Batch {
        from: 0,
        to: 3,
        changes: vec![(
            2,
            EdgeChange::KeyPublished {
                kid,
                public: sk.verifying_key().to_bytes(),
            },
        )],
    })
    .unwrap();
    r.probe_sent(1, t0);
    assert!(r.sync_reply(1, 3));
    r
}

fn verify(r: &mut Replica, t: &str, now: Instant) -> Outcome {
    r.verify(t, &Requirements::default(), now, NOW).outcome
}

#[test]
fn every_revoke_kind_is_refused() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    let (kid, sk) = key();
    let a = token::encode(&claims(1, "alice", NOW - 10), kid, &sk);
    let b = token::encode(&claims(2, "bob", NOW - 10), kid, &sk);
    let c = token::encode(&claims(3, "carol", NOW - 10), kid, &sk);
    let d = token::encode(&claims(4, "dave", NOW - 10), kid, &sk);
    for t in [&a, &b, &c, &d] {
        assert_eq!(verify(&mut r, t, t0), Outcome::Valid);
    }
    r.apply(&Batch {
        from: 3,
        to: 6,
        changes: vec![
            (
                4,
                EdgeChange::TokenRevoked {
                    jti: Jti([1; 16]),
                    exp: NOW + 3600,
                    effective_at: NOW - 1,
                },
            ),
            (
                5,
                EdgeChange::SubjectRevoked {
                    sub: "bob".into(),
                    before: NOW - 10,
                    drop_after: NOW + 9999,
                },
            ),
            (
                6,
                EdgeChange::FamilyRevoked {
                    family: Jti([3; 16]),
                    drop_after: NOW + 9999,
                },
            ),
        ],
    })
    .unwrap();
    assert_eq!(verify(&mut r, &a, t0), Outcome::Revoked);
    assert_eq!(verify(&mut r, &b, t0), Outcome::Revoked);
    assert_eq!(verify(&mut r, &c, t0), Outcome::Revoked);
    assert_eq!(verify(&mut r, &d, t0), Outcome::Valid);
    r.apply(&Batch {
        from: 6,
        to: 7,
        changes: vec![(7, EdgeChange::KeyRefused { kid })],
    })
    .unwrap();
    assert_eq!(verify(&mut r, &d, t0), Outcome::UnknownKey);
}

#[test]
fn gaps_and_disorder_are_refused_whole() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    let bad = Batch {
        from: 5,
        to: 6,
        changes: vec![],
    };
    assert_eq!(r.apply(&bad), Err(Error::Gap { have: 3, from: 5 }));
    let disorder = Batch {
        from: 3,
        to: 6,
        changes: vec![
            (5, EdgeChange::Swept { cutoff: 0 }),
            (
                4,
                EdgeChange::TokenRevoked {
                    jti: Jti([9; 16]),
                    exp: NOW + 1,
                    effective_at: 0,
                },
            ),
        ],
    };
    assert_eq!(r.apply(&disorder), Err(Error::OutOfOrder));
    assert_eq!(r.revision(), 3);
    assert_eq!(r.revocations(), 0, "nothing applied from a refused batch");
}

#[test]
fn freshness_follows_answered_and_applied_probes() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    let (kid, sk) = key();
    let t = token::encode(&claims(1, "a", NOW - 10), kid, &sk);
    assert_eq!(
        verify(&mut r, &t, t0 + Duration::from_secs(2)),
        Outcome::Valid
    );
    assert_eq!(
        verify(&mut r, &t, t0 + Duration::from_millis(2001)),
        Outcome::Stale
    );
    // a reply for a revision not yet applied does not refresh until applied
    let t1 = t0 + Duration::from_secs(3);
    r.probe_sent(2, t1);
    assert!(r.sync_reply(2, 10));
    assert_eq!(verify(&mut r, &t, t1), Outcome::Stale);
    r.apply(&Batch {
        from: 3,
        to: 10,
        changes: vec![],
    })
    .unwrap();
    assert_eq!(
        verify(&mut r, &t, t1 + Duration::from_secs(1)),
        Outcome::Valid
    );
    // unknown nonce ignored
    assert!(!r.sync_reply(99, 10));
    // fail-open answers but marks stale
    let mut open = Replica::new(Duration::from_secs(1), Policy::FailOpen, 0, 4096);
    open.apply(&Batch {
        from: 0,
        to: 1,
        changes: vec![(
            1,
            EdgeChange::KeyPublished {
                kid,
                public: sk.verifying_key().to_bytes(),
            },
        )],
    })
    .unwrap();
    let v = open.verify(&t, &Requirements::default(), t0, NOW);
    assert_eq!(v.outcome, Outcome::Valid);
    assert!(v.stale);
}

#[test]
fn garbage_and_forgery_never_pass() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    for g in ["", "x", "a.b.c", &"a".repeat(10_000)] {
        assert_eq!(verify(&mut r, g, t0), Outcome::Malformed);
    }
    let other = SigningKey::from_bytes(&[8; 32]);
    let forged = token::encode(&claims(1, "a", NOW - 10), key().0, &other);
    assert_eq!(verify(&mut r, &forged, t0), Outcome::BadSignature);
    assert_eq!(
        verify(&mut r, &forged, t0),
        Outcome::BadSignature,
        "a failure is not cached"
    );
    let unknown = token::encode(&claims(1, "a", NOW - 10), Kid([5; 16]), &other);
    assert_eq!(verify(&mut r, &unknown, t0), Outcome::UnknownKey);
}

#[test]
fn sweep_drops_expired_entries() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    r.apply(&Batch {
        from: 3,
        to: 5,
        changes: vec![
            (
                4,
                EdgeChange::TokenRevoked {
                    jti: Jti([1; 16]),
                    exp: NOW,
                    effective_at: NOW - 5,
                },
            ),
            (
                5,
                EdgeChange::TokenRevoked {
                    jti: Jti([2; 16]),
                    exp: NOW + 100,
                    effective_at: NOW - 5,
                },
            ),
        ],
    })
    .unwrap();
    r.apply(&Batch {
        from: 5,
        to: 6,
        changes: vec![(6, EdgeChange::Swept { cutoff: NOW })],
    })
    .unwrap();
    assert_eq!(r.revocations(), 1);
}

#[test]
fn outcome_all_is_indexed_by_discriminant() {
    for (i, o) in Outcome::ALL.iter().enumerate() {
        assert_eq!(*o as usize, i);
        assert!(!o.label().is_empty());
    }
}
