//! The Raft server: hands peers' RPCs to the local openraft instance.

use crate::error::Error;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::errors::RaftError;
use openraft::raft::AppendEntriesRequest;
use tonic::{Request, Response, Status, Streaming};
use veto_proto::raft_service_server::RaftService;
use veto_proto::{RaftPayload, SnapshotPart};
use veto_store::{Raft, TypeConfig};

use super::{Snapshot, SnapshotMeta, Vote};

/// `veto.v1.RaftService` over a local [`Raft`].
pub struct Service {
    raft: Raft,
    max_snapshot_bytes: usize,
    cluster: veto_store::ClusterId,
}

impl Service {
    /// Serves RPCs for `raft`; snapshots larger than `max_snapshot_bytes` are
    /// refused, and so is every message from another cluster.
    pub fn new(raft: Raft, max_snapshot_bytes: usize, cluster: veto_store::ClusterId) -> Self {
        Self {
            raft,
            max_snapshot_bytes,
            cluster,
        }
    }

    /// Refuses a message from another cluster (a member of the cluster this
    /// one was restored or rebuilt from); adopts the id on a new member.
    fn check<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let peer = r
            .metadata()
            .get(super::network::CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        self.cluster
            .check(peer)
            .map_err(|e| Status::from(Error::FailedPrecondition(e.to_string())))
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.data)
        .map_err(|e| Status::from(Error::Protocol(format!("malformed raft payload: {e}"))))
}

fn encode<T: serde::Serialize>(t: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(t)
        .map_err(|e| Status::from(Error::Internal(format!("encode raft reply: {e}"))))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

/// Replies of a pipelined append stream.
pub type AppendReplies = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftService for Service {
    type AppendStreamStream = AppendReplies;

    async fn append_stream(
        &self,
        r: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        self.check(&r)?;
        // Requests go to openraft in arrival order. The first one that does
        // not decode (or a broken stream) ends the input; the replies already
        // owed are sent, then the stream ends with that error.
        let failed: Arc<Mutex<Option<Status>>> = Arc::default();
        let fail = failed.clone();
        let requests = tokio_stream::StreamExt::map_while(r.into_inner(), move |m| {
            let err = match m {
                Ok(p) => {
                    match serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&p.data) {
                        Ok(rpc) => return Some(rpc),
                        Err(e) => {
                            Status::from(Error::Protocol(format!("malformed raft payload: {e}")))
                        }
                    }
                }
                Err(s) => s,
            };
            *fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
            None
        });
        let replies = self
            .raft
            .stream_append(requests)
            .map(|r| {
                serde_json::to_vec(&r)
                    .map(|data| RaftPayload { data: data.into() })
                    .map_err(|e| Status::from(Error::Internal(format!("encode append reply: {e}"))))
            })
            .chain(futures::stream::iter(std::iter::from_fn(move || {
                failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .map(Err)
            })));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn append_entries(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&r)?;
        let rpc = decode(r.get_ref())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, r: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check(&r)?;
        let rpc = decode(r.get_ref())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        r: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&r)?;
        let rpc = decode(r.get_ref())?;
        let res = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        encode(&res)
    }

    async fn read_index(&self, r: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check(&r)?;
        let res: Result<crate::node::ReadIndex, String> = match self
            .raft
            .get_read_linearizer(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(l) => Ok(crate::node::ReadIndex {
                index: l.read_log_id().index(),
                leader_unix_ms: crate::node::unix_now_ms(),
            }),
            Err(e) => Err(e.to_string()),
        };
        encode(&res)
    }

    async fn install_snapshot(
        &self,
        r: Request<Streaming<SnapshotPart>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.check(&r)?;
        let mut s = r.into_inner();
        let first = s
            .message()
            .await?
            .ok_or_else(|| Status::from(Error::Protocol("empty snapshot stream".into())))?;
        let (vote, meta): (Vote, SnapshotMeta) =
            serde_json::from_slice(&first.header).map_err(|e| {
                Status::from(Error::Protocol(format!("malformed snapshot header: {e}")))
            })?;
        let mut buf = first.data.to_vec();
        while let Some(p) = s.message().await? {
            if buf.len() + p.data.len() > self.max_snapshot_bytes {
                return Err(Status::from(Error::Exhausted(
                    "snapshot exceeds the configured limit".into(),
                )));
            }
            buf.extend_from_slice(&p.data);
        }
        // Reject a snapshot that does not decode before handing it to openraft.
        veto_core::State::from_snapshot_bytes(&buf)
            .map_err(|e| Status::from(Error::Protocol(format!("snapshot does not decode: {e}"))))?;
        let snap = Snapshot {
            meta,
            snapshot: buf,
        };
        let res = self
            .raft
            .install_full_snapshot(vote, snap)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        encode(&res)
    }
}
