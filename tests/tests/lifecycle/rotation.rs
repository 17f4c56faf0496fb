//! Signing keys that rotate themselves: with a short period the leader
//! publishes, activates and retires keys on its own, through two full
//! rotations and the kill of a leader, while tokens are issued and
//! verified at two edges and checked against a caching JWKS client. No
//! valid token fails at an edge, no edge or JWKS client meets an unknown
//! `kid`, and the audit trail shows every stage by the schedule's actor.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;
use veto_proto::token_service_client::TokenServiceClient;
use veto_testkit::{channel, http_get, Cluster, ClusterOptions};
use veto_tests::{start_edges, unix_now, verify_at};

/// A JWKS client that caches the key set, as Envoy's `jwt_authn` does.
struct JwksCache {
    kids: BTreeSet<String>,
    fetched: Option<Instant>,
    max_age: Duration,
    fetches: u32,
}

impl JwksCache {
    async fn kids(&mut self, http_addrs: &[String]) -> Result<&BTreeSet<String>> {
        if self.fetched.is_none_or(|t| t.elapsed() >= self.max_age) {
            for a in http_addrs {
                let Ok((200, body)) = http_get(a, "/.well-known/jwks.json").await else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&body)?;
                self.kids = v["keys"]
                    .as_array()
                    .context("keys")?
                    .iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                    .collect();
                self.fetched = Some(Instant::now());
                self.fetches += 1;
                break;
            }
        }
        Ok(&self.kids)
    }
}

fn kid_of(token: &str) -> Result<String> {
    Ok(veto_core::token::parse(token, 16 * 1024)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .kid
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_themselves_through_a_leader_kill_with_no_failed_verify() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    // Edges with a bound generous enough to ride out the election.
    let edges = start_edges(&cluster, 2, 5_000, 100).await?;
    veto_tests::issue(&cluster.nodes[0], "user:warmup", 60).await?;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let mut admin = AdminServiceClient::new(channel(&cluster.node(leader)?.grpc_addr)?);
    // Publish 3 s ahead of activation; the JWKS cache below keeps 2 s.
    admin
        .set_rotation_policy(pb::SetRotationPolicyRequest {
            policy: Some(pb::RotationPolicy {
                period_seconds: 8,
                publish_lead_seconds: 3,
                activation_timeout_seconds: 10,
            }),
            off: false,
        })
        .await?;
    let keys = admin.list_keys(pb::ListKeysRequest {}).await?.into_inner();
    let rot = keys.rotation.context("rotation status")?;
    assert!(rot.next_activation_unix > 0 && rot.next_publish_unix < rot.next_activation_unix);

    let mut jwks = JwksCache {
        kids: BTreeSet::new(),
        fetched: None,
        max_age: Duration::from_secs(2),
        fetches: 0,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    let (mut verifies, mut issued, mut issue_errors) = (0u32, 0u32, 0u32);
    let mut failures: Vec<String> = Vec::new();
    let mut jwks_unknown: Vec<String> = Vec::new();
    let mut kids_signed: BTreeSet<String> = BTreeSet::new();
    let mut recent: Vec<(String, i64, u64)> = Vec::new();
    let mut killed: Option<u64> = None;
    let mut last_check = Instant::now();
    let mut turn = 0usize;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "two rotations did not complete in 90 s (kids signed: {kids_signed:?})"
        );
        let live: Vec<&veto_testkit::Node> =
            cluster.nodes.iter().filter(|n| n.is_running()).collect();
        let http: Vec<String> = live.iter().map(|n| n.http_addr.clone()).collect();
        turn += 1;
        let node = live[turn % live.len()];
        let mut tokens = TokenServiceClient::new(channel(&node.grpc_addr)?);
        let issue = tokio::time::timeout(
            Duration::from_secs(3),
            tokens.issue(pb::IssueRequest {
                sub: "svc:load".into(),
                scopes: vec!["read".into()],
                ttl_seconds: 4,
                ..Default::default()
            }),
        )
        .await;
        let Ok(Ok(r)) = issue else {
            // Writes pause during the election; that is not a verify.
            issue_errors += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let r = r.into_inner();
        issued += 1;
        let kid = kid_of(&r.token)?;
        kids_signed.insert(kid.clone());
        if !jwks.kids(&http).await?.contains(&kid) {
            jwks_unknown.push(kid.clone());
        }
        let exp = r.record.as_ref().map(|x| x.exp).unwrap_or(0);
        recent.push((r.token, exp, r.revision));
        // Every token still valid for another second must verify at every
        // edge: the newest and the ones signed by keys since replaced.
        let now = unix_now();
        recent.retain(|(_, exp, _)| *exp > now + 1);
        for (tok, _, rev) in recent.iter().rev().step_by(7).take(4) {
            for e in &edges {
                verifies += 1;
                match verify_at(e, tok, *rev).await {
                    Ok(v) if v.outcome == pb::Outcome::Valid as i32 => {}
                    Ok(v) => failures.push(format!("{:?} {}", v.outcome(), v.reason)),
                    Err(s) => failures.push(format!("{s:?}")),
                }
            }
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let Ok(k) = AdminServiceClient::new(channel(&node.grpc_addr)?)
                .list_keys(pb::ListKeysRequest {})
                .await
            else {
                continue;
            };
            let k = k.into_inner();
            let retired = k
                .keys
                .iter()
                .filter(|k| k.state == pb::KeyState::Retired as i32)
                .count();
            // Kill the leader once, right after the first rotation.
            if killed.is_none() && k.keys.len() >= 2 && kids_signed.len() >= 2 {
                let id = cluster.wait_leader(Duration::from_secs(10)).await?;
                cluster.kill(id).await?;
                killed = Some(id);
            }
            if retired >= 2 && kids_signed.len() >= 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    assert!(killed.is_some(), "the leader was never killed");
    assert!(
        failures.is_empty(),
        "{} of {verifies} verifies of valid tokens failed: {failures:?}",
        failures.len()
    );
    assert!(
        jwks_unknown.is_empty(),
        "the caching JWKS client met unknown kids {jwks_unknown:?}"
    );
    assert!(verifies > 100, "only {verifies} verifies");
    // Every stage by the schedule, audited.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let trail = AdminServiceClient::new(channel(&cluster.node(leader)?.grpc_addr)?)
        .audit(pb::AuditRequest {
            actor: "veto-server:rotation".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner();
    let count = |a: &str| trail.events.iter().filter(|e| e.action == a).count();
    assert!(count("publish_key") >= 2, "{trail:?}");
    assert!(count("activate_key") >= 2, "{trail:?}");
    assert!(count("retire_key") >= 2, "{trail:?}");
    eprintln!(
        "rotation: {} keys signed, {issued} issued ({issue_errors} issue attempts failed during the election), \
         {verifies} verifies, 0 failed, {} JWKS fetches, leader {killed:?} killed, {:.1} s",
        kids_signed.len(),
        jwks.fetches,
        elapsed.as_secs_f64()
    );
    // Key age and next rotation as metrics.
    let (_, metrics) = http_get(&cluster.node(leader)?.http_addr, "/metrics").await?;
    let next = metrics
        .lines()
        .find(|l| l.starts_with("veto_signing_key_next_rotation_timestamp_seconds "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .context("next rotation gauge")?;
    assert!(next as i64 > unix_now() - 10, "{next}");
    assert!(metrics.contains("veto_signing_key_age_seconds "));
    assert!(metrics.contains("veto_key_rotation_stages_total{stage=\"activate\"}"));
    Ok(())
}
