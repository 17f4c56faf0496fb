//! Offline operations on data directories (no Raft running): read the
//! state a directory holds, and seed an empty directory with a state and a
//! membership so a new cluster starts from it.
//!
//! Seeding is how a backup is restored and how a cluster is rebuilt from one
//! surviving node: every seeded node holds the same snapshot at the same log
//! id (`revision`, under a fixed leader id) with the given voters, and an
//! empty log purged up to it. Started, they elect a leader among themselves
//! and continue at `revision + 1`, so revisions stay monotonic for edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::alias::{LogIdOf, SnapshotMetaOf, StoredMembershipOf};
use openraft::vote::RaftLeaderIdExt;
use openraft::{BasicNode, EntryPayload, Membership, RaftTypeConfig};
use veto_core::State;

use crate::{open, Error, TypeConfig};

type C = TypeConfig;

fn corrupt(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The state a data directory holds: its latest snapshot with every entry
/// of its log after it applied, and the revision reached. Entries the node
/// had only appended (not known committed) are included: after losing a
/// quorum nobody can tell which of them were acknowledged, and dropping an
/// acknowledged write is worse than keeping an unacknowledged one.
pub fn read_state(path: &Path, node_id: u64) -> Result<(State, u64), Error> {
    if !path.join("CURRENT").exists() {
        return Err(Error::Foreign {
            path: path.display().to_string(),
            why: "no RocksDB database there".into(),
        });
    }
    let (log, sm) = open(path, node_id)?;
    let (mut state, mut revision) = sm
        .handle()
        .read_with_changes(|s, changes| (s.clone(), changes.head()));
    for entry in log.entries_after(revision).map_err(|e| corrupt(path, e))? {
        let index = entry.log_id.index;
        if index != revision + 1 {
            return Err(corrupt(
                path,
                format!("log gap: entry {index} follows revision {revision}"),
            ));
        }
        match &entry.payload {
            EntryPayload::Normal(cmd) => {
                state.apply(index, cmd);
            }
            EntryPayload::Membership(m) => {
                state.apply_membership(index, &crate::describe_membership(m));
            }
            EntryPayload::Blank => {
                state.apply_noop(index);
            }
        }
        // The trail of this directory is already on disk.
        state.take_audit();
        revision = index;
    }
    Ok((state, revision))
}

/// The cluster id of a data directory (None before Init), read offline.
pub fn cluster_id_of(path: &Path, node_id: u64) -> Result<Option<String>, Error> {
    let (log, _) = open(path, node_id)?;
    Ok(log.cluster_id().map_err(|e| corrupt(path, e))?.get())
}

/// Seeds the empty (or absent) directory `path` for node `node_id` with
/// `state` at `revision`, `members` (node id -> gRPC address) as voters and
/// `cluster_id` (the same on every node seeded together; a new id, so
/// members of the cluster the state came from cannot join it).
pub fn seed(
    path: &Path,
    node_id: u64,
    state: &State,
    revision: u64,
    members: &BTreeMap<u64, String>,
    cluster_id: &str,
) -> Result<(), Error> {
    if path.exists()
        && std::fs::read_dir(path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Foreign {
            path: path.display().to_string(),
            why: "seeding needs an empty directory".into(),
        });
    }
    if !members.contains_key(&node_id) {
        return Err(corrupt(
            path,
            format!("node {node_id} is not among the members it is seeded with"),
        ));
    }
    if state.revision != revision {
        return Err(corrupt(
            path,
            format!(
                "state is at revision {} but is seeded at {revision}",
                state.revision
            ),
        ));
    }
    std::fs::create_dir_all(path).map_err(|e| corrupt(path, e))?;
    let (log, sm) = open(path, node_id)?;
    // The same log id on every seeded node: leader id (0, 0), the one
    // openraft gives the entries of `initialize`.
    let log_id = LogIdOf::<C>::new(
        <C as RaftTypeConfig>::LeaderId::new_committed(0, 0),
        revision,
    );
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
        .collect();
    let membership = Membership::new(vec![voters], nodes).map_err(|e| corrupt(path, e))?;
    let meta = SnapshotMetaOf::<C> {
        last_log_id: Some(log_id),
        last_membership: StoredMembershipOf::<C>::new(Some(log_id), membership),
    };
    sm.seed_snapshot(&meta, &state.to_snapshot_bytes())
        .map_err(|e| corrupt(path, e))?;
    // The trail before the seed is in the source cluster (and its backup's
    // head): this one continues the chain from there.
    let head = state.audit_head();
    sm.handle()
        .audit()
        .resume_at(revision, head.seq, &head.hash)
        .map_err(|e| corrupt(path, e))?;
    log.seed_purged(log_id).map_err(|e| corrupt(path, e))?;
    log.cluster_id()
        .and_then(|c| c.set_if_unset(cluster_id))
        .map_err(|e| corrupt(path, e))?;
    Ok(())
}

/// One stored record: column family, key, value.
pub type RawRecord = (String, Vec<u8>, Vec<u8>);

/// Every record of every column family as RocksDB returns it (values
/// decompressed), read-only: for audits of what is stored at rest, which a
/// search of the files themselves cannot do once blocks are compressed.
pub fn raw_records(path: &Path) -> Result<Vec<RawRecord>, Error> {
    let shown = path.display().to_string();
    let open_err = |source| Error::Open {
        path: shown.clone(),
        source,
    };
    let opts = rocksdb::Options::default();
    let names = crate::COLUMN_FAMILIES;
    let db = rocksdb::DB::open_cf_for_read_only(&opts, path, names, false).map_err(open_err)?;
    let mut out = Vec::new();
    for name in names {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| corrupt(path, format!("column family {name} missing")))?;
        for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(open_err)?;
            out.push((name.to_owned(), k.to_vec(), v.to_vec()));
        }
    }
    Ok(out)
}
