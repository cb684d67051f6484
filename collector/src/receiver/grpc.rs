//! OTLP/gRPC (traces, metrics, logs) and `tidewater.events.v1.EventsService` on one port.
//!
//! Every service takes its request as bytes and reads them itself: OTLP is split on its wire
//! bytes, and events are decoded one by one, so a malformed event is rejected alone (by index)
//! and a malformed request is `INVALID_ARGUMENT` naming the problem, where a tonic-generated
//! server would answer `INTERNAL` for the whole request.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tidewater_proto::events::v1::PublishResponse;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::auth::Authenticated;
use super::{connections, serve, Listener};
use crate::config::CollectorConfig;
use crate::error::IngestError;
use crate::events;
use crate::ingest::{Ingest, Transport};
use crate::memory::Held;

/// One unary service. Its request is taken as the bytes that came (tonic has already framed,
/// decompressed and size-checked them); only the response is a prost message.
trait Export: Send + Sync + 'static {
    const SERVICE: &'static str;
    const METHOD: &'static str;
    const SIGNAL: Signal;
    type Response: prost::Message + Default + Send + 'static;
    fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
        held: Held,
    ) -> impl Future<Output = Result<Self::Response, Status>> + Send;
}

struct Traces;
struct Metrics;
struct Logs;
struct Events;

impl Export for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const METHOD: &'static str = "Export";
    const SIGNAL: Signal = Signal::Traces;
    type Response = ExportTraceServiceResponse;
    async fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
        held: Held,
    ) -> Result<Self::Response, Status> {
        ingest
            .traces(&request, Transport::Grpc, held)
            .await
            .map_err(|e| e.to_grpc())
    }
}

impl Export for Metrics {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const METHOD: &'static str = "Export";
    const SIGNAL: Signal = Signal::Metrics;
    type Response = ExportMetricsServiceResponse;
    async fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
        held: Held,
    ) -> Result<Self::Response, Status> {
        ingest
            .metrics(&request, Transport::Grpc, held)
            .await
            .map_err(|e| e.to_grpc())
    }
}

impl Export for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const METHOD: &'static str = "Export";
    const SIGNAL: Signal = Signal::Logs;
    type Response = ExportLogsServiceResponse;
    async fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
        held: Held,
    ) -> Result<Self::Response, Status> {
        ingest
            .logs(&request, Transport::Grpc, held)
            .await
            .map_err(|e| e.to_grpc())
    }
}

impl Export for Events {
    const SERVICE: &'static str = "tidewater.events.v1.EventsService";
    const METHOD: &'static str = "Publish";
    const SIGNAL: Signal = Signal::Events;
    type Response = PublishResponse;
    async fn export(
        ingest: Arc<Ingest>,
        request: Bytes,
        held: Held,
    ) -> Result<PublishResponse, Status> {
        let events = events::from_protobuf(&request).map_err(|e| {
            ingest
                .refuse(
                    Signal::Events,
                    IngestError::BadRequest(format!("invalid PublishRequest: {e}")),
                )
                .to_grpc()
        })?;
        let response = ingest
            .events(events, Transport::Grpc, held)
            .await
            .map_err(|e| e.to_grpc())?;
        if response.accepted == 0 && !response.rejected.is_empty() {
            return Err(all_rejected(&response));
        }
        Ok(response)
    }
}

/// Nothing was taken: an error status, with every problem as a field violation so the client
/// still learns which event failed and why.
fn all_rejected(response: &PublishResponse) -> Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    let violations: Vec<FieldViolation> = response
        .rejected
        .iter()
        .map(|r| FieldViolation::new(format!("events[{}].{}", r.index, r.field), r.reason.clone()))
        .collect();
    let first = &response.rejected[0];
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!(
            "all {} events rejected; first: events[{}].{}: {}",
            response.rejected.len(),
            first.index,
            first.field,
            first.reason
        ),
        ErrorDetails::with_bad_request(violations),
    )
}

/// The tower service tonic's router calls for one [`Export`], in the shape of a
/// tonic-generated server (which would decode the request into prost structs).
struct ExportServer<E> {
    ingest: Arc<Ingest>,
    max_request_size: usize,
    body_timeout: Duration,
    export: PhantomData<fn() -> E>,
}

