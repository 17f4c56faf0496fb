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
        rev: 1,
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
                    grace_ms: 0,
                },
            ),
            (
                5,
                EdgeChange::SubjectRevoked {
                    sub: "bob".into(),
                    before: NOW - 10,
                    drop_after: NOW + 9999,
                    before_revision: 0,
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
                    grace_ms: 0,
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
                    grace_ms: 0,
                },
            ),
            (
                5,
                EdgeChange::TokenRevoked {
                    jti: Jti([2; 16]),
                    exp: NOW + 100,
                    effective_at: NOW - 5,
                    grace_ms: 0,
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

fn verify_at(r: &mut Replica, t: &str, now: Instant, now_unix: i64) -> Outcome {
    r.verify(t, &Requirements::default(), now, now_unix).outcome
}

fn revoked(n: u8, grace_ms: u64) -> EdgeChange {
    EdgeChange::TokenRevoked {
        jti: Jti([n; 16]),
        exp: NOW + 3600,
        // The leader's clock: far in this edge's future, as if the edge's
        // clock were 90 s behind. It must play no part.
        effective_at: NOW + 90,
        grace_ms,
    }
}

#[test]
fn a_revoke_takes_effect_at_apply_whatever_the_edge_clock_says() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0).with_leeway(Leeway {
        nbf_seconds: 120,
        exp_seconds: 0,
    });
    let (kid, sk) = key();
    let a = token::encode(&claims(1, "alice", NOW), kid, &sk);
    for skew in [-90, 0, 90] {
        assert_eq!(verify_at(&mut r, &a, t0, NOW + skew), Outcome::Valid);
    }
    r.apply(&Batch {
        from: 3,
        to: 4,
        changes: vec![(4, revoked(1, 0))],
    })
    .unwrap();
    for skew in [-90, 0, 90] {
        assert_eq!(
            verify_at(&mut r, &a, t0, NOW + skew),
            Outcome::Revoked,
            "edge clock {skew:+} s"
        );
    }
}

#[test]
fn a_grace_period_runs_on_the_monotonic_clock_from_a_proven_moment() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0); // fresh_at = t0
    let (kid, sk) = key();
    let a = token::encode(&claims(1, "alice", NOW), kid, &sk);
    // Applied 400 ms after the last proof of freshness: the commit came
    // after t0, so the 30 s grace ends at t0 + 30 s at the latest.
    r.apply(&Batch {
        from: 3,
        to: 4,
        changes: vec![(4, revoked(1, 30_000))],
    })
    .unwrap();
    let during = t0 + Duration::from_millis(29_999);
    let end = t0 + Duration::from_secs(30);
    // (The probes keep the replica fresh at these instants.)
    r.probe_sent(2, during - Duration::from_millis(10));
    assert!(r.sync_reply(2, 4));
    // The edge's wall clock (30 s behind here) plays no part.
    assert_eq!(verify_at(&mut r, &a, during, NOW - 30), Outcome::Valid);
    assert_eq!(verify_at(&mut r, &a, end, NOW - 30), Outcome::Revoked);
    // A later immediate revoke of the same token wins at once.
    let b = token::encode(&claims(2, "bob", NOW), kid, &sk);
    r.apply(&Batch {
        from: 4,
        to: 6,
        changes: vec![(5, revoked(2, 60_000)), (6, revoked(2, 0))],
    })
    .unwrap();
    assert_eq!(verify_at(&mut r, &b, during, NOW), Outcome::Revoked);
}

#[test]
fn no_grace_without_a_proof_of_when_the_change_was_committed() {
    let t0 = Instant::now();
    let (kid, sk) = key();
    let a = token::encode(&claims(1, "alice", NOW), kid, &sk);
    // A replica never proven fresh applies a grace revoke as immediate.
    let mut r = Replica::new(Duration::from_secs(2), Policy::FailOpen, 1024, 4096);
    r.apply(&Batch {
        from: 0,
        to: 2,
        changes: vec![
            (
                1,
                EdgeChange::KeyPublished {
                    kid,
                    public: sk.verifying_key().to_bytes(),
                },
            ),
            (2, revoked(1, 30_000)),
        ],
    })
    .unwrap();
    assert_eq!(verify_at(&mut r, &a, t0, NOW), Outcome::Revoked);
    // So does a snapshot, whatever the replica had proven before.
    let mut r = fresh_replica(t0);
    r.install_snapshot(
        9,
        &[
            EdgeChange::KeyPublished {
                kid,
                public: sk.verifying_key().to_bytes(),
            },
            revoked(1, 30_000),
        ],
    )
    .unwrap();
    r.probe_sent(5, t0);
    assert!(r.sync_reply(5, 9));
    assert_eq!(verify_at(&mut r, &a, t0, NOW), Outcome::Revoked);
}

