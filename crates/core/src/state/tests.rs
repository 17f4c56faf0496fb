use super::*;
use crate::command::{Actor, Command, NewToken, Rejection, Response};

const T0: i64 = 1_700_000_000;

fn op() -> Actor {
    Actor("test".into())
}

struct Fx {
    st: State,
    rev: u64,
    kid: Kid,
    trail: Vec<crate::audit::ChainedEvent>,
}

impl Fx {
    fn new() -> Self {
        let mut fx = Fx {
            st: State::default(),
            rev: 0,
            kid: Kid([1; 16]),
            trail: Vec::new(),
        };
        fx.apply(Command::PublishKey {
            kid: fx.kid,
            public: [0; 32],
            sealed: vec![1, 2],
            at: T0,
            actor: op(),
        });
        fx.apply(Command::ActivateKey {
            kid: fx.kid,
            at: T0,
            actor: op(),
        });
        fx
    }

    fn apply(&mut self, c: Command) -> Response {
        self.rev += 1;
        let r = self.st.apply(self.rev, &c);
        self.trail.extend(self.st.take_audit());
        r
    }

    /// The trail's events matching `q`, up to its limit, and whether more match.
    fn audit(&self, q: &crate::audit::AuditQuery<'_>) -> (Vec<&crate::audit::AuditEvent>, bool) {
        let mut it = self.trail.iter().map(|c| &c.event).filter(|e| q.matches(e));
        let page: Vec<_> = it.by_ref().take(q.limit).collect();
        let more = it.next().is_some();
        (page, more)
    }

    fn token(&self, n: u8, sub: &str, iat: i64, ttl: i64) -> NewToken {
        let jti = Jti([n; 16]);
        NewToken {
            jti,
            sub: sub.into(),
            scopes: vec!["read".into()],
            aud: None,
            iat,
            nbf: iat,
            exp: iat + ttl,
            fam: jti,
            kid: self.kid,
            rev: self.rev,
            owner: String::new(),
            description: String::new(),
            labels: Default::default(),
            refresh_key: String::new(),
        }
    }

    fn issue_labelled(&mut self, n: u8, owner: &str, labels: &[(&str, &str)]) -> Jti {
        let mut t = self.token(n, "svc", T0, 3600);
        t.owner = owner.into();
        t.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = self.apply(Command::Issue {
            token: t,
            actor: op(),
        });
        assert!(matches!(r, Response::Issued { .. }), "{r:?}");
        Jti([n; 16])
    }

    fn issue(&mut self, n: u8, sub: &str, iat: i64) -> Jti {
        let t = self.token(n, sub, iat, 3600);
        let r = self.apply(Command::Issue {
            token: t,
            actor: op(),
        });
        assert!(matches!(r, Response::Issued { .. }), "{r:?}");
        Jti([n; 16])
    }

    fn status(&self, jti: Jti, now: i64) -> TokenStatus {
        self.st.status(self.st.token(&jti).unwrap(), now).0
    }
}

#[test]
fn revoke_token_is_idempotent_and_unknown_is_not_found() {
    let mut fx = Fx::new();
    let a = fx.issue(1, "alice", T0);
    let r1 = fx.apply(Command::RevokeToken {
        jti: a,
        reason: "leak".into(),
        at: T0 + 1,
        actor: op(),
        presented: None,
    });
    let Response::Revoked {
        revision: first,
        already: false,
    } = r1
    else {
        panic!("{r1:?}")
    };
    let r2 = fx.apply(Command::RevokeToken {
        jti: a,
        reason: "again".into(),
        at: T0 + 2,
        actor: op(),
        presented: None,
    });
    assert_eq!(
        r2,
        Response::Revoked {
            revision: first,
            already: true
        }
    );
    assert_eq!(fx.status(a, T0 + 2), TokenStatus::Revoked);
    let before = fx.st.clone();
    let r3 = fx.apply(Command::RevokeToken {
        jti: Jti([9; 16]),
        reason: String::new(),
        at: T0,
        actor: op(),
        presented: None,
    });
    assert!(matches!(
        r3,
        Response::Rejected {
            rejection: Rejection::NotFound { .. },
            ..
        }
    ));
    // only the revision moved
    let mut b = before;
    b.revision = fx.st.revision;
    assert_eq!(b, fx.st);
}

