//! The short chaos suite: real `veto-server` and `veto-edge` processes, each
//! in its own network namespace, through every fault, with the history
//! checker; and proof that the checker fails on an edge that skips the
//! bound. Needs root, iproute2 and nftables (the test command installs
//! them). Build the binaries first (`cargo build --workspace --bins`).

use std::time::Duration;

use veto_chaos::checker::Violation;
use veto_chaos::workload::Rates;
use veto_chaos::world::WorldOptions;
use veto_chaos::{run, Fault, Plan};

/// One cluster at a time, also under `cargo test` (threads of one process);
/// nextest runs these in a serial test group as well.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn plan(servers: usize, edges: usize, faults: Vec<Fault>) -> Plan {
    Plan {
        world: WorldOptions {
            servers,
            edges,
            ..Default::default()
        },
        rates: Rates {
            rotate_every: Duration::from_secs(12),
            ..Default::default()
        },
        faults,
        hold: Duration::from_secs(4),
        settle: Duration::from_secs(1),
        total: None,
    }
}

fn assert_clean(r: &veto_chaos::Report) {
    println!("{}", r.markdown());
    for v in &r.violations {
        println!("VIOLATION: {v}");
    }
    assert!(
        r.violations.is_empty(),
        "the checker found {} violation(s); logs in {}",
        r.violations.len(),
        r.logs.display()
    );
    assert_eq!(r.lost, 0);
    // the workload really ran through the faults
    assert!(r.issues > 50, "only {} issues acknowledged", r.issues);
    assert!(
        r.revokes.len() >= 3,
        "revoke kinds acknowledged: {:?}",
        r.revokes
    );
    assert!(
        r.verifies.1 > 500,
        "only {} verifies answered",
        r.verifies.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_through_every_fault() -> anyhow::Result<()> {
    let _one = SERIAL.lock().await;
    let r = run(plan(3, 3, Fault::ALL.to_vec())).await?;
    assert_clean(&r);
    assert_eq!(r.figures.len(), Fault::ALL.len());
    // faults that stop an edge from proving freshness make it refuse
    let edge_cut = r
        .figures
        .iter()
        .find(|f| f.name == Fault::PartitionEdge.name())
        .ok_or_else(|| anyhow::anyhow!("no partition-edge figures"))?;
    assert!(edge_cut.availability < 1.0, "{edge_cut:?}");
    // a new leader is elected after the leader is killed
    let kill = r
        .figures
        .iter()
        .find(|f| f.name == Fault::KillLeader.name())
        .ok_or_else(|| anyhow::anyhow!("no kill-leader figures"))?;
    assert!(kill.election.is_some(), "{kill:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_leader_faults() -> anyhow::Result<()> {
    let _one = SERIAL.lock().await;
    let r = run(plan(
        5,
        2,
        vec![
            Fault::PartitionLeader,
            Fault::KillLeader,
            Fault::IsolateFeedServer,
        ],
    ))
    .await?;
    assert_clean(&r);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_an_edge_that_overshoots_the_bound() -> anyhow::Result<()> {
    let _one = SERIAL.lock().await;
    let mut p = plan(3, 2, vec![Fault::PartitionEdge]);
    // edge 0 (the one partitioned) keeps answering for 2 B instead of B;
    // the partition outlasts both
    p.world.broken_edges = vec![0];
    p.world.broken_bound = p.world.bound * 2;
    p.hold = Duration::from_secs(5);
    let r = run(p).await?;
    println!("{}", r.markdown());
    let late: Vec<_> = r
        .violations
        .iter()
        .filter(|v| matches!(v, Violation::AcceptedAfterBound { edge: 0, .. }))
        .collect();
    assert!(
        !late.is_empty(),
        "the checker missed the edge that overshoots the bound: {:?}",
        r.violations
    );
    for v in &late {
        println!("caught: {v}");
    }
    // the healthy edge did nothing wrong
    assert!(
        !r.violations.iter().any(|v| matches!(
            v,
            Violation::AcceptedAfterBound { edge: 1, .. } | Violation::RefusedValid { edge: 1, .. }
        )),
        "{:?}",
        r.violations
    );
    Ok(())
}

/// Regression (found by the SIGSTOP fault): an edge failing over *into* a
/// stalled server — its kernel accepts TCP, the process never answers —
/// waited on `Subscribe` for as long as the stall lasted, stale all along.
/// Now the stream must open within a third of B (at least 2H) or the edge
/// moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_does_not_hang_on_a_stalled_server() -> anyhow::Result<()> {
    use veto_chaos::world::{Kind, World};
    let _one = SERIAL.lock().await;
    let mut w = World::start(WorldOptions {
        servers: 3,
        edges: 1,
        ..Default::default()
    })
    .await?;
    let feed = veto_testkit::eventually(
        "the edge's feed server",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || w.feed_server_of(0),
    )
    .await?;
    // the edge fails over to the next server in its list: stall that one,
    // then cut the edge from its feed server
    let stalled = (feed + 1) % 3;
    w.pause(Kind::Server, stalled, true)?;
    let (eh, fh) = (w.edges[0].host, w.servers[feed].host);
    w.net.partition(&[eh], &[fh])?;
    let cut = std::time::Instant::now();
    // it goes stale once B passes without a proof...
    veto_testkit::eventually(
        "the edge to go stale",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { w.wait_edges_fresh(Duration::ZERO).await.err() },
    )
    .await?;
    // ...and is fresh again through the third server while the stalled one
    // stays stopped: B on its old server, B/3 on the stalled one, then
    // a probe through the third (with an election if the stalled one led)
    let fresh = w.wait_edges_fresh(Duration::from_secs(12)).await;
    let took = cut.elapsed();
    w.net.heal()?;
    w.pause(Kind::Server, stalled, false)?;
    fresh.map_err(|e| anyhow::anyhow!("edge still stale {took:?} after the cut: {e}"))?;
    println!(
        "fresh again {took:?} after the cut (stalled s{}, cut from s{})",
        stalled + 1,
        feed + 1
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    Ok(())
}
