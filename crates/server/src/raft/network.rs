//! The Raft client: one lazily connected tonic channel per peer.

use std::future::Future;

use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use tonic::transport::Channel;
use veto_proto::raft_service_client::RaftServiceClient;
use veto_proto::{RaftPayload, SnapshotPart};
use veto_store::TypeConfig;

use super::{Snapshot, SnapshotData, Vote, SNAPSHOT_CHUNK_BYTES};

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

impl RaftNetworkV2<C> for Client {
    type SnapshotData = SnapshotData;

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
            let end = (off + SNAPSHOT_CHUNK_BYTES).min(data.len());
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