impl<E> ExportServer<E> {
    fn new(ingest: &Arc<Ingest>, config: &CollectorConfig) -> Self {
        ExportServer {
            ingest: ingest.clone(),
            max_request_size: config.max_request_size.as_u64() as usize,
            body_timeout: config.body_timeout,
            export: PhantomData,
        }
    }
}

impl<E> Clone for ExportServer<E> {
    fn clone(&self) -> Self {
        ExportServer {
            ingest: self.ingest.clone(),
            max_request_size: self.max_request_size,
            body_timeout: self.body_timeout,
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
            .and_then(|p| p.strip_prefix('/'))
            == Some(E::METHOD);
        if !is_export {
            let path = request.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let ingest = self.ingest.clone();
        let max_request_size = self.max_request_size;
        let held = Arc::new(std::sync::Mutex::new(Held::none()));
        let timeout = self.body_timeout;
        let request = request.map(|body| CountedBody {
            inner: Box::pin(body),
            ingest: ingest.clone(),
            signal: E::SIGNAL,
            held: held.clone(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        });
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            accept.enable(CompressionEncoding::Zstd);
            let mut grpc = tonic::server::Grpc::new(ExportCodec::<E::Response>(PhantomData))
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max_request_size), None);
            let export = tower::service_fn(move |request: Request<Bytes>| {
                let ingest = ingest.clone();
                let mut held =
                    std::mem::replace(&mut *held.lock().expect("not poisoned"), Held::none());
                async move {
                    let request = request.into_inner();
                    // The frames were counted as they came; now the message, decompressed.
                    ingest
                        .memory()
                        .resize(&mut held, request.len(), "grpc_message")
                        .map_err(|e| ingest.refuse(E::SIGNAL, e).to_grpc())?;
                    E::export(ingest, request, held).await.map(Response::new)
                }
            });
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// A request body whose frames are counted against the memory bound as they arrive, before
/// tonic buffers them: a request that does not fit is refused `RESOURCE_EXHAUSTED` (with
/// RetryInfo) without its message ever being held. The count is shared with the service,
/// which takes it over with the message.
struct CountedBody<B> {
    inner: std::pin::Pin<Box<B>>,
    ingest: Arc<Ingest>,
    signal: Signal,
    held: Arc<std::sync::Mutex<Held>>,
    /// `body_timeout`: a sender this slow is refused and its memory given back.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    let e = IngestError::Timeout(format!(
                        "request not received within {:?} (body_timeout)",
                        self.timeout
                    ));
                    let status = self.ingest.refuse(self.signal, e).to_grpc();
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                return Poll::Pending;
            }
        };
        if let Some(data) = frame.data_ref() {
            let this = &*self;
            let mut held = this.held.lock().expect("not poisoned");
            if let Err(e) = this
                .ingest
                .memory()
                .grow(&mut held, data.len(), "grpc_body")
            {
                return Poll::Ready(Some(Err(Box::new(
                    this.ingest.refuse(this.signal, e).to_grpc(),
                ))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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

/// Binds now, so a taken port fails start-up with a clear error, and serves until `stop`.
/// The services are tonic's routes, served by the same loop as the HTTP listener
/// ([`super::serve`]) so that both have the same limits, TLS and authentication.
pub async fn serve(
    addr: SocketAddr,
    ingest: Arc<Ingest>,
    config: &CollectorConfig,
    listener: Listener,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tcp = connections::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {addr}: {e}"))?;
    let local = tcp.local_addr()?;
    let routes = tonic::service::Routes::new(ExportServer::<Traces>::new(&ingest, config))
        .add_service(ExportServer::<Metrics>::new(&ingest, config))
        .add_service(ExportServer::<Logs>::new(&ingest, config))
        .add_service(ExportServer::<Events>::new(&ingest, config))
        .prepare();
    let service = Authenticated {
        inner: tower::util::MapResponse::new(
            routes,
            size_limit_is_resource_exhausted::<tonic::body::Body>
                as fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>,
        ),
        auth: listener.auth,
        refuse: |why: &'static str| {
            Status::unauthenticated(format!("not authenticated: {why}")).into_http()
        },
        listener: "grpc",
    };
    let task = serve::spawn(tcp, "grpc", service, config, listener.tls, stop);
    tracing::info!(addr = %local, tls = config.tls.is_some(), "OTLP/gRPC and events gRPC listening");
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
