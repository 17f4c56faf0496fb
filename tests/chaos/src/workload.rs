//! The workload and its history: concurrent issues, revokes of all four
//! kinds (token, subject, family, key) and verifies at every edge, each
//! recorded with invocation and completion times on the harness clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinHandle;
use veto_proto as pb;

use crate::world::Clients;

/// An acknowledged issue.
#[derive(Debug, Clone)]
pub struct IssueRec {
    /// Invocation.
    pub start: Instant,
    /// Acknowledgement.
    pub end: Instant,
    /// Token id.
    pub jti: String,
    /// The token.
    pub token: String,
    /// Subject.
    pub sub: String,
    /// Rotation family.
    pub family: String,
    /// Signing key.
    pub kid: String,
}

/// What a revoke names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One token.
    Jti(String),
    /// Every token of a subject issued so far.
    Subject(String),
    /// A rotation family.
    Family(String),
    /// Every token a signing key signed.
    Key(String),
}

impl Target {
    /// The kind, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Jti(_) => "token",
            Target::Subject(_) => "subject",
            Target::Family(_) => "family",
            Target::Key(_) => "key",
        }
    }

    /// Whether this revoke may cover `t` (at any time: the conservative side).
    pub fn may_cover(&self, t: &IssueRec) -> bool {
        match self {
            Target::Jti(j) => *j == t.jti,
            Target::Subject(s) => *s == t.sub,
            Target::Family(f) => *f == t.family,
            Target::Key(k) => *k == t.kid,
        }
    }

    /// Whether this revoke, invoked at `start`, certainly covers `t`: a
    /// subject revoke covers what was issued before it was invoked.
    pub fn surely_covers(&self, t: &IssueRec, start: Instant) -> bool {
        match self {
            Target::Subject(s) => *s == t.sub && t.end < start,
            _ => self.may_cover(t),
        }
    }
}

/// A revoke attempt (acknowledged or not).
#[derive(Debug, Clone)]
pub struct RevokeRec {
    /// Invocation.
    pub start: Instant,
    /// Completion (acknowledgement or the last failure).
    pub end: Instant,
    /// What it revokes.
    pub target: Target,
    /// Whether a server acknowledged it.
    pub acked: bool,
    /// Commit to the last edge's ack, on the leader's clock (ALL_EDGES).
    pub propagation_ms: Option<f64>,
}

/// One verify at an edge.
#[derive(Debug, Clone)]
pub struct VerifyRec {
    /// Edge index.
    pub edge: usize,
    /// Token id.
    pub jti: String,
    /// Invocation.
    pub start: Instant,
    /// Completion.
    pub end: Instant,
    /// The answer's outcome, or None when the call failed.
    pub outcome: Option<pb::Outcome>,
}

impl VerifyRec {
    /// Answered, and not STALE.
    pub fn answered(&self) -> bool {
        matches!(self.outcome, Some(o) if o != pb::Outcome::Stale)
    }
}

/// A server's answer to a status poll.
#[derive(Debug, Clone)]
pub struct StatusSample {
    /// When it arrived.
    pub at: Instant,
    /// Server index.
    pub server: usize,
    /// Whether it said it leads.
    pub leader: bool,
    /// The leader it names (0 = none).
    pub leader_id: u64,
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultRec {
    /// Its name.
    pub name: String,
    /// Injected.
    pub inject: Instant,
    /// Healed.
    pub heal: Instant,
    /// The end of its recovery window (the next fault's start, or the end).
    pub end: Instant,
    /// The leader (server index) when it was injected.
    pub leader_before: Option<usize>,
    /// Whether it is meant to change the leader.
    pub moves_leader: bool,
}

/// Everything the run recorded.
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged issues.
    pub issues: Vec<IssueRec>,
    /// Issues that failed (they may still have been committed).
    pub failed_issues: usize,
    /// Revoke attempts.
    pub revokes: Vec<RevokeRec>,
    /// Verifies.
    pub verifies: Vec<VerifyRec>,
    /// Status polls.
    pub status: Vec<StatusSample>,
    /// Faults.
    pub faults: Vec<FaultRec>,
}

