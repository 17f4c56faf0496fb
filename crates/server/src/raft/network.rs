//! The Raft client: one lazily connected tonic channel per peer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use tonic::transport::Channel;
use veto_proto::raft_service_client::RaftServiceClient;
use veto_proto::{RaftPayload, SnapshotPart};
use veto_store::TypeConfig;

use super::{Snapshot, SnapshotData, Vote};
use veto_core::limits::STREAM_CHUNK_BYTES;

type C = TypeConfig;

/// Creates a [`Client`] per peer.
#[derive(Clone)]
pub struct Factory {
    /// Largest message to send or accept.
    pub max_message_bytes: usize,
    /// This node's cluster id, sent with every message.
    pub cluster: veto_store::ClusterId,
    /// TLS (this node's server certificate) or plaintext.
    pub transport: veto_auth::Transport,
    /// Replicate over the pipelined `AppendStream` (`raft.pipeline`, the
    /// default) or one `AppendEntries` at a time.
    pub pipeline: bool,
}

/// Metadata key carrying the sender's cluster id on Raft RPCs.
pub const CLUSTER_HEADER: &str = "x-veto-cluster";

/// Marks `req` with the cluster id, if this node has one.
pub fn tag<T>(cluster: &veto_store::ClusterId, req: &mut tonic::Request<T>) {
    if let Some(id) = cluster.get() {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(id.as_str()) {
            req.metadata_mut().insert(CLUSTER_HEADER, v);
        }
    }
}

/// A connection to one peer.
pub struct Client {
    cluster: veto_store::ClusterId,
    target: u64,
    client: Option<RaftServiceClient<Channel>>,
    addr: String,
    pipeline: bool,
}

impl RaftNetworkFactory<C> for Factory {
    type Network = Client;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Client {
        let client = self
            .transport
            .channel_lazy(&node.addr, veto_auth::Role::Server, |ep| {
                ep.connect_timeout(std::time::Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            })
            .ok()
            .map(|ch| {
                RaftServiceClient::new(ch)
                    .max_decoding_message_size(self.max_message_bytes)
                    .max_encoding_message_size(self.max_message_bytes)
            });
        Client {
            cluster: self.cluster.clone(),
            target,
            client,
            addr: node.addr.clone(),
            pipeline: self.pipeline,
        }
    }
}

fn status_err(s: tonic::Status) -> RPCError<C> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

fn enc<T: serde::Serialize>(t: &T) -> Result<RaftPayload, RPCError<C>> {
    let data = serde_json::to_vec(t).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    Ok(RaftPayload { data: data.into() })
}

fn dec<T: serde::de::DeserializeOwned>(p: RaftPayload) -> Result<T, RPCError<C>> {
    let r: Result<T, RaftError<C>> =
        serde_json::from_slice(&p.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    // A remote fatal error means the peer cannot take part: treat it as down.
    r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
}

impl Client {
    fn client(&mut self) -> Result<&mut RaftServiceClient<Channel>, RPCError<C>> {
        let (target, addr) = (self.target, self.addr.clone());
        self.client.as_mut().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::from_string(format!(
                "node {target}: bad address {addr:?}"
            )))
        })
    }
}

/// The requests on an append stream not yet answered: their send times,
/// and a wake-up for a reader waiting on an idle stream.
#[derive(Default)]
struct Pending {
    sent: Mutex<VecDeque<Instant>>,
    more: tokio::sync::Notify,
}

impl Pending {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self) {
        self.queue().push_back(Instant::now());
        self.more.notify_one();
    }
}

/// The next reply on an append stream, or why there is none. While a
/// request is unanswered, its reply must come within `limit` of its send.
async fn next_reply(
    inbound: &mut tonic::Streaming<RaftPayload>,
    pending: &Pending,
    limit: Duration,
) -> Option<Result<StreamAppendResult<C>, RPCError<C>>> {
    let m = loop {
        let oldest = pending.queue().front().copied();
        match oldest {
            // Idle: nothing is owed, so no deadline; wake on the next send
            // (a permit is stored if it came before this wait).
            None => tokio::select! {
                m = inbound.message() => break m,
                _ = pending.more.notified() => {}
            },
            Some(t) => {
                let deadline = t + limit;
                match tokio::time::timeout_at(deadline.into(), inbound.message()).await {
                    Ok(m) => break m,
                    // A late reply is a timeout (a network error), as it was
                    // for a unary call: it must not cost the follower the
                    // 200 ms backoff openraft gives an unreachable peer.
                    Err(_) => {
                        return Some(Err(RPCError::Network(NetworkError::from_string(format!(
                            "no append reply within {limit:?}"
                        )))))
                    }
                }
            }
        }
    };
    let p = match m {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(s) => return Some(Err(status_err(s))),
    };
    pending.queue().pop_front();
    let r: Result<StreamAppendResult<C>, Fatal<C>> = match serde_json::from_slice(&p.data) {
        Ok(r) => r,
        Err(e) => return Some(Err(RPCError::Network(NetworkError::new(&e)))),
    };
    // A fatal error on the peer means it cannot take part: treat it as down.
    Some(r.map_err(|e| RPCError::Unreachable(Unreachable::new(&e))))
}

