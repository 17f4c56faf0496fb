//! Debian's nginx, configured with the `nginx-run` block of
//! docs/integrations.md as documented (only its ports changed), with
//! `auth_request` to the edge's forward-auth hook in front of an upstream
//! that echoes what it received.

use std::path::Path;

use anyhow::{Context, Result};
use veto_testkit::{http_request, Cluster, ClusterOptions, HttpAnswer};

use crate::{
    doc_check, echoed, gateway_edge, issue, jti, make_stale, revoke, GatewayProcess, Upstream,
};

/// nginx (no daemon, no master) on a temporary prefix.
pub struct Nginx;

impl Nginx {
    /// `nginx -t` on `conf` in a scratch prefix; the test's output or why
    /// it failed.
    pub fn test(conf: &str) -> Result<String> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let out = std::process::Command::new("nginx")
            .args(nginx_args(dir.path(), &path))
            .arg("-t")
            .output()
            .context("cannot run nginx (scripts/deps.sh test installs nginx-light)")?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        anyhow::ensure!(out.status.success(), "nginx -t refused:\n{text}\n{conf}");
        Ok(text)
    }

    /// Starts nginx with the documented `nginx-run` configuration, its
    /// ports moved to a free one, the edge's HTTP address and `upstream`.
    pub async fn start(doc: &str, edge_http: &str, upstream: &str) -> Result<GatewayProcess> {
        let addr = veto_testkit::free_addr()?;
        let mut conf = doc.to_owned();
        for (from, to) in [
            ("listen 8080;", format!("listen {addr};")),
            ("server 127.0.0.1:7580;", format!("server {edge_http};")),
            (
                "proxy_pass http://127.0.0.1:9000;",
                format!("proxy_pass http://{upstream};"),
            ),
        ] {
            anyhow::ensure!(conf.contains(from), "the nginx-run block lost `{from}`");
            conf = conf.replace(from, &to);
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, &conf)?;
        let mut cmd = tokio::process::Command::new("nginx");
        cmd.args(nginx_args(dir.path(), &path))
            .stderr(std::process::Stdio::null());
        let log = dir.path().join("error.log");
        GatewayProcess::spawn(cmd, addr, dir, log).await
    }
}

