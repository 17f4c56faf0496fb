//! The audit trail on disk: chained events in the `audit` column family,
//! kept under an age and a size limit.
//!
//! | key                          | value                                     |
//! |------------------------------|-------------------------------------------|
//! | `e` + revision (8 bytes BE)  | JSON [`ChainedEvent`]                     |
//! | `r` + revision (8 bytes BE)  | JSON [`Resume`]: the chain resumes here after a snapshot install |
//! | `pruned`                     | JSON [`Pruned`]: where retention cut the trail |
//!
//! Events are written in apply order, not synced: a crash loses at most the
//! tail since the last synced write, and the log replay after restart writes
//! it again (identically: the chain is a function of the log).

use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};
use veto_core::audit::{AuditQuery, ChainedEvent};

use crate::{io_err, CF_AUDIT};

const PRUNED: &[u8] = b"pruned";

/// Where retention cut the trail: everything up to `seq` is gone, and the
/// first kept event's `prev` is `hash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// Last dropped event's position (0: nothing dropped).
    pub seq: u64,
    /// Last dropped event's revision.
    pub revision: u64,
    /// Last dropped event's hash.
    pub hash: String,
}

/// This node installed a snapshot at `revision`: the events before it
/// that it had not applied are not on this node (its peers hold them),
/// and the chain resumes after `seq` with `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Snapshot revision.
    pub revision: u64,
    /// The chain head in that snapshot.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// One page of the trail.
#[derive(Debug, Default)]
pub struct Page {
    /// Matching events in revision order.
    pub events: Vec<ChainedEvent>,
    /// Resume points in the range the page covered.
    pub resumes: Vec<Resume>,
    /// Revision to continue after, when the page stopped early.
    pub next_after: Option<u64>,
}

/// Totals of what is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Events kept.
    pub events: u64,
    /// Their encoded size, bytes.
    pub bytes: u64,
    /// Position of the last event written (or resumed at).
    pub last_seq: u64,
}

/// What one retention pass dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Events dropped.
    pub events: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

/// Retention limits; `None` keeps forever / any size.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Drop events whose time is older than this many seconds.
    pub max_age_seconds: Option<u64>,
    /// Drop the oldest events while the trail is larger than this.
    pub max_bytes: Option<u64>,
}

/// Events a query page may scan before returning (the page then carries a
/// continuation).
const SCAN_BUDGET: usize = 100_000;

/// The trail of one node.
#[derive(Clone)]
pub struct AuditStore {
    db: Arc<DB>,
    totals: Arc<Mutex<Totals>>,
}

fn key(prefix: u8, revision: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&revision.to_be_bytes());
    k
}

fn revision_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

impl AuditStore {
    pub(crate) fn open(db: Arc<DB>) -> std::io::Result<Self> {
        let s = Self {
            db,
            totals: Arc::default(),
        };
        let mut t = Totals::default();
        {
            let cf = s.cf()?;
            for item in
                s.db.iterator_cf(&cf, IteratorMode::From(&b"e"[..], Direction::Forward))
            {
                let (k, v) = item.map_err(io_err)?;
                if k.first() != Some(&b'e') {
                    break;
                }
                t.events += 1;
                t.bytes += v.len() as u64;
                let c: ChainedEvent = serde_json::from_slice(&v).map_err(io_err)?;
                t.last_seq = t.last_seq.max(c.seq);
            }
        }
        *s.lock() = t;
        Ok(s)
    }