#[test]
fn revoke_subject_cuts_off_tokens_issued_up_to_the_time() {
    let mut fx = Fx::new();
    let old = fx.issue(1, "bob", T0);
    let same_second = fx.issue(2, "bob", T0 + 10);
    let other = fx.issue(3, "carol", T0);
    fx.apply(Command::RevokeSubject {
        sub: "bob".into(),
        before: T0 + 10,
        by_revision: false,
        drop_after: T0 + 10 + 86_400,
        reason: "fired".into(),
        at: T0 + 10,
        actor: op(),
    });
    let newer = fx.issue(4, "bob", T0 + 11);
    assert_eq!(fx.status(old, T0 + 20), TokenStatus::Revoked);
    assert_eq!(fx.status(same_second, T0 + 20), TokenStatus::Revoked);
    assert_eq!(fx.status(other, T0 + 20), TokenStatus::Active);
    assert_eq!(fx.status(newer, T0 + 20), TokenStatus::Active);
    // an earlier cutoff is a no-op returning the first revision
    let r = fx.apply(Command::RevokeSubject {
        sub: "bob".into(),
        before: T0,
        by_revision: false,
        drop_after: T0 + 86_400,
        reason: String::new(),
        at: T0 + 12,
        actor: op(),
    });
    assert!(matches!(r, Response::Revoked { already: true, .. }));
}

#[test]
fn refresh_then_family_revoke() {
    let mut fx = Fx::new();
    let a = fx.issue(1, "dave", T0);
    let mut succ = fx.token(2, "dave", T0 + 5, 3600);
    succ.fam = a;
    let r = fx.apply(Command::Refresh {
        predecessor: a,
        successor: succ.clone(),
        revoke_at: T0 + 65,
        at: T0 + 5,
        actor: op(),
    });
    assert!(matches!(r, Response::Issued { .. }), "{r:?}");
    assert_eq!(fx.status(a, T0 + 30), TokenStatus::RevokePending);
    assert_eq!(fx.status(a, T0 + 65), TokenStatus::Revoked);
    assert_eq!(fx.status(succ.jti, T0 + 65), TokenStatus::Active);
    // refreshing the predecessor again is refused (reuse)
    let mut again = fx.token(3, "dave", T0 + 6, 3600);
    again.fam = a;
    let r = fx.apply(Command::Refresh {
        predecessor: a,
        successor: again,
        revoke_at: T0 + 6,
        at: T0 + 6,
        actor: op(),
    });
    assert!(matches!(
        r,
        Response::Rejected {
            rejection: Rejection::FailedPrecondition(_),
            ..
        }
    ));
    // revoking the family kills every member
    let r = fx.apply(Command::RevokeFamily {
        family: a,
        drop_after: T0 + 90_000,
        reason: "reuse".into(),
        at: T0 + 7,
        actor: op(),
    });
    assert!(matches!(r, Response::Revoked { already: false, .. }));
    assert_eq!(fx.status(succ.jti, T0 + 8), TokenStatus::Revoked);
    let r = fx.apply(Command::RevokeFamily {
        family: Jti([0xee; 16]),
        drop_after: 0,
        reason: String::new(),
        at: T0,
        actor: op(),
    });
    assert!(matches!(
        r,
        Response::Rejected {
            rejection: Rejection::NotFound { .. },
            ..
        }
    ));
}

#[test]
fn revoke_key_revokes_its_tokens_and_stops_issuance() {
    let mut fx = Fx::new();
    let a = fx.issue(1, "erin", T0);
    let kid = fx.kid;
    let r = fx.apply(Command::RevokeKey {
        kid,
        reason: "compromised".into(),
        at: T0 + 1,
        actor: op(),
    });
    assert!(matches!(r, Response::Revoked { already: false, .. }));
    assert_eq!(fx.status(a, T0 + 2), TokenStatus::Revoked);
    assert!(fx.st.active_key().is_none());
    let t = fx.token(2, "erin", T0 + 2, 60);
    let r = fx.apply(Command::Issue {
        token: t,
        actor: op(),
    });
    assert!(matches!(r, Response::Rejected { .. }));
    assert!(fx.st.key(&kid).unwrap().sealed.is_empty());
}

