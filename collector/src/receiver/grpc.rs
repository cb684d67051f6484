//! OTLP/gRPC (traces, metrics, logs) and `tidewater.events.v1.EventsService` on one port.

use std::net::SocketAddr;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tidewater_proto::events::v1::events_service_server::{EventsService, EventsServiceServer};
use tidewater_proto::events::v1::{PublishRequest, PublishResponse};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, Transport};

#[derive(Clone)]
struct Grpc(Arc<Ingest>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0
            .traces(request.into_inner(), Transport::Grpc)
            .await
            .map(Response::new)
            .map_err(|e| e.to_grpc())
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0
            .metrics(request.into_inner(), Transport::Grpc)
            .await
            .map(Response::new)
            .map_err(|e| e.to_grpc())
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.0
            .logs(request.into_inner(), Transport::Grpc)
            .await
            .map(Response::new)
            .map_err(|e| e.to_grpc())
    }
}

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
    let svc = Grpc(ingest);
    macro_rules! configured {
        ($server:expr) => {
            $server
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max_request_size)
        };
    }
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            size_limit_is_resource_exhausted,
        ))
        .add_service(configured!(TraceServiceServer::new(svc.clone())))
        .add_service(configured!(MetricsServiceServer::new(svc.clone())))
        .add_service(configured!(LogsServiceServer::new(svc.clone())))
        .add_service(configured!(EventsServiceServer::new(svc)));
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
