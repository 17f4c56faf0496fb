//! The dashboard end to end: `/api/v1/status` on a follower reports every
//! member's edges, verify counts and merged propagation, token usage (as the
//! edges reported it) and the signing key; headless Chromium renders `/ui`
//! from it (edge table, chart, the Tokens and Compromise signals panels with
//! real data) and saves a screenshot under the test's output directory.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use veto_proto as pb;
use veto_testkit::{eventually, http_get, Cluster, ClusterOptions};
use veto_tests::{issue, revoke_all, start_edges, verify_at};

/// The text of the element with `id` in a `--dump-dom` dump (up to its
/// first child tag).
fn text_by_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let len = rest[start..].find('<')?;
    Some(rest[start..start + len].trim())
}

/// The class attribute of the element with `id` in a dump.
fn class_by_id<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..at + dom[at..].find('>')?];
    let c = tag.find("class=\"")? + "class=\"".len();
    let len = tag[c..].find('"')?;
    Some(&tag[c..c + len])
}

/// `token` re-signed: with a key veto does not have under the token's own
/// kid (`bad_signature` at an edge), or under an unknown kid (`unknown_key`).
fn forge(token: &str, unknown_kid: bool) -> anyhow::Result<String> {
    let parsed = veto_core::token::parse(token, 4096)?;
    let mut claims = parsed.claims.clone();
    claims.jti = veto_core::Jti::random();
    let kid = if unknown_kid {
        veto_core::Kid::random()
    } else {
        parsed.kid
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    Ok(veto_core::token::encode(&claims, kid, &key))
}

fn chromium(args: &[&str], profile: &Path) -> anyhow::Result<String> {
    let bin = ["chromium", "/usr/bin/chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .ok_or_else(|| {
            anyhow::anyhow!("chromium not found: scripts/deps.sh installs Debian's chromium")
        })?;
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1400,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_edges_and_propagation_in_chromium() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await?;
    let l = cluster.node(leader)?;
    let mut toks = Vec::new();
    for i in 0..6 {
        toks.push(issue(l, &format!("user:{i}"), 3600).await?);
    }
    // Live and never presented anywhere.
    issue(l, "user:idle", 3600).await?;
    let edges = start_edges(&cluster, 3, 2_000, 100).await?;
    let last = revoke_all(l, &toks[..3]).await?;
    let bad_sig = forge(&toks[3].token, false)?;
    let unknown_kid = forge(&toks[3].token, true)?;
    for e in &edges {
        for tk in &toks {
            verify_at(e, &tk.token, last).await?;
        }
        let r = verify_at(e, &bad_sig, last).await?;
        assert_eq!(r.outcome(), pb::Outcome::BadSignature, "{}", r.reason);
        let r = verify_at(e, &unknown_kid, last).await?;
        assert_eq!(r.outcome(), pb::Outcome::UnknownKey, "{}", r.reason);
    }
    // One request that needs the token's only scope: that token is used
    // with least privilege, the two other used ones are not.
    {
        let addr = edges[0]
            .grpc_addr
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut c =
            pb::verifier_service_client::VerifierServiceClient::new(veto_testkit::channel(&addr)?);
        let r = c
            .verify(pb::VerifyRequest {
                token: toks[3].token.clone(),
                required_scopes: vec!["read".into()],
                audience: None,
                min_revision: last,
            })
            .await?
            .into_inner();
        assert_eq!(r.outcome(), pb::Outcome::Valid, "{}", r.reason);
    }
    // A follower answers for the whole cluster.
    let f = cluster.follower().await?;
    eventually(
        "status with 3 edges, verify counts and propagation",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (code, body) = http_get(&f.http_addr, "/api/v1/status").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let edges = v["edges"].as_array()?.len();
            let points = v["propagation"]["series"].as_array()?.len();
            let t = &v["verify_totals"];
            let n = |k: &str| t[k].as_u64().unwrap_or(0);
            (code == 200
                && edges == 3
                && points > 0
                && n("valid") == 10
                && n("revoked") == 9
                && n("bad_signature") == 3
                && n("unknown_key") == 3)
                .then_some(v)
        },
    )
    .await?;
    // Usage reaches the replicated state once the edges report it and the
    // servers fold it in (10 s each by default).
    let status = eventually(
        "usage reported by the edges in the status",
        Duration::from_secs(45),
        Duration::from_millis(250),
        || async {
            let (code, body) = http_get(&f.http_addr, "/api/v1/status").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let u = &v["usage"];
            (code == 200
                && u["revoked_attempts"].as_u64() == Some(9)
                && u["used"].as_u64() == Some(3))
            .then_some(v)
        },
    )
    .await?;
    let usage = &status["usage"];
    assert_eq!(usage["active"].as_u64(), Some(4), "{usage}");
    assert_eq!(usage["never_used"].as_u64(), Some(1), "{usage}");
    assert_eq!(usage["least_privilege"].as_u64(), Some(1), "{usage}");
    let ratio = usage["least_privilege_ratio"].as_f64().unwrap_or(-1.0);
    assert!((ratio - 1.0 / 3.0).abs() < 1e-9, "{usage}");
    // 9 revoked and 10 valid verifies of recorded tokens; forged ones are
    // nobody's usage.
    assert_eq!(usage["verifies"].as_u64(), Some(19), "{usage}");
    let keys = &status["keys"];
    let kid = keys["active_kid"].as_str().unwrap_or_default().to_string();
    assert!(!kid.is_empty(), "{keys}");
    let now_s = status["now_ms"].as_i64().unwrap_or(0) / 1000;
    let activated = keys["last_rotation_unix"].as_i64().unwrap_or(0);
    assert!(activated > 0 && activated <= now_s, "{keys}");
    assert!(
        keys["active_key_age_seconds"]
            .as_i64()
            .is_some_and(|a| (0..600).contains(&a)),
        "{keys}"
    );
    // No rotation policy on this cluster, no key pending.
    assert!(keys["next_rotation_unix"].is_null(), "{keys}");
    assert!(keys["pending"].is_null(), "{keys}");
    assert_eq!(status["node_id"].as_u64(), Some(f.id));
    assert_eq!(status["leader"].as_u64(), Some(leader));
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    let series = &status["propagation"]["series"];
    let samples: u64 = series
        .as_array()
        .map(|s| s.iter().filter_map(|p| p["count"].as_u64()).sum())
        .unwrap_or(0);
    // Every edge acked every revoke (plus the issues before it joined: none,
    // it bootstrapped from a snapshot): at least 3 edges x 1 ack.
    assert!(samples >= 3, "{status}");
    for p in series.as_array().into_iter().flatten() {
        let (p50, p99) = (
            p["p50_ms"].as_f64().unwrap_or(-1.0),
            p["p99_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(p50 >= 0.0 && p99 >= p50, "{p}");
    }

    // Chromium renders it.
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("observability_ui");
    std::fs::create_dir_all(&out_dir)?;
    let profile = tempfile::tempdir()?;
    let url = format!("http://{}/ui", f.http_addr);
    let dom = chromium(
        &[
            "--virtual-time-budget=8000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
            &url,
        ],
        profile.path(),
    )?;
    assert!(
        dom.contains("data-ready=\"true\""),
        "dashboard never became ready: {dom}"
    );
    for e in &edges {
        let id = &e.handle.options().edge_id;
        assert!(
            dom.contains(&format!("data-edge=\"{id}\"")),
            "no row for {id}: {dom}"
        );
    }
    assert!(dom.contains("data-edges=\"3\""), "{dom}");
    // The Tokens and Compromise signals panels, with the status' numbers.
    let t = |id: &str| text_by_id(&dom, id).unwrap_or("<missing>").to_string();
    assert_eq!(t("tok-active"), "4", "{dom}");
    assert_eq!(t("tok-used"), "3 used");
    assert_eq!(t("tok-never"), "1");
    assert_eq!(t("tok-never-share"), "25 % of active");
    assert_eq!(t("tok-lp"), "33.3 %");
    assert_eq!(t("tok-lp-detail"), "1 of 3 used");
    assert_eq!(t("tok-verifies"), "19");
    assert_eq!(t("tok-verifies-rate"), "25 answered at edges");
    assert_eq!(t("sig-revoked"), "9");
    assert_eq!(class_by_id(&dom, "sig-revoked"), Some("value bad"));
    assert_eq!(t("sig-badsig-total"), "3 total");
    assert_eq!(t("sig-unknown-total"), "3 total");
    // Per-second rates after at least two polls (0: the forgeries were
    // before the page opened).
    for id in ["sig-badsig", "sig-unknown"] {
        let v = t(id);
        assert!(v.parse::<f64>().is_ok_and(|r| r >= 0.0), "{id}: {v:?}");
    }
    assert_eq!(t("key-kid"), format!("kid {kid}"));
    let last_rotation = t("key-last");
    assert!(
        last_rotation.len() == 8 && last_rotation.chars().filter(|c| *c == ':').count() == 2,
        "last rotation {last_rotation:?}"
    );
    let age = t("key-age");
    assert!(age.ends_with(" s") && age != "–", "key age {age:?}");
    assert_eq!(t("key-next"), "manual");
    assert_eq!(t("key-pending"), "no key pending");
    let p99 = dom
        .split("class=\"p99\"")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no p99 line in the chart: {dom}"))?;
    assert!(
        p99.trim_start().starts_with("d=\"M"),
        "empty p99 line: {p99:.200}"
    );
    let shot = out_dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--virtual-time-budget=8000",
            "--run-all-compositor-stages-before-draw",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        profile.path(),
    )?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {}",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());

    // With a rotation policy the status names the next rotation, and a
    // published key waiting to sign is the pending one.
    let mut admin =
        pb::admin_service_client::AdminServiceClient::new(veto_testkit::channel(&l.grpc_addr)?);
    admin
        .set_rotation_policy(pb::SetRotationPolicyRequest {
            policy: Some(pb::RotationPolicy {
                period_seconds: 86_400,
                publish_lead_seconds: 3_600,
                activation_timeout_seconds: 600,
            }),
            off: false,
        })
        .await?;
    let pending = admin
        .rotate_signing_key(pb::RotateSigningKeyRequest {
            stage: pb::KeyStage::Publish as i32,
            ..Default::default()
        })
        .await?
        .into_inner()
        .kid;
    let keys = eventually(
        "next rotation and the pending key in the status",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let (_, body) = http_get(&f.http_addr, "/api/v1/status").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let k = v["keys"].clone();
            (!k["next_rotation_unix"].is_null() && !k["pending"].is_null()).then_some(k)
        },
    )
    .await?;
    assert_eq!(keys["active_kid"].as_str(), Some(kid.as_str()), "{keys}");
    assert_eq!(
        keys["next_rotation_unix"].as_i64(),
        Some(activated + 86_400),
        "{keys}"
    );
    assert_eq!(keys["pending"]["kid"].as_str(), Some(pending.as_str()));
    assert!(keys["pending"]["published_unix"].as_i64() >= Some(activated));
    let dom = chromium(
        &[
            "--virtual-time-budget=4000",
            "--run-all-compositor-stages-before-draw",
            "--dump-dom",
            &url,
        ],
        profile.path(),
    )?;
    let t = |id: &str| text_by_id(&dom, id).unwrap_or("<missing>").to_string();
    assert_eq!(t("key-pending"), format!("pending {pending}"), "{dom}");
    let next_in = t("key-next-in");
    assert!(next_in.starts_with("in 23 h "), "next rotation {next_in:?}");
    let next = t("key-next");
    assert!(
        next.len() >= 8 && next != "manual",
        "next rotation {next:?}"
    );
    for e in edges {
        e.stop().await;
    }
    Ok(())
}
