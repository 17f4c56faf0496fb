//! The id of the cluster a data directory belongs to.
//!
//! Set when the cluster is initialised (Init) or seeded (restore, rebuild
//! after a quorum loss); a node that joins adopts it from the first peer
//! that contacts it. Every Raft message carries it and a node refuses one
//! from another cluster, so members of an old cluster that come back after
//! a rebuild cannot vote in, or overwrite, the new one.

use std::sync::{Arc, RwLock};

use rocksdb::DB;

use crate::{io_err, CF_META};

const CLUSTER_ID_KEY: &[u8] = b"cluster_id";

/// Shared handle on the cluster id (cheap to clone).
#[derive(Clone)]
pub struct ClusterId {
    db: Arc<DB>,
    cached: Arc<RwLock<Option<String>>>,
}

/// A message from another cluster.
#[derive(Debug, thiserror::Error)]
#[error("message from cluster {peer}, but this node belongs to cluster {ours}")]
pub struct Mismatch {
    /// The sender's id.
    pub peer: String,
    /// This node's id.
    pub ours: String,
}

impl ClusterId {
    pub(crate) fn load(db: Arc<DB>) -> std::io::Result<Self> {
        let cf = db
            .cf_handle(CF_META)
            .ok_or_else(|| io_err("cf meta missing"))?;
        let v = db
            .get_cf(&cf, CLUSTER_ID_KEY)
            .map_err(io_err)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(Self {
            db,
            cached: Arc::new(RwLock::new(v)),
        })
    }

    /// The id, if this node has one yet.
    pub fn get(&self) -> Option<String> {
        self.cached.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Records `id` (synced) unless an id is already set; returns the id in force.
    pub fn set_if_unset(&self, id: &str) -> std::io::Result<String> {
        let mut g = self.cached.write().unwrap_or_else(|p| p.into_inner());
        if let Some(cur) = g.as_ref() {
            return Ok(cur.clone());
        }
        let cf = self
            .db
            .cf_handle(CF_META)
            .ok_or_else(|| io_err("cf meta missing"))?;
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(&cf, CLUSTER_ID_KEY, id.as_bytes(), &wo)
            .map_err(io_err)?;
        *g = Some(id.to_string());
        Ok(id.to_string())
    }

    /// Checks the id a peer sent: adopted when this node has none yet
    /// (a new member), refused when it differs.
    pub fn check(&self, peer: Option<&str>) -> Result<(), Mismatch> {
        let Some(peer) = peer.filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        match self.get() {
            Some(ours) if ours != peer => Err(Mismatch {
                peer: peer.to_string(),
                ours,
            }),
            Some(_) => Ok(()),
            None => {
                // Adopting can only fail on a disk error; the message is
                // still from a cluster this node had not joined elsewhere.
                let _ = self.set_if_unset(peer);
                Ok(())
            }
        }
    }
}
