//! A control-plane node: the openraft instance, its store handles, the KEK,
//! and the leader's duties (bootstrap key, expiry sweeps).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use veto_runtime::clock::{unix_now, unix_now_ms};

use ed25519_dalek::SigningKey;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use tonic::transport::Channel;
use tracing::{info, warn};
use veto_core::command::{Actor, Command, Response};
use veto_core::{Kek, Kid, Limits};
use veto_store::{LogStore, Raft, StateHandle, TypeConfig};

use crate::config::Options;
use crate::error::{Error, Result};

/// Where a request should be handled.
pub enum Route {
    /// Here: this node is the leader.
    Local,
    /// At the leader, through this channel.
    Forward(Channel),
}

/// Shared node state; cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    raft: Raft,
    state: StateHandle,
    log: LogStore,
    kek: Kek,
    /// Earlier KEKs: open keys sealed before a rotation until rewrapped.
    previous_keks: Vec<Kek>,
    cluster: veto_store::ClusterId,
    transport: veto_auth::Transport,
    opts: Options,
    signer: Mutex<Option<(Kid, SigningKey)>>,
    peers: Mutex<HashMap<String, Channel>>,
    /// The latest usage figures (`rotation::run` recomputes them every few
    /// seconds, in pages), for readers that must not walk every record.
    usage_totals: Mutex<Option<veto_core::usage::UsageTotals>>,
}

/// A commit index the leader confirmed (a quorum still follows it) in a
/// round that started after the request, with the leader's wall clock
/// right after the confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadIndex {
    /// The confirmed commit index.
    pub index: u64,
    /// The leader's clock when it was confirmed, unix ms (0 if unknown).
    pub leader_unix_ms: i64,
}

impl ReadIndex {
    /// Decodes a forwarded answer: this version's, or an index alone from a
    /// node of an earlier version (the leader's clock then unknown).
    pub fn decode(data: &[u8]) -> std::result::Result<std::result::Result<Self, String>, String> {
        if let Ok(r) = serde_json::from_slice::<std::result::Result<Self, String>>(data) {
            return Ok(r);
        }
        serde_json::from_slice::<std::result::Result<u64, String>>(data)
            .map(|r| {
                r.map(|index| Self {
                    index,
                    leader_unix_ms: 0,
                })
            })
            .map_err(|e| e.to_string())
    }
}

impl Node {
    /// Wraps a started Raft instance.
    pub fn new(
        raft: Raft,
        state: StateHandle,
        log: LogStore,
        (kek, previous_keks): (Kek, Vec<Kek>),
        cluster: veto_store::ClusterId,
        transport: veto_auth::Transport,
        opts: Options,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                id: opts.node_id,
                raft,
                state,
                log,
                kek,
                previous_keks,
                cluster,
                transport,
                opts,
                signer: Mutex::new(None),
                usage_totals: Mutex::new(None),
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The applied state.
    pub fn state(&self) -> &StateHandle {
        &self.inner.state
    }

    /// The log store (for purge/snapshot status).
    pub fn log(&self) -> &LogStore {
        &self.inner.log
    }

    /// Input limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.opts.limits
    }

    /// Configuration.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// A copy of the latest Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// The address of a member, from the current membership.
    pub fn member_addr(&self, id: u64) -> Option<String> {
        let m = self.metrics();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The transport this node serves and dials with.
    pub fn transport(&self) -> &veto_auth::Transport {
        &self.inner.transport
    }

    /// A cached channel to a peer's gRPC endpoint.
    pub fn channel_to(&self, addr: &str) -> Result<Channel> {
        let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let c = self
            .inner
            .transport
            .channel_lazy(addr, veto_auth::Role::Server, |ep| {
                ep.connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(30))
            })
            .map_err(|e| Error::Fatal(format!("peer endpoint: {e}")))?;
        peers.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Decides where a write (or linearizable read) runs. Waits up to 3 s
    /// for a leader during an election. A request that was already
    /// forwarded is never forwarded again.
    pub async fn route(&self, forwarded: bool) -> Result<Route> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let m = self.metrics();
            if m.membership_config
                .membership()
                .voter_ids()
                .next()
                .is_none()
            {
                return Err(Error::Uninitialised);
            }
            match m.current_leader {
                Some(l) if l == self.inner.id && m.state == ServerState::Leader => {
                    return Ok(Route::Local)
                }
                Some(l) if l != self.inner.id => {
                    if forwarded {
                        return Err(Error::NotLeader(Some(l)));
                    }
                    let addr = self.member_addr(l).ok_or(Error::NotLeader(Some(l)))?;
                    return Ok(Route::Forward(self.channel_to(&addr)?));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader);
            }
            let mut rx = self.inner.raft.metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
    }

