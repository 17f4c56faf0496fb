//! The Raft log, vote and committed index in RocksDB.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{io_err, TypeConfig, CF_LOG, CF_META};

type C = TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// openraft log storage on RocksDB; cheap to clone (also its own reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: std::sync::mpsc::Sender<IOFlushed<C>>,
}

/// Group commit: one thread syncs the WAL for every append written before
/// it runs, then reports each of them durable. `append` itself only writes
/// (readable at once), so openraft can ship entries to followers while the
/// leader's own fsync is in flight; acknowledgement still waits for the sync.
fn spawn_flusher(db: Arc<DB>) -> std::sync::mpsc::Sender<IOFlushed<C>> {
    // A weak reference: the database closes (and releases its lock) as soon
    // as the stores are dropped, not when this thread gets around to exiting.
    let db = Arc::downgrade(&db);
    let (tx, rx) = std::sync::mpsc::channel::<IOFlushed<C>>();
    let spawned = std::thread::Builder::new()
        .name("veto-wal-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let r = match db.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                    None => Err("the log store was closed".to_string()),
                };
                for cb in waiting {
                    cb.io_completed(r.clone().map_err(io_err));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the WAL sync thread; appends will fail");
    }
    tx
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(k: &[u8]) -> io::Result<u64> {
    <[u8; 8]>::try_from(k)
        .map(u64::from_be_bytes)
        .map_err(|_| io_err("log key is not 8 bytes"))
}

fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        let flusher = spawn_flusher(db.clone());
        Self { db, flusher }
    }

    fn cf(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io_err(format!("column family {name} missing")))
    }

    fn get_meta<T: DeserializeOwned>(&self, k: &[u8]) -> io::Result<Option<T>> {
        match self.db.get_cf(self.cf(CF_META)?, k).map_err(io_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(io_err),
        }
    }

    fn put_meta<T: Serialize>(&self, k: &[u8], v: &T) -> io::Result<()> {
        let bytes = serde_json::to_vec(v).map_err(io_err)?;
        self.db
            .put_cf_opt(self.cf(CF_META)?, k, bytes, &synced())
            .map_err(io_err)
    }

    /// The cluster id handle of this data directory.
    pub fn cluster_id(&self) -> io::Result<crate::ClusterId> {
        crate::ClusterId::load(self.db.clone())
    }

    /// Every entry after index `after`, in order (offline recovery).
    pub(crate) fn entries_after(&self, after: u64) -> io::Result<Vec<EntryOf<C>>> {
        let cf = self.cf(CF_LOG)?;
        let start = key(after.saturating_add(1));
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            let (_, v) = kv.map_err(io_err)?;
            out.push(serde_json::from_slice(&v).map_err(io_err)?);
        }
        Ok(out)
    }

    /// Marks the (empty) log purged up to `log_id` and committed there:
    /// what a node that installed a snapshot at `log_id` holds (seeding).
    pub(crate) fn seed_purged(&self, log_id: LogIdOf<C>) -> io::Result<()> {
        self.put_meta(LAST_PURGED, &log_id)?;
        self.put_meta(COMMITTED, &Some(log_id))
    }

    /// Index of the last purged entry, if any (for status reports).
    pub fn last_purged_index(&self) -> Option<u64> {
        self.get_meta::<LogIdOf<C>>(LAST_PURGED)
            .ok()
            .flatten()
            .map(|l| l.index)
    }

    /// The newest entry's log id.
    fn last_log_id(&self) -> io::Result<Option<LogIdOf<C>>> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG)?, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(r) => {
                let (_, v) = r.map_err(io_err)?;
                let e: EntryOf<C> = serde_json::from_slice(&v).map_err(io_err)?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOG)?;
        let mut out = Vec::new();
        for r in self
            .db
            .iterator_cf(cf, IteratorMode::From(&key(start), Direction::Forward))
        {
            let (k, v) = r.map_err(io_err)?;
            let idx = index_of(&k)?;
            if !range.contains(&idx) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(io_err)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_meta(LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not synced: losing it only means replaying a little more log.
        let bytes = serde_json::to_vec(&committed).map_err(io_err)?;
        self.db
            .put_cf(self.cf(CF_META)?, COMMITTED, bytes)
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.get_meta::<Option<LogIdOf<C>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        {
            let cf = self.cf(CF_LOG)?;
            for e in entries {
                let v = serde_json::to_vec(&e).map_err(io_err)?;
                batch.put_cf(cf, key(e.log_id.index), v);
            }
        }
        // Written (and readable) now; durable once the sync thread ran.
        self.db.write(batch).map_err(io_err)?;
        if let Err(std::sync::mpsc::SendError(cb)) = self.flusher.send(callback) {
            let e = io_err("WAL sync thread is gone");
            cb.io_completed(Err(io_err(&e)));
            return Err(e);
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let cf = self.cf(CF_LOG)?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(cf, key(from), key(u64::MAX));
        b.delete_cf(cf, key(u64::MAX));
        self.db.write_opt(b, &synced()).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // Record the purge point first, so a crash mid-purge never leaves a
        // log state that claims entries which are gone.
        self.put_meta(LAST_PURGED, &log_id)?;
        let cf = self.cf(CF_LOG)?;
        let mut b = WriteBatch::default();
        b.delete_range_cf(cf, key(0), key(log_id.index + 1));
        self.db.write_opt(b, &synced()).map_err(io_err)
    }
}
