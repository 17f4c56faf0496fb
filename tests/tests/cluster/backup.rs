//! Backup and restore, and recovery after losing a quorum, with the
//! documented commands (`veto snapshot save|inspect|restore`,
//! `veto cluster force-new`) run as the operator would run them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{bin_named, free_addr, Cluster, ClusterOptions, Node};
use veto_tests::{issue, revoke_all, start_edges, token_status, verify_at};

fn veto(args: &[&str]) -> anyhow::Result<String> {
    let bin = bin_named("veto", "VETO_CLI_BIN")?;
    let out = Command::new(bin)
        .env("VETO_INSECURE", "1")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "veto {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn statuses(node: &Node, jtis: &[String]) -> anyhow::Result<Vec<pb::TokenStatus>> {
    let mut v = Vec::new();
    for j in jtis {
        v.push(token_status(node, j).await?);
    }
    Ok(v)
}

/// Tokens, some revoked by id and a subject revoked whole; returns every
/// jti and the last revision.
async fn workload(l: &Node) -> anyhow::Result<(Vec<pb::IssueResponse>, u64)> {
    let mut toks = Vec::new();
    for i in 0..12 {
        toks.push(issue(l, &format!("user:{}", i % 4), 3600).await?);
    }
    revoke_all(l, &toks[..3]).await?;
    let last = l
        .tokens()?
        .revoke_subject(pb::RevokeSubjectRequest {
            sub: "user:3".into(),
            reason: "offboarded".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    Ok((toks, last))
}

fn jtis(toks: &[pb::IssueResponse]) -> Vec<String> {
    toks.iter()
        .map(|t| t.record.as_ref().map(|r| r.jti.clone()).unwrap_or_default())
        .collect()
}

fn member_args(m: &BTreeMap<u64, String>) -> Vec<String> {
    m.iter()
        .map(|(id, a)| format!("--member={id}={a}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_with_every_token_status() -> anyhow::Result<()> {
    let a = Cluster::start(ClusterOptions::default()).await?;
    let leader = a.wait_leader(Duration::from_secs(20)).await?;
    let l = a.node(leader)?;
    let (toks, last) = workload(l).await?;
    let ids = jtis(&toks);
    let before = statuses(l, &ids).await?;
    assert!(
        before.contains(&pb::TokenStatus::Revoked) && before.contains(&pb::TokenStatus::Active)
    );

    // Saved through a follower: it confirms with the leader first.
    let f = a.follower().await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("veto.backup");
    let file_s = file.display().to_string();
    let out = veto(&["--addr", &f.grpc_addr, "snapshot", "save", &file_s])?;
    assert!(out.contains("saved"), "{out}");
    let out = veto(&["--json", "snapshot", "inspect", &file_s])?;
    let header: serde_json::Value = serde_json::from_str(out.trim())?;
    assert!(header["revision"].as_u64().unwrap_or(0) >= last, "{header}");
    // Issued after the backup: the restored cluster will hold no record of
    // it, yet it verifies there (same keys) until revoked by presentation.
    let late = issue(l, "user:late", 3600).await?;

    // A corrupted copy is refused, by inspect and by restore.
    let bad = dir.path().join("bad.backup");
    let mut bytes = std::fs::read(&file)?;
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&bad, &bytes)?;
    let bad_s = bad.display().to_string();
    assert!(veto(&["snapshot", "inspect", &bad_s]).is_err());
    let refused_dir = dir.path().join("refused");
    let refused = veto(&[
        "snapshot",
        "restore",
        &bad_s,
        "--data-dir",
        &refused_dir.display().to_string(),
        "--node-id",
        "1",
        "--member=1=127.0.0.1:1",
    ]);
    assert!(refused.is_err_and(|e| e.to_string().contains("checksum")));
    assert!(
        !refused_dir.join("CURRENT").exists(),
        "nothing seeded from a corrupt file"
    );

    // A new cluster on new addresses, every node seeded from the file.
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|i| Ok((i, free_addr()?)))
        .collect::<anyhow::Result<_>>()?;
    let margs = member_args(&members);
    let b = Cluster::start_seeded(&members, Some(a.kek()), |id, db: &Path| {
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            file_s.clone(),
            "--data-dir".into(),
            db.display().to_string(),
            "--node-id".into(),
            id.to_string(),
        ];
        args.extend(margs.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        veto(&refs).map(|_| ())
    })
    .await?;
    drop(a);
    let bl = b.node(b.wait_leader(Duration::from_secs(20)).await?)?;
    for n in &b.nodes {
        assert_eq!(statuses(n, &ids).await?, before, "node {}", n.id);
    }
    // It carries on: the signing key still opens (same KEK), revisions
    // continue after the backup's, and edges bootstrap from it.
    let t = issue(bl, "user:new", 3600).await?;
    let r = bl
        .tokens()?
        .revoke(pb::RevokeRequest {
            jti: toks[5]
                .record
                .as_ref()
                .map(|r| r.jti.clone())
                .unwrap_or_default(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .revision;
    assert!(r > header["revision"].as_u64().unwrap_or(u64::MAX));
    let edges = start_edges(&b, 1, 2_000, 100).await?;
    let v = verify_at(&edges[0], &toks[0].token, r).await?;
    assert!(!v.valid, "revoked before the backup: {v:?}");
    let v = verify_at(&edges[0], &toks[5].token, r).await?;
    assert!(!v.valid, "revoked after the restore: {v:?}");
    let v = verify_at(&edges[0], &t.token, r).await?;
    assert!(v.valid, "issued after the restore: {v:?}");
    let v = verify_at(&edges[0], &toks[4].token, r).await?;
    assert!(v.valid, "never revoked: {v:?}");
    // The token issued after the backup: valid at the edge, unknown to the
    // state, so a revoke by jti cannot find it; presenting it revokes it.
    let v = verify_at(&edges[0], &late.token, r).await?;
    assert!(v.valid, "issued after the backup, never revoked: {v:?}");
    let late_jti = late
        .record
        .as_ref()
        .map(|r| r.jti.clone())
        .unwrap_or_default();
    let by_jti = bl
        .tokens()?
        .revoke(pb::RevokeRequest {
            jti: late_jti.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        by_jti.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );
    let dir2 = tempfile::tempdir()?;
    let token_file = dir2.path().join("leaked.jwt");
    std::fs::write(&token_file, format!("{}\n", late.token))?;
    let out = veto(&[
        "--addr",
        &bl.grpc_addr,
        "--json",
        "token",
        "revoke",
        "--token-file",
        &token_file.display().to_string(),
        "--reason",
        "leaked; record lost in the restore",
        "--wait-edges",
    ])?;
    let rv: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or(""))?;
    let rr = rv["revision"].as_u64().unwrap_or(0);
    assert!(rr > r, "{rv}");
    assert!(!out.contains(&late.token), "the CLI echoed the token");
    let v = verify_at(&edges[0], &late.token, rr).await?;
    assert_eq!(v.outcome, pb::Outcome::Revoked as i32, "{v:?}");
    // The audit trail says who revoked what, by presentation.
    let audit = bl
        .admin()?
        .audit(pb::AuditRequest {
            subject: "user:late".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        audit
            .events
            .iter()
            .any(|e| e.action == "revoke_token" && e.target.contains("presented")),
        "{audit:?}"
    );
    // Presenting a forged token changes nothing.
    let mut forged = late.token.clone().into_bytes();
    let i = forged.len() - 2;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged)?;
    let bad = bl
        .tokens()?
        .revoke(pb::RevokeRequest {
            token: forged,
            ..Default::default()
        })
        .await;
    assert_eq!(
        bad.map(|_| ()).map_err(|s| s.code()),
        Err(tonic::Code::Unauthenticated)
    );
    for e in edges {
        e.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_rebuilt_from_one_survivor_keeps_what_it_had() -> anyhow::Result<()> {
    let mut a = Cluster::start(ClusterOptions::default()).await?;
    let leader = a.wait_leader(Duration::from_secs(20)).await?;
    let (toks, last) = workload(a.node(leader)?).await?;
    let ids = jtis(&toks);
    // The survivor is a follower that has applied everything acknowledged.
    let survivor = a.follower().await?.id;
    a.wait_applied(last, Duration::from_secs(10)).await?;
    let before = statuses(a.node(survivor)?, &ids).await?;
    for n in a.nodes.iter().map(|n| n.id).collect::<Vec<_>>() {
        a.kill(n).await?; // two for good; the survivor stops for the rebuild
    }
    let old_db = a.node(survivor)?.data_dir.join("db").display().to_string();
    // Rebuilt on the survivor's own address: the lost members still know it.
    let addr = a.node(survivor)?.grpc_addr.clone();
    let members: BTreeMap<u64, String> = [(survivor, addr.clone())].into_iter().collect();
    let member = format!("--member={survivor}={addr}");

    // Refused without the explicit confirmation.
    let scratch = tempfile::tempdir()?;
    let force_new = |data_dir: &Path, node: u64, confirm: bool| {
        let mut args = vec![
            "cluster".to_string(),
            "force-new".into(),
            "--survivor-data-dir".into(),
            old_db.clone(),
            "--survivor-node-id".into(),
            survivor.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--node-id".into(),
            node.to_string(),
            member.clone(),
        ];
        if confirm {
            args.push("--i-have-lost-quorum".into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        veto(&refs).map(|_| ())
    };
    let denied = force_new(&scratch.path().join("x"), survivor, false);
    assert!(denied.is_err());

    let b = Cluster::start_seeded(&members, Some(a.kek()), |id, db: &Path| {
        force_new(db, id, true)
    })
    .await?;
    let n = b.node(survivor)?;
    assert_eq!(statuses(n, &ids).await?, before);
    // A single-voter cluster that takes writes again.
    let t = issue(n, "user:after", 3600).await?;
    assert_eq!(
        token_status(n, &t.record.clone().unwrap_or_default().jti).await?,
        pb::TokenStatus::Active
    );

    // The "lost" members come back after all: they hold a majority of the
    // old membership and elect a leader among themselves, but the rebuilt
    // node refuses every message from the old cluster, so it keeps its own
    // history, membership and leadership.
    for id in a
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != survivor)
        .collect::<Vec<_>>()
    {
        a.restart(id).await?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = n
        .status()
        .await
        .ok_or_else(|| anyhow::anyhow!("rebuilt node gone"))?;
    assert_eq!(st.leader_id, survivor, "{st:?}");
    let voters: Vec<u64> = st
        .membership
        .as_ref()
        .map(|m| m.voters.iter().map(|v| v.node_id).collect())
        .unwrap_or_default();
    assert_eq!(voters, vec![survivor]);
    assert_eq!(
        token_status(n, &t.record.unwrap_or_default().jti).await?,
        pb::TokenStatus::Active
    );
    assert_eq!(statuses(n, &ids).await?, before);
    let log = std::fs::read_to_string(&n.log_file).unwrap_or_default();
    let refused = a
        .nodes
        .iter()
        .filter(|o| o.id != survivor)
        .map(|o| std::fs::read_to_string(&o.log_file).unwrap_or_default())
        .any(|l| l.contains("but this node belongs to cluster"));
    assert!(refused, "the old members never met the rebuilt node: {log}");
    Ok(())
}

/// An edge that followed a history longer than the cluster it meets (its
/// cluster was restored from an older backup, or rebuilt from a survivor
/// that lagged) must be given a snapshot, never answered "fresh" at a
/// revision the cluster has not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_ahead_of_the_cluster_is_replaced_by_a_snapshot() -> anyhow::Result<()> {
    use tokio_stream::StreamExt;
    let a = Cluster::start(ClusterOptions::default()).await?;
    let leader = a.wait_leader(Duration::from_secs(20)).await?;
    let (_, last) = workload(a.node(leader)?).await?;
    let ahead = last + 1_000;
    for n in &a.nodes {
        let ch = veto_testkit::channel(&n.grpc_addr)?;
        let mut feed = pb::feed_service_client::FeedServiceClient::new(ch);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::EdgeMessage {
            msg: Some(pb::edge_message::Msg::Hello(pb::Hello {
                edge_id: format!("from-another-history-{}", n.id),
                applied_revision: ahead,
            })),
        })
        .await?;
        tx.send(pb::EdgeMessage {
            msg: Some(pb::edge_message::Msg::Probe(pb::SyncProbe {
                nonce: 7,
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = feed
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        match first.msg {
            Some(pb::feed_message::Msg::Snapshot(c)) => {
                assert!(
                    c.revision >= last && c.revision < ahead,
                    "snapshot at {}",
                    c.revision
                )
            }
            other => panic!("node {}: expected a snapshot first, got {other:?}", n.id),
        }
        // And no answer ever claims the edge's own revision.
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), inbound.next()).await
        {
            if let Some(pb::feed_message::Msg::SyncReply(r)) = m.msg {
                assert!(r.revision < ahead, "answered fresh at {}", r.revision);
                break;
            }
        }
        drop(tx);
    }
    Ok(())
}