impl RaftNetworkV2<C> for Client {
    type SnapshotData = SnapshotData;

    /// Pipelined replication over one `AppendStream` call: requests are sent
    /// as openraft produces them, replies come back in order. Compared with
    /// one `AppendEntries` at a time, the next entries and, above all, a
    /// newly advanced commit index leave at once instead of after the reply
    /// to the request in flight, so followers (and the edges they feed)
    /// apply a committed change about one replication round earlier.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 'static,
    {
        if !self.pipeline {
            return openraft::network::stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let limit = option.soft_ttl();
            let mut client = self.client()?.clone();
            let pending = Arc::new(Pending::default());
            let on_send = pending.clone();
            let requests = tokio_stream::StreamExt::map_while(input, move |rpc| {
                match serde_json::to_vec(&rpc) {
                    Ok(data) => {
                        on_send.sent();
                        Some(RaftPayload { data: data.into() })
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode an append request; ending the stream");
                        None
                    }
                }
            });
            let mut req = tonic::Request::new(requests);
            tag(&self.cluster, &mut req);
            let inbound = match tokio::time::timeout(limit, client.append_stream(req)).await {
                Ok(r) => r.map_err(status_err)?.into_inner(),
                Err(_) => {
                    return Err(RPCError::Network(NetworkError::from_string(format!(
                        "append stream not opened within {limit:?}"
                    ))))
                }
            };
            let replies = futures::stream::unfold(Some(inbound), move |st| {
                let pending = pending.clone();
                async move {
                    let mut inbound = st?;
                    let r = next_reply(&mut inbound, &pending, limit).await?;
                    // The stream ends after its first error.
                    let next = match &r {
                        Ok(Ok(_)) => Some(inbound),
                        _ => None,
                    };
                    Some((r, next))
                }
            });
            let replies: BoxStream<'s, _> = Box::pin(replies);
            Ok(replies)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let mut req = tonic::Request::new(enc(&rpc)?);
        tag(&self.cluster, &mut req);
        req.set_timeout(option.soft_ttl());
        dec(self
            .client()?
            .append_entries(req)
            .await
            .map_err(status_err)?
            .into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let mut req = tonic::Request::new(enc(&rpc)?);
        tag(&self.cluster, &mut req);
        req.set_timeout(option.soft_ttl());
        dec(self
            .client()?
            .vote(req)
            .await
            .map_err(status_err)?
            .into_inner())
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let mut req = tonic::Request::new(enc(&rpc)?);
        tag(&self.cluster, &mut req);
        req.set_timeout(option.soft_ttl());
        dec(self
            .client()?
            .transfer_leader(req)
            .await
            .map_err(status_err)?
            .into_inner())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let header = serde_json::to_vec(&(&vote, &snapshot.meta))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = bytes::Bytes::from(snapshot.snapshot);
        let mut parts = vec![SnapshotPart {
            header: header.into(),
            data: bytes::Bytes::new(),
        }];
        let mut off = 0;
        while off < data.len() {
            let end = (off + STREAM_CHUNK_BYTES).min(data.len());
            parts.push(SnapshotPart {
                header: bytes::Bytes::new(),
                data: data.slice(off..end),
            });
            off = end;
        }
        let mut req = tonic::Request::new(futures::stream::iter(parts));
        tag(&self.cluster, &mut req);
        req.set_timeout(option.hard_ttl());
        let c = self.client()?;
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = c.install_snapshot(req) => {
                let p = r.map_err(status_err)?.into_inner();
                Ok(dec(p)?)
            }
        }
    }
}
