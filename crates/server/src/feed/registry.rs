//! The edges this node has seen, bounded: one entry per edge id, kept while
//! its stream is open and for [`FORGET_AFTER`] after it closes, at most
//! [`MAX_EDGES`] in all. A new edge id arriving at a full registry takes the
//! place of the edge that left longest ago; with every entry connected it
//! is refused, so no caller can grow the registry without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EdgeStat;

/// Most edges one node tracks.
pub const MAX_EDGES: usize = 10_000;
/// How long a disconnected edge stays listed (as disconnected).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The registry is full of connected edges.
#[derive(Debug, thiserror::Error)]
#[error("this node already streams to {MAX_EDGES} edges; subscribe to another node")]
pub struct Full;

/// The bounded edge registry; every change wakes [`Registry::changed`].
pub struct Registry {
    edges: Mutex<HashMap<String, Entry>>,
    changed: tokio::sync::watch::Sender<u64>,
    max: usize,
    forget_after: Duration,
}

struct Entry {
    stat: EdgeStat,
    /// When its last stream closed; `None` while one is open.
    left_at: Option<Instant>,
    /// Streams open now (an edge may briefly hold two while it switches).
    streams: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(MAX_EDGES, FORGET_AFTER)
    }
}

impl Registry {
    /// A registry of at most `max` edges that forgets a disconnected one
    /// after `forget_after`.
    pub fn new(max: usize, forget_after: Duration) -> Self {
        Self {
            edges: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            max: max.max(1),
            forget_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.edges.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified on every connect, disconnect and ack.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An edge opened a stream at `applied`.
    pub fn connected(&self, edge: &str, applied: u64, now: Instant) -> Result<(), Full> {
        let mut m = self.lock();
        let forget = self.forget_after;
        m.retain(|_, e| {
            e.left_at
                .is_none_or(|t| now.saturating_duration_since(t) < forget)
        });
        if !m.contains_key(edge) && m.len() >= self.max {
            let oldest = m
                .iter()
                .filter_map(|(id, e)| e.left_at.map(|t| (t, id.clone())))
                .min();
            match oldest {
                Some((_, id)) => {
                    m.remove(&id);
                }
                None => return Err(Full),
            }
        }
        let e = m.entry(edge.to_owned()).or_insert_with(|| Entry {
            stat: EdgeStat {
                connected: true,
                applied,
                acked_at: now,
                answered_at: None,
                connects: 0,
                verify_counts: HashMap::new(),
            },
            left_at: None,
            streams: 0,
        });
        e.streams += 1;
        e.left_at = None;
        e.stat.connected = true;
        e.stat.connects += 1;
        e.stat.applied = e.stat.applied.max(applied);
        drop(m);
        self.wake();
        Ok(())
    }

    /// One of the edge's streams closed.
    pub fn disconnected(&self, edge: &str, now: Instant) {
        if let Some(e) = self.lock().get_mut(edge) {
            e.streams = e.streams.saturating_sub(1);
            if e.streams == 0 {
                e.stat.connected = false;
                e.left_at = Some(now);
            }
        }
        self.wake();
    }

    /// The edge acknowledged `applied` at `at`; true if that advanced it.
    pub fn ack(&self, edge: &str, applied: u64, at: Instant) -> bool {
        let advanced = match self.lock().get_mut(edge) {
            Some(e) if applied > e.stat.applied => {
                e.stat.applied = applied;
                e.stat.acked_at = at;
                true
            }
            _ => false,
        };
        self.wake();
        advanced
    }

    /// This node answered one of the edge's probes.
    pub fn answered(&self, edge: &str, now: Instant) {
        if let Some(e) = self.lock().get_mut(edge) {
            e.stat.answered_at = Some(now);
        }
    }

    /// The edge's verify counts, from its latest probe.
    pub fn probed(&self, edge: &str, counts: HashMap<String, u64>) {
        if let Some(e) = self.lock().get_mut(edge) {
            e.stat.verify_counts = counts;
        }
    }

    /// Every edge, sorted by id.
    pub fn stats(&self) -> Vec<(String, EdgeStat)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.stat.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether every connected edge has applied `revision`.
    pub fn all_applied(&self, revision: u64) -> bool {
        self.lock()
            .values()
            .all(|e| !e.stat.connected || e.stat.applied >= revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_forgets_the_departed_and_refuses_when_full_of_live_edges() {
        let r = Registry::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        r.connected("a", 1, t0).unwrap();
        r.connected("b", 1, t0).unwrap();
        // full of connected edges: a third is refused, an existing one not
        assert!(r.connected("c", 1, t0).is_err());
        r.connected("a", 1, t0).unwrap();
        // a left (both its streams): c takes its place
        r.disconnected("a", t0);
        assert!(r.stats().iter().any(|(id, s)| id == "a" && s.connected));
        r.disconnected("a", t0);
        r.connected("c", 1, t0 + Duration::from_secs(1)).unwrap();
        let ids: Vec<String> = r.stats().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["b", "c"]);
        // a disconnected edge is forgotten after forget_after
        r.disconnected("b", t0);
        r.connected("c", 1, t0 + Duration::from_secs(61)).unwrap();
        let ids: Vec<String> = r.stats().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["c"]);
    }

    #[test]
    fn acks_only_advance_and_all_applied_ignores_disconnected_edges() {
        let r = Registry::default();
        let t0 = Instant::now();
        r.connected("a", 5, t0).unwrap();
        r.connected("b", 3, t0).unwrap();
        assert!(!r.ack("a", 4, t0));
        assert!(r.ack("b", 7, t0));
        assert!(r.all_applied(5));
        assert!(!r.all_applied(6));
        r.disconnected("a", t0);
        assert!(r.all_applied(7));
        let mut rx = r.changed();
        rx.mark_unchanged();
        r.ack("b", 8, t0);
        assert!(rx.has_changed().unwrap_or(false));
    }
}
