//! The checker: what a history must satisfy, and the figures per fault.
//!
//! 1. Every acknowledged issue and revoke survives: after healing, every
//!    server still has the token and every edge answers for it as the
//!    acknowledged revokes say ([`FinalState`]).
//! 2. The bound: no edge accepted a token in a verify invoked at or after
//!    (ack of a revoke that certainly covers it) + B.
//! 3. No fresh edge refused a valid token: an answer other than VALID or
//!    STALE for a token that no revoke attempt (acknowledged or not) could
//!    cover is a violation (UNKNOWN_KEY only once B has passed since the
//!    issue: a fresh edge may have missed a key published just before), and
//!    so is an error from an edge that is not a network failure. An edge
//!    judges `nbf` and `exp` on its own wall clock, within its leeway:
//!    NOT_YET_VALID is a violation unless the edge's clock (the machine's
//!    plus its offset, [`History::clocks`]) may have been more than the
//!    `nbf` leeway behind the token's `nbf` at the verify, EXPIRED unless it
//!    may have been at or past `exp` + the `exp` leeway ([`clock_may_refuse`]).
//! 4. After healing, every server has applied the same revision with the
//!    same state digest.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use veto_proto as pb;

use crate::workload::{History, IssueRec, Target, VerifyRec};

/// Slack for placing an instant of the harness clock on the unix time line
/// (the anchor is read once; the edges' clocks are the machine's plus an
/// offset in whole seconds).
const CLOCK_SLACK_SECS: f64 = 0.25;

/// Whether edge `edge`, verifying `t` at some instant of `[from, to]`, may
/// rightly have answered `o` (NOT_YET_VALID or EXPIRED) by its wall clock
/// and the leeway it was given: `veto-edge` refuses when
/// `now + nbf_leeway < max(nbf, iat)` or `now >= exp + exp_leeway`, `now`
/// being its unix second. False for every other outcome, and for any
/// outcome when the history has no anchor on the unix time line.
pub fn clock_may_refuse(
    h: &History,
    edge: usize,
    t: &IssueRec,
    from: Instant,
    to: Instant,
    o: pb::Outcome,
) -> bool {
    let (Some(a), Some(b)) = (h.unix_at(from), h.unix_at(to)) else {
        return false;
    };
    let (lo, hi) = h.edge_offsets(edge, from, to);
    match o {
        // its earliest possible clock reading, leeway added, before nbf
        pb::Outcome::NotYetValid => {
            a + lo as f64 + h.leeway.nbf_secs as f64 - CLOCK_SLACK_SECS < t.nbf as f64
        }
        // its latest possible reading at or past exp + leeway
        pb::Outcome::Expired => {
            b + hi as f64 + CLOCK_SLACK_SECS >= (t.exp as f64) + h.leeway.exp_secs as f64
        }
        _ => false,
    }
}