/// How hard the workload pushes.
#[derive(Debug, Clone)]
pub struct Rates {
    /// Pause between issues.
    pub issue_every: Duration,
    /// Pause between revokes.
    pub revoke_every: Duration,
    /// Pause between verifies, per edge.
    pub verify_every: Duration,
    /// Pause between key rotations (publish, activate, revoke the old key).
    pub rotate_every: Duration,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            issue_every: Duration::from_millis(40),
            revoke_every: Duration::from_millis(150),
            verify_every: Duration::from_millis(10),
            rotate_every: Duration::from_secs(20),
        }
    }
}

struct Shared {
    hist: Mutex<History>,
    subjects: Mutex<Vec<String>>,
    next_subject: Mutex<u64>,
    /// Tokens recently targeted by a revoke, verified more often.
    hot: Mutex<VecDeque<(String, String)>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running workload.
pub struct Workload {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

const SUBJECTS: u64 = 8;
const TTL_SECONDS: u64 = 3600;

impl Workload {
    /// Starts the workload tasks against `c`.
    pub fn start(c: Clients, rates: Rates) -> Self {
        let shared = Arc::new(Shared {
            hist: Mutex::new(History::default()),
            subjects: Mutex::new((0..SUBJECTS).map(|i| format!("user-{i}")).collect()),
            next_subject: Mutex::new(SUBJECTS),
            hot: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
        });
        let mut tasks = vec![
            tokio::spawn(issuer(c.clone(), shared.clone(), rates.issue_every)),
            tokio::spawn(revoker(c.clone(), shared.clone(), rates.revoke_every)),
            tokio::spawn(rotator(c.clone(), shared.clone(), rates.rotate_every)),
            tokio::spawn(monitor(c.clone(), shared.clone())),
        ];
        for e in 0..c.edges.len() {
            tasks.push(tokio::spawn(verifier(
                c.clone(),
                shared.clone(),
                e,
                rates.verify_every,
            )));
        }
        Workload { shared, tasks }
    }

    /// Records a fault.
    pub fn record_fault(&self, f: FaultRec) {
        lock(&self.shared.hist).faults.push(f);
    }

    /// Number of acknowledged issues so far.
    pub fn issued(&self) -> usize {
        lock(&self.shared.hist).issues.len()
    }

    /// Stops every task (each finishes its call in flight) and returns the
    /// history.
    pub async fn stop(self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        std::mem::take(&mut *lock(&self.shared.hist))
    }
}

fn tokens(
    c: &Clients,
    i: usize,
) -> pb::token_service_client::TokenServiceClient<tonic::transport::Channel> {
    pb::token_service_client::TokenServiceClient::new(c.servers[i % c.servers.len()].clone())
}

fn admin(
    c: &Clients,
    i: usize,
) -> pb::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
    pb::admin_service_client::AdminServiceClient::new(c.servers[i % c.servers.len()].clone())
}

fn with_timeout<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    r
}

