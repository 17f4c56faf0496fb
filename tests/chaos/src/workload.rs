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

use crate::clock::{ClockChange, Leeway};
use crate::world::{Clients, Kind};

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
    /// The later of its `nbf` and `iat`, unix seconds on the issuing
    /// leader's clock (from the returned record).
    pub nbf: i64,
    /// Its `exp`, likewise.
    pub exp: i64,
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

    /// Whether revoke attempt `r` may cover `t`. A subject revoke covers
    /// exactly the tokens signed before it committed (by the revision in
    /// the token): a token whose issue was invoked after an acknowledged
    /// subject revoke completed is not covered, on any clock, even in the
    /// same second. An attempt that was not acknowledged, or was retried
    /// (an earlier call may commit later), may commit at any time, so it
    /// may cover every token of the subject.
    pub fn may_cover(&self, t: &IssueRec, r: &RevokeRec) -> bool {
        match self {
            Target::Jti(j) => *j == t.jti,
            Target::Subject(s) => {
                // a retried attempt's earlier call may commit later
                *s == t.sub && (!r.acked || r.tries > 1 || t.start < r.end)
            }
            Target::Family(f) => *f == t.family,
            Target::Key(k) => *k == t.kid,
        }
    }

    /// Whether acknowledged revoke `r` certainly covers `t`: a subject
    /// revoke covers what was issued before it was invoked.
    pub fn surely_covers(&self, t: &IssueRec, r: &RevokeRec) -> bool {
        r.acked
            && match self {
                Target::Subject(s) => *s == t.sub && t.end < r.start,
                _ => self.may_cover(t, r),
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
    /// Calls it took (a retried one may also have committed from an
    /// earlier, timed-out call, at a later time).
    pub tries: usize,
    /// Whether it asked to wait for every edge.
    pub waited: bool,
    /// With a wait: edges still behind when it timed out.
    pub edges_behind: usize,
    /// A refresh (its predecessor's revocation), not a revoke call.
    pub refresh: bool,
}

/// What sending a revoke gave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Acknowledged.
    pub acked: bool,
    /// Calls made.
    pub tries: usize,
    /// The servers' propagation figure, when every edge acknowledged in time.
    pub propagation_ms: Option<f64>,
    /// Edges still behind at the wait's timeout.
    pub edges_behind: usize,
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
    /// The answer's outcome (STALE included: the edge's UNAVAILABLE
    /// "STALE: ..." refusal), or None when the call failed otherwise.
    pub outcome: Option<pb::Outcome>,
    /// The failed call's status code (not for STALE).
    pub error: Option<tonic::Code>,
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
    /// Every change of a wall-clock offset under libfaketime, the initial
    /// ones included; a process with none runs on the machine's clock.
    pub clocks: Vec<ClockChange>,
    /// One instant of the harness clock and the machine's unix time then
    /// (seconds), placing the history on the unix time line; `None` leaves
    /// clocks out of the checks (every edge on the machine's clock, and any
    /// time-claim refusal of a valid token is wrong).
    pub anchor: Option<(Instant, f64)>,
    /// The clock leeway the edges were given (what they promise).
    pub leeway: Leeway,
}

impl History {
    /// The machine's unix time at harness instant `at`, if anchored.
    pub fn unix_at(&self, at: Instant) -> Option<f64> {
        let (a, u) = self.anchor?;
        Some(if at >= a {
            u + (at - a).as_secs_f64()
        } else {
            u - (a - at).as_secs_f64()
        })
    }

