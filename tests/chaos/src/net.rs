//! Hosts on one machine: a network namespace per host, each joined to one
//! bridge by a veth pair, and faults as nftables rules inside a host.
//!
//! The harness itself stays in the root namespace, on the bridge's own
//! address, so partitions and loss cut hosts from each other but never the
//! harness from a host: a partitioned edge is still asked to verify, and has
//! to refuse. Dropping a [`Net`] kills whatever still runs in its
//! namespaces and deletes them and the bridge; a run killed before that is
//! cleaned up by the next one (names carry the creating pid).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

const NS_PREFIX: &str = "vchaos-";

/// Runs a command; fails with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_stdin(cmd: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}\ninput:\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One host: a network namespace with one interface, `eth0`.
#[derive(Debug, Clone)]
pub struct Host {
    /// Logical name (`s1`, `e0`, ...).
    pub name: String,
    /// The namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// A fault on one host, as nftables rules on its outgoing traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Drop everything this host sends to `ip` (one direction of a partition).
    DropTo(Ipv4Addr),
    /// Drop `percent` of what this host sends to any other host (not the harness).
    Loss(u8),
}

/// The bridge and its hosts.
pub struct Net {
    id: String,
    bridge: String,
    subnet: [u8; 3],
    hosts: Vec<Host>,
    rules: Vec<Vec<Rule>>,
}

static NETS: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// A new bridge with no hosts; first removes what dead runs left behind.
    pub fn new() -> Result<Self> {
        for tool in ["ip", "nft"] {
            if Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                bail!(
                    "`{tool}` is not installed (the test command installs iproute2 and nftables)"
                );
            }
        }
        clean_stale();
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed) % 10;
        let id = format!("{pid}{n}");
        let h = (pid.wrapping_mul(2_654_435_761) ^ n) as usize;
        let subnet = [10, 64 + (h % 128) as u8, ((h >> 8) % 256) as u8];
        let bridge = format!("vcb{id}");
        let net = Net {
            id,
            bridge: bridge.clone(),
            subnet,
            hosts: Vec::new(),
            rules: Vec::new(),
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"])
            .context("creating a bridge (the chaos tests need root and iproute2)")?;
        run("ip", &["link", "set", &bridge, "up"])?;
        let cidr = format!("{}/24", net.harness_ip());
        run("ip", &["addr", "add", &cidr, "dev", &bridge])?;
        Ok(net)
    }

    /// The harness's address (the bridge's, in the root namespace).
    pub fn harness_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], 254)
    }

    /// Adds a host named `name`.
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        let idx = self.hosts.len();
        if idx >= 200 {
            bail!("at most 200 hosts");
        }
        let ns = format!("{NS_PREFIX}{}-{}-{name}", std::process::id(), self.id);
        let ip = Ipv4Addr::new(
            self.subnet[0],
            self.subnet[1],
            self.subnet[2],
            idx as u8 + 1,
        );
        let outer = format!("vc{}h{idx}", self.id);
        let inner = format!("vp{}h{idx}", self.id);
        run("ip", &["netns", "add", &ns])?;
        let host = Host {
            name: name.into(),
            ns: ns.clone(),
            ip,
        };
        self.hosts.push(host.clone());
        self.rules.push(Vec::new());
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ],
        )?;
        run("ip", &["link", "set", &inner, "netns", &ns])?;
        run("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
        let cidr = format!("{ip}/24");
        run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run("ip", &["link", "set", &outer, "master", &self.bridge])?;
        run("ip", &["link", "set", &outer, "up"])?;
        self.set_rules(idx, Vec::new())?;
        Ok(host)
    }

    /// The hosts, in the order they were added.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Replaces host `idx`'s fault rules (empty = healthy).
    pub fn set_rules(&mut self, idx: usize, rules: Vec<Rule>) -> Result<()> {
        let host = self.hosts.get(idx).context("no such host")?;
        let mut body = String::new();
        let harness = self.harness_ip();
        for r in &rules {
            match r {
                Rule::DropTo(ip) => body.push_str(&format!("    ip daddr {ip} drop\n")),
                Rule::Loss(p) => body.push_str(&format!(
                    "    ip daddr != {harness} numgen random mod 100 < {p} drop\n"
                )),
            }
        }
        // Declaring then deleting makes the reset work whether or not the
        // table exists.
        let script = format!(
            "table inet chaos {{}}\ndelete table inet chaos\n\
             table inet chaos {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n{body}  }}\n}}\n"
        );
        run_stdin(
            "ip",
            &["netns", "exec", &host.ns, "nft", "-f", "-"],
            &script,
        )?;
        self.rules[idx] = rules;
        Ok(())
    }

    /// Adds rules to host `idx`'s current ones.
    pub fn add_rules(&mut self, idx: usize, more: &[Rule]) -> Result<()> {
        let mut r = self.rules.get(idx).cloned().unwrap_or_default();
        r.extend_from_slice(more);
        self.set_rules(idx, r)
    }

    /// Cuts hosts `a` and `b` apart in both directions.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        for &x in a {
            for &y in b {
                let (ix, iy) = (self.hosts[x].ip, self.hosts[y].ip);
                self.add_rules(x, &[Rule::DropTo(iy)])?;
                self.add_rules(y, &[Rule::DropTo(ix)])?;
            }
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub fn heal(&mut self) -> Result<()> {
        for i in 0..self.hosts.len() {
            if !self.rules[i].is_empty() {
                self.set_rules(i, Vec::new())?;
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_ns(&h.ns);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// Kills what runs in namespace `ns`, then deletes it.
fn remove_ns(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for p in pids.split_whitespace() {
            let _ = run("kill", &["-9", p]);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Removes namespaces and bridges whose creating process is gone.
fn clean_stale() {
    let alive = |pid: &str| std::path::Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(rest) = name.strip_prefix(NS_PREFIX) {
                let pid = rest.split('-').next().unwrap_or("");
                if !pid.is_empty() && !alive(pid) {
                    remove_ns(name);
                }
            }
        }
    }
    if let Ok(links) = run("ip", &["-o", "link", "show", "type", "bridge"]) {
        for line in links.lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else {
                continue;
            };
            if let Some(id) = name.strip_prefix("vcb") {
                // the id is the pid followed by one digit
                if id.len() >= 2 && id.bytes().all(|b| b.is_ascii_digit()) {
                    let pid = &id[..id.len() - 1];
                    if !alive(pid) {
                        let _ = run("ip", &["link", "del", name]);
                    }
                }
            }
        }
    }
}
