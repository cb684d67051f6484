//! OTLP/gRPC (traces, metrics, logs) and `tidewater.events.v1.EventsService` on one port.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tidewater_proto::events::v1::events_service_server::{EventsService, EventsServiceServer};
use tidewater_proto::events::v1::{PublishRequest, PublishResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::error::IngestError;
use crate::ingest::{Ingest, Transport};

/// One OTLP export service. Its request is taken as the bytes that came (tonic has already
/// framed, decompressed and size-checked them), because the collector splits and stores
/// OTLP without decoding it ([`crate::wire`]); only the response is a prost message.
trait Export: Send + Sync + 'static {
    const SERVICE: &'static str;
    type Response: prost::Message + Default + Send + 'static;
    fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
    ) -> impl Future<Output = Result<Self::Response, IngestError>> + Send;
}

struct Traces;
struct Metrics;
struct Logs;

impl Export for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    type Response = ExportTraceServiceResponse;
    async fn export(ingest: Arc<Ingest>, request: Bytes) -> Result<Self::Response, IngestError> {
        ingest.traces(&request, Transport::Grpc).await
    }
}

impl Export for Metrics {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    type Response = ExportMetricsServiceResponse;
    async fn export(ingest: Arc<Ingest>, request: Bytes) -> Result<Self::Response, IngestError> {
        ingest.metrics(&request, Transport::Grpc).await
    }
}

impl Export for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    type Response = ExportLogsServiceResponse;
    async fn export(ingest: Arc<Ingest>, request: Bytes) -> Result<Self::Response, IngestError> {
        ingest.logs(&request, Transport::Grpc).await
    }
}

/// The tower service tonic's router calls for one [`Export`], in the shape of a
/// tonic-generated server (which would decode the request into prost structs).
struct ExportServer<E> {
    ingest: Arc<Ingest>,
    max_request_size: usize,
    export: PhantomData<fn() -> E>,
}

impl<E> Clone for ExportServer<E> {
    fn clone(&self) -> Self {
        ExportServer {
            ingest: self.ingest.clone(),
            max_request_size: self.max_request_size,
            export: PhantomData,
        }
    }
}

impl<E: Export> NamedService for ExportServer<E> {
    const NAME: &'static str = E::SERVICE;
}

impl<E, B> tower::Service<http::Request<B>> for ExportServer<E>
where
    E: Export,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let is_export = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(E::SERVICE))
            == Some("/Export");
        if !is_export {
            let path = request.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let ingest = self.ingest.clone();
        let max_request_size = self.max_request_size;
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut grpc = tonic::server::Grpc::new(ExportCodec::<E::Response>(PhantomData))
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max_request_size), None);
            let export = tower::service_fn(move |request: Request<Bytes>| {
                let ingest = ingest.clone();
                async move {
                    E::export(ingest, request.into_inner())
                        .await
                        .map(Response::new)
                        .map_err(|e| e.to_grpc())
                }
            });
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// Takes a request's bytes as they are and encodes the prost response `R`.
struct ExportCodec<R>(PhantomData<fn() -> R>);

impl<R: prost::Message + Send + 'static> Codec for ExportCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        ExportCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self {
        ExportCodec(PhantomData)
    }
}

impl<R: prost::Message> Encoder for ExportCodec<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl<R> Decoder for ExportCodec<R> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // The message is whole in tonic's buffer: this takes it without copying.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[derive(Clone)]
struct Grpc(Arc<Ingest>);

#[tonic::async_trait]
impl EventsService for Grpc {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let events = request.into_inner().events.into_iter().map(Ok).collect();
        let response = self
            .0
            .events(events, Transport::Grpc)
            .await
            .map_err(|e| e.to_grpc())?;
        if response.accepted == 0 && !response.rejected.is_empty() {
            // Nothing was taken: an error status, with every problem as a field violation so
            // the client still learns which event failed and why.
            use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
            let violations: Vec<FieldViolation> = response
                .rejected
                .iter()
                .map(|r| {
                    FieldViolation::new(
                        format!("events[{}].{}", r.index, r.field),
                        r.reason.clone(),
                    )
                })
                .collect();
            let first = &response.rejected[0];
            return Err(Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!(
                    "all {} events rejected; first: events[{}].{}: {}",
                    response.rejected.len(),
                    first.index,
                    first.field,
                    first.reason
                ),
                ErrorDetails::with_bad_request(violations),
            ));
        }
        Ok(Response::new(response))
    }
}

/// Binds now, so a taken port fails start-up with a clear error, and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    ingest: Arc<Ingest>,
    max_request_size: usize,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    // Without TCP_NODELAY a response waits on the client's delayed ACK (~40 ms per request).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    fn export<E: Export>(ingest: &Arc<Ingest>, max_request_size: usize) -> ExportServer<E> {
        ExportServer {
            ingest: ingest.clone(),
            max_request_size,
            export: PhantomData,
        }
    }
    let events = EventsServiceServer::new(Grpc(ingest.clone()))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max_request_size);
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_resource_exhausted,
        ))
        .add_service(export::<Traces>(&ingest, max_request_size))
        .add_service(export::<Metrics>(&ingest, max_request_size))
        .add_service(export::<Logs>(&ingest, max_request_size))
        .add_service(events);
    let task = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(addr = %local, "OTLP/gRPC and events gRPC listening");
    Ok((local, task))
}

/// tonic reports a message over `max_decoding_message_size` as OUT_OF_RANGE; the gRPC spec and
/// OTLP clients expect RESOURCE_EXHAUSTED for an oversized message, so rewrite that one case.
fn size_limit_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
