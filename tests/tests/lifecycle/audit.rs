//! The audit trail that lasts: every node keeps its hash-chained copy on
//! disk under a size limit; membership changes are in it; `veto audit
//! --follow` streams it as JSON lines; `veto audit verify` checks every
//! node's chain and names an entry edited on disk.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_testkit::{bin_named, channel, Cluster, ClusterOptions};

const MAX_BYTES: u64 = 16 * 1024;

fn cli(addrs: &str, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(bin_named("veto", "VETO_CLI_BIN")?)
        .args(["--addr", addrs, "--insecure", "--json"])
        .args(args)
        .output()?)
}

async fn local_trail(addr: &str) -> Result<pb::AuditResponse> {
    Ok(AdminServiceClient::new(channel(addr)?)
        .audit(pb::AuditRequest {
            page_size: 1000,
            local: true,
            ..Default::default()
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_kept_under_its_limit_followed_and_verified() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        extra_config: format!(
            "\n[audit]\nmax_bytes = {MAX_BYTES}\nmax_age_seconds = 0\nprune_interval_ms = 200\n"
        ),
        ..Default::default()
    })
    .await?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.grpc_addr.clone()).collect();
    let all = addrs.join(",");

    // Membership changes are in the trail from the start.
    let first = local_trail(&addrs[0]).await?;
    let m = first
        .events
        .iter()
        .find(|e| e.action == "membership")
        .with_context(|| format!("membership entry audited: {first:?}"))?;
    assert_eq!(m.actor, "raft");
    assert!(m.target.starts_with("voters"), "{m:?}");

    // --follow prints each new event as a JSON line.
    let mut follow = Command::new(bin_named("veto", "VETO_CLI_BIN")?)
        .args(["--addr", &all, "--insecure", "--json", "audit", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = follow.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // Far more events than the limit holds.
    let mut jtis = Vec::new();
    for i in 0..150 {
        let r = veto_tests::issue(&cluster.nodes[i % 3], &format!("user:{i}"), 600).await?;
        jtis.push(r.record.context("record")?.jti);
    }
    let wanted = jtis.last().cloned().context("jti")?;
    let until = Instant::now() + Duration::from_secs(20);
    let mut followed = 0;
    let mut seen_last = false;
    while Instant::now() < until && !seen_last {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line)?;
        followed += 1;
        seen_last = v["action"] == "issue" && v["target"] == wanted.as_str();
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen_last,
        "--follow never printed the last issue ({followed} lines)"
    );
    assert!(followed >= 150, "{followed}");

    // Retention keeps every node under the limit, the newest events intact.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let mut done = true;
        for a in &addrs {
            let t = local_trail(a).await?;
            done &= t.retained_bytes <= MAX_BYTES && t.pruned_seq > 0;
        }
        if done {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "retention never cut the trail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in &addrs {
        let t = local_trail(a).await?;
        assert!(t.retained_bytes <= MAX_BYTES, "{}", t.retained_bytes);
        assert!(
            t.retained_bytes + 1024 > MAX_BYTES / 2,
            "kept too little: {}",
            t.retained_bytes
        );
        assert_eq!(t.retained_events as usize, t.events.len());
        assert!(t.oldest_retained_revision > 1);
        let last = t.events.last().context("events kept")?;
        assert_eq!(last.seq, t.head_seq, "the newest event is kept");
        assert_eq!(t.events[0].prev_hash, t.pruned_hash);
    }
    let out = cli(&all, &["audit", "verify"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("\"ok\":true").count(), 3, "{text}");

    // Edit one kept entry on node 3's disk: verify names node 3 and the entry.
    let victim = cluster.nodes[2].id;
    let db_path = cluster.nodes[2].data_dir.join("db");
    cluster.stop(victim).await?;
    let edited_revision = {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf(&opts, &db_path, veto_store::COLUMN_FAMILIES)?;
        let cf = db.cf_handle(veto_store::CF_AUDIT).context("audit cf")?;
        let mut target = None;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            if k.first() == Some(&b'e') {
                let mut e: serde_json::Value = serde_json::from_slice(&v)?;
                if e["event"]["action"] == "issue" {
                    e["event"]["actor"] = "operator:nobody".into();
                    target = Some((
                        k.to_vec(),
                        serde_json::to_vec(&e)?,
                        e["event"]["revision"].as_u64(),
                    ));
                    break;
                }
            }
        }
        let (k, v, rev) = target.context("an issue entry kept")?;
        db.put_cf(cf, k, v)?;
        rev.context("revision")?
    };
    cluster.restart(victim).await?;
    cluster.wait_applied(0, Duration::from_secs(20)).await?;
    let out = cli(&all, &["audit", "verify"])?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert_eq!(text.matches("\"ok\":true").count(), 2, "{text}");
    let broken = text
        .lines()
        .find(|l| l.contains("\"ok\":false"))
        .context("a broken node")?;
    assert!(
        broken.contains(&format!("\"node_id\":{victim}")),
        "{broken}"
    );
    assert!(
        broken.contains(&format!("(revision {edited_revision}) was edited")),
        "{broken}"
    );
    Ok(())
}