    fn cf(&self) -> std::io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(CF_AUDIT)
            .ok_or_else(|| io_err("cf audit missing"))
    }

    fn lock(&self) -> MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes freshly applied events. Events at or below the last position
    /// written are already on disk (a replay after restart) and skipped.
    pub(crate) fn append(&self, events: &[ChainedEvent]) -> std::io::Result<()> {
        let mut t = self.lock();
        let cf = self.cf()?;
        let mut b = WriteBatch::default();
        let mut added = Totals::default();
        for e in events.iter().filter(|e| e.seq > t.last_seq) {
            let v = serde_json::to_vec(e).map_err(io_err)?;
            added.events += 1;
            added.bytes += v.len() as u64;
            added.last_seq = e.seq;
            b.put_cf(&cf, key(b'e', e.event.revision), v);
        }
        if added.events == 0 {
            return Ok(());
        }
        self.db.write(b).map_err(io_err)?;
        t.events += added.events;
        t.bytes += added.bytes;
        t.last_seq = added.last_seq;
        Ok(())
    }

    /// Records that the chain resumes after a snapshot installed at
    /// `revision` whose head is (`seq`, `hash`).
    pub(crate) fn resume_at(&self, revision: u64, seq: u64, hash: &str) -> std::io::Result<()> {
        let mut t = self.lock();
        let r = Resume {
            revision,
            seq,
            hash: hash.to_owned(),
        };
        let cf = self.cf()?;
        self.db
            .put_cf(
                &cf,
                key(b'r', revision),
                serde_json::to_vec(&r).map_err(io_err)?,
            )
            .map_err(io_err)?;
        t.last_seq = t.last_seq.max(seq);
        Ok(())
    }

    /// What is kept.
    pub fn totals(&self) -> Totals {
        *self.lock()
    }

    /// Where retention cut the trail (default: nothing cut).
    pub fn pruned(&self) -> std::io::Result<Pruned> {
        let cf = self.cf()?;
        match self.db.get_cf(&cf, PRUNED).map_err(io_err)? {
            Some(v) => serde_json::from_slice(&v).map_err(io_err),
            None => Ok(Pruned::default()),
        }
    }

    /// Matching events after `q.after_revision`, at most `q.limit`, scanning
    /// at most a fixed budget; with every resume point in the range read.
    pub fn query(&self, q: &AuditQuery<'_>) -> std::io::Result<Page> {
        let mut page = Page::default();
        let cf = self.cf()?;
        let start = q.after_revision.map_or(0, |a| a.saturating_add(1));
        let from = key(b'e', start);
        let mut last = q.after_revision.unwrap_or(0);
        for (scanned, item) in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
            .enumerate()
        {
            let (k, v) = item.map_err(io_err)?;
            if k.first() != Some(&b'e') {
                break;
            }
            let c: ChainedEvent = serde_json::from_slice(&v)
                .map_err(|e| io_err(format!("audit entry {:?}: {e}", revision_of(&k))))?;
            if page.events.len() >= q.limit || scanned >= SCAN_BUDGET {
                page.next_after = Some(last);
                break;
            }
            last = c.event.revision;
            if q.matches(&c.event) {
                page.events.push(c);
            }
        }
        let until = page.next_after.unwrap_or(u64::MAX);
        let from = key(b'r', start);
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item.map_err(io_err)?;
            if k.first() != Some(&b'r') || revision_of(&k).is_none_or(|r| r > until) {
                break;
            }
            page.resumes
                .push(serde_json::from_slice(&v).map_err(io_err)?);
        }
        Ok(page)
    }

    /// Drops the oldest events past the retention limits (`now`: this
    /// node's unix time). Events without a time go with the timed event
    /// after them.
    pub fn prune(&self, now: i64, r: Retention) -> std::io::Result<PruneReport> {
        let mut report = PruneReport::default();
        if r.max_age_seconds.is_none() && r.max_bytes.is_none() {
            return Ok(report);
        }
        let cutoff = r
            .max_age_seconds
            .map(|a| now.saturating_sub(a.min(i64::MAX as u64) as i64));
        let cf = self.cf()?;
        let mut t = self.lock();
        let mut b = WriteBatch::default();
        let mut untimed: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut pruned: Option<Pruned> = None;
        let mut bytes = t.bytes;
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&b"e"[..], Direction::Forward))
        {
            let (k, v) = item.map_err(io_err)?;
            if k.first() != Some(&b'e') {
                break;
            }
            let c: ChainedEvent = serde_json::from_slice(&v).map_err(io_err)?;
            let too_big = r.max_bytes.is_some_and(|m| bytes > m);
            let too_old = match (cutoff, c.event.at) {
                (Some(cut), Some(at)) => at < cut,
                (Some(_), None) => {
                    untimed.push((k.to_vec(), v.len() as u64));
                    continue;
                }
                _ => false,
            };
            if !(too_big || too_old) {
                break;
            }
            for (uk, ulen) in untimed.drain(..) {
                b.delete_cf(&cf, uk);
                bytes -= ulen;
                report.events += 1;
                report.bytes += ulen;
            }
            b.delete_cf(&cf, &k);
            bytes -= v.len() as u64;
            report.events += 1;
            report.bytes += v.len() as u64;
            pruned = Some(Pruned {
                seq: c.seq,
                revision: c.event.revision,
                hash: c.hash,
            });
        }
        let Some(p) = pruned else {
            return Ok(report);
        };
        // Resume points before the cut are history too.
        for item in self
            .db
            .iterator_cf(&cf, IteratorMode::From(&b"r"[..], Direction::Forward))
        {
            let (k, _) = item.map_err(io_err)?;
            if k.first() != Some(&b'r') || revision_of(&k).is_none_or(|rv| rv > p.revision) {
                break;
            }
            b.delete_cf(&cf, &k);
        }
        b.put_cf(&cf, PRUNED, serde_json::to_vec(&p).map_err(io_err)?);
        self.db.write(b).map_err(io_err)?;
        t.events -= report.events;
        t.bytes -= report.bytes;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veto_core::audit::{AuditEvent, AuditHead, ChainCheck};

    fn event(revision: u64, at: Option<i64>) -> AuditEvent {
        AuditEvent {
            revision,
            at,
            actor: "operator:t".into(),
            action: "issue".into(),
            subject: Some("user:x".into()),
            target: format!("jti-{revision}"),
            reason: String::new(),
        }
    }

    /// Checks what `store` keeps chains from its cut to `head`.
    fn chains(
        store: &AuditStore,
        kept: &[ChainedEvent],
        head: &AuditHead,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let p = store.pruned()?;
        let mut check = ChainCheck::new(p.seq, &p.hash, head.seq, &head.hash);
        for c in kept {
            check.next(c)?;
        }
        Ok(check.finish()?)
    }

    fn all(store: &AuditStore) -> Vec<ChainedEvent> {
        store
            .query(&AuditQuery {
                limit: 10_000,
                ..Default::default()
            })
            .map(|p| p.events)
            .unwrap_or_default()
    }

    #[test]
    fn retention_drops_the_oldest_by_age_and_by_size_and_the_rest_still_chains(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (_log, sm) = crate::open(dir.path(), 1)?;
        let store = sm.handle().audit().clone();
        let mut head = AuditHead::default();
        // times 1000, 1010, ..., with an untimed (membership) entry at 3
        let chained: Vec<ChainedEvent> = (1..=20u64)
            .map(|r| {
                let at = (r != 3).then_some(1000 + 10 * r as i64);
                head.next(event(r, at))
            })
            .collect();
        store.append(&chained)?;
        // A replay of what is on disk writes nothing twice.
        store.append(&chained[..5])?;
        assert_eq!(store.totals().events, 20);
        let per = store.totals().bytes / 20;

        // Age: now 1200, keep 150 s -> events at >= 1050 stay (r >= 5);
        // the untimed entry 3 goes with the timed one after it.
        let r = store.prune(
            1200,
            Retention {
                max_age_seconds: Some(150),
                max_bytes: None,
            },
        )?;
        assert_eq!(r.events, 4);
        let kept = all(&store);
        assert_eq!(kept.first().map(|c| c.event.revision), Some(5));
        assert_eq!(store.totals().events, 16);
        let p = store.pruned()?;
        assert_eq!((p.seq, p.revision), (4, 4));
        chains(&store, &kept, &head)?;

        // Size: at most 10 events' bytes -> the newest 10 stay.
        let r = store.prune(
            1200,
            Retention {
                max_age_seconds: None,
                max_bytes: Some(per * 10 + per / 2),
            },
        )?;
        assert_eq!(r.events, 6);
        assert!(store.totals().bytes <= per * 10 + per / 2);
        let kept = all(&store);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept.last().map(|c| c.seq), Some(20));
        chains(&store, &kept, &head)?;
        // Nothing over the limits: nothing dropped.
        let r = store.prune(
            1200,
            Retention {
                max_age_seconds: Some(10_000),
                max_bytes: Some(1 << 20),
            },
        )?;
        assert_eq!(r.events, 0);
        // Totals survive a reopen.
        drop((_log, sm, store));
        let (_log, sm) = crate::open(dir.path(), 1)?;
        assert_eq!(sm.handle().audit().totals().events, 10);
        Ok(())
    }
}