#[test]
fn staged_rotation() {
    let mut fx = Fx::new();
    let old = fx.kid;
    fx.issue(1, "f", T0);
    let new = Kid([2; 16]);
    fx.apply(Command::PublishKey {
        kid: new,
        public: [1; 32],
        sealed: vec![3],
        at: T0,
        actor: op(),
    });
    assert_eq!(fx.st.key(&new).unwrap().state, KeyState::Published);
    assert_eq!(fx.st.active_key().unwrap().kid, old);
    fx.apply(Command::ActivateKey {
        kid: new,
        at: T0 + 1,
        actor: op(),
    });
    assert_eq!(fx.st.key(&old).unwrap().state, KeyState::Retiring);
    assert_eq!(fx.st.active_key().unwrap().kid, new);
    // tokens signed by the old key are unexpired: retire refused unless forced
    let r = fx.apply(Command::RetireKey {
        kid: old,
        force: false,
        at: T0 + 2,
        actor: op(),
    });
    assert!(matches!(r, Response::Rejected { .. }));
    let r = fx.apply(Command::RetireKey {
        kid: old,
        force: false,
        at: T0 + 3600,
        actor: op(),
    });
    assert!(matches!(r, Response::KeyChanged { .. }), "{r:?}");
    assert_eq!(fx.st.key(&old).unwrap().state, KeyState::Retired);
    // the active key can't be retired
    let r = fx.apply(Command::RetireKey {
        kid: new,
        force: true,
        at: T0 + 3600,
        actor: op(),
    });
    assert!(matches!(r, Response::Rejected { .. }));
    // an issue signed with the old key after activation is refused
    let mut t = fx.token(5, "f", T0 + 5, 60);
    t.kid = old;
    assert!(matches!(
        fx.apply(Command::Issue {
            token: t,
            actor: op()
        }),
        Response::Rejected { .. }
    ));
}

#[test]
fn sweep_drops_only_what_can_no_longer_matter() {
    let mut fx = Fx::new();
    let a = fx.issue(1, "g", T0); // exp T0+3600
    let b = fx.issue(2, "g", T0 + 1000); // exp T0+4600
    fx.apply(Command::RevokeToken {
        jti: a,
        reason: String::new(),
        at: T0 + 1,
        actor: op(),
        presented: None,
    });
    fx.apply(Command::RevokeToken {
        jti: b,
        reason: String::new(),
        at: T0 + 1001,
        actor: op(),
        presented: None,
    });
    fx.apply(Command::RevokeSubject {
        sub: "h".into(),
        before: T0,
        by_revision: false,
        drop_after: T0 + 4000,
        reason: String::new(),
        at: T0,
        actor: op(),
    });
    assert_eq!(fx.st.revocation_count(), 3);
    let r = fx.apply(Command::Sweep { cutoff: T0 + 3599 });
    assert!(matches!(r, Response::Swept { dropped: 0, .. }));
    let r = fx.apply(Command::Sweep { cutoff: T0 + 3600 });
    // a's revocation and a's record
    assert!(matches!(r, Response::Swept { dropped: 2, .. }), "{r:?}");
    assert!(fx.st.token(&a).is_none());
    assert_eq!(fx.status(b, T0 + 3600), TokenStatus::Revoked);
    fx.apply(Command::Sweep { cutoff: T0 + 5000 });
    assert_eq!(fx.st.revocation_count(), 0);
    assert_eq!(fx.st.token_count(), 0);
}

#[test]
fn snapshot_round_trip_rebuilds_indexes_and_is_deterministic() {
    let mut fx = Fx::new();
    for n in 1..20 {
        fx.issue(n, if n % 2 == 0 { "even" } else { "odd" }, T0);
    }
    let bytes = fx.st.to_snapshot_bytes();
    let back = State::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(back, fx.st);
    assert_eq!(back.to_snapshot_bytes(), bytes);
    assert_eq!(back.list(Some("even"), None, None, 100).len(), 9);
    assert!(State::from_snapshot_bytes(b"{garbage").is_err());
}

#[test]
fn list_pages() {
    let mut fx = Fx::new();
    for n in 1..=25 {
        fx.issue(n, "p", T0);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = fx.st.list(Some("p"), None, after, 10);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.token.jti);
        seen.extend(page.into_iter().map(|r| r.token.jti));
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(fx.st.list(None, None, Some(Jti([0xff; 16])), 10).len(), 0);
}

#[test]
fn a_traced_command_applies_exactly_as_the_command() {
    let mut plain = Fx::new();
    let mut traced = Fx::new();
    let jti = plain.issue(7, "alice", T0);
    traced.issue(7, "alice", T0);
    let cmd = Command::RevokeToken {
        jti,
        reason: "leak".into(),
        at: T0 + 5,
        actor: op(),
        presented: None,
    };
    let wrapped = Command::Traced {
        trace: [(
            "traceparent".to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        )]
        .into_iter()
        .collect(),
        command: Box::new(cmd.clone()),
    };
    assert_eq!(wrapped.name(), "revoke_token");
    assert_eq!(wrapped.to_string(), cmd.to_string());
    assert!(wrapped.trace_context().is_some() && cmd.trace_context().is_none());
    plain.rev += 1;
    traced.rev += 1;
    let (r1, c1) = plain.st.apply_for_edges(plain.rev, &cmd);
    let (r2, c2) = traced.st.apply_for_edges(traced.rev, &wrapped);
    assert_eq!(r1, r2);
    assert_eq!(c1, c2);
    assert_eq!(c1.len(), 1);
    assert_eq!(plain.st.digest(), traced.st.digest());
    // the wrapper survives the log's encoding
    let bytes = serde_json::to_vec(&wrapped).unwrap();
    let back: Command = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, wrapped);
}