    /// Replicates `cmd` and returns the state machine's response.
    pub async fn propose(&self, cmd: Command) -> Result<Response> {
        match self.inner.raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(e) => Err(map_write_err(e)),
        }
    }

    /// Waits until this node is leader-confirmed and has applied everything
    /// committed before the call (ReadIndex).
    pub async fn linearize(&self) -> Result<()> {
        match self
            .inner
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(Error::NotLeader(f.leader_id)),
            Err(RaftError::APIError(_)) => Err(Error::NoLeader),
            Err(RaftError::Fatal(f)) => Err(Error::Fatal(f.to_string())),
        }
    }

    /// A commit index confirmed by the leader with a quorum at a moment
    /// after this call (ReadIndex); asks the leader over RaftService when
    /// this node follows.
    pub async fn leader_read_index(&self) -> Result<ReadIndex> {
        let m = self.metrics();
        match m.current_leader {
            Some(l) if l == self.inner.id => {
                let lin = self
                    .inner
                    .raft
                    .get_read_linearizer(openraft::ReadPolicy::ReadIndex)
                    .await
                    .map_err(|_| Error::NotLeader(None))?;
                Ok(ReadIndex {
                    index: lin.read_log_id().index(),
                    leader_unix_ms: unix_now_ms(),
                })
            }
            Some(l) => {
                let addr = self.member_addr(l).ok_or(Error::NotLeader(Some(l)))?;
                let mut c = veto_proto::raft_service_client::RaftServiceClient::new(
                    self.channel_to(&addr)?,
                );
                let mut req = tonic::Request::new(veto_proto::RaftPayload::default());
                crate::raft::network::tag(&self.inner.cluster, &mut req);
                // A leader that cannot confirm itself within an election
                // timeout is being replaced (stalled, cut off): give up, so
                // the next round (edges' probes wait on it) asks the new one.
                let limit = self
                    .inner
                    .opts
                    .raft
                    .election_timeout_max_ms
                    .clamp(200, 2_000);
                req.set_timeout(Duration::from_millis(limit));
                let p = c
                    .read_index(req)
                    .await
                    .map_err(|_| Error::NoLeader)?
                    .into_inner();
                ReadIndex::decode(&p.data)
                    .map_err(Error::Fatal)?
                    .map_err(|_| Error::NotLeader(Some(l)))
            }
            None => Err(Error::NoLeader),
        }
    }

    /// The active signing key, opened with the KEK (cached per kid).
    pub fn signer(&self) -> Result<(Kid, SigningKey)> {
        let (kid, sealed) = self
            .inner
            .state
            .read(|s| s.active_key().map(|k| (k.kid, k.sealed.clone())))
            .ok_or(Error::NoActiveKey)?;
        let mut cache = self.inner.signer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, sk)) = cache.as_ref() {
            if *k == kid {
                return Ok((kid, sk.clone()));
            }
        }
        let secret = self.open_sealed(kid, &sealed)?;
        let sk = SigningKey::from_bytes(&secret);
        *cache = Some((kid, sk.clone()));
        Ok((kid, sk))
    }

    /// The latest usage figures across the live tokens (None until first
    /// computed, a few seconds after start).
    pub fn usage_totals(&self) -> Option<veto_core::usage::UsageTotals> {
        *self
            .inner
            .usage_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Records freshly computed usage figures.
    pub fn set_usage_totals(&self, t: veto_core::usage::UsageTotals) {
        *self
            .inner
            .usage_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(t);
    }

    /// The private key of `kid` (any stage that still holds it), opened
    /// with the KEK: to sign a token's claims again.
    pub fn signer_for(&self, kid: Kid) -> Result<SigningKey> {
        let sealed = self
            .inner
            .state
            .read(|s| s.key(&kid).map(|k| k.sealed.clone()))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "signing key {kid} no longer holds its private key"
                ))
            })?;
        Ok(SigningKey::from_bytes(&self.open_sealed(kid, &sealed)?))
    }

    /// Opens a sealed private key with the KEK, or an earlier one.
    fn open_sealed(&self, kid: Kid, sealed: &[u8]) -> Result<[u8; 32]> {
        match self.inner.kek.open(kid, sealed) {
            Ok(k) => Ok(k),
            Err(e) => self
                .inner
                .previous_keks
                .iter()
                .find_map(|k| k.open(kid, sealed).ok())
                .ok_or_else(|| e.into()),
        }
    }

    /// The cluster id handle (shared with the Raft network and service).
    pub fn cluster_id(&self) -> &veto_store::ClusterId {
        &self.inner.cluster
    }

    /// Fingerprint of the current KEK (safe to show).
    pub fn kek_fingerprint(&self) -> &str {
        self.inner.kek.fingerprint()
    }

    /// KEK rotation: a `RewrapKey` for every key whose private half is not
    /// sealed with the current KEK yet, re-sealed with it. Fails, naming the
    /// key, if a key opens with none of this node's KEKs.
    pub fn rewrap_commands(&self, actor: &Actor) -> Result<Vec<(Kid, Command)>> {
        let keys: Vec<(Kid, Vec<u8>)> = self.inner.state.read(|s| {
            s.keys()
                .filter(|k| !k.sealed.is_empty())
                .map(|k| (k.kid, k.sealed.clone()))
                .collect()
        });
        let mut out = Vec::new();
        for (kid, sealed) in keys {
            if self.inner.kek.open(kid, &sealed).is_ok() {
                continue;
            }
            let secret = self
                .inner
                .previous_keks
                .iter()
                .find_map(|k| k.open(kid, &sealed).ok())
                .ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "key {kid} opens with none of this node's KEKs; start the leader with the KEK that sealed it as --previous-kek-file"
                    ))
                })?;
            out.push((
                kid,
                Command::RewrapKey {
                    kid,
                    sealed: self.inner.kek.seal(kid, &secret),
                    kek: self.inner.kek.fingerprint().to_string(),
                    actor: actor.clone(),
                },
            ));
        }
        Ok(out)
    }

    /// Generates a key pair and returns the publish command (on the leader,
    /// before proposing: randomness stays out of apply).
    pub fn new_key_command(&self, actor: Actor) -> (Kid, Command) {
        let kid = Kid::random();
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        let sealed = self.inner.kek.seal(kid, &sk.to_bytes());
        let cmd = Command::PublishKey {
            kid,
            public: sk.verifying_key().to_bytes(),
            sealed,
            at: unix_now(),
            actor,
        };
        (kid, cmd)
    }

    /// The leader's background duties: make sure a signing key exists on a
    /// new cluster, and propose expiry sweeps. Runs until `shutdown` fires.
    pub async fn leader_duties(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let sweep_every = Duration::from_secs(self.inner.opts.sweep_interval_seconds);
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if !self.inner.raft.is_leader() {
                continue;
            }
            // A cluster that never had an active key gets one. (A cluster
            // whose operator revoked the active key does not: that is a
            // deliberate stop of issuance.)
            let never_active = self.inner.state.read(|s| {
                s.keys()
                    .all(|k| k.state == veto_core::state::KeyState::Published)
            });
            if never_active {
                if let Err(e) = self.bootstrap_key().await {
                    warn!(error = %e, "could not create the first signing key");
                }
            }
            if last_sweep.elapsed() >= sweep_every {
                last_sweep = Instant::now();
                let cutoff = unix_now() - self.inner.opts.sweep_grace_seconds as i64;
                if self.inner.state.read(|s| s.sweep_due(cutoff)) {
                    match self.propose(Command::Sweep { cutoff }).await {
                        Ok(Response::Swept { dropped, revision }) => {
                            info!(dropped, revision, cutoff, "expiry sweep")
                        }
                        Ok(other) => warn!(?other, "unexpected sweep response"),
                        Err(e) => warn!(error = %e, "expiry sweep failed"),
                    }
                }
            }
        }
    }

    async fn bootstrap_key(&self) -> Result<()> {
        let actor = Actor("veto-server:bootstrap".into());
        // A previous leader may have published the first key and lost
        // leadership before activating it: finish that instead of
        // publishing another.
        let published = self
            .inner
            .state
            .read(|s| s.keys().max_by_key(|k| k.published_revision).map(|k| k.kid));
        let kid = match published {
            Some(kid) => kid,
            None => {
                let (kid, cmd) = self.new_key_command(actor.clone());
                self.propose(cmd).await?;
                kid
            }
        };
        self.propose(Command::ActivateKey {
            kid,
            at: unix_now(),
            actor,
        })
        .await?;
        info!(%kid, "created and activated the first signing key");
        Ok(())
    }
}

fn map_write_err(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader(f.leader_id),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => Error::Discarded,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Error::FailedPrecondition(c.to_string())
        }
        RaftError::APIError(other) => Error::FailedPrecondition(other.to_string()),
        RaftError::Fatal(f) => Error::Fatal(f.to_string()),
    }
}

/// Maps a membership-change error.
pub fn membership_err(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Error {
    map_write_err(e)
}
