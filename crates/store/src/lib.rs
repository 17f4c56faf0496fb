//! veto's openraft storage on RocksDB.
//!
//! One RocksDB database per node with three column families:
//!
//! | cf     | keys                                   | values                         |
//! |--------|----------------------------------------|--------------------------------|
//! | `meta` | `format`, `node_id`, `vote`, `committed`, `last_purged` | JSON               |
//! | `log`  | log index, 8 bytes big-endian          | JSON `Entry<TypeConfig>`       |
//! | `sm`   | `snapshot_meta`                        | JSON: meta, file name, SHA-256 |
//! | `audit`| see [`audit`]                          | the hash-chained audit trail   |
//!
//! Snapshot data lives in `snapshots/snap-<index>.bin` next to the database
//! files, written and fsynced before its record is committed.
//!
//! Log appends and vote writes are synced (WAL fsync) before openraft is told
//! they are durable. The state machine lives in memory and is persisted as
//! snapshots; after a restart openraft replays the committed log behind the
//! latest snapshot, so nothing acknowledged is lost.

pub mod audit;
mod cluster_id;
mod log_store;
pub mod offline;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use audit::AuditStore;
pub use cluster_id::{ClusterId, Mismatch};
pub use log_store::LogStore;
pub use state_machine::{describe_membership, StateHandle, StateMachineStore};

openraft::declare_raft_types!(
    /// veto's openraft type configuration.
    pub TypeConfig:
        D = veto_core::Command,
        R = veto_core::Response,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// The openraft handle for veto.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_SM: &str = "sm";
/// The column family of the audit trail.
pub const CF_AUDIT: &str = "audit";
/// Every column family of a data directory.
pub const COLUMN_FAMILIES: [&str; 4] = [CF_META, CF_LOG, CF_SM, CF_AUDIT];
const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &str = "veto-store-v1";
const NODE_ID_KEY: &[u8] = b"node_id";

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds something that is not a veto data directory.
    #[error("{path} is not a veto data directory ({why}); refusing to start")]
    Foreign {
        /// The directory.
        path: String,
        /// What gave it away.
        why: String,
    },
    /// It belongs to another node id.
    #[error(
        "data directory {path} belongs to node {found}, not node {expected}; refusing to start"
    )]
    WrongNode {
        /// The directory.
        path: String,
        /// Id recorded in it.
        found: u64,
        /// Id this process was started with.
        expected: u64,
    },
    /// RocksDB refused to open it (corruption, permissions, lock held).
    #[error("cannot open data directory {path}: {source}")]
    Open {
        /// The directory.
        path: String,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// Stored data does not decode.
    #[error("data directory {path} is corrupt: {why}")]
    Corrupt {
        /// The directory.
        path: String,
        /// What failed to decode.
        why: String,
    },
}

/// Opens (or creates) the data directory at `path` for node `node_id`.
pub fn open(path: &Path, node_id: u64) -> Result<(LogStore, StateMachineStore), Error> {
    let shown = path.display().to_string();
    let exists = path.join("CURRENT").exists();
    if !exists && path.exists() {
        let non_empty = std::fs::read_dir(path)
            .map_err(|e| Error::Foreign {
                path: shown.clone(),
                why: e.to_string(),
            })?
            .next()
            .is_some();
        if non_empty {
            return Err(Error::Foreign {
                path: shown,
                why: "it is not empty and holds no RocksDB database".into(),
            });
        }
    }
    let mut opts = Options::default();
    opts.create_if_missing(!exists);
    // Directories written before the audit trail moved to disk gain its
    // column family on first open.
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    let cfs = COLUMN_FAMILIES.map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| {
        if exists && source.to_string().contains("olumn famil") {
            Error::Foreign {
                path: shown.clone(),
                why: format!("unexpected column families: {source}"),
            }
        } else {
            Error::Open {
                path: shown.clone(),
                source,
            }
        }
    })?;
    let db = Arc::new(db);
    check_identity(&db, &shown, node_id, exists)?;
    let log = LogStore::new(db.clone());
    let sm = StateMachineStore::open(db, path.join("snapshots"))
        .map_err(|why| Error::Corrupt { path: shown, why })?;
    Ok((log, sm))
}

fn check_identity(db: &DB, shown: &str, node_id: u64, existed: bool) -> Result<(), Error> {
    let open_err = |source| Error::Open {
        path: shown.to_owned(),
        source,
    };
    let Some(meta) = db.cf_handle(CF_META) else {
        return Err(Error::Foreign {
            path: shown.to_owned(),
            why: "no meta column family".into(),
        });
    };
    match db.get_cf(&meta, FORMAT_KEY).map_err(open_err)? {
        Some(v) if v == FORMAT.as_bytes() => {}
        Some(v) => {
            return Err(Error::Foreign {
                path: shown.to_owned(),
                why: format!("format marker is {:?}", String::from_utf8_lossy(&v)),
            })
        }
        None if existed => {
            return Err(Error::Foreign {
                path: shown.to_owned(),
                why: "no veto format marker".into(),
            })
        }
        None => {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(&meta, FORMAT_KEY, FORMAT);
            b.put_cf(&meta, NODE_ID_KEY, node_id.to_be_bytes());
            db.write_opt(b, &wo).map_err(open_err)?;
        }
    }
    let found = db
        .get_cf(&meta, NODE_ID_KEY)
        .map_err(open_err)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::Corrupt {
            path: shown.to_owned(),
            why: "node id missing".into(),
        })?;
    if found != node_id {
        return Err(Error::WrongNode {
            path: shown.to_owned(),
            found,
            expected: node_id,
        });
    }
    Ok(())
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests;
