//! The replicated state machine: `veto_core::State` in memory, persisted as
//! snapshots in the `sm` column family.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use rocksdb::{WriteBatch, WriteOptions, DB};
use tokio::sync::watch;
use veto_core::{Response, State};
use veto_feed::ChangeLog;

use crate::{io_err, TypeConfig, CF_SM};

type C = TypeConfig;

const SNAPSHOT_META: &[u8] = b"snapshot_meta";

struct Applied {
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    state: State,
}

struct Shared {
    db: Arc<DB>,
    audit: crate::AuditStore,
    snap_dir: PathBuf,
    applied: RwLock<Applied>,
    /// Edge changes by revision; advanced under the `applied` write lock.
    changes: Mutex<ChangeLog>,
    applied_tx: watch::Sender<u64>,
    snapshot_index: std::sync::atomic::AtomicU64,
}

/// The state machine store handed to openraft; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

/// Read access to the applied state for the services.
#[derive(Clone)]
pub struct StateHandle {
    shared: Arc<Shared>,
}

impl StateHandle {
    /// Runs `f` with the applied state under a read lock. Keep `f` short.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let g = read_lock(&self.shared.applied);
        f(&g.state)
    }

    /// Runs `f` with the applied state and the edge change log, consistent
    /// with each other (no apply in between).
    pub fn read_with_changes<T>(&self, f: impl FnOnce(&State, &ChangeLog) -> T) -> T {
        let g = read_lock(&self.shared.applied);
        let c = lock(&self.shared.changes);
        f(&g.state, &c)
    }

    /// The edge change log.
    pub fn changes(&self) -> MutexGuard<'_, ChangeLog> {
        lock(&self.shared.changes)
    }

    /// Revision (log index) of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied_tx.borrow()
    }

    /// A receiver that sees every new applied index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// The audit trail on disk.
    pub fn audit(&self) -> &crate::AuditStore {
        &self.shared.audit
    }

    /// Index covered by the latest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.shared
            .snapshot_index
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while holding the lock would already have aborted the apply;
    // the data itself is still consistent, so recover the guard.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Edge changes kept in memory for feeds; an edge further behind gets a snapshot.