/// A violation found in a history.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// An edge accepted a revoked token at or after ack + B.
    AcceptedAfterBound {
        /// Edge index.
        edge: usize,
        /// Token.
        jti: String,
        /// Verify invocation minus the revoke's ack.
        after_ack: Duration,
        /// The revoke's kind.
        kind: &'static str,
    },
    /// A fresh edge refused a valid token.
    RefusedValid {
        /// Edge index.
        edge: usize,
        /// Token.
        jti: String,
        /// What it answered.
        outcome: String,
    },
    /// An acknowledged operation is missing after healing.
    Lost {
        /// What was lost.
        what: String,
    },
    /// After healing, the cluster reports a token no revoke could cover
    /// as not active.
    UnexpectedStatus {
        /// Token.
        jti: String,
        /// Its status.
        status: String,
    },
    /// Servers disagree after healing.
    Diverged {
        /// Their (applied index, digest) per server.
        detail: String,
    },
    /// An edge failed a verify with an error other than STALE or an
    /// unreachable network.
    EdgeError {
        /// Edge index.
        edge: usize,
        /// Token.
        jti: String,
        /// The status code.
        code: String,
    },
    /// After healing, an edge answered for a token against the acknowledged history.
    EdgeDisagrees {
        /// Edge index.
        edge: usize,
        /// Token.
        jti: String,
        /// What it answered, and what was expected.
        detail: String,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::AcceptedAfterBound {
                edge,
                jti,
                after_ack,
                kind,
            } => write!(
                f,
                "edge e{edge} accepted {jti} {} ms after its {kind} revoke was acknowledged (bound exceeded)",
                after_ack.as_millis()
            ),
            Violation::RefusedValid { edge, jti, outcome } => {
                write!(f, "fresh edge e{edge} refused valid token {jti}: {outcome}")
            }
            Violation::Lost { what } => write!(f, "lost: {what}"),
            Violation::UnexpectedStatus { jti, status } => {
                write!(f, "no revoke could cover {jti}, yet the cluster says {status}")
            }
            Violation::EdgeError { edge, jti, code } => {
                write!(f, "edge e{edge} failed a verify of {jti} with {code}")
            }
            Violation::Diverged { detail } => write!(f, "servers diverged: {detail}"),
            Violation::EdgeDisagrees { edge, jti, detail } => {
                write!(f, "after healing, edge e{edge} on {jti}: {detail}")
            }
        }
    }
}

/// What the harness read after healing.
#[derive(Debug, Default)]
pub struct FinalState {
    /// (applied index, digest) per server.
    pub digests: Vec<Option<(u64, String)>>,
    /// Token status per acknowledged jti, read from the cluster (None = not found).
    pub status: HashMap<String, Option<pb::TokenStatus>>,
    /// Per edge, per jti: the outcome of a verify at the final revision.
    pub edge_answers: Vec<HashMap<String, pb::Outcome>>,
    /// Per edge: when its final verifies were sent and the last answered.
    pub edge_windows: Vec<(Instant, Instant)>,
}

/// Which revokes cover which tokens, computed once per history.
struct Index<'a> {
    by_jti: HashMap<&'a str, &'a IssueRec>,
    /// Per token: the earliest ack of a revoke that surely covers it.
    surely: HashMap<&'a str, (Instant, &'static str)>,
    /// Tokens some revoke attempt (acked or not) may cover.
    maybe: HashSet<&'a str>,
    /// Per token: the verifies of it.
    verifies: HashMap<&'a str, Vec<&'a VerifyRec>>,
}