#[test]
fn rewrap_replaces_only_the_sealed_key() {
    let mut fx = Fx::new();
    let kid = fx.kid;
    let before = fx.st.keys().find(|k| k.kid == kid).cloned().unwrap();
    let r = fx.apply(Command::RewrapKey {
        kid,
        sealed: vec![9, 9, 9],
        kek: "feedface".into(),
        actor: op(),
    });
    assert!(matches!(r, Response::KeyChanged { .. }), "{r:?}");
    let after = fx.st.keys().find(|k| k.kid == kid).cloned().unwrap();
    assert_eq!(after.sealed, vec![9, 9, 9]);
    assert_eq!(
        (after.public, after.state, after.published_revision),
        (before.public, before.state, before.published_revision)
    );
    // unknown keys and empty blobs are refused, and change nothing
    let r = fx.apply(Command::RewrapKey {
        kid: Kid([7; 16]),
        sealed: vec![1],
        kek: "x".into(),
        actor: op(),
    });
    assert!(
        matches!(
            r,
            Response::Rejected {
                rejection: Rejection::NotFound { .. },
                ..
            }
        ),
        "{r:?}"
    );
    let r = fx.apply(Command::RewrapKey {
        kid,
        sealed: vec![],
        kek: "x".into(),
        actor: op(),
    });
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
    assert_eq!(
        fx.st.keys().find(|k| k.kid == kid).unwrap().sealed,
        vec![9, 9, 9]
    );
}

#[test]
fn the_audit_trail_records_applied_changes_with_actor_subject_and_time() {
    use crate::audit::AuditQuery;
    let mut fx = Fx::new();
    let a = fx.issue(1, "alice", T0 + 10);
    fx.issue(2, "bob", T0 + 20);
    fx.apply(Command::RevokeToken {
        jti: a,
        reason: "leaked".into(),
        at: T0 + 30,
        actor: Actor("operator:carol".into()),
        presented: None,
    });
    // Refused and housekeeping commands leave no event.
    fx.apply(Command::RevokeToken {
        jti: Jti([9; 16]),
        reason: String::new(),
        at: T0 + 31,
        actor: op(),
        presented: None,
    });
    fx.apply(Command::Sweep { cutoff: T0 });
    let all = |q: AuditQuery<'_>| {
        fx.audit(&AuditQuery { limit: 100, ..q })
            .0
            .into_iter()
            .map(|e| (e.action.clone(), e.subject.clone(), e.actor.clone()))
            .collect::<Vec<_>>()
    };
    let everything = all(AuditQuery::default());
    assert_eq!(
        everything.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        [
            "publish_key",
            "activate_key",
            "issue",
            "issue",
            "revoke_token"
        ]
    );
    assert_eq!(
        all(AuditQuery {
            subject: Some("alice"),
            ..Default::default()
        }),
        [
            ("issue".into(), Some("alice".into()), "test".into()),
            (
                "revoke_token".into(),
                Some("alice".into()),
                "operator:carol".into()
            )
        ]
    );
    assert_eq!(
        all(AuditQuery {
            actor: Some("operator:carol"),
            ..Default::default()
        })
        .len(),
        1
    );
    assert_eq!(
        all(AuditQuery {
            since: Some(T0 + 15),
            until: Some(T0 + 25),
            ..Default::default()
        }),
        [("issue".into(), Some("bob".into()), "test".into())]
    );
    // Paging by revision: two pages of two, then the rest.
    let (p1, more) = fx.audit(&AuditQuery {
        limit: 2,
        ..Default::default()
    });
    assert!(more);
    let (p2, _) = fx.audit(&AuditQuery {
        limit: 2,
        after_revision: Some(p1[1].revision),
        ..Default::default()
    });
    assert_eq!(p2[0].action, "issue");
    assert!(p2[0].revision > p1[1].revision);
    // The head survives a snapshot round trip.
    let back = State::from_snapshot_bytes(&fx.st.to_snapshot_bytes()).unwrap();
    assert_eq!(back.audit_head(), fx.st.audit_head());
}