async fn issuer(c: Clients, s: Arc<Shared>, every: Duration) {
    let mut k = 0usize;
    while !s.stop.load(Ordering::Relaxed) {
        let sub = {
            let subs = lock(&s.subjects);
            subs[k % subs.len()].clone()
        };
        let start = Instant::now();
        let mut done = None;
        // up to one try per server, starting at a rotating one
        for t in 0..c.servers.len() {
            let req = pb::IssueRequest {
                sub: sub.clone(),
                scopes: vec!["read".into()],
                aud: None,
                ttl_seconds: TTL_SECONDS,
            };
            match tokens(&c, k + t)
                .issue(with_timeout(req, Duration::from_secs(2)))
                .await
            {
                Ok(r) => {
                    done = Some(r.into_inner());
                    break;
                }
                Err(_) if s.stop.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        let end = Instant::now();
        {
            let mut h = lock(&s.hist);
            match done.and_then(|r| Some((r.record?, r.token))) {
                Some((rec, token)) => h.issues.push(IssueRec {
                    start,
                    end,
                    jti: rec.jti,
                    token,
                    sub: rec.sub,
                    family: rec.family,
                    kid: rec.kid,
                }),
                None => h.failed_issues += 1,
            }
        }
        k += 1;
        tokio::time::sleep(every).await;
    }
}

/// Sends one revoke, trying each server once; returns (acked, propagation).
async fn send_revoke(c: &Clients, first: usize, target: &Target) -> (bool, Option<f64>) {
    let wait = pb::WaitFor::AllEdges as i32;
    let wait_ms = 1500;
    for t in 0..c.servers.len() {
        let mut tc = tokens(c, first + t);
        let to = Duration::from_secs(4);
        let r = match target {
            Target::Jti(j) => {
                tc.revoke(with_timeout(
                    pb::RevokeRequest {
                        jti: j.clone(),
                        reason: "chaos".into(),
                        wait_for: wait,
                        wait_timeout_ms: wait_ms,
                    },
                    to,
                ))
                .await
            }
            Target::Subject(sub) => {
                tc.revoke_subject(with_timeout(
                    pb::RevokeSubjectRequest {
                        sub: sub.clone(),
                        before_unix: 0,
                        reason: "chaos".into(),
                        wait_for: wait,
                        wait_timeout_ms: wait_ms,
                    },
                    to,
                ))
                .await
            }
            Target::Family(f) => {
                tc.revoke_family(with_timeout(
                    pb::RevokeFamilyRequest {
                        family: f.clone(),
                        reason: "chaos".into(),
                        wait_for: wait,
                        wait_timeout_ms: wait_ms,
                    },
                    to,
                ))
                .await
            }
            Target::Key(kid) => {
                let r = admin(c, first + t)
                    .rotate_signing_key(with_timeout(
                        pb::RotateSigningKeyRequest {
                            stage: pb::KeyStage::Revoke as i32,
                            kid: kid.clone(),
                            reason: "chaos".into(),
                            ..Default::default()
                        },
                        to,
                    ))
                    .await;
                match r {
                    Ok(_) => return (true, None),
                    Err(_) => continue,
                }
            }
        };
        if let Ok(r) = r {
            return (true, r.into_inner().propagation_ms);
        }
    }
    (false, None)
}

async fn revoker(c: Clients, s: Arc<Shared>, every: Duration) {
    let mut k = 0usize;
    let mut targeted = std::collections::HashSet::new();
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        // a recent acknowledged token not targeted yet
        let pick = {
            let h = lock(&s.hist);
            h.issues
                .iter()
                .rev()
                .take(60)
                .filter(|t| !targeted.contains(&t.jti))
                .nth(k % 7)
                .cloned()
        };
        let Some(tok) = pick else {
            continue;
        };
        targeted.insert(tok.jti.clone());
        let target = match k % 8 {
            0..=4 => Target::Jti(tok.jti.clone()),
            5 | 6 => Target::Family(tok.family.clone()),
            _ => {
                // retire the subject: no new tokens name it from now on
                let mut subs = lock(&s.subjects);
                if let Some(p) = subs.iter().position(|x| *x == tok.sub) {
                    let mut n = lock(&s.next_subject);
                    subs[p] = format!("user-{}", *n);
                    *n += 1;
                }
                Target::Subject(tok.sub.clone())
            }
        };
        {
            let mut hot = lock(&s.hot);
            hot.push_back((tok.jti.clone(), tok.token.clone()));
            while hot.len() > 30 {
                hot.pop_front();
            }
        }
        let start = Instant::now();
        let (acked, propagation_ms) = send_revoke(&c, k, &target).await;
        lock(&s.hist).revokes.push(RevokeRec {
            start,
            end: Instant::now(),
            target,
            acked,
            propagation_ms,
        });
        k += 1;
    }
}

/// Rotates the signing key and revokes the previous one, now and then.
async fn rotator(c: Clients, s: Arc<Shared>, every: Duration) {
    let mut k = 0usize;
    let mut pending: Option<String> = None;
    let mut last = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        k += 1;
        let mut a = admin(&c, k);
        let Ok(st) = a
            .status(with_timeout(
                pb::StatusRequest::default(),
                Duration::from_secs(2),
            ))
            .await
        else {
            continue;
        };
        let old = st.into_inner().active_kid;
        let kid = match pending.take() {
            Some(kid) => kid,
            None => {
                let r = a
                    .rotate_signing_key(with_timeout(
                        pb::RotateSigningKeyRequest {
                            stage: pb::KeyStage::Publish as i32,
                            reason: "chaos".into(),
                            ..Default::default()
                        },
                        Duration::from_secs(3),
                    ))
                    .await;
                match r {
                    Ok(r) => r.into_inner().kid,
                    Err(_) => continue,
                }
            }
        };
        // activate only once every edge has the new key (no force)
        let r = a
            .rotate_signing_key(with_timeout(
                pb::RotateSigningKeyRequest {
                    stage: pb::KeyStage::Activate as i32,
                    kid: kid.clone(),
                    wait_timeout_ms: 3000,
                    reason: "chaos".into(),
                    ..Default::default()
                },
                Duration::from_secs(5),
            ))
            .await;
        if r.is_err() {
            pending = Some(kid);
            continue;
        }
        if old.is_empty() || old == kid {
            continue;
        }
        let target = Target::Key(old);
        let start = Instant::now();
        let (acked, _) = send_revoke(&c, k, &target).await;
        lock(&s.hist).revokes.push(RevokeRec {
            start,
            end: Instant::now(),
            target,
            acked,
            propagation_ms: None,
        });
    }
}