impl<'a> Index<'a> {
    fn new(h: &'a History) -> Self {
        let by_jti: HashMap<&str, &IssueRec> =
            h.issues.iter().map(|t| (t.jti.as_str(), t)).collect();
        let mut by: HashMap<(&str, &str), Vec<&IssueRec>> = HashMap::new();
        for t in &h.issues {
            by.entry(("sub", &t.sub)).or_default().push(t);
            by.entry(("fam", &t.family)).or_default().push(t);
            by.entry(("kid", &t.kid)).or_default().push(t);
        }
        let mut surely: HashMap<&str, (Instant, &'static str)> = HashMap::new();
        let mut maybe = HashSet::new();
        for r in &h.revokes {
            let candidates: Vec<&IssueRec> = match &r.target {
                Target::Jti(j) => by_jti.get(j.as_str()).copied().into_iter().collect(),
                Target::Subject(x) => by.get(&("sub", x.as_str())).cloned().unwrap_or_default(),
                Target::Family(x) => by.get(&("fam", x.as_str())).cloned().unwrap_or_default(),
                Target::Key(x) => by.get(&("kid", x.as_str())).cloned().unwrap_or_default(),
            };
            for t in candidates {
                if !r.target.may_cover(t, r) {
                    continue;
                }
                maybe.insert(t.jti.as_str());
                if r.target.surely_covers(t, r) {
                    let e = surely
                        .entry(t.jti.as_str())
                        .or_insert((r.end, r.target.kind()));
                    if r.end < e.0 {
                        *e = (r.end, r.target.kind());
                    }
                }
            }
        }
        let mut verifies: HashMap<&str, Vec<&VerifyRec>> = HashMap::new();
        for v in &h.verifies {
            verifies.entry(v.jti.as_str()).or_default().push(v);
        }
        Index {
            by_jti,
            surely,
            maybe,
            verifies,
        }
    }
}

/// Checks rules 2 and 3 on the history.
pub fn check_history(h: &History, bound: Duration) -> Vec<Violation> {
    let idx = Index::new(h);
    let (surely, maybe) = (&idx.surely, &idx.maybe);
    let mut out = Vec::new();
    for v in &h.verifies {
        if let Some(code) = v.error {
            // unreachable (killed, partitioned, lossy) is not an answer;
            // anything else is a wrong one
            let network = matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            );
            if !network {
                out.push(Violation::EdgeError {
                    edge: v.edge,
                    jti: v.jti.clone(),
                    code: format!("{code:?}"),
                });
            }
        }
        let Some(o) = v.outcome else { continue };
        let Some(t) = idx.by_jti.get(v.jti.as_str()) else {
            continue;
        };
        if o == pb::Outcome::Valid {
            if let Some((ack, kind)) = surely.get(v.jti.as_str()) {
                if v.start >= *ack + bound {
                    out.push(Violation::AcceptedAfterBound {
                        edge: v.edge,
                        jti: v.jti.clone(),
                        after_ack: v.start - *ack,
                        kind,
                    });
                }
            }
        } else if o != pb::Outcome::Stale
            && !maybe.contains(v.jti.as_str())
            // a fresh edge may not know a key published within B (it lost
            // its stream just before); every other refusal is wrong at once
            && (o != pb::Outcome::UnknownKey || v.start >= t.end + bound)
            // unless its clock, within the leeway it was given, says so
            && !clock_may_refuse(h, v.edge, t, v.start, v.end, o)
        {
            out.push(Violation::RefusedValid {
                edge: v.edge,
                jti: v.jti.clone(),
                outcome: o.as_str_name().into(),
            });
        }
    }
    out
}

/// Checks rules 1 and 4 on what was read after healing.
pub fn check_final(h: &History, f: &FinalState) -> Vec<Violation> {
    let mut out = Vec::new();
    let first = f.digests.first().cloned().flatten();
    if first.is_none() || f.digests.iter().any(|d| *d != first) {
        out.push(Violation::Diverged {
            detail: format!("{:?}", f.digests),
        });
    }
    let idx = Index::new(h);
    for t in &h.issues {
        let jti = t.jti.as_str();
        let surely = idx.surely.contains_key(jti);
        let maybe = idx.maybe.contains(jti);
        match f.status.get(&t.jti) {
            Some(Some(s)) if surely && *s != pb::TokenStatus::Revoked => {
                out.push(Violation::Lost {
                    what: format!("an acknowledged revoke covering {} (status {s:?})", t.jti),
                });
            }
            Some(Some(s)) if !maybe && *s != pb::TokenStatus::Active => {
                out.push(Violation::UnexpectedStatus {
                    jti: t.jti.clone(),
                    status: s.as_str_name().into(),
                });
            }
            Some(None) => out.push(Violation::Lost {
                what: format!("the acknowledged issue of {}", t.jti),
            }),
            _ => {}
        }
        // the cluster's own answer, where the history cannot decide
        let status = f.status.get(&t.jti).copied().flatten();
        for (e, answers) in f.edge_answers.iter().enumerate() {
            let Some(o) = answers.get(&t.jti) else {
                continue;
            };
            let expect = if surely || status == Some(pb::TokenStatus::Revoked) {
                Some("revoked")
            } else if !maybe || status == Some(pb::TokenStatus::Active) {
                Some("valid")
            } else {
                None
            };
            // a time-claim refusal the edge's clock and leeway allow
            let by_clock = f
                .edge_windows
                .get(e)
                .is_some_and(|&(a, b)| clock_may_refuse(h, e, t, a, b, *o));
            let bad = match expect {
                Some("revoked") => *o == pb::Outcome::Valid,
                Some(_) => *o != pb::Outcome::Valid && !by_clock,
                None => false,
            };
            if bad {
                out.push(Violation::EdgeDisagrees {
                    edge: e,
                    jti: t.jti.clone(),
                    detail: format!(
                        "answered {} but the history and the cluster say {}",
                        o.as_str_name(),
                        expect.unwrap_or("?")
                    ),
                });
            }
        }
    }
    out
}

