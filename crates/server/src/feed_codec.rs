//! FeedService's server side with a codec that writes pre-encoded messages,
//! so a change batch is encoded once and the same bytes go to every edge
//! reading the same range (see `feed::Hub::encoded_batch`). Requests
//! (`EdgeMessage`) decode with prost as usual; the wire format is exactly
//! `veto.v1.FeedService`'s, so generated clients work unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Status, Streaming};
use veto_proto as pb;

use crate::feed;

/// An encoded `veto.v1.FeedMessage`.
#[derive(Debug, Clone)]
pub struct Encoded(pub Bytes);

impl Encoded {
    /// Encodes one message.
    pub fn of(m: pb::feed_message::Msg) -> Self {
        Encoded(Bytes::from(
            pb::FeedMessage { msg: Some(m) }.encode_to_vec(),
        ))
    }
}

/// Writes [`Encoded`] as is; decodes `EdgeMessage`.
#[derive(Debug, Clone, Default)]
pub struct SharedCodec;

/// The encoder half.
#[derive(Debug, Clone, Default)]
pub struct SharedEncoder;

/// The decoder half.
#[derive(Debug, Clone, Default)]
pub struct EdgeDecoder;

impl Encoder for SharedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.0);
        Ok(())
    }
}

impl Decoder for EdgeDecoder {
    type Item = pb::EdgeMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::EdgeMessage>, Status> {
        pb::EdgeMessage::decode(src).map(Some).map_err(|e| {
            Status::from(crate::error::Error::Protocol(format!(
                "malformed EdgeMessage: {e}"
            )))
        })
    }
}

impl Codec for SharedCodec {
    type Encode = Encoded;
    type Decode = pb::EdgeMessage;
    type Encoder = SharedEncoder;
    type Decoder = EdgeDecoder;

    fn encoder(&mut self) -> SharedEncoder {
        SharedEncoder
    }

    fn decoder(&mut self) -> EdgeDecoder {
        EdgeDecoder
    }
}

/// The stream of encoded feed messages.
pub type EncodedStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Encoded, Status>> + Send>>;

/// `veto.v1.FeedService` as a tower service.
#[derive(Clone)]
pub struct FeedServer {
    svc: Arc<feed::Service>,
    max_decoding_message_size: usize,
}

impl FeedServer {
    /// Serves `svc`; edge messages above `max_decoding_message_size` are refused.
    pub fn new(svc: feed::Service, max_decoding_message_size: usize) -> Self {
        Self {
            svc: Arc::new(svc),
            max_decoding_message_size,
        }
    }
}

struct SubscribeSvc(Arc<feed::Service>);

impl tonic::server::StreamingService<pb::EdgeMessage> for SubscribeSvc {
    type Response = Encoded;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<tonic::Response<EncodedStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<pb::EdgeMessage>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move { svc.subscribe(request).await })
    }
}

impl<B> Service<http::Request<B>> for FeedServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.svc.clone();
        let max = self.max_decoding_message_size;
        if req.uri().path() == "/veto.v1.FeedService/Subscribe" {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(SharedCodec)
                    .apply_max_message_size_config(Some(max), None);
                Ok(grpc.streaming(SubscribeSvc(svc), req).await)
            })
        } else {
            Box::pin(async move {
                Ok(Status::from(crate::error::Error::Unimplemented(
                    "unknown FeedService method".into(),
                ))
                .into_http())
            })
        }
    }
}

impl tonic::server::NamedService for FeedServer {
    const NAME: &'static str = "veto.v1.FeedService";
}
