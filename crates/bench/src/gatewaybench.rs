//! `veto-bench gateways`: the edge's gateway hooks against its own gRPC
//! `Verify`, on one edge and one working set of live tokens, in the same
//! minutes (the three take turns, `--rounds` times): closed-loop throughput
//! and latency of `Verify`, Envoy's ext_authz `Check` (a client from
//! Envoy's published protos) and HTTP forward-auth (hyper, keep-alive).
//! Then Debian's nginx in front of a static upstream, with the documented
//! `auth_request` setup and without auth, loaded by Debian's `wrk` in turns.
//! Run on demand, never as a test.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use tonic::transport::Channel;
use veto_proto as pb;
use veto_proto::verifier_service_client::VerifierServiceClient;

use crate::bench::{drive, BenchArgs};
use crate::common::{edge_opts, grpc_addrs, q};
use crate::edgebench::{cluster_with_key, issue_many, EdgeThread};

/// Live tokens the clients cycle through.
const WORKING_SET: usize = 1_000;

/// One hook's figures over all rounds.
struct Row {
    name: &'static str,
    h: Histogram<u64>,
    calls: u64,
    errors: u64,
    busy: Duration,
}

impl Row {
    fn new(name: &'static str) -> Result<Row> {
        Ok(Row {
            name,
            h: Histogram::new(3)?,
            calls: 0,
            errors: 0,
            busy: Duration::ZERO,
        })
    }

    fn add(&mut self, (h, errors, elapsed): (Histogram<u64>, u64, Duration)) -> Result<()> {
        self.calls += h.len() + errors;
        self.errors += errors;
        self.busy += elapsed;
        self.h.add(h)?;
        Ok(())
    }

    fn rps(&self) -> f64 {
        self.h.len() as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// `veto-bench gateways`.
pub async fn run(args: &BenchArgs, json_out: bool) -> Result<()> {
    let rounds = args.rounds.max(1);
    let turn = Duration::from_secs(args.duration_secs.max(1)) / rounds;
    let c = args.concurrency.iter().copied().max().unwrap_or(64).max(1);
    eprintln!("starting a 3-node cluster and one edge; issuing {WORKING_SET} tokens...");
    let (cluster, addr) = cluster_with_key().await?;
    let tokens: Arc<Vec<String>> = Arc::new(
        issue_many(&addr, WORKING_SET)
            .await?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
    );
    let edge = EdgeThread::start(edge_opts(
        "edge-1".into(),
        &grpc_addrs(&cluster),
        5_000,
        200,
    ))
    .await?;
    anyhow::ensure!(
        edge.handle.wait_fresh(Duration::from_secs(20)).await,
        "the edge never became fresh"
    );
    let grpc = edge.grpc_addr.context("edge without gRPC")?.to_string();
    let http = edge.http_addr.context("edge without HTTP")?.to_string();

    let conns = args.connections.max(1);
    let channels: Vec<Channel> = (0..conns)
        .map(|_| veto_testkit::channel(&grpc))
        .collect::<Result<_>>()?;
    let verify_clients = Arc::new(
        channels
            .iter()
            .cloned()
            .map(VerifierServiceClient::new)
            .collect::<Vec<_>>(),
    );
    let fa = Arc::new(forward_auth_conns(&http, c).await?);
    let mut rows = [
        Row::new("gRPC Verify")?,
        Row::new("ext_authz Check")?,
        Row::new("forward-auth")?,
    ];
    eprintln!("{rounds} rounds of {turn:?} per hook, {c} calls in flight...");
    for _ in 0..rounds {
        rows[0].add(verify_turn(&verify_clients, &tokens, c, turn).await?)?;
        rows[1].add(check_turn(&channels, &tokens, c, turn).await?)?;
        rows[2].add(forward_auth_turn(&fa, &tokens, c, turn).await?)?;
    }
    let nginx = match nginx_turns(&http, &tokens, args, rounds, turn).await {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!("nginx comparison skipped: {e:#}");
            None
        }
    };
    print(json_out, c, rounds, turn, &rows, nginx.as_ref());
    edge.stop().await;
    drop(cluster);
    Ok(())
}

/// gRPC `Verify` at `c` in flight for `dur`, round-robin over `clients`,
/// cycling `tokens`; a call counts when it answers valid.
pub(crate) async fn verify_turn(
    clients: &Arc<Vec<VerifierServiceClient<Channel>>>,
    tokens: &Arc<Vec<String>>,
    c: usize,
    dur: Duration,
) -> Result<(Histogram<u64>, u64, Duration)> {
    let (clients, tokens) = (clients.clone(), tokens.clone());
    drive(c, dur, move |w, i| {
        let mut cl = clients[w % clients.len()].clone();
        let token = pick(&tokens, w, i);
        async move {
            let r = cl
                .verify(pb::VerifyRequest {
                    token,
                    ..Default::default()
                })
                .await;
            Some(r.is_ok_and(|r| r.into_inner().valid))
        }
    })
    .await
}

async fn check_turn(
    channels: &[Channel],
    tokens: &Arc<Vec<String>>,
    c: usize,
    dur: Duration,
) -> Result<(Histogram<u64>, u64, Duration)> {
    let clients: Arc<Vec<_>> = Arc::new(
        channels
            .iter()
            .cloned()
            .map(AuthorizationClient::new)
            .collect(),
    );
    // Built once, as Verify's requests are only a token string to clone.
    let reqs: Arc<Vec<CheckRequest>> = Arc::new(tokens.iter().map(|t| check_request(t)).collect());
    drive(c, dur, move |w, i| {
        let mut cl = clients[w % clients.len()].clone();
        let req = reqs[(w * 7_919 + i as usize) % reqs.len()].clone();
        async move {
            let r = cl.check(req).await;
            Some(r.is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0)))
        }
    })
    .await
}

