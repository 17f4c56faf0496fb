//! Faults, and a run: a workload over a [`World`] while faults come and go,
//! then healing, the final reads, the checker and the figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veto_proto as pb;

use crate::checker::{self, Figures, FinalState, Violation};
use crate::workload::{FaultRec, History, Rates, Workload};
use crate::world::{Kind, World, WorldOptions};

/// A fault the harness can inject and heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the leader; restart it at heal.
    KillLeader,
    /// SIGKILL a follower; restart it at heal.
    KillFollower,
    /// SIGKILL edge 0; restart it at heal.
    KillEdge,
    /// Cut the leader from every other server (edges still reach it).
    PartitionLeader,
    /// Cut edge 0 from every server (the harness still reaches it).
    PartitionEdge,
    /// Cut the server edge 0 streams from off the other servers, leaving
    /// its edges connected to it.
    IsolateFeedServer,
    /// Every host drops 20% of what it sends to other hosts.
    LossSymmetric,
    /// The leader drops 40% of what it sends; nothing else is lost.
    LossAsymmetric,
    /// One way: the leader's packets to the other servers are dropped,
    /// theirs to it arrive.
    OneWayLeader,
    /// SIGKILL every server; restart them all at heal.
    FullRestart,
    /// SIGSTOP the leader (a stalled process or VM); SIGCONT at heal.
    PauseLeader,
    /// SIGKILL the first learner; restart it at heal. Not in [`Fault::ALL`]
    /// (a world needs a learner for it).
    KillLearner,
    /// Every wall clock with a jump ([`crate::clock::Clock::jump_secs`])
    /// steps by it; at heal they step back. Not in [`Fault::ALL`] (a world
    /// needs jumping clocks for it).
    ClockJump,
}

impl Fault {
    /// Every fault, in the order a rotating run uses.
    pub const ALL: [Fault; 11] = [
        Fault::KillLeader,
        Fault::PartitionEdge,
        Fault::LossSymmetric,
        Fault::PartitionLeader,
        Fault::KillEdge,
        Fault::IsolateFeedServer,
        Fault::LossAsymmetric,
        Fault::FullRestart,
        Fault::KillFollower,
        Fault::OneWayLeader,
        Fault::PauseLeader,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::KillEdge => "kill -9 edge",
            Fault::PartitionLeader => "partition leader",
            Fault::PartitionEdge => "partition edge",
            Fault::IsolateFeedServer => "isolate edge's feed server",
            Fault::LossSymmetric => "20% loss, all hosts",
            Fault::LossAsymmetric => "40% loss, leader's egress",
            Fault::OneWayLeader => "one-way cut, leader to servers",
            Fault::FullRestart => "kill -9 all servers, restart",
            Fault::PauseLeader => "SIGSTOP leader",
            Fault::KillLearner => "kill -9 learner",
            Fault::ClockJump => "wall clock jump",
        }
    }

    fn moves_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::PartitionLeader
                | Fault::FullRestart
                | Fault::PauseLeader
                | Fault::OneWayLeader
        )
    }
}

/// A run's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to start.
    pub world: WorldOptions,
    /// How hard the workload pushes.
    pub rates: Rates,
    /// The faults, in order (repeated until `total` when set).
    pub faults: Vec<Fault>,
    /// How long each fault stays on.
    pub hold: Duration,
    /// Quiet time after each recovery, before the next fault.
    pub settle: Duration,
    /// Keep rotating through `faults` until this much time has passed.
    pub total: Option<Duration>,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Every violation (empty = the checker passed).
    pub violations: Vec<Violation>,
    /// Per fault.
    pub figures: Vec<Figures>,
    /// Counts over the run.
    pub issues: usize,
    /// Issues that failed (not acknowledged).
    pub failed_issues: usize,
    /// Acknowledged revokes, by kind.
    pub revokes: HashMap<&'static str, usize>,
    /// Revoke attempts not acknowledged.
    pub failed_revokes: usize,
    /// Verifies, and how many were answered (not STALE, not failed).
    pub verifies: (usize, usize),
    /// Acknowledged operations missing after healing (must be 0).
    pub lost: usize,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Where the process logs were kept.
    pub logs: std::path::PathBuf,
    /// Per edge: (verifies, answered).
    pub per_edge: Vec<(usize, usize)>,
    /// Per edge: the server it streamed from at the end (by index).
    pub feed_servers: Vec<Option<usize>>,
    /// The servers (by index) seen leading, in order of first sight.
    pub leaders: Vec<usize>,
}