/// Foreground, single process, pid and logs inside `prefix`.
fn nginx_args(prefix: &Path, conf: &Path) -> Vec<String> {
    let p = prefix.display();
    vec![
        "-p".into(),
        format!("{p}/"),
        "-c".into(),
        conf.display().to_string(),
        "-g".into(),
        format!("daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log warn;"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_passes_refuses_and_fails_closed() -> Result<()> {
    let doc = doc_check("nginx-run")?;
    forward_auth_gateway("nginx", |edge_http, upstream| async move {
        Nginx::start(&doc, &edge_http, &upstream).await
    })
    .await
}

/// Starts a cluster, an edge fed only by node 3 (see [`gateway_edge`]),
/// an [`Upstream`] and the gateway `start(edge HTTP address, upstream
/// address)` returns, and runs [`forward_auth_cases`] through it.
pub async fn forward_auth_gateway<F, Fut>(name: &str, start: F) -> Result<()>
where
    F: FnOnce(String, String) -> Fut,
    Fut: std::future::Future<Output = Result<GatewayProcess>>,
{
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let node = &cluster.nodes[2];
    let reader = issue(node, "svc:orders", &["read"], None).await?;
    let ops = issue(node, "svc:ops", &["admin", "read"], None).await?;
    let edge = gateway_edge(node, &format!("{name}-edge")).await?;
    let upstream = Upstream::start().await?;
    let edge_http = edge.http_addr.context("edge without HTTP")?.to_string();
    let gw = start(edge_http, upstream.addr.clone()).await?;
    let log = || gw.log();
    forward_auth_cases(name, &gw.addr, &log, &mut cluster, &edge, &reader, &ops).await
}

/// GET `path` through the gateway at `addr` with `token` (as a Bearer
/// token), forged identity headers and a forged original URI a client
/// might send.
async fn get(addr: &str, path: &str, token: Option<&str>) -> Result<HttpAnswer> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("X-Veto-Subject", "mallory"),
        ("X-Veto-Stale", "true"),
        ("X-Veto-Scopes", "admin"),
        ("X-Original-URI", "/public"),
        ("X-Forwarded-Uri", "/public"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_request(addr, "GET", path, &headers, "").await
}

/// What a forward-auth gateway at `gw` (in front of an [`Upstream`], with
/// an edge fed only by node 3 whose `/admin` rule needs `admin`) must do:
/// pass `reader` (scope `read`) with its identity and no forged header,
/// refuse no token and forged tokens with the RFC 6750 challenge, refuse
/// `/admin` however spelled, refuse `reader` from its revoke's ack + B on,
/// and fail closed (503) once the edge is stale. `ops` has `admin`.
async fn forward_auth_cases(
    name: &str,
    gw: &str,
    log: &dyn Fn() -> String,
    cluster: &mut Cluster,
    edge: &veto_edge::Edge,
    reader: &veto_proto::IssueResponse,
    ops: &veto_proto::IssueResponse,
) -> Result<()> {
    let r = get(gw, "/orders/7?x=1", Some(&reader.token)).await?;
    assert_eq!(r.status, 200, "{name}: {r:?}\n{}", log());
    let rec = reader.record.clone().unwrap_or_default();
    let want = [
        ("x-veto-subject", "svc:orders"),
        ("x-veto-scopes", "read"),
        ("x-veto-jti", rec.jti.as_str()),
        ("x-veto-kid", rec.kid.as_str()),
    ];
    for (h, v) in want {
        assert_eq!(echoed(&r.body, h), Some(v), "{name}: {h}: {}", r.body);
    }
    assert_eq!(
        echoed(&r.body, "x-veto-stale"),
        Some("false"),
        "{name}: forged: {}",
        r.body
    );
    assert!(
        echoed(&r.body, "x-veto-revision").is_some(),
        "{name}: {}",
        r.body
    );

    // No token, or not one veto signed: 401 with the RFC 6750 challenge.
    let r = get(gw, "/orders/7", None).await?;
    assert_eq!(r.status, 401, "{name}: {r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"veto\""));
    let r = get(gw, "/orders/7", Some("eyJhbGciOiJub25lIn0.e30.")).await?;
    assert_eq!(r.status, 401, "{name}: {r:?}");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(w.contains("error=\"invalid_token\""), "{name}: {w}");

    // /admin needs the admin scope (the edge's route rule), however the
    // path is spelled (gateways pass the raw request target on).
    for p in [
        "/admin/users",
        "//admin/users",
        "/x/../admin/users",
        "/%61dmin/users",
        "/admin%2Fusers",
    ] {
        let r = get(gw, p, Some(&reader.token)).await?;
        assert_eq!(r.status, 403, "{name}: {p}: {r:?}");
    }
    let r = get(gw, "/admin/users", Some(&ops.token)).await?;
    assert_eq!(r.status, 200, "{name}: {r:?}");
    assert_eq!(echoed(&r.body, "x-veto-subject"), Some("svc:ops"));

    // Revoked: refused from the ack + B on.
    let ack = revoke(&cluster.nodes[0], &jti(reader)).await?;
    let after = crate::refused_from_ack_plus_bound(ack, || async {
        Ok(get(gw, "/orders/7", Some(&reader.token)).await?.status == 200)
    })
    .await?;
    let r = get(gw, "/orders/7", Some(&reader.token)).await?;
    assert_eq!(r.status, 401, "{name}: {r:?}");
    let w = r.header("www-authenticate").unwrap_or_default();
    assert!(w.contains("revoked"), "{name}: {w}");
    eprintln!("{name}: {after} requests at or after ack + B, all refused");

    // The edge's only server dies: once stale, the gateway fails closed.
    make_stale(cluster, 3, edge).await?;
    let r = get(gw, "/orders/7", Some(&ops.token)).await?;
    assert_eq!(r.status, 503, "{name}: {r:?}\n{}", log());
    assert_eq!(r.header("retry-after"), Some("1"), "{name}: {r:?}");
    Ok(())
}