/// What Envoy sends for `GET /orders/7` with `token`.
fn check_request(token: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/orders/7".into(),
                    host: "shop.example".into(),
                    headers: [
                        (":authority".to_owned(), "shop.example".to_owned()),
                        ("authorization".to_owned(), format!("Bearer {token}")),
                        ("user-agent".to_owned(), "veto-bench".to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The token worker `w` uses for its `i`-th call.
fn pick(tokens: &[String], w: usize, i: u64) -> String {
    tokens[(w * 7_919 + i as usize) % tokens.len()].clone()
}

type Conn = tokio::sync::Mutex<SendRequest<Empty<Bytes>>>;

/// One keep-alive HTTP/1.1 connection per worker to the edge's HTTP port.
async fn forward_auth_conns(addr: &str, n: usize) -> Result<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
        tokio::spawn(conn);
        out.push(tokio::sync::Mutex::new(tx));
    }
    Ok(out)
}

async fn forward_auth_turn(
    conns: &Arc<Vec<Conn>>,
    tokens: &Arc<Vec<String>>,
    c: usize,
    dur: Duration,
) -> Result<(Histogram<u64>, u64, Duration)> {
    let (conns, tokens) = (conns.clone(), tokens.clone());
    drive(c, dur, move |w, i| {
        let (conns, token) = (conns.clone(), pick(&tokens, w, i));
        async move {
            let req = hyper::Request::get("/v1/forward-auth")
                .header(hyper::header::HOST, "edge")
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-uri", "/orders/7")
                .body(Empty::<Bytes>::new())
                .ok()?;
            let mut tx = conns[w % conns.len()].lock().await;
            let r = tx.send_request(req).await.ok()?;
            let ok = r.status() == hyper::StatusCode::OK;
            Some(r.into_body().collect().await.is_ok() && ok)
        }
    })
    .await
}

/// nginx's figures, with and without auth.
struct NginxRows {
    alone: Wrk,
    with_auth: Wrk,
}

/// What wrk reported, summed over rounds.
#[derive(Default)]
struct Wrk {
    requests_per_sec: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    non_2xx: u64,
}

impl Wrk {
    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// nginx (one worker) with a static upstream, a proxy to it without auth
/// and one with the documented `auth_request` to the edge; wrk takes turns
/// on the two.
async fn nginx_turns(
    edge_http: &str,
    tokens: &[String],
    args: &BenchArgs,
    rounds: u32,
    turn: Duration,
) -> Result<NginxRows> {
    let dir = tempfile::Builder::new()
        .prefix("veto-bench-nginx-")
        .tempdir()?;
    let [upstream, alone, auth] = [free_port()?, free_port()?, free_port()?];
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(edge_http, upstream, alone, auth))?;
    let p = dir.path().display();
    let mut nginx = tokio::process::Command::new("nginx")
        .args(["-p", &format!("{p}/"), "-c"])
        .arg(&conf)
        .args([
            "-g",
            &format!(
                "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log warn;"
            ),
        ])
        .kill_on_drop(true)
        .spawn()
        .context("nginx (scripts/deps.sh bench installs it)")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let script = dir.path().join("tokens.lua");
    std::fs::write(&script, wrk_script(tokens))?;
    let threads = 1;
    let c = args
        .concurrency
        .iter()
        .copied()
        .max()
        .unwrap_or(64)
        .clamp(1, 256);
    let mut rows = NginxRows {
        alone: Wrk::default(),
        with_auth: Wrk::default(),
    };
    eprintln!("nginx: {rounds} rounds of {turn:?} each way, wrk -t{threads} -c{c}...");
    for _ in 0..rounds {
        for (port, row) in [(alone, &mut rows.alone), (auth, &mut rows.with_auth)] {
            let out = tokio::process::Command::new("wrk")
                .args(["-t", &threads.to_string(), "-c", &c.to_string()])
                // wrk takes whole seconds (s, m, h).
                .args(["-d", &format!("{}s", turn.as_secs().max(1))])
                .arg("--latency")
                .arg("-s")
                .arg(&script)
                .arg(format!("http://127.0.0.1:{port}/orders/7"))
                .output()
                .await
                .context("wrk (scripts/deps.sh bench installs it)")?;
            anyhow::ensure!(
                out.status.success(),
                "wrk: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            parse_wrk(&String::from_utf8_lossy(&out.stdout), row)?;
        }
    }
    let _ = nginx.start_kill();
    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    if !log.trim().is_empty() {
        eprintln!(
            "nginx error log:\n{}",
            log.lines().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(rows)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nginx configuration: the auth server is docs/integrations.md's
/// `nginx-run` setup; both proxies keep connections to the upstream alive,
/// and no access log is written, so the difference is the auth subrequest.
fn nginx_conf(edge_http: &str, upstream: u16, alone: u16, auth: u16) -> String {
    format!(
        r#"events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream veto_edge {{ server {edge_http}; keepalive 64; }}
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{alone};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
    server {{
        listen 127.0.0.1:{auth};
        location / {{
            auth_request /_veto/auth;
            auth_request_set $veto_subject $upstream_http_x_veto_subject;
            error_page 500 = @veto_unavailable;
            proxy_set_header X-Veto-Subject $veto_subject;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
        location = /_veto/auth {{
            internal;
            proxy_pass http://veto_edge/v1/forward-auth;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
        }}
        location @veto_unavailable {{ return 503; }}
    }}
}}
"#
    )
}

/// A wrk script sending each request with the next token of the set.
fn wrk_script(tokens: &[String]) -> String {
    let list: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "local tokens = {{ {} }}\nlocal i = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", nil, {{ [\"Authorization\"] = \"Bearer \" .. tokens[(i % #tokens) + 1] }})\nend\n",
        list.join(", ")
    )
}

/// Reads `Requests/sec`, the 50% and 99% latencies and non-2xx answers.
fn parse_wrk(out: &str, row: &mut Wrk) -> Result<()> {
    let mut rps = None;
    for line in out.lines().map(str::trim) {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => row.p50_ms.push(wrk_ms(v)?),
            (Some("99%"), Some(v)) => row.p99_ms.push(wrk_ms(v)?),
            _ => {}
        }
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            row.non_2xx += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
    row.requests_per_sec
        .push(rps.with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?);
    Ok(())
}

/// wrk's latency (`812.00us`, `1.25ms`, `2.00s`) in ms.
fn wrk_ms(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        anyhow::bail!("unknown wrk latency {v:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

fn print(
    json_out: bool,
    c: usize,
    rounds: u32,
    turn: Duration,
    rows: &[Row],
    nginx: Option<&NginxRows>,
) {
    let base = rows[0].rps();
    if json_out {
        let hooks: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"hook": r.name, "requests_per_sec": r.rps(), "vs_verify": r.rps() / base,
                    "p50_ms": q(&r.h, 0.5), "p99_ms": q(&r.h, 0.99), "calls": r.calls, "errors": r.errors})
            })
            .collect();
        let ng = nginx.map(|n| {
            let (a, w) = (Wrk::mean(&n.alone.requests_per_sec), Wrk::mean(&n.with_auth.requests_per_sec));
            serde_json::json!({"alone_rps": a, "with_auth_rps": w, "ratio": w / a,
                "alone_p50_ms": Wrk::mean(&n.alone.p50_ms), "alone_p99_ms": Wrk::mean(&n.alone.p99_ms),
                "with_auth_p50_ms": Wrk::mean(&n.with_auth.p50_ms), "with_auth_p99_ms": Wrk::mean(&n.with_auth.p99_ms),
                "non_2xx": n.alone.non_2xx + n.with_auth.non_2xx})
        });
        println!(
            "{}",
            serde_json::json!({"concurrency": c, "rounds": rounds, "turn_ms": turn.as_millis() as u64, "hooks": hooks, "nginx": ng})
        );
        return;
    }
    println!(
        "\none edge, {WORKING_SET} live tokens, {c} calls in flight, {rounds} interleaved rounds of {turn:?} per hook, all on this machine"
    );
    println!("| hook | requests/s | vs Verify | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2}x | {:.3} | {:.3} | {} |",
            r.name,
            r.rps(),
            r.rps() / base,
            q(&r.h, 0.5),
            q(&r.h, 0.99),
            r.errors
        );
    }
    let Some(n) = nginx else { return };
    let (a, w) = (
        Wrk::mean(&n.alone.requests_per_sec),
        Wrk::mean(&n.with_auth.requests_per_sec),
    );
    println!("\nnginx (one process) proxying to a static upstream, wrk in turns, mean of {rounds} rounds");
    println!("| nginx | requests/s | p50 ms | p99 ms | non-2xx |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r, v) in [
        ("alone", &n.alone, a),
        ("with veto auth_request", &n.with_auth, w),
    ] {
        println!(
            "| {name} | {v:.0} | {:.3} | {:.3} | {} |",
            Wrk::mean(&r.p50_ms),
            Wrk::mean(&r.p99_ms),
            r.non_2xx
        );
    }
    println!("with auth / alone: {:.2}x", w / a);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() -> Result<()> {
        let out = "Running 1s test @ http://127.0.0.1:1/orders/7\n  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     99%    2.50ms\n  1000 requests in 1.00s, 1.00MB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:   9876.54\n";
        let mut w = Wrk::default();
        parse_wrk(out, &mut w)?;
        assert_eq!(w.requests_per_sec, vec![9876.54]);
        assert!((w.p50_ms[0] - 0.812).abs() < 1e-9);
        assert_eq!(w.p99_ms, vec![2.5]);
        assert_eq!(w.non_2xx, 3);
        assert!(parse_wrk("nothing", &mut Wrk::default()).is_err());
        assert!(wrk_ms("3x").is_err());
        Ok(())
    }

    #[test]
    fn the_bench_nginx_config_passes_nginx_t() -> Result<()> {
        // nginx comes from scripts/deps.sh test.
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf("127.0.0.1:1", 2, 3, 4))?;
        let p = dir.path().display();
        let out = std::process::Command::new("nginx")
            .args(["-t", "-p", &format!("{p}/"), "-c"])
            .arg(&conf)
            .args([
                "-g",
                &format!("pid {p}/nginx.pid; error_log {p}/error.log;"),
            ])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