impl Report {
    /// A Markdown table of the figures, with the totals.
    pub fn markdown(&self) -> String {
        let ms = |d: Duration| format!("{}", d.as_millis());
        let mut s = String::from(
            "| fault | held s (mean) | verifies | answered | fresh again after heal, ms (max) | new leader after, ms (max) | revokes acked | latest accept after ack, ms (max) | server propagation, ms (max; waits timed out) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for f in &self.figures {
            let max = f
                .max_propagation_ms
                .map(|p| format!("{p:.1}"))
                .unwrap_or_else(|| "-".into());
            let propagation = format!("{max}; {} of {}", f.wait_timeouts, f.waited);
            s.push_str(&format!(
                "| {} | {:.1} | {} | {:.1}% | {} | {} | {} | {} | {} |\n",
                f.name,
                f.held.as_secs_f64(),
                f.verifies,
                f.availability * 100.0,
                ms(f.recovery),
                f.election.map(ms).unwrap_or_else(|| "-".into()),
                f.revokes,
                f.worst_accept_after_ack
                    .map(ms)
                    .unwrap_or_else(|| "-".into()),
                propagation,
            ));
        }
        let mut kinds: Vec<_> = self.revokes.iter().collect();
        kinds.sort();
        s.push_str(&format!(
            "\nRun: {:.0} s; issues acked {} (failed {}); revokes acked {} ({}; failed {}); verifies {} ({} answered); \
             operations lost: {}; violations: {}.\n",
            self.elapsed.as_secs_f64(),
            self.issues,
            self.failed_issues,
            self.revokes.values().sum::<usize>(),
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.failed_revokes,
            self.verifies.0,
            self.verifies.1,
            self.lost,
            self.violations.len(),
        ));
        let edges: Vec<String> = self
            .per_edge
            .iter()
            .enumerate()
            .map(|(e, (n, a))| {
                let feed = self
                    .feed_servers
                    .get(e)
                    .copied()
                    .flatten()
                    .map_or("-".into(), |s| format!("s{}", s + 1));
                format!("e{e} {a}/{n} answered (fed by {feed} at the end)")
            })
            .collect();
        let leaders: Vec<String> = self.leaders.iter().map(|l| format!("s{}", l + 1)).collect();
        s.push_str(&format!(
            "Edges: {}. Leaders seen: {}.\n",
            edges.join("; "),
            leaders.join(", ")
        ));
        if !self.violations.is_empty() {
            s.push_str(&format!(
                "Violations by kind: {}.\n",
                self.violation_summary()
            ));
        }
        s
    }

    /// Violations counted by rule and detail, e.g. `late acceptance (token)
    /// 12, false refusal OUTCOME_NOT_YET_VALID at e1 40`, and the latest
    /// late acceptance after its ack.
    pub fn violation_summary(&self) -> String {
        let mut n: std::collections::BTreeMap<String, usize> = Default::default();
        let mut latest: Option<Duration> = None;
        for v in &self.violations {
            let k = match v {
                Violation::AcceptedAfterBound {
                    edge,
                    kind,
                    after_ack,
                    ..
                } => {
                    latest = Some(latest.map_or(*after_ack, |l| l.max(*after_ack)));
                    format!("late acceptance at e{edge} ({kind} revoke)")
                }
                Violation::RefusedValid { edge, outcome, .. } => {
                    format!("false refusal at e{edge} ({outcome})")
                }
                Violation::Lost { .. } => "lost".into(),
                Violation::UnexpectedStatus { .. } => "unexpected status".into(),
                Violation::Diverged { .. } => "diverged".into(),
                Violation::EdgeError { edge, code, .. } => {
                    format!("edge error at e{edge} ({code})")
                }
                Violation::EdgeDisagrees { edge, detail, .. } => {
                    let answered = detail.split_whitespace().nth(1).unwrap_or("?");
                    format!("after healing, e{edge} answered {answered} against the history")
                }
            };
            *n.entry(k).or_default() += 1;
        }
        let mut out: Vec<String> = n.into_iter().map(|(k, c)| format!("{k}: {c}")).collect();
        if let Some(l) = latest {
            out.push(format!(
                "latest late acceptance {} ms after its ack",
                l.as_millis()
            ));
        }
        out.join("; ")
    }
}

