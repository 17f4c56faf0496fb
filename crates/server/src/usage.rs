//! Token usage from edges to the replicated state.
//!
//! Each server merges the usage reports of the edges streaming from it into
//! one pending set, keyed by (jti, edge), and every `usage.flush_interval_ms`
//! sends it to the leader as `AdminService.RecordUsage`, which proposes one
//! `RecordUsage` entry per 5,000 deltas. The Raft cost is therefore one entry
//! per server per interval (more only past 5,000 distinct tokens), whatever
//! the verify rate.
//!
//! What can be lost: a report an edge sent but the server had not yet
//! flushed when the server died (at most one flush interval of that
//! server's edges), and what an edge recorded since its last report when
//! the edge died (at most one report interval). A delta is never counted
//! twice: a flush that fails is merged back and retried, and one that the
//! leader applied is never resent.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{debug, warn};
use veto_core::usage::{merge_pending, Outcomes, UsageDelta};
use veto_core::Jti;
use veto_proto as pb;

use crate::error::Error;
use crate::node::{unix_now, Node};

/// Deltas per `RecordUsage` entry.
pub const DELTAS_PER_COMMAND: usize = 5_000;

/// Distinct (jti, edge) pairs a server holds between flushes; reports past
/// it are dropped (and counted).
pub const MAX_PENDING: usize = 2_000_000;

/// Longest scope name kept from a report.
const MAX_SCOPE_BYTES: usize = 128;

/// Usage waiting for the next flush.
#[derive(Default)]
pub struct Pending {
    deltas: Mutex<BTreeMap<(Jti, String), UsageDelta>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns wire entries into deltas attributed to `edge` (an edge's report:
/// its authenticated id), or to each entry's own `edge` (a peer server's
/// RecordUsage); malformed entries (a jti that is not 16 bytes, a bad edge
/// id) are skipped.
pub fn deltas_of(edge: Option<&str>, tokens: &[pb::TokenUsage]) -> Vec<UsageDelta> {
    tokens
        .iter()
        .filter_map(|t| {
            let jti: [u8; 16] = t.jti.as_ref().try_into().ok()?;
            let edge = match edge {
                Some(e) => e.to_owned(),
                None => {
                    veto_core::validate::edge_id("edge", &t.edge).ok()?;
                    t.edge.clone()
                }
            };
            Some(UsageDelta {
                jti: Jti(jti),
                edge,
                outcomes: Outcomes {
                    valid: t.valid,
                    revoked: t.revoked,
                    refused: t.refused,
                },
                first: t.first_unix,
                last: t.last_unix,
                scopes: t
                    .scopes
                    .iter()
                    .filter(|s| !s.is_empty() && s.len() <= MAX_SCOPE_BYTES)
                    .take(veto_core::limits::Limits::default().max_scopes)
                    .cloned()
                    .collect(),
            })
        })
        .collect()
}

/// The wire form of deltas (for RecordUsage).
pub fn wire_of(deltas: &[UsageDelta]) -> Vec<pb::TokenUsage> {
    deltas
        .iter()
        .map(|d| veto_proto::usage::token_usage(d, &d.edge))
        .collect()
}

impl Pending {
    /// Merges one edge's report.
    pub fn add(&self, deltas: Vec<UsageDelta>) {
        let mut p = lock(&self.deltas);
        for d in deltas {
            if p.len() >= MAX_PENDING && !p.contains_key(&(d.jti, d.edge.clone())) {
                veto_telemetry::metrics::counter!(veto_telemetry::USAGE_DROPPED_TOTAL)
                    .increment(d.outcomes.total());
                continue;
            }
            merge_pending(&mut p, d);
        }
    }

    /// Takes everything pending.
    pub fn take(&self) -> Vec<UsageDelta> {
        std::mem::take(&mut *lock(&self.deltas))
            .into_values()
            .collect()
    }

    /// Puts back deltas a flush could not deliver.
    pub fn restore(&self, deltas: Vec<UsageDelta>) {
        self.add(deltas);
    }

    /// Pairs pending.
    pub fn len(&self) -> usize {
        lock(&self.deltas).len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A flush that failed after its first `done` deltas were committed.
#[derive(Debug)]
pub struct Failed {
    /// Deltas committed before the failure (whole entries, in order).
    pub done: usize,
    /// Why the next entry failed.
    pub error: Error,
}

/// Proposes `deltas` (on the leader) in entries of [`DELTAS_PER_COMMAND`].
pub async fn record(node: &Node, deltas: &[UsageDelta]) -> Result<u64, Failed> {
    let mut revision = 0;
    let mut done = 0;
    for chunk in deltas.chunks(DELTAS_PER_COMMAND) {
        let cmd = veto_core::Command::RecordUsage {
            deltas: chunk.to_vec(),
            at: unix_now(),
        };
        let fail = |error| Failed { done, error };
        match node.propose(cmd).await.map_err(fail)? {
            veto_core::Response::Applied { revision: r } => revision = r,
            veto_core::Response::Rejected { rejection, .. } => {
                return Err(fail(rejection.into()));
            }
            other => return Err(fail(Error::Fatal(format!("unexpected response {other:?}")))),
        }
        veto_telemetry::metrics::counter!(veto_telemetry::USAGE_COMMANDS_TOTAL).increment(1);
        veto_telemetry::metrics::counter!(veto_telemetry::USAGE_DELTAS_TOTAL)
            .increment(chunk.len() as u64);
        done += chunk.len();
    }
    Ok(revision)
}

/// Flushes this server's pending usage every `every` until `shutdown`:
/// locally on the leader, else through the leader's `RecordUsage`.
pub async fn run(
    node: Node,
    pending: std::sync::Arc<Pending>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let deltas = pending.take();
        if deltas.is_empty() {
            continue;
        }
        let n = deltas.len();
        match flush(&node, &deltas).await {
            Ok(revision) => debug!(deltas = n, revision, "usage flushed"),
            Err(Failed { done, error }) => {
                // Entries already committed are not sent again: only the
                // rest waits for the next flush.
                let mut deltas = deltas;
                let rest = deltas.split_off(done.min(n));
                warn!(deltas = n, committed = done, error = %error, "usage flush failed; the rest kept for the next one");
                pending.restore(rest);
            }
        }
    }
}

async fn flush(node: &Node, deltas: &[UsageDelta]) -> Result<u64, Failed> {
    let route = node
        .route(false)
        .await
        .map_err(|error| Failed { done: 0, error })?;
    match route {
        crate::node::Route::Local => record(node, deltas).await,
        crate::node::Route::Forward(ch) => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(ch);
            let mut revision = 0;
            let mut done = 0;
            for chunk in deltas.chunks(DELTAS_PER_COMMAND) {
                let mut req = tonic::Request::new(pb::RecordUsageRequest {
                    usage: wire_of(chunk),
                });
                req.set_timeout(Duration::from_secs(10));
                revision = c
                    .record_usage(req)
                    .await
                    .map_err(|e| Failed {
                        done,
                        error: Error::Forwarded(e),
                    })?
                    .into_inner()
                    .revision;
                done += chunk.len();
            }
            Ok(revision)
        }
    }
}