/// Figures for one fault.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Fault name.
    pub name: String,
    /// How long the fault was held.
    pub held: Duration,
    /// Verifies invoked while the fault was on.
    pub verifies: usize,
    /// Share of those answered (not STALE, not failed).
    pub availability: f64,
    /// Heal to the last STALE or failed answer of any edge in the recovery
    /// window (0 when none).
    pub recovery: Duration,
    /// Inject to the first leader other than the one the fault hit (for a
    /// full restart: heal to the first leader).
    pub election: Option<Duration>,
    /// Revokes acknowledged in the window.
    pub revokes: usize,
    /// Latest acceptance of a covered token after its revoke's ack (the
    /// worst propagation an edge showed), over revokes acked in the window.
    pub worst_accept_after_ack: Option<Duration>,
    /// The servers' own propagation figure (commit to last edge ack), max,
    /// over the revokes that waited and saw every edge acknowledge.
    pub max_propagation_ms: Option<f64>,
    /// Revokes that waited for every edge.
    pub waited: usize,
    /// Of those, how many timed out (1.5 s) with edges still behind.
    pub wait_timeouts: usize,
}

/// Computes the figures of every fault in `h`.
pub fn figures(h: &History) -> Vec<Figures> {
    let idx = Index::new(h);
    h.faults
        .iter()
        .map(|f| {
            let during: Vec<_> = h
                .verifies
                .iter()
                .filter(|v| v.start >= f.inject && v.start < f.heal)
                .collect();
            let answered = during.iter().filter(|v| v.answered()).count();
            let recovery = h
                .verifies
                .iter()
                .filter(|v| v.start >= f.heal && v.end <= f.end && !v.answered())
                .map(|v| v.end.saturating_duration_since(f.heal))
                .max()
                .unwrap_or_default();
            let election = if f.name == crate::Fault::FullRestart.name() {
                // every server restarted: the first leader after heal
                h.status
                    .iter()
                    .filter(|s| s.at >= f.heal && s.at < f.end && s.leader)
                    .map(|s| s.at - f.heal)
                    .min()
            } else if f.moves_leader {
                // the first leader other than the one the fault hit
                h.status
                    .iter()
                    .filter(|s| {
                        s.at >= f.inject
                            && s.at < f.end
                            && s.leader
                            && Some(s.server) != f.leader_before
                    })
                    .map(|s| s.at - f.inject)
                    .min()
            } else {
                None
            };
            let acked: Vec<_> = h
                .revokes
                .iter()
                .filter(|r| r.acked && r.end >= f.inject && r.end < f.end)
                .collect();
            // per covered token, its first covering ack (from the index)
            // falls in this window: the latest acceptance after it
            let mut worst: Option<Duration> = None;
            for (jti, (ack, _)) in &idx.surely {
                if *ack < f.inject || *ack >= f.end {
                    continue;
                }
                for v in idx.verifies.get(jti).into_iter().flatten() {
                    if v.outcome == Some(pb::Outcome::Valid) && v.start >= *ack {
                        let d = v.start - *ack;
                        worst = Some(worst.map_or(d, |w| w.max(d)));
                    }
                }
            }
            let max_propagation_ms = acked
                .iter()
                .filter_map(|r| r.propagation_ms)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let waited = acked.iter().filter(|r| r.waited).count();
            let wait_timeouts = acked
                .iter()
                .filter(|r| r.waited && r.propagation_ms.is_none())
                .count();
            Figures {
                name: f.name.clone(),
                held: f.heal - f.inject,
                verifies: during.len(),
                availability: if during.is_empty() {
                    1.0
                } else {
                    answered as f64 / during.len() as f64
                },
                recovery,
                election,
                revokes: acked.len(),
                worst_accept_after_ack: worst,
                max_propagation_ms,
                waited,
                wait_timeouts,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ClockChange, Leeway};
    use crate::workload::{RevokeRec, VerifyRec};

    fn tok(jti: &str, sub: &str, end: Instant) -> IssueRec {
        IssueRec {
            start: end,
            end,
            jti: jti.into(),
            token: String::new(),
            sub: sub.into(),
            family: jti.into(),
            kid: "k1".into(),
            nbf: 0,
            exp: i64::MAX / 2,
        }
    }

    /// An acknowledged revoke, sent once, that did not wait for edges.
    fn acked(start: Instant, end: Instant, target: Target) -> RevokeRec {
        RevokeRec {
            start,
            end,
            target,
            acked: true,
            propagation_ms: None,
            tries: 1,
            waited: false,
            edges_behind: 0,
            refresh: false,
        }
    }

    fn verify(edge: usize, jti: &str, start: Instant, o: pb::Outcome) -> VerifyRec {
        VerifyRec {
            edge,
            jti: jti.into(),
            start,
            end: start + Duration::from_millis(1),
            outcome: Some(o),
            error: None,
        }
    }

    #[test]
    fn flags_late_acceptance_and_false_refusal_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let b = ms(100);
        let mut h = History {
            issues: vec![tok("a", "u1", t0), tok("b", "u1", t0), tok("c", "u2", t0)],
            ..Default::default()
        };
        // `a` revoked by jti (ack at 10 ms); `late` was issued while the
        // subject revoke of u2 was in flight, so it is only maybe-covered
        h.issues.push(tok("late", "u2", t0 + ms(405)));
        h.revokes = vec![
            acked(t0 + ms(5), t0 + ms(10), Target::Jti("a".into())),
            acked(t0 + ms(400), t0 + ms(410), Target::Subject("u2".into())),
        ];
        use pb::Outcome::*;
        h.verifies = vec![
            verify(0, "a", t0 + ms(50), Valid),       // within the bound: fine
            verify(0, "a", t0 + ms(200), Revoked),    // fine
            verify(0, "b", t0 + ms(300), Valid),      // fine
            verify(1, "c", t0 + ms(450), Valid),      // within the bound of the subject revoke
            verify(1, "late", t0 + ms(900), Revoked), // maybe covered: fine
            verify(1, "b", t0 + ms(20), Stale),       // stale is never a violation
        ];
        assert!(check_history(&h, b).is_empty());
        h.verifies.push(verify(2, "a", t0 + ms(110), Valid));
        h.verifies.push(verify(2, "c", t0 + ms(600), Valid));
        h.verifies.push(verify(2, "b", t0 + ms(150), Revoked));
        // b refused before B passed since its issue: not yet a violation
        h.verifies.push(verify(2, "b", t0 + ms(50), UnknownKey));
        // issued after the subject revoke completed, in the same second:
        // not covered (the cutoff is exact), so refusing it is wrong
        h.issues.push(tok("later", "u2", t0 + ms(420)));
        h.verifies.push(verify(1, "later", t0 + ms(700), Revoked));
        let v = check_history(&h, b);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(matches!(&v[3], Violation::RefusedValid { jti, .. } if jti == "later"));
        assert!(matches!(
            v[0],
            Violation::AcceptedAfterBound {
                edge: 2,
                kind: "token",
                ..
            }
        ));
        assert!(matches!(
            v[1],
            Violation::AcceptedAfterBound {
                kind: "subject",
                ..
            }
        ));
        assert!(matches!(v[2], Violation::RefusedValid { .. }));

        // family and key revokes bind too; a refusal other than an unknown
        // key is wrong even within B of the issue
        let rev = |target| acked(t0 + ms(5), t0 + ms(10), target);
        let h = History {
            issues: vec![
                tok("d", "u3", t0),
                IssueRec {
                    kid: "k2".into(),
                    ..tok("e", "u4", t0)
                },
                tok("f", "u5", t0),
            ],
            revokes: vec![
                rev(Target::Family("d".into())),
                rev(Target::Key("k2".into())),
            ],
            verifies: vec![
                verify(0, "d", t0 + ms(120), Valid),
                verify(0, "e", t0 + ms(130), Valid),
                verify(0, "f", t0 + ms(20), UnknownKey),
                verify(0, "f", t0 + ms(20), BadSignature),
                verify(0, "d", t0 + ms(50), Valid),
            ],
            ..Default::default()
        };
        let v = check_history(&h, b);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(matches!(
            v[0],
            Violation::AcceptedAfterBound { kind: "family", .. }
        ));
        assert!(matches!(
            v[1],
            Violation::AcceptedAfterBound { kind: "key", .. }
        ));
        assert!(
            matches!(&v[2], Violation::RefusedValid { outcome, .. } if outcome == "OUTCOME_BAD_SIGNATURE")
        );
    }

    #[test]
    fn final_state_checks_survival_and_agreement() {
        let t0 = Instant::now();
        let h = History {
            issues: vec![tok("a", "u1", t0), tok("b", "u1", t0)],
            revokes: vec![acked(
                t0 + Duration::from_millis(5),
                t0 + Duration::from_millis(10),
                Target::Jti("a".into()),
            )],
            ..Default::default()
        };
        let good = FinalState {
            digests: vec![Some((9, "d".into())), Some((9, "d".into()))],
            status: HashMap::from([
                ("a".to_string(), Some(pb::TokenStatus::Revoked)),
                ("b".to_string(), Some(pb::TokenStatus::Active)),
            ]),
            edge_answers: vec![HashMap::from([
                ("a".to_string(), pb::Outcome::Revoked),
                ("b".to_string(), pb::Outcome::Valid),
            ])],
            edge_windows: Vec::new(),
        };
        assert!(check_final(&h, &good).is_empty());
        let bad = FinalState {
            digests: vec![Some((9, "d".into())), Some((9, "e".into()))],
            status: HashMap::from([
                ("a".to_string(), Some(pb::TokenStatus::Active)),
                ("b".to_string(), None),
            ]),
            edge_answers: vec![HashMap::from([
                ("a".to_string(), pb::Outcome::Valid),
                ("b".to_string(), pb::Outcome::Revoked),
            ])],
            edge_windows: Vec::new(),
        };
        let v = check_final(&h, &bad);
        assert_eq!(v.len(), 5, "{v:?}");
    }

    fn change(edge: usize, offset_secs: i64, from: Instant, to: Instant) -> ClockChange {
        ClockChange {
            kind: crate::world::Kind::Edge,
            index: edge,
            offset_secs,
            from,
            to,
        }
    }

    #[test]
    fn edge_offsets_follow_the_clock_log() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let h = History {
            clocks: vec![
                change(1, -90, t0, t0),
                change(1, 30, t0 + s(10), t0 + s(11)),
                change(1, -90, t0 + s(20), t0 + s(20)),
            ],
            ..Default::default()
        };
        assert_eq!(h.edge_offsets(1, t0 + s(1), t0 + s(2)), (-90, -90));
        // the change may have taken effect anywhere in [10 s, 11 s]
        assert_eq!(h.edge_offsets(1, t0 + s(9), t0 + s(10)), (-90, 30));
        assert_eq!(h.edge_offsets(1, t0 + s(10), t0 + s(10)), (-90, 30));
        assert_eq!(h.edge_offsets(1, t0 + s(11), t0 + s(12)), (30, 30));
        assert_eq!(h.edge_offsets(1, t0 + s(19), t0 + s(21)), (-90, 30));
        assert_eq!(h.edge_offsets(1, t0 + s(25), t0 + s(26)), (-90, -90));
        // an edge with no clock fault is on the machine's clock
        assert_eq!(h.edge_offsets(0, t0, t0 + s(30)), (0, 0));
    }

    #[test]
    fn time_claim_refusals_count_against_the_leeway_only() {
        use pb::Outcome::*;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let unix0 = 2_000_000_000.3_f64;
        let u = unix0 as i64;
        // tokens issued at t0 by a true leader, by one 150 s ahead, and one
        // expiring 100 s after t0
        let issued = |jti: &str, nbf: i64, exp: i64| IssueRec {
            nbf,
            exp,
            ..tok(jti, "u1", t0)
        };
        let h = |verifies| History {
            issues: vec![
                issued("n", u, u + 3600),
                issued("ahead", u + 150, u + 3750),
                issued("x", u - 3500, u + 100),
            ],
            verifies,
            clocks: vec![
                change(1, -90, t0 - s(1), t0 - s(1)),
                change(2, 90, t0 - s(1), t0 - s(1)),
                change(3, 0, t0 - s(1), t0 - s(1)),
                change(3, -200, t0 + s(10), t0 + s(10) + ms(1)),
            ],
            anchor: Some((t0, unix0)),
            leeway: Leeway {
                nbf_secs: 120,
                exp_secs: 0,
            },
            ..Default::default()
        };
        let b = ms(100);
        // within the leeway: 90 s behind a true leader, a true edge 30 s
        // after a token from 150 s ahead, 95 s of a 100 s lifetime on an
        // edge 90 s fast
        let wrong = h(vec![
            verify(1, "n", t0 + s(1), NotYetValid),
            verify(3, "n", t0 + s(5), NotYetValid),
            verify(0, "ahead", t0 + s(31), NotYetValid),
            verify(2, "x", t0 + s(5), Expired),
            // a true edge never rightly says EXPIRED 100 s early
            verify(0, "x", t0 + s(1), Expired),
        ]);
        let v = check_history(&wrong, b);
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(v
            .iter()
            .all(|v| matches!(v, Violation::RefusedValid { .. })));
        // beyond it: 200 s behind after the jump (or during it), a true
        // edge right after a token from 150 s ahead, past exp on the fast edge
        let right = h(vec![
            verify(3, "n", t0 + s(11), NotYetValid),
            verify(3, "n", t0 + s(10) - ms(1), NotYetValid),
            verify(0, "ahead", t0 + s(1), NotYetValid),
            verify(2, "x", t0 + s(11), Expired),
            verify(0, "x", t0 + s(101), Expired),
        ]);
        let v = check_history(&right, b);
        assert!(v.is_empty(), "{v:?}");
        // no anchor: the clocks are out of the check, every refusal counts
        let mut unanchored = h(vec![verify(3, "n", t0 + s(11), NotYetValid)]);
        unanchored.anchor = None;
        assert_eq!(check_history(&unanchored, b).len(), 1);
        // other refusals never get the clock's excuse
        let revoked = h(vec![verify(3, "n", t0 + s(11), Revoked)]);
        assert_eq!(check_history(&revoked, b).len(), 1);

        // the final answers: same rule, over the final read's window
        let hist = h(Vec::new());
        let fin = |answer, window| FinalState {
            digests: vec![Some((9, "d".into()))],
            status: ["n", "ahead", "x"]
                .iter()
                .map(|j| (j.to_string(), Some(pb::TokenStatus::Active)))
                .collect(),
            edge_answers: vec![
                HashMap::new(),
                HashMap::new(),
                HashMap::from([("x".to_string(), answer)]),
            ],
            edge_windows: vec![window; 3],
        };
        assert!(check_final(&hist, &fin(Expired, (t0 + s(20), t0 + s(21)))).is_empty());
        assert_eq!(
            check_final(&hist, &fin(Expired, (t0 + s(2), t0 + s(3)))).len(),
            1
        );
        assert_eq!(
            check_final(&hist, &fin(Revoked, (t0 + s(20), t0 + s(21)))).len(),
            1
        );
    }
}