/// Per-fault figures summed over repeats of the same fault.
pub fn summarize(figs: &[Figures]) -> Vec<Figures> {
    let mut out: Vec<Figures> = Vec::new();
    let mut n: HashMap<String, usize> = HashMap::new();
    for f in figs {
        match out.iter_mut().find(|o| o.name == f.name) {
            None => {
                out.push(f.clone());
                n.insert(f.name.clone(), 1);
            }
            Some(o) => {
                let k = n.entry(f.name.clone()).or_default();
                let answered =
                    o.availability * o.verifies as f64 + f.availability * f.verifies as f64;
                o.verifies += f.verifies;
                o.availability = if o.verifies == 0 {
                    1.0
                } else {
                    answered / o.verifies as f64
                };
                o.held = (o.held * *k as u32 + f.held) / (*k as u32 + 1);
                o.recovery = o.recovery.max(f.recovery);
                o.election = match (o.election, f.election) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                o.revokes += f.revokes;
                o.waited += f.waited;
                o.wait_timeouts += f.wait_timeouts;
                o.worst_accept_after_ack =
                    match (o.worst_accept_after_ack, f.worst_accept_after_ack) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                o.max_propagation_ms = match (o.max_propagation_ms, f.max_propagation_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                *k += 1;
            }
        }
    }
    for o in &mut out {
        let k = n.get(&o.name).copied().unwrap_or(1);
        o.name = format!("{} (×{k})", o.name);
    }
    out
}

struct Injected {
    /// The leader when the fault was injected.
    leader: Option<usize>,
    /// When the fault took effect (after finding the leader).
    at: Instant,
    /// Whether it is meant to move the leader.
    moves_leader: bool,
}

async fn inject(w: &mut World, f: Fault) -> Result<Injected> {
    let leader = w.wait_leader(Duration::from_secs(20)).await.ok();
    let l = leader.unwrap_or(0);
    let others: Vec<usize> = w
        .servers
        .iter()
        .filter(|s| s.index != l)
        .map(|s| s.host)
        .collect();
    let feed = if f == Fault::IsolateFeedServer {
        w.feed_server_of(0).await
    } else {
        None
    };
    let at = Instant::now();
    let mut moves_leader = f.moves_leader() && leader.is_some();
    match f {
        Fault::KillLeader => w.kill(Kind::Server, l).await?,
        Fault::KillFollower => {
            let f = w
                .servers
                .iter()
                .find(|s| s.index != l && !s.learner)
                .map(|s| s.index);
            w.kill(Kind::Server, f.context("no follower")?).await?
        }
        Fault::KillLearner => {
            let first = w.learner_indexes().first().copied();
            w.kill(Kind::Server, first.context("no learner")?).await?
        }
        Fault::ClockJump => {
            if w.jump_clocks()? == 0 {
                anyhow::bail!("no clock has a jump");
            }
        }
        Fault::KillEdge => w.kill(Kind::Edge, 0).await?,
        Fault::PartitionLeader => {
            let lh = w.servers[l].host;
            w.net.partition(&[lh], &others)?
        }
        Fault::PartitionEdge => {
            let eh = w.edges[0].host;
            let sh = w.server_hosts();
            w.net.partition(&[eh], &sh)?
        }
        Fault::IsolateFeedServer => {
            let s = feed.unwrap_or(l);
            moves_leader = leader == Some(s);
            let sh = w.servers[s].host;
            let rest: Vec<usize> = w
                .servers
                .iter()
                .filter(|x| x.index != s)
                .map(|x| x.host)
                .collect();
            w.net.partition(&[sh], &rest)?
        }
        Fault::LossSymmetric => {
            let all: Vec<usize> = (0..w.net.hosts().len()).collect();
            w.loss(&all, 20)?
        }
        Fault::LossAsymmetric => {
            let lh = w.servers[l].host;
            w.loss(&[lh], 40)?
        }
        Fault::OneWayLeader => {
            let lh = w.servers[l].host;
            let ips: Vec<_> = others.iter().map(|&h| w.net.hosts()[h].ip).collect();
            let rules: Vec<_> = ips.into_iter().map(crate::net::Rule::DropTo).collect();
            w.net.add_rules(lh, &rules)?
        }
        Fault::FullRestart => {
            for i in 0..w.servers.len() {
                w.kill(Kind::Server, i).await?;
            }
        }
        Fault::PauseLeader => w.pause(Kind::Server, l, true)?,
    }
    Ok(Injected {
        leader,
        at,
        moves_leader,
    })
}

async fn heal(w: &mut World) -> Result<()> {
    w.net.heal()?;
    // clocks first: a restarted process starts on its base clock
    w.reset_clocks()?;
    w.revive_all().await
}

/// Runs `plan`: starts the world, runs the workload through the faults,
/// heals, reads the final state and checks everything.
pub async fn run(plan: Plan) -> Result<Report> {
    Ok(run_with_history(plan).await?.0)
}

/// [`run`], also returning the recorded history.
pub async fn run_with_history(plan: Plan) -> Result<(Report, History)> {
    let began = Instant::now();
    let bound = plan.world.bound;
    let mut w = World::start(plan.world.clone()).await?;
    let load = Workload::start(w.clients(), plan.rates.clone());
    // a warm-up with no fault
    tokio::time::sleep(plan.settle.max(Duration::from_secs(2))).await;
    let mut k = 0usize;
    // the fault before, its window still open
    let mut prev: Option<FaultRec> = None;
    while !plan.faults.is_empty() {
        let done = match plan.total {
            Some(t) => began.elapsed() >= t,
            None => k >= plan.faults.len(),
        };
        if done {
            break;
        }
        let f = plan.faults[k % plan.faults.len()];
        let inj = inject(&mut w, f)
            .await
            .with_context(|| format!("injecting {}", f.name()))?;
        let at = inj.at;
        if let Some(mut p) = prev.take() {
            p.end = at;
            load.record_fault(p);
        }
        tokio::time::sleep(plan.hold).await;
        // heal time is when healing starts (restarts take time to come up)
        let healed = Instant::now();
        heal(&mut w)
            .await
            .with_context(|| format!("healing {}", f.name()))?;
        // recovery is part of what is measured: bounded, but not asserted
        let _ = w.wait_leader(Duration::from_secs(30)).await;
        let _ = w.wait_edges_fresh(Duration::from_secs(30)).await;
        tokio::time::sleep(plan.settle).await;
        prev = Some(FaultRec {
            name: f.name().into(),
            inject: at,
            heal: healed,
            end: healed,
            leader_before: inj.leader,
            moves_leader: inj.moves_leader,
        });
        k += 1;
    }
    let end = Instant::now();
    if let Some(mut p) = prev.take() {
        p.end = end;
        load.record_fault(p);
    }
    let mut hist = load.stop().await;
    hist.clocks = w.clock_log.clone();
    hist.leeway = plan.world.leeway.unwrap_or_default();
    let fin = read_final(&w, &hist).await?;
    let mut feed_servers = Vec::new();
    for e in 0..w.edges.len() {
        feed_servers.push(w.feed_server_of(e).await);
    }
    let mut violations = checker::check_history(&hist, bound);
    violations.extend(checker::check_final(&hist, &fin));
    let lost = violations
        .iter()
        .filter(|v| matches!(v, Violation::Lost { .. }))
        .count();
    let mut revokes: HashMap<&'static str, usize> = HashMap::new();
    for r in hist.revokes.iter().filter(|r| r.acked) {
        let kind = if r.refresh {
            "refresh"
        } else {
            r.target.kind()
        };
        *revokes.entry(kind).or_default() += 1;
    }
    // a failed check keeps the processes' logs for whoever reads it
    // (or when VETO_CHAOS_KEEP_LOGS=1)
    let keep_logs =
        !violations.is_empty() || std::env::var("VETO_CHAOS_KEEP_LOGS").as_deref() == Ok("1");
    let mut per_edge = vec![(0usize, 0usize); w.edges.len()];
    for v in &hist.verifies {
        if let Some(p) = per_edge.get_mut(v.edge) {
            p.0 += 1;
            p.1 += usize::from(v.answered());
        }
    }
    let mut leaders = Vec::new();
    for s in hist.status.iter().filter(|s| s.leader) {
        if !leaders.contains(&s.server) {
            leaders.push(s.server);
        }
    }
    let report = Report {
        per_edge,
        feed_servers,
        leaders,
        figures: checker::figures(&hist),
        issues: hist.issues.len(),
        failed_issues: hist.failed_issues,
        failed_revokes: hist
            .revokes
            .iter()
            .filter(|r| !r.acked && !r.refresh)
            .count(),
        revokes,
        verifies: (
            hist.verifies.len(),
            hist.verifies.iter().filter(|v| v.answered()).count(),
        ),
        violations,
        lost,
        elapsed: began.elapsed(),
        logs: if keep_logs {
            w.keep_logs()
        } else {
            w.log_dir().to_path_buf()
        },
    };
    Ok((report, hist))
}

/// After healing: waits for the servers to converge, then reads every
/// acknowledged token's status and every edge's answer for it.
async fn read_final(w: &World, h: &History) -> Result<FinalState> {
    w.wait_leader(Duration::from_secs(30)).await?;
    w.wait_edges_fresh(Duration::from_secs(30)).await?;
    // the servers converge on one applied index and digest (bounded)
    let mut digests = Vec::new();
    for _ in 0..100 {
        digests = Vec::new();
        for s in &w.servers {
            digests.push(
                w.status_of(s.index, true)
                    .await
                    .map(|st| (st.applied_index, st.state_digest)),
            );
        }
        let first = digests.first().cloned().flatten();
        if first.is_some() && digests.iter().all(|d| *d == first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let revision = digests
        .iter()
        .flatten()
        .map(|d| d.0)
        .max()
        .unwrap_or_default();
    // every acknowledged token's status, 16 reads at a time
    use futures::StreamExt;
    let reads = futures::stream::iter(h.issues.iter().map(|t| {
        let mut tc = w.tokens(0);
        async move {
            // a few tries: one transient failure is not a finding
            let mut last = None;
            for _ in 0..5 {
                let mut req = tonic::Request::new(pb::GetTokenRequest { jti: t.jti.clone() });
                req.set_timeout(Duration::from_secs(5));
                match tc.get(req).await {
                    Ok(r) => {
                        return Ok((
                            t.jti.clone(),
                            pb::TokenStatus::try_from(r.into_inner().status).ok(),
                        ))
                    }
                    Err(e) if e.code() == tonic::Code::NotFound => {
                        return Ok((t.jti.clone(), None))
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(anyhow::anyhow!("{last:?}")).context("reading a token's status after healing")
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<Result<_>>>()
    .await;
    let status = reads.into_iter().collect::<Result<HashMap<_, _>>>()?;
    let mut edge_answers = Vec::new();
    let mut edge_windows = Vec::new();
    for e in &w.edges {
        let began = Instant::now();
        let mut answers = HashMap::new();
        let mut v = w.verifier(e.index);
        for chunk in h.issues.chunks(500) {
            let items: Vec<pb::VerifyRequest> = chunk
                .iter()
                .map(|t| pb::VerifyRequest {
                    token: t.token.clone(),
                    min_revision: revision,
                    ..Default::default()
                })
                .collect();
            let mut got = None;
            let mut last = None;
            for _ in 0..5 {
                let mut req = tonic::Request::new(pb::VerifyBatchRequest {
                    items: items.clone(),
                });
                req.set_timeout(Duration::from_secs(10));
                match v.verify_batch(req).await {
                    Ok(r) => {
                        got = Some(r.into_inner());
                        break;
                    }
                    Err(err) => last = Some(err),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let r = got
                .ok_or_else(|| anyhow::anyhow!("{last:?}"))
                .with_context(|| format!("final VerifyBatch at e{}", e.index))?;
            for (t, res) in chunk.iter().zip(r.results) {
                if let Ok(o) = pb::Outcome::try_from(res.outcome) {
                    answers.insert(t.jti.clone(), o);
                }
            }
        }
        edge_answers.push(answers);
        edge_windows.push((began, Instant::now()));
    }
    Ok(FinalState {
        digests,
        status,
        edge_answers,
        edge_windows,
    })
}