pub const CHANGE_LOG_CAPACITY: usize = 200_000;

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl StateMachineStore {
    pub(crate) fn open(db: Arc<DB>, snap_dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&snap_dir)
            .map_err(|e| format!("cannot create {}: {e}", snap_dir.display()))?;
        let current = load_snapshot(&db, &snap_dir).map_err(|e| e.to_string())?;
        let applied = match current {
            Some((meta, d)) => {
                let state = State::from_snapshot_bytes(&d).map_err(|e| e.to_string())?;
                Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                    state,
                }
            }
            None => Applied {
                last_applied: None,
                membership: StoredMembershipOf::<C>::default(),
                state: State::default(),
            },
        };
        let idx = applied.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
        let (applied_tx, _) = watch::channel(idx);
        let audit = crate::AuditStore::open(db.clone()).map_err(|e| format!("audit trail: {e}"))?;
        Ok(Self {
            shared: Arc::new(Shared {
                audit,
                db,
                snap_dir,
                applied: RwLock::new(applied),
                changes: Mutex::new(ChangeLog::new(idx, CHANGE_LOG_CAPACITY)),
                applied_tx,
                snapshot_index: std::sync::atomic::AtomicU64::new(idx),
            }),
        })
    }

    /// A read handle on the applied state.
    pub fn handle(&self) -> StateHandle {
        StateHandle {
            shared: self.shared.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.shared
            .applied
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `data` as the current snapshot (offline seeding).
    pub(crate) fn seed_snapshot(&self, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<()> {
        self.save_snapshot(meta, data)
    }

    /// Persists a snapshot: the data as a file (written, fsynced, renamed),
    /// then its record in RocksDB (synced), then older files are removed.
    /// Snapshot data stays out of RocksDB so it never churns the WAL and
    /// compactions.
    fn save_snapshot(&self, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<()> {
        let idx = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        let file = format!("snap-{idx:020}.bin");
        let dir = &self.shared.snap_dir;
        let tmp = dir.join(format!("{file}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(&file))?;
        std::fs::File::open(dir)?.sync_all()?;
        let rec = SnapRecord {
            meta: meta.clone(),
            file: file.clone(),
            sha256: sha256_hex(data),
        };
        let cf = self
            .shared
            .db
            .cf_handle(CF_SM)
            .ok_or_else(|| io_err("cf sm missing"))?;
        let mut b = WriteBatch::default();
        b.put_cf(
            &cf,
            SNAPSHOT_META,
            serde_json::to_vec(&rec).map_err(io_err)?,
        );
        self.shared.db.write_opt(b, &synced()).map_err(io_err)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("snap-") && name != file {
                let _ = std::fs::remove_file(e.path());
            }
        }
        self.shared
            .snapshot_index
            .store(idx, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// How a membership entry reads in the audit trail: the voter set(s) (two
/// during a joint change), the learners and every member's address.
pub fn describe_membership(m: &openraft::Membership<u64, openraft::BasicNode>) -> String {
    let voters: Vec<String> = m
        .get_joint_config()
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    let learners: Vec<u64> = m.learner_ids().collect();
    let nodes: Vec<String> = m
        .nodes()
        .map(|(id, n)| format!("{id}={}", n.addr))
        .collect();
    format!(
        "voters {} learners {learners:?} nodes {}",
        voters.join(" + "),
        nodes.join(",")
    )
}

/// The record of the current snapshot kept in the `sm` column family.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapRecord {
    meta: SnapshotMetaOf<C>,
    file: String,
    sha256: String,
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Loads the current snapshot, checking the file against its recorded digest.
fn load_snapshot(db: &DB, dir: &Path) -> io::Result<Option<(SnapshotMetaOf<C>, Vec<u8>)>> {
    let cf = db.cf_handle(CF_SM).ok_or_else(|| io_err("cf sm missing"))?;
    let Some(raw) = db.get_cf(&cf, SNAPSHOT_META).map_err(io_err)? else {
        return Ok(None);
    };
    let rec: SnapRecord =
        serde_json::from_slice(&raw).map_err(|e| io_err(format!("snapshot record: {e}")))?;
    if rec.file.contains('/') || !rec.file.starts_with("snap-") {
        return Err(io_err(format!(
            "snapshot record names a bad file {:?}",
            rec.file
        )));
    }
    let data = std::fs::read(dir.join(&rec.file))
        .map_err(|e| io_err(format!("snapshot file {}: {e}", rec.file)))?;
    if sha256_hex(&data) != rec.sha256 {
        return Err(io_err(format!(
            "snapshot file {} does not match its digest",
            rec.file
        )));
    }
    Ok(Some((rec.meta, data)))
}

impl RaftSnapshotBuilder<C> for StateMachineStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Vec<u8>>, io::Error> {
        let (meta, state) = {
            let g = read_lock(&self.shared.applied);
            let meta = SnapshotMetaOf::<C> {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
            };
            (meta, g.state.clone())
        };
        let this = self.clone();
        let meta2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            let data = state.to_snapshot_bytes();
            this.save_snapshot(&meta2, &data).map(|_| data)
        })
        .await
        .map_err(io_err)??;
        Ok(SnapshotOf::<C, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<C> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let g = read_lock(&self.shared.applied);
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            let resp: Response = {
                let mut g = self.write();
                let (r, changes) = match &entry.payload {
                    EntryPayload::Blank => (g.state.apply_noop(index), Vec::new()),
                    EntryPayload::Normal(cmd) => g.state.apply_for_edges(index, cmd),
                    EntryPayload::Membership(m) => {
                        g.membership = StoredMembershipOf::<C>::new(Some(entry.log_id), m.clone());
                        (
                            g.state.apply_membership(index, &describe_membership(m)),
                            Vec::new(),
                        )
                    }
                };
                self.shared.audit.append(&g.state.take_audit())?;
                g.last_applied = Some(entry.log_id);
                let trace = match &entry.payload {
                    EntryPayload::Normal(cmd) => cmd.trace_context(),
                    _ => None,
                };
                lock(&self.shared.changes).advance_traced(index, changes, Instant::now(), trace);
                r
            };
            self.shared.applied_tx.send_replace(index);
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = State::from_snapshot_bytes(&snapshot)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.save_snapshot(meta, &snapshot)?;
        let idx = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0);
        let head = state.audit_head().clone();
        self.shared.audit.resume_at(idx, head.seq, &head.hash)?;
        {
            let mut g = self.write();
            g.state = state;
            g.last_applied = meta.last_log_id;
            g.membership = meta.last_membership.clone();
            lock(&self.shared.changes).reset(idx);
        }
        self.shared.applied_tx.send_replace(idx);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, io::Error> {
        let (db, dir) = (self.shared.db.clone(), self.shared.snap_dir.clone());
        let cur = tokio::task::spawn_blocking(move || load_snapshot(&db, &dir))
            .await
            .map_err(io_err)??;
        Ok(cur.map(|(meta, snapshot)| SnapshotOf::<C, Vec<u8>> { meta, snapshot }))
    }
}
