//! Backups and offline recovery: `veto snapshot save|inspect|restore` and
//! `veto cluster force-new`.
//!
//! A backup file is `veto-backup v1\n`, one JSON header line (revision,
//! byte count, SHA-256, time, node) and the serialised state machine. It is
//! written to a temporary file, checked, fsynced and renamed, so a file that
//! exists is complete.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio_stream::StreamExt;
use veto_proto as pb;
use veto_proto::admin_service_client::AdminServiceClient;

const MAGIC: &str = "veto-backup v1";

/// The header line of a backup file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    /// Revision (log index) the state reflects.
    pub revision: u64,
    /// Bytes of state after the header.
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
    /// When it was taken (unix seconds, the CLI's clock).
    pub created_unix: i64,
    /// Address of the node that served it.
    pub from: String,
}

/// Streams a consistent backup from `addrs` into `file`.
pub async fn save(addrs: &str, file: &Path, timeout: Duration) -> Result<Header> {
    let ch = crate::connect(addrs, timeout.max(Duration::from_secs(30))).await?;
    let mut stream = AdminServiceClient::new(ch)
        .max_decoding_message_size(8 << 20)
        .backup(pb::BackupRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("backup: {}: {}", s.code(), s.message()))?
        .into_inner();
    let mut data = Vec::new();
    let mut revision = None;
    let mut digest = None;
    while let Some(c) = stream.next().await {
        let c = c.map_err(|s| anyhow::anyhow!("backup stream: {}: {}", s.code(), s.message()))?;
        if c.offset != data.len() as u64 {
            bail!(
                "backup chunk at offset {} after {} bytes",
                c.offset,
                data.len()
            );
        }
        if *revision.get_or_insert(c.revision) != c.revision {
            bail!("backup chunks disagree on the revision");
        }
        data.extend_from_slice(&c.data);
        if c.last {
            digest = Some(c.sha256.to_vec());
            break;
        }
    }
    let (Some(revision), Some(want)) = (revision, digest) else {
        bail!("backup stream ended before its last chunk");
    };
    let got = sha2::Sha256::digest(&data).to_vec();
    if got != want {
        bail!("backup data does not match the server's SHA-256");
    }
    let header = Header {
        revision,
        bytes: data.len() as u64,
        sha256: hex::encode(&got),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        from: addrs
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    write_file(file, &header, &data)?;
    Ok(header)
}

fn write_file(file: &Path, header: &Header, data: &[u8]) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", file.display()));
    {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        writeln!(f, "{MAGIC}")?;
        writeln!(f, "{}", serde_json::to_string(header)?)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

/// Reads and checks a backup file: magic, header, size and checksum, and
/// that the state decodes at the header's revision.
pub fn load(file: &Path) -> Result<(Header, veto_core::State)> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut r = std::io::BufReader::new(f);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim_end() != MAGIC {
        bail!("{} is not a veto backup", file.display());
    }
    line.clear();
    r.read_line(&mut line)?;
    let header: Header = serde_json::from_str(line.trim_end())
        .with_context(|| format!("{}: bad header", file.display()))?;
    let mut data = Vec::new();
    r.take(header.bytes.saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() as u64 != header.bytes {
        bail!(
            "{}: {} bytes of state, the header says {}",
            file.display(),
            data.len(),
            header.bytes
        );
    }
    if hex::encode(sha2::Sha256::digest(&data)) != header.sha256 {
        bail!(
            "{}: checksum mismatch (corrupt or truncated)",
            file.display()
        );
    }
    let state = veto_core::State::from_snapshot_bytes(&data)
        .map_err(|e| anyhow::anyhow!("{}: state does not decode: {e}", file.display()))?;
    if state.revision != header.revision {
        bail!(
            "{}: state is at revision {}, the header says {}",
            file.display(),
            state.revision,
            header.revision
        );
    }
    Ok((header, state))
}

/// `members` (ID=HOST:PORT) as a map; every id once, `node_id` among them.
pub fn member_map(members: &[pb::Member], node_id: u64) -> Result<BTreeMap<u64, String>> {
    let mut m = BTreeMap::new();
    for x in members {
        if x.node_id == 0 || m.insert(x.node_id, x.addr.clone()).is_some() {
            bail!(
                "member ids must be non-zero and distinct (got {} twice or 0)",
                x.node_id
            );
        }
    }
    if !m.contains_key(&node_id) {
        bail!("--node-id {node_id} must be one of the --member ids");
    }
    Ok(m)
}

/// Seeds a new data directory from a backup file.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: u64,
    members: &[pb::Member],
) -> Result<Header> {
    let members = member_map(members, node_id)?;
    let (header, state) = load(file)?;
    let id = derived_cluster_id(&["restore", &header.sha256], &members);
    veto_store::offline::seed(data_dir, node_id, &state, header.revision, &members, &id)?;
    Ok(header)
}

/// Rebuilds a one-node (or new-membership) cluster from a surviving node's
/// data directory: everything in its snapshot and log, seeded into a new
/// directory with the given members.
pub fn force_new(
    survivor_dir: &Path,
    survivor_id: u64,
    data_dir: &Path,
    node_id: u64,
    members: &[pb::Member],
) -> Result<u64> {
    let members = member_map(members, node_id)?;
    let old_id = veto_store::offline::cluster_id_of(survivor_dir, survivor_id)
        .with_context(|| format!("reading {}", survivor_dir.display()))?
        .unwrap_or_default();
    let (state, revision) = veto_store::offline::read_state(survivor_dir, survivor_id)
        .with_context(|| format!("reading {}", survivor_dir.display()))?;
    let id = derived_cluster_id(&["force-new", &old_id, &revision.to_string()], &members);
    veto_store::offline::seed(data_dir, node_id, &state, revision, &members, &id)?;
    Ok(revision)
}

/// The id of a seeded cluster: derived from what seeds it (so every node
/// seeded with the same inputs agrees without talking) and never equal to
/// the id of the cluster the state came from.
fn derived_cluster_id(parts: &[&str], members: &BTreeMap<u64, String>) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    for (id, addr) in members {
        h.update(format!("{id}={addr}").as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}