#[test]
fn the_audit_trail_is_a_hash_chain_every_replica_computes_alike() {
    let mut fx = Fx::new();
    fx.issue(1, "alice", T0 + 10);
    fx.st.apply_membership(fx.rev + 1, "voters {1, 2, 3}");
    fx.rev += 1;
    fx.trail.extend(fx.st.take_audit());
    fx.issue(2, "bob", T0 + 20);
    let t = &fx.trail;
    assert_eq!(t.len(), 5);
    assert_eq!(t[3].event.action, "membership");
    assert_eq!(t[3].event.actor, "raft");
    let mut prev = crate::audit::GENESIS.to_owned();
    for (i, c) in t.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1);
        assert_eq!(c.prev, prev);
        assert!(c.intact());
        prev = c.hash.clone();
    }
    assert_eq!(fx.st.audit_head().hash, prev);
    assert_eq!(fx.st.audit_head().seq, 5);
    // An edit anywhere breaks its link.
    let mut edited = t[2].clone();
    edited.event.actor = "operator:mallory".into();
    assert!(!edited.intact());
    // The checker accepts the chain through the head, and names what breaks.
    use crate::audit::{Broken, ChainCheck};
    let head = fx.st.audit_head().clone();
    let check = |events: &[crate::audit::ChainedEvent]| {
        let mut c = ChainCheck::new(0, "", head.seq, &head.hash);
        for e in events {
            c.next(e)?;
        }
        c.finish()
    };
    assert_eq!(check(t), Ok(()));
    let mut bad = t.clone();
    bad[2] = edited.clone();
    assert!(matches!(check(&bad), Err(Broken::Edited { seq: 3, .. })));
    let mut gap = t.clone();
    gap.remove(1);
    assert!(matches!(check(&gap), Err(Broken::Gap { seq: 3, .. })));
    assert!(matches!(check(&t[..4]), Err(Broken::Head { seq: 4, .. })));
    // Retention: the check starts after the last dropped entry.
    let mut c = ChainCheck::new(2, &t[1].hash, head.seq, &head.hash);
    for e in &t[2..] {
        c.next(e).unwrap();
    }
    assert_eq!(c.finish(), Ok(()));
    // A snapshot install: entries 2..=3 not held, the chain resumes.
    let mut c = ChainCheck::new(0, "", head.seq, &head.hash);
    c.next(&t[0]).unwrap();
    c.resume(9, 3, &t[2].hash).unwrap();
    c.next(&t[3]).unwrap();
    c.next(&t[4]).unwrap();
    assert_eq!((c.finish(), c.not_held), (Ok(()), 2));
    // A replica applying the same entries computes the same chain.
    let mut other = Fx::new();
    other.issue(1, "alice", T0 + 10);
    assert_eq!(other.trail[..3], fx.trail[..3]);
}

fn revoke_subject_now(fx: &mut Fx, sub: &str, at: i64) -> u64 {
    let r = fx.apply(Command::RevokeSubject {
        sub: sub.into(),
        before: i64::MIN,
        by_revision: true,
        drop_after: at + 86_400,
        reason: "fired".into(),
        at,
        actor: op(),
    });
    let Response::Revoked {
        revision,
        already: false,
    } = r
    else {
        panic!("{r:?}")
    };
    revision
}

#[test]
fn a_subject_revoke_by_revision_is_exact_within_one_second() {
    let mut fx = Fx::new();
    let before = fx.issue(1, "erin", T0);
    // Signed before the revoke (its rev is the state before it) but
    // applied after: the state machine refuses to record it.
    let signed_early = fx.token(2, "erin", T0, 3600);
    let cut = revoke_subject_now(&mut fx, "erin", T0);
    let snapshot = fx.st.clone();
    let r = fx.apply(Command::Issue {
        token: signed_early,
        actor: op(),
    });
    assert!(
        matches!(
            r,
            Response::Rejected {
                rejection: Rejection::Conflict(_),
                ..
            }
        ),
        "{r:?}"
    );
    let mut unchanged = snapshot;
    unchanged.revision = fx.st.revision;
    assert_eq!(unchanged, fx.st, "a refused issue changes nothing");
    // Issued after the revoke's answer, in the same second: valid.
    let after = fx.issue(3, "erin", T0);
    assert!(fx.st.token(&after).unwrap().token.rev >= cut);
    assert_eq!(fx.status(before, T0), TokenStatus::Revoked);
    assert_eq!(fx.status(after, T0), TokenStatus::Active);
    // What the edges learn says the same.
    let (_, changes) = fx.st.clone().apply_for_edges(
        fx.rev + 1,
        &Command::RevokeSubject {
            sub: "erin".into(),
            before: i64::MIN,
            by_revision: true,
            drop_after: T0 + 86_400,
            reason: String::new(),
            at: T0,
            actor: op(),
        },
    );
    assert_eq!(
        changes,
        vec![crate::EdgeChange::SubjectRevoked {
            sub: "erin".into(),
            before: i64::MIN,
            drop_after: T0 + 86_400,
            before_revision: fx.rev + 1,
        }]
    );
}

