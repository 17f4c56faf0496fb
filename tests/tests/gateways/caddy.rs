//! Debian's Caddy, running the `caddy` block of docs/integrations.md as
//! documented (only its addresses changed, and a test-only global block
//! turning the admin API off) with `forward_auth` to the edge, through the
//! same cases as nginx.

use anyhow::Result;

use crate::nginx::forward_auth_gateway;
use crate::{doc_check, GatewayProcess};

/// `caddy run` on a scratch home.
struct Caddy;

impl Caddy {
    async fn start(doc: &str, edge_http: &str, upstream: &str) -> Result<GatewayProcess> {
        let addr = veto_testkit::free_addr()?;
        let mut conf = doc.to_owned();
        for (from, to) in [
            (":8080 {", format!("http://{addr} {{")),
            (
                "forward_auth 127.0.0.1:7580 {",
                format!("forward_auth {edge_http} {{"),
            ),
            (
                "reverse_proxy 127.0.0.1:9000",
                format!("reverse_proxy {upstream}"),
            ),
        ] {
            anyhow::ensure!(conf.contains(from), "the caddy block lost `{from}`");
            conf = conf.replace(from, &to);
        }
        let conf =
            format!("{{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n}}\n\n{conf}");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, &conf)?;
        let log = dir.path().join("caddy.log");
        let mut cmd = tokio::process::Command::new("caddy");
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stderr(std::fs::File::create(&log)?);
        GatewayProcess::spawn(cmd, addr, dir, log).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_passes_refuses_and_fails_closed() -> Result<()> {
    let doc = doc_check("caddy")?;
    forward_auth_gateway("caddy", |edge_http, upstream| async move {
        Caddy::start(&doc, &edge_http, &upstream).await
    })
    .await
}
