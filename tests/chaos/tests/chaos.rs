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
async fn the_checker_catches_an_edge_that_skips_the_bound() -> anyhow::Result<()> {
    let mut p = plan(3, 2, vec![Fault::PartitionEdge]);
    // edge 0 (the one partitioned) ignores the bound; the fault outlasts B
    p.world.broken_edges = vec![0];
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
        "the checker missed the broken edge: {:?}",
        r.violations
    );
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