#[test]
fn subject_cutoffs_merge_to_the_union_of_what_each_covers() {
    let mut fx = Fx::new();
    let early = fx.issue(1, "fay", T0);
    fx.apply(Command::RevokeSubject {
        sub: "fay".into(),
        before: T0,
        by_revision: false,
        drop_after: T0 + 86_400,
        reason: String::new(),
        at: T0 + 100,
        actor: op(),
    });
    let mid = fx.issue(2, "fay", T0 + 200);
    assert_eq!(fx.status(early, T0 + 300), TokenStatus::Revoked);
    assert_eq!(fx.status(mid, T0 + 300), TokenStatus::Active);
    revoke_subject_now(&mut fx, "fay", T0 + 300);
    let late = fx.issue(3, "fay", T0 + 300);
    let c = fx.st.subject_cutoff("fay").unwrap().clone();
    assert_eq!(c.before, T0, "the time cutoff is kept");
    assert_eq!(fx.status(early, T0 + 300), TokenStatus::Revoked);
    assert_eq!(fx.status(mid, T0 + 300), TokenStatus::Revoked);
    assert_eq!(fx.status(late, T0 + 300), TokenStatus::Active);
    // A time cutoff issued after a revision cutoff keeps both.
    fx.apply(Command::RevokeSubject {
        sub: "fay".into(),
        before: T0 - 50,
        by_revision: false,
        drop_after: T0 + 86_400,
        reason: String::new(),
        at: T0 + 400,
        actor: op(),
    });
    assert_eq!(fx.status(mid, T0 + 400), TokenStatus::Revoked);
    assert_eq!(fx.status(late, T0 + 400), TokenStatus::Active);
}

#[test]
fn a_presented_token_is_revoked_without_its_record() {
    let mut fx = Fx::new();
    let stranger = Jti([0x42; 16]);
    let presented = crate::command::Presented {
        exp: T0 + 600,
        sub: "ghost".into(),
        kid: fx.kid,
    };
    let r = fx.apply(Command::RevokeToken {
        jti: stranger,
        reason: "restored from an old backup".into(),
        at: T0,
        actor: op(),
        presented: Some(presented.clone()),
    });
    assert!(
        matches!(r, Response::Revoked { already: false, .. }),
        "{r:?}"
    );
    let rv = fx.st.token_revocation(&stranger).unwrap();
    assert_eq!(rv.exp, T0 + 600);
    assert!(fx.st.token(&stranger).is_none(), "no record is invented");
    let snap = fx.st.edge_snapshot();
    assert!(snap.contains(&crate::EdgeChange::TokenRevoked {
        jti: stranger,
        exp: T0 + 600,
        effective_at: T0,
        grace_ms: 0,
    }));
    // Under a key the state does not know: refused, nothing changes.
    let before = fx.st.clone();
    let r = fx.apply(Command::RevokeToken {
        jti: Jti([0x43; 16]),
        reason: String::new(),
        at: T0,
        actor: op(),
        presented: Some(crate::command::Presented {
            kid: Kid([9; 16]),
            ..presented
        }),
    });
    assert!(matches!(
        r,
        Response::Rejected {
            rejection: Rejection::NotFound { .. },
            ..
        }
    ));
    let mut b = before;
    b.revision = fx.st.revision;
    assert_eq!(b, fx.st);
    // The revocation is swept with the token's exp.
    fx.apply(Command::Sweep { cutoff: T0 + 600 });
    assert!(fx.st.token_revocation(&stranger).is_none());
}

#[test]
fn edges_learn_grace_as_a_duration_and_the_sweep_horizon() {
    let mut fx = Fx::new();
    let a = fx.issue(1, "hal", T0);
    let mut succ = fx.token(2, "hal", T0 + 5, 3600);
    succ.fam = a;
    let rev = fx.rev + 1;
    fx.rev = rev;
    let (_, changes) = fx.st.apply_for_edges(
        rev,
        &Command::Refresh {
            predecessor: a,
            successor: succ,
            revoke_at: T0 + 35,
            at: T0 + 5,
            actor: op(),
        },
    );
    assert_eq!(
        changes,
        vec![crate::EdgeChange::TokenRevoked {
            jti: a,
            exp: T0 + 3600,
            effective_at: T0 + 35,
            grace_ms: 30_000,
        }]
    );
    // A snapshot grants no grace: it cannot say when the refresh committed.
    assert!(fx
        .st
        .edge_snapshot()
        .contains(&crate::EdgeChange::TokenRevoked {
            jti: a,
            exp: T0 + 3600,
            effective_at: T0 + 35,
            grace_ms: 0,
        }));
    // After a sweep the snapshot carries its cutoff first, so an edge
    // refuses what expired on the cluster's clock even if its own is behind.
    assert!(!fx
        .st
        .edge_snapshot()
        .iter()
        .any(|c| matches!(c, crate::EdgeChange::Swept { .. })));
    fx.apply(Command::Sweep { cutoff: T0 - 10 });
    assert_eq!(fx.st.swept_through(), T0 - 10);
    assert_eq!(
        fx.st.edge_snapshot().first(),
        Some(&crate::EdgeChange::Swept { cutoff: T0 - 10 })
    );
    fx.apply(Command::Sweep { cutoff: T0 - 20 });
    assert_eq!(
        fx.st.swept_through(),
        T0 - 10,
        "the horizon never moves back"
    );
}

