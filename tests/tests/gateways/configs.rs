//! Every configuration in docs/integrations.md (the fenced blocks whose
//! first line is `# check: KIND`) through the best validator available
//! here: nginx's and Caddy's own checks, Envoy's protobuf descriptors (the
//! `envoy-types` crate's descriptor set), the Istio and Traefik models
//! generated from their CRD schemas (npm), a structure check and `luac -p`
//! for Kong, and `veto-edge --dump-config` for the edge's own file. A block
//! of a kind nobody checks fails the test, and so does the generated proto
//! reference when it is out of date or an element lacks a comment.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;
use veto_tests::{python_env, veto_cli};

use crate::nginx::Nginx;
use crate::{doc_checks, root, run};

const KINDS: [&str; 10] = [
    "veto-edge",
    "envoy-bootstrap",
    "istio-operator",
    "istio-authorization-policy",
    "nginx-run",
    "nginx-tls",
    "traefik-middleware",
    "traefik-file",
    "caddy",
    "kong",
];

/// The descriptor set compiled from Envoy's published protos that the
/// `envoy-types` crate ships, found through `cargo metadata`.
fn envoy_descriptors() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This platform's packages only: the others may not be downloaded.
    let rustc = run(Command::new("rustc").arg("-vV"))?;
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV without a host")?;
    let out = run(Command::new(cargo).current_dir(root()).args([
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--filter-platform",
        host,
    ]))?;
    let meta: Value = serde_json::from_str(&out)?;
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .context("envoy-types not in cargo metadata")?;
    let set = Path::new(manifest)
        .parent()
        .context("manifest without a directory")?
        .join("src/generated/types.bin");
    anyhow::ensure!(set.is_file(), "{} missing", set.display());
    Ok(set)
}

fn node_checker() -> Result<PathBuf> {
    let out = run(Command::new(root().join("scripts/npmenv.sh")).args(["k8s", "tests/js"]))?;
    Ok(PathBuf::from(out.trim()).join("check-k8s.mjs"))
}

#[test]
fn every_documented_configuration_passes_its_validator() -> Result<()> {
    let blocks = doc_checks()?;
    let mut kinds: Vec<&str> = blocks.iter().map(|(k, _)| k.as_str()).collect();
    kinds.sort_unstable();
    let mut want = KINDS.to_vec();
    want.sort_unstable();
    assert_eq!(kinds, want, "docs/integrations.md's checked blocks");

    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    veto_cli(&["certs", "init", "--dir", &certs.display().to_string()])?;
    let file = |kind: &str, text: &str| -> Result<PathBuf> {
        let p = dir.path().join(kind);
        std::fs::write(&p, text)?;
        Ok(p)
    };
    let python = python_env("oauth", "tests/py/requirements-oauth.txt")?;
    let mut k8s = Vec::new();
    for (kind, text) in &blocks {
        match kind.as_str() {
            "veto-edge" => {
                let bin = veto_testkit::bin_named("veto-edge", "VETO_EDGE_BIN")?;
                let out = run(Command::new(bin)
                    .arg("--config")
                    .arg(file(kind, text)?)
                    .args(["--insecure", "--dump-config"]))?;
                assert!(out.contains("billing:write"), "routes dropped: {out}");
            }
            "envoy-bootstrap" => {
                let out = run(Command::new(&python)
                    .arg(root().join("tests/py/envoy_check.py"))
                    .arg(envoy_descriptors()?)
                    .arg(file(kind, text)?))?;
                assert!(out.contains("ExtAuthz\""), "{out}");
            }
            "nginx-run" | "nginx-tls" => {
                let conf = text.replace("/etc/veto/tls/", &format!("{}/", certs.display()));
                let out = Nginx::test(&conf)?;
                assert!(out.contains("test is successful"), "{out}");
            }
            "caddy" => {
                run(Command::new("caddy")
                    .args(["adapt", "--adapter", "caddyfile", "--validate", "--config"])
                    .arg(file(kind, text)?))?;
            }
            "kong" => {
                let out = run(Command::new(&python)
                    .arg(root().join("tests/py/kong_check.py"))
                    .arg(file(kind, text)?))?;
                assert!(out.contains("\"lua_snippets\": 1"), "{out}");
            }
            k => k8s.push(format!("{k}={}", file(k, text)?.display())),
        }
    }
    let out = run(Command::new("node").arg(node_checker()?).args(&k8s))?;
    assert_eq!(out.lines().count(), 4, "{out}");
    Ok(())
}

#[test]
fn the_proto_reference_is_complete_and_current() -> Result<()> {
    let out = run(Command::new("python3")
        .arg(root().join("scripts/proto-doc.py"))
        .arg("--check"))?;
    eprintln!("{out}");
    Ok(())
}