#[test]
fn what_the_cluster_swept_stays_expired_on_a_slow_clock() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    let (kid, sk) = key();
    let mut c = claims(1, "alice", NOW - 3600);
    c.exp = NOW - 100;
    let a = token::encode(&c, kid, &sk);
    r.apply(&Batch {
        from: 3,
        to: 5,
        changes: vec![
            (
                4,
                EdgeChange::TokenRevoked {
                    jti: Jti([1; 16]),
                    exp: NOW - 100,
                    effective_at: NOW - 200,
                    grace_ms: 0,
                },
            ),
            (5, EdgeChange::Swept { cutoff: NOW - 50 }),
        ],
    })
    .unwrap();
    assert_eq!(r.revocations(), 0, "the revocation is dropped");
    // An edge 1000 s behind still refuses the token: expired on the
    // cluster's clock.
    assert_eq!(verify_at(&mut r, &a, t0, NOW - 1000), Outcome::Expired);
    // A snapshot carries the same horizon.
    let mut s = fresh_replica(t0);
    s.install_snapshot(
        9,
        &[
            EdgeChange::Swept { cutoff: NOW - 50 },
            EdgeChange::KeyPublished {
                kid,
                public: sk.verifying_key().to_bytes(),
            },
        ],
    )
    .unwrap();
    s.probe_sent(5, t0);
    assert!(s.sync_reply(5, 9));
    assert_eq!(verify_at(&mut s, &a, t0, NOW - 1000), Outcome::Expired);
}

#[test]
fn subject_cutoffs_by_revision_spare_tokens_issued_after() {
    let t0 = Instant::now();
    let mut r = fresh_replica(t0);
    let (kid, sk) = key();
    let mut old = claims(1, "bob", NOW);
    old.rev = 6;
    let mut new = claims(2, "bob", NOW); // the same second
    new.rev = 7;
    let old = token::encode(&old, kid, &sk);
    let new = token::encode(&new, kid, &sk);
    r.apply(&Batch {
        from: 3,
        to: 7,
        changes: vec![(
            7,
            EdgeChange::SubjectRevoked {
                sub: "bob".into(),
                before: i64::MIN,
                drop_after: NOW + 9999,
                before_revision: 7,
            },
        )],
    })
    .unwrap();
    assert_eq!(verify(&mut r, &old, t0), Outcome::Revoked);
    assert_eq!(verify(&mut r, &new, t0), Outcome::Valid);
}

#[test]
fn audience_rule_and_leeway_at_the_edge() {
    let t0 = Instant::now();
    let (kid, sk) = key();
    let mut r = fresh_replica(t0);
    let mut c = claims(1, "alice", NOW);
    c.aud = Some("payments".into());
    let t = token::encode(&c, kid, &sk);
    let ask = |aud: Option<&'static str>| Requirements {
        audience: aud,
        scopes: &[],
    };
    let o = |r: &mut Replica, aud, now_unix| r.verify(&t, &ask(aud), t0, now_unix).outcome;
    assert_eq!(o(&mut r, None, NOW), Outcome::WrongAudience);
    assert_eq!(o(&mut r, Some("orders"), NOW), Outcome::WrongAudience);
    assert_eq!(o(&mut r, Some("payments"), NOW), Outcome::Valid);
    // 90 s behind: refused with the default 60 s leeway, accepted with 120 s.
    assert_eq!(o(&mut r, Some("payments"), NOW - 90), Outcome::NotYetValid);
    let mut r = r.with_leeway(Leeway {
        nbf_seconds: 120,
        exp_seconds: 0,
    });
    assert_eq!(o(&mut r, Some("payments"), NOW - 90), Outcome::Valid);
}