#[test]
fn a_selector_revoke_covers_the_live_matching_tokens_only() {
    let mut fx = Fx::new();
    let old_a = fx.issue_labelled(1, "team-a", &[("app", "api"), ("version", "1.4")]);
    let old_b = fx.issue_labelled(2, "team-b", &[("app", "api"), ("version", "1.4")]);
    let new = fx.issue_labelled(3, "team-a", &[("app", "api"), ("version", "1.5")]);
    let other = fx.issue_labelled(4, "team-a", &[]);
    let sel = crate::labels::Selector::parse("app=api,version=1.4").unwrap();
    let cmd = Command::RevokeSelector {
        selector: sel.clone(),
        reason: "retire 1.4".into(),
        at: T0 + 10,
        actor: op(),
    };
    fx.rev += 1;
    let (r, changes) = fx.st.apply_for_edges(fx.rev, &cmd);
    fx.trail.extend(fx.st.take_audit());
    assert_eq!(r, Response::revoked(fx.rev));
    let mut revoked: Vec<Jti> = changes
        .iter()
        .filter_map(|c| match c {
            crate::EdgeChange::TokenRevoked {
                jti, grace_ms: 0, ..
            } => Some(*jti),
            _ => None,
        })
        .collect();
    revoked.sort();
    assert_eq!(revoked, vec![old_a, old_b], "edges learn each token");
    for (j, want) in [
        (old_a, TokenStatus::Revoked),
        (old_b, TokenStatus::Revoked),
        (new, TokenStatus::Active),
        (other, TokenStatus::Active),
    ] {
        assert_eq!(fx.status(j, T0 + 11), want);
    }
    let (events, _) = fx.audit(&crate::audit::AuditQuery {
        limit: 100,
        ..Default::default()
    });
    let ev = events.last().cloned().cloned().unwrap();
    assert_eq!(ev.action, "revoke_selector");
    assert_eq!(ev.target, "selector app=api,version=1.4 (2 tokens)");
    // Again: nothing new, the first revision.
    let first = fx.rev;
    assert_eq!(fx.apply(cmd.clone()), Response::already_revoked(first));
    // Nothing live matches: NOT_FOUND and nothing changes.
    let before = fx.st.clone();
    let r = fx.apply(Command::RevokeSelector {
        selector: crate::labels::Selector::parse("version=9").unwrap(),
        reason: String::new(),
        at: T0 + 12,
        actor: op(),
    });
    assert!(
        matches!(
            r,
            Response::Rejected {
                rejection: Rejection::NotFound { .. },
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(
        fx.st.revoked_tokens_iter().count(),
        before.revoked_tokens_iter().count()
    );
    // Expired tokens are left alone.
    let r = fx.apply(Command::RevokeSelector {
        selector: sel,
        reason: String::new(),
        at: T0 + 7200,
        actor: op(),
    });
    assert!(matches!(r, Response::Rejected { .. }), "{r:?}");
}

#[test]
fn lists_filter_by_owner_labels_status_key_and_expiry() {
    let mut fx = Fx::new();
    let a = fx.issue_labelled(1, "team-a", &[("version", "1.4")]);
    let b = fx.issue_labelled(2, "team-b", &[("version", "1.4")]);
    let c = fx.issue_labelled(3, "team-a", &[("version", "1.5")]);
    fx.apply(Command::RevokeToken {
        jti: a,
        reason: String::new(),
        at: T0 + 1,
        actor: op(),
        presented: None,
    });
    let jtis = |f: &TokenFilter<'_>| -> Vec<Jti> {
        fx.st
            .list_where(f, None, 100, 1_000)
            .0
            .iter()
            .map(|r| r.token.jti)
            .collect()
    };
    let now = T0 + 2;
    let sel = crate::labels::Selector::parse("version=1.4").unwrap();
    let base = TokenFilter {
        now,
        ..TokenFilter::default()
    };
    let owner_a = TokenFilter {
        owner: Some("team-a"),
        ..base.clone()
    };
    assert_eq!(jtis(&owner_a), vec![a, c]);
    let by_sel = TokenFilter {
        selector: Some(&sel),
        ..base.clone()
    };
    assert_eq!(jtis(&by_sel), vec![a, b]);
    let active_14 = TokenFilter {
        selector: Some(&sel),
        status: Some(TokenStatus::Active),
        ..base.clone()
    };
    assert_eq!(jtis(&active_14), vec![b]);
    let soon = TokenFilter {
        expires_by: Some(T0 + 3600),
        ..base.clone()
    };
    assert_eq!(jtis(&soon), vec![a, b, c]);
    let not_soon = TokenFilter {
        expires_by: Some(T0 + 60),
        ..base.clone()
    };
    assert!(jtis(&not_soon).is_empty());
    let other_key = TokenFilter {
        kid: Some(Kid([7; 16])),
        ..base.clone()
    };
    assert!(jtis(&other_key).is_empty());
    // A scan budget stops early and says where it stopped.
    let (page, stopped) = fx.st.list_where(&owner_a, None, 100, 2);
    assert_eq!(
        page.iter().map(|r| r.token.jti).collect::<Vec<_>>(),
        vec![a]
    );
    assert_eq!(stopped, Some(b));
    let (page, stopped) = fx.st.list_where(&owner_a, stopped, 100, 2);
    assert_eq!(
        page.iter().map(|r| r.token.jti).collect::<Vec<_>>(),
        vec![c]
    );
    assert_eq!(stopped, None);
}

#[test]
fn usage_folds_per_token_is_swept_with_it_and_filters_never_and_long_unused() {
    use crate::usage::{Outcomes, UsageDelta};
    let mut fx = Fx::new();
    let used = fx.issue(1, "svc:a", T0);
    let idle = fx.issue(2, "svc:b", T0);
    let delta = |jti: Jti, edge: &str, valid: u64, revoked: u64, at: i64| UsageDelta {
        jti,
        edge: edge.into(),
        outcomes: Outcomes {
            valid,
            revoked,
            refused: 0,
        },
        first: at,
        last: at,
        scopes: ["read".to_owned()].into(),
    };
    fx.apply(Command::RecordUsage {
        deltas: vec![
            delta(used, "e1", 3, 0, T0 + 10),
            delta(used, "e2", 2, 1, T0 + 12),
            // an unknown token is skipped
            delta(Jti([9; 16]), "e1", 5, 0, T0 + 10),
        ],
        at: T0 + 13,
    });
    let u = fx.st.usage(&used).cloned().unwrap();
    assert_eq!((u.outcomes.valid, u.outcomes.revoked), (5, 1));
    assert_eq!(
        (u.first_used, u.last_used, u.edges.len()),
        (T0 + 10, T0 + 12, 2)
    );
    assert!(fx.st.usage(&Jti([9; 16])).is_none());
    // one revoked_token_used event for the revoked attempt
    assert_eq!(
        fx.trail
            .iter()
            .filter(|c| c.event.action == "revoked_token_used")
            .count(),
        1
    );
    let list = |f: TokenFilter<'_>| -> Vec<Jti> {
        fx.st
            .list_where(&f, None, 100, 1000)
            .0
            .into_iter()
            .map(|r| r.token.jti)
            .collect()
    };
    let base = TokenFilter {
        now: T0 + 20,
        ..TokenFilter::default()
    };
    assert_eq!(
        list(TokenFilter {
            never_used: true,
            ..base.clone()
        }),
        vec![idle]
    );
    // not used since T0 + 10: only the idle one (the other was, at T0 + 12)
    assert_eq!(
        list(TokenFilter {
            unused_since: Some(T0 + 10),
            ..base.clone()
        }),
        vec![idle]
    );
    assert_eq!(
        list(TokenFilter {
            unused_since: Some(T0 + 15),
            ..base.clone()
        }),
        vec![used, idle]
    );
    let t = fx.st.usage_totals(T0 + 20);
    assert_eq!(
        (t.active, t.used, t.never_used, t.least_privilege),
        (2, 1, 1, 1)
    );
    assert_eq!((t.revoked_attempts, fx.st.revoked_attempts_total()), (1, 1));
    // swept with the token: the record and its share of the gauge go, the
    // total of attempts stays (and survives a snapshot)
    fx.apply(Command::Sweep { cutoff: T0 + 4000 });
    assert!(fx.st.usage(&used).is_none());
    assert_eq!(fx.st.usage_totals(T0 + 4001).revoked_attempts, 0);
    assert_eq!(fx.st.revoked_attempts_total(), 1);
    let back = State::from_snapshot_bytes(&fx.st.to_snapshot_bytes()).unwrap();
    assert_eq!(back.revoked_attempts_total(), 1);
}