    /// The wall-clock offsets edge `edge` may have had at some instant of
    /// `[from, to]`: (smallest, largest), seconds. A change counts from its
    /// `from` (it may have taken effect then) and supersedes the previous
    /// offset only from its `to` (it surely had by then).
    pub fn edge_offsets(&self, edge: usize, from: Instant, to: Instant) -> (i64, i64) {
        let changes: Vec<&ClockChange> = self
            .clocks
            .iter()
            .filter(|c| c.kind == Kind::Edge && c.index == edge)
            .collect();
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for (k, c) in changes.iter().enumerate() {
            if c.from > to {
                continue;
            }
            // surely replaced before the window began
            if changes[k + 1..].iter().any(|n| n.to <= from) {
                continue;
            }
            lo = lo.min(c.offset_secs);
            hi = hi.max(c.offset_secs);
        }
        if lo > hi {
            (0, 0)
        } else {
            (lo, hi)
        }
    }
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
    /// Concurrent revoker tasks.
    pub revokers: usize,
    /// Lifetime of issued tokens (longer than the run: the final checks
    /// expect nothing to expire).
    pub ttl: Duration,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            issue_every: Duration::from_millis(40),
            revoke_every: Duration::from_millis(250),
            verify_every: Duration::from_millis(10),
            rotate_every: Duration::from_secs(20),
            revokers: 2,
            ttl: Duration::from_secs(3600),
        }
    }
}