async fn verifier(c: Clients, s: Arc<Shared>, edge: usize, every: Duration) {
    let mut v = pb::verifier_service_client::VerifierServiceClient::new(c.edges[edge].clone());
    while !s.stop.load(Ordering::Relaxed) {
        // half the time a token a revoke targeted lately, else any recent one
        let pick = {
            let mut rng = rand::thread_rng();
            let hot = lock(&s.hot);
            if rng.gen_bool(0.5) && !hot.is_empty() {
                hot.get(rng.gen_range(0..hot.len())).cloned()
            } else {
                drop(hot);
                let h = lock(&s.hist);
                let n = h.issues.len();
                if n == 0 {
                    None
                } else {
                    let i = n - 1 - rng.gen_range(0..n.min(300));
                    Some((h.issues[i].jti.clone(), h.issues[i].token.clone()))
                }
            }
        };
        let Some((jti, token)) = pick else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let start = Instant::now();
        let r = v
            .verify(with_timeout(
                pb::VerifyRequest {
                    token,
                    ..Default::default()
                },
                Duration::from_secs(1),
            ))
            .await;
        let end = Instant::now();
        let outcome = r
            .ok()
            .and_then(|r| pb::Outcome::try_from(r.into_inner().outcome).ok());
        let failed = outcome.is_none();
        lock(&s.hist).verifies.push(VerifyRec {
            edge,
            jti,
            start,
            end,
            outcome,
        });
        // a dead edge refuses connections at once: do not spin
        let pause = if failed {
            every.max(Duration::from_millis(50))
        } else {
            every
        };
        tokio::time::sleep(pause).await;
    }
}

/// Polls every server's status (who leads) every 100 ms.
async fn monitor(c: Clients, s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        let polls = (0..c.servers.len()).map(|i| {
            let mut a = admin(&c, i);
            async move {
                let r = a
                    .status(with_timeout(
                        pb::StatusRequest::default(),
                        Duration::from_millis(500),
                    ))
                    .await
                    .ok()?
                    .into_inner();
                Some(StatusSample {
                    at: Instant::now(),
                    server: i,
                    leader: r.role == pb::Role::Leader as i32,
                    leader_id: r.leader_id,
                })
            }
        });
        let got = futures::future::join_all(polls).await;
        lock(&s.hist).status.extend(got.into_iter().flatten());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