struct Shared {
    hist: Mutex<History>,
    /// Tokens a revoke or refresh targeted already.
    targeted: Mutex<std::collections::HashSet<String>>,
    ttl: u64,
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
/// Every this many issues, the issuer refreshes a token instead.
const REFRESH_EVERY: usize = 8;
/// One revoke in this many (at random, whatever its kind) waits for all
/// edges (the server's propagation figure); the others are acknowledged at
/// commit, so the checker's ack + B is commit + B.
const WAIT_ALL_EVERY: usize = 4;

impl Workload {
    /// Starts the workload tasks against `c`.
    pub fn start(c: Clients, rates: Rates) -> Self {
        let hist = History {
            anchor: Some((Instant::now(), crate::clock::unix_now_f64())),
            ..History::default()
        };
        let shared = Arc::new(Shared {
            hist: Mutex::new(hist),
            targeted: Mutex::new(Default::default()),
            ttl: rates.ttl.as_secs().max(60),
            subjects: Mutex::new((0..SUBJECTS).map(|i| format!("user-{i}")).collect()),
            next_subject: Mutex::new(SUBJECTS),
            hot: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
        });
        let mut tasks = vec![
            tokio::spawn(issuer(c.clone(), shared.clone(), rates.issue_every)),
            tokio::spawn(rotator(c.clone(), shared.clone(), rates.rotate_every)),
        ];
        for r in 0..rates.revokers.max(1) {
            tasks.push(tokio::spawn(revoker(
                c.clone(),
                shared.clone(),
                rates.revoke_every,
                r,
            )));
        }
        for i in 0..c.servers.len() {
            tasks.push(tokio::spawn(monitor(c.clone(), shared.clone(), i)));
        }
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

    /// Stops every task and returns the history. Each task may finish its
    /// call in flight (every call has a timeout); one still running after
    /// that is aborted. Attempts are recorded before they are sent, so
    /// even an aborted one is in the history.
    pub async fn stop(mut self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for t in std::mem::take(&mut self.tasks) {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        std::mem::take(&mut *lock(&self.shared.hist))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // a run that ends early (an error) must not leave load running
        for t in &self.tasks {
            t.abort();
        }
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

/// Records a revoke attempt before it is sent; returns its index.
fn attempt(s: &Shared, target: Target, waited: bool, refresh: bool) -> usize {
    let mut h = lock(&s.hist);
    let now = Instant::now();
    h.revokes.push(RevokeRec {
        start: now,
        end: now,
        target,
        acked: false,
        propagation_ms: None,
        tries: 0,
        waited,
        edges_behind: 0,
        refresh,
    });
    h.revokes.len() - 1
}

/// Records the attempt's outcome.
fn attempted(s: &Shared, i: usize, sent: Sent) {
    let mut h = lock(&s.hist);
    if let Some(r) = h.revokes.get_mut(i) {
        r.end = Instant::now();
        r.acked = sent.acked;
        r.tries = sent.tries;
        r.propagation_ms = sent.propagation_ms;
        r.edges_behind = sent.edges_behind;
    }
}

/// A recent acknowledged token no revoke or refresh targeted yet (marked
/// as targeted now).
fn pick_untargeted(s: &Shared, skip: usize) -> Option<IssueRec> {
    let h = lock(&s.hist);
    let mut targeted = lock(&s.targeted);
    let t = h
        .issues
        .iter()
        .rev()
        .take(60)
        .filter(|t| !targeted.contains(&t.jti))
        .nth(skip % 7)
        .cloned()?;
    targeted.insert(t.jti.clone());
    Some(t)
}

/// Refreshes a recent token with no grace: the successor joins the
/// predecessor's family, and the predecessor is revoked at commit.
async fn refresh_one(c: &Clients, s: &Shared, k: usize) {
    let Some(pred) = pick_untargeted(s, k) else {
        return;
    };
    let start = Instant::now();
    let i = attempt(s, Target::Jti(pred.jti.clone()), false, true);
    let mut done = None;
    let mut tries = 0;
    // One key for every try: a try whose answer was lost after it committed
    // is answered with the same successor, not taken for reuse.
    let key = format!("chaos-refresh-{:032x}", rand::random::<u128>());
    for t in 0..c.servers.len() {
        tries += 1;
        let req = pb::RefreshRequest {
            jti: pred.jti.clone(),
            ttl_seconds: s.ttl,
            grace_seconds: 0,
            idempotency_key: key.clone(),
        };
        if let Ok(r) = tokens(c, k + t)
            .refresh(with_timeout(req, Duration::from_secs(2)))
            .await
        {
            done = r.into_inner().successor;
            break;
        }
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    attempted(
        s,
        i,
        Sent {
            acked: done.is_some(),
            tries,
            ..Sent::default()
        },
    );
    if done.is_some() {
        // the predecessor is revoked now: verify it often
        let mut hot = lock(&s.hot);
        hot.push_back((pred.jti.clone(), pred.token.clone()));
        while hot.len() > 30 {
            hot.pop_front();
        }
    }
    if let Some((rec, token)) = done.and_then(|r| Some((r.record?, r.token))) {
        lock(&s.hist).issues.push(IssueRec {
            start,
            end: Instant::now(),
            jti: rec.jti,
            token,
            sub: rec.sub,
            family: rec.family,
            kid: rec.kid,
            nbf: rec.nbf.max(rec.iat),
            exp: rec.exp,
        });
    }
}

async fn issuer(c: Clients, s: Arc<Shared>, every: Duration) {
    let mut k = 0usize;
    while !s.stop.load(Ordering::Relaxed) {
        if k % REFRESH_EVERY == REFRESH_EVERY - 1 {
            refresh_one(&c, &s, k).await;
            k += 1;
            tokio::time::sleep(every).await;
            continue;
        }
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
                ttl_seconds: s.ttl,
                ..Default::default()
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
                    nbf: rec.nbf.max(rec.iat),
                    exp: rec.exp,
                }),
                None => h.failed_issues += 1,
            }
        }
        k += 1;
        tokio::time::sleep(every).await;
    }
}

/// Sends one revoke, trying each server once.
/// With `wait_all`, the answer waits (up to 1.5 s) for every edge.
async fn send_revoke(c: &Clients, first: usize, target: &Target, wait_all: bool) -> Sent {
    let (wait, wait_ms) = if wait_all {
        (pb::WaitFor::AllEdges as i32, 1500)
    } else {
        (pb::WaitFor::Unspecified as i32, 0)
    };
    let mut sent = Sent::default();
    for t in 0..c.servers.len() {
        sent.tries += 1;
        let mut tc = tokens(c, first + t);
        let to = Duration::from_secs(3);
        let r = match target {
            Target::Jti(j) => {
                tc.revoke(with_timeout(
                    pb::RevokeRequest {
                        jti: j.clone(),
                        reason: "chaos".into(),
                        wait_for: wait,
                        wait_timeout_ms: wait_ms,
                        ..Default::default()
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
                    Ok(_) => {
                        sent.acked = true;
                        return sent;
                    }
                    Err(_) => continue,
                }
            }
        };
        if let Ok(r) = r {
            let r = r.into_inner();
            sent.acked = true;
            sent.propagation_ms = r.propagation_ms;
            sent.edges_behind = r.edges_behind.len();
            return sent;
        }
    }
    sent
}

async fn revoker(c: Clients, s: Arc<Shared>, every: Duration, id: usize) {
    let mut k = id;
    let mut subject_revokes = 0usize;
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let Some(tok) = pick_untargeted(&s, k) else {
            continue;
        };
        let target = match k % 8 {
            0..=4 => Target::Jti(tok.jti.clone()),
            5 | 6 => Target::Family(tok.family.clone()),
            _ => {
                subject_revokes += 1;
                // every other subject revoke retires the subject; the rest
                // keep issuing for it, and those later tokens must stay valid
                if subject_revokes.is_multiple_of(2) {
                    let mut subs = lock(&s.subjects);
                    if let Some(p) = subs.iter().position(|x| *x == tok.sub) {
                        let mut n = lock(&s.next_subject);
                        subs[p] = format!("user-{}", *n);
                        *n += 1;
                    }
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
        // which revokes wait is independent of their kind
        let wait_all = rand::thread_rng().gen_ratio(1, WAIT_ALL_EVERY as u32);
        let i = attempt(&s, target.clone(), wait_all, false);
        let sent = send_revoke(&c, k, &target, wait_all).await;
        attempted(&s, i, sent);
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
        let keys = match r {
            Ok(r) => r.into_inner().keys,
            Err(_) => {
                pending = Some(kid);
                continue;
            }
        };
        // the keys the activation retired (the previous active one)
        let retiring: Vec<String> = keys
            .into_iter()
            .filter(|k| k.state == pb::KeyState::Retiring as i32 && k.kid != kid)
            .map(|k| k.kid)
            .collect();
        for old in retiring {
            let target = Target::Key(old);
            let i = attempt(&s, target.clone(), false, false);
            let sent = send_revoke(&c, k, &target, false).await;
            attempted(&s, i, sent);
        }
    }
}

async fn verifier(c: Clients, s: Arc<Shared>, edge: usize, every: Duration) {
    let mut v = pb::verifier_service_client::VerifierServiceClient::new(c.edges[edge].clone());
    // a fixed pace whatever the answers, so shares of answers are shares of time
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !s.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // half the time a token a revoke targeted lately, else one of the
        // last 300 issued, or (one in five) any token issued so far: old
        // tokens meet revokes too (subject, family, key), and an edge whose
        // clock is behind the issuer's by D judges only tokens older than D
        // by their revocations
        let pick = {
            let mut rng = rand::thread_rng();
            let hot = lock(&s.hot);
            let r: f64 = rng.gen();
            if r < 0.5 && !hot.is_empty() {
                hot.get(rng.gen_range(0..hot.len())).cloned()
            } else {
                drop(hot);
                let h = lock(&s.hist);
                let n = h.issues.len();
                if n == 0 {
                    None
                } else {
                    let i = if r < 0.8 {
                        n - 1 - rng.gen_range(0..n.min(300))
                    } else {
                        rng.gen_range(0..n)
                    };
                    Some((h.issues[i].jti.clone(), h.issues[i].token.clone()))
                }
            }
        };
        let Some((jti, token)) = pick else {
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
        let (outcome, error) = match r {
            Ok(r) => (pb::Outcome::try_from(r.into_inner().outcome).ok(), None),
            // the edge's fail-closed refusal
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().starts_with("STALE") => {
                (Some(pb::Outcome::Stale), None)
            }
            // a connection torn down mid-call (a killed edge) surfaces as
            // INTERNAL "h2 protocol error": the network, not an answer
            Err(e)
                if e.code() == tonic::Code::Internal
                    && e.message().contains("h2 protocol error") =>
            {
                (None, Some(tonic::Code::Unavailable))
            }
            Err(e) => (None, Some(e.code())),
        };
        lock(&s.hist).verifies.push(VerifyRec {
            edge,
            jti,
            start,
            end,
            outcome,
            error,
        });
    }
}

/// Polls server `i`'s status (who leads) every 100 ms.
async fn monitor(c: Clients, s: Arc<Shared>, i: usize) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut a = admin(&c, i);
    while !s.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let r = a
            .status(with_timeout(
                pb::StatusRequest::default(),
                Duration::from_millis(300),
            ))
            .await;
        if let Ok(r) = r {
            let r = r.into_inner();
            lock(&s.hist).status.push(StatusSample {
                at: Instant::now(),
                server: i,
                leader: r.role == pb::Role::Leader as i32,
                leader_id: r.leader_id,
            });
        }
    }
}
