//! OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`; protobuf or JSON; gzip) and
//! `POST /v1/events` (JSON) on one port, per the OTLP/HTTP specification: the response has
//! the request's content type, errors carry a `google.rpc.Status`, and refusals that may be
//! retried are 429/503 with `Retry-After`.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidewater_proto::Signal;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::events;
use crate::ingest::{Ingest, Transport};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct HttpState {
    ingest: Arc<Ingest>,
    max_request_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => PROTOBUF,
            Format::Json => JSON,
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error. Declared here because only its two
/// first fields are ever sent, and `tonic-types`' version has no serde for the JSON form.
#[derive(Clone, PartialEq, Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

pub fn router(ingest: Arc<Ingest>, max_request_size: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .route("/v1/events", post(publish_events))
        // Bodies are read with our own limit, which answers with an OTLP error body.
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(HttpState {
            ingest,
            max_request_size,
        }))
}

pub async fn serve(
    addr: SocketAddr,
    ingest: Arc<Ingest>,
    max_request_size: usize,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(ingest, max_request_size);
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(addr = %local, "OTLP/HTTP and events HTTP listening");
    Ok((local, task))
}

async fn traces(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportTraceServiceRequest, _, _, _>(
        &s,
        Signal::Traces,
        &headers,
        body,
        |ingest, req| async move { ingest.traces(&req, Transport::Http).await },
    )
    .await
}

async fn metrics(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportMetricsServiceRequest, _, _, _>(
        &s,
        Signal::Metrics,
        &headers,
        body,
        |ingest, req| async move { ingest.metrics(&req, Transport::Http).await },
    )
    .await
}

async fn logs(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportLogsServiceRequest, _, _, _>(
        &s,
        Signal::Logs,
        &headers,
        body,
        |ingest, req| async move { ingest.logs(&req, Transport::Http).await },
    )
    .await
}

/// An OTLP export: protobuf goes to `handle` as it came (the collector never decodes it);
/// JSON is parsed as `Req` and encoded as protobuf first.
async fn otlp<Req, Resp, F, Fut>(
    s: &HttpState,
    signal: Signal,
    headers: &HeaderMap,
    body: Body,
    handle: F,
) -> Response
where
    Req: Message + DeserializeOwned,
    Resp: Message + Serialize,
    F: FnOnce(Arc<Ingest>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, IngestError>>,
{
    let format = match content_format(headers) {
        Ok(f) => f,
        Err(e) => return error_response(&s.ingest.refuse(signal, e), Format::Json),
    };
    let result = async {
        let bytes = read_body(headers, body, s.max_request_size).await?;
        match format {
            Format::Protobuf => Ok(bytes),
            Format::Json => serde_json::from_slice::<Req>(&bytes)
                .map(|request| Bytes::from(request.encode_to_vec()))
                .map_err(|e| IngestError::BadRequest(format!("invalid OTLP JSON: {e}"))),
        }
    }
    .await;
    let request = match result {
        Ok(r) => r,
        Err(e) => return error_response(&s.ingest.refuse(signal, e), format),
    };
    match handle(s.ingest.clone(), request).await {
        Ok(resp) => encoded(StatusCode::OK, format, &resp),
        Err(e) => error_response(&e, format),
    }
}

async fn publish_events(
    State(s): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        if content_format(&headers)? != Format::Json {
            return Err(IngestError::UnsupportedMediaType(format!(
                "/v1/events takes {JSON}"
            )));
        }
        let bytes = read_body(&headers, body, s.max_request_size).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| IngestError::BadRequest(format!("invalid JSON: {e}")))?;
        let items = match value {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut obj) => match obj.remove("events") {
                Some(serde_json::Value::Array(items)) if obj.is_empty() => items,
                _ => {
                    return Err(IngestError::BadRequest(
                        "body must be {\"events\": [...]} or a JSON array of events".into(),
                    ))
                }
            },
            _ => {
                return Err(IngestError::BadRequest(
                    "body must be {\"events\": [...]} or a JSON array of events".into(),
                ))
            }
        };
        Ok(items)
    }
    .await;
    let items = match result {
        Ok(items) => items,
        Err(e) => return error_response(&s.ingest.refuse(Signal::Events, e), Format::Json),
    };
    let parsed = items
        .iter()
        .enumerate()
        .map(|(i, v)| events::from_json(v, i))
        .collect();
    match s.ingest.events(parsed, Transport::Http).await {
        Ok(resp) => {
            let status = if resp.accepted == 0 && !resp.rejected.is_empty() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            let body = events::response_json(resp.accepted as usize, &resp.rejected);
            (status, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
        Err(e) => error_response(&e, Format::Json),
    }
}

fn content_format(headers: &HeaderMap) -> Result<Format, IngestError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        PROTOBUF => Ok(Format::Protobuf),
        JSON => Ok(Format::Json),
        "" => Err(IngestError::UnsupportedMediaType(format!(
            "missing Content-Type: send {PROTOBUF} or {JSON}"
        ))),
        other => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported Content-Type {other:?}: send {PROTOBUF} or {JSON}"
        ))),
    }
}

/// Reads the body within `limit` bytes, before and after gzip, so neither a large upload nor
/// a small compressed bomb can take more memory than the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, IngestError> {
    let too_large = || {
        IngestError::TooLarge(format!(
            "request body exceeds the {limit} byte limit (max_request_size)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let raw = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                IngestError::BadRequest(format!("could not read request body: {e}"))
            }
        })?
        .to_bytes();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(raw),
        "gzip" => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| IngestError::BadRequest(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(out.into())
        }
        other => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {other:?}: send gzip or none"
        ))),
    }
}

fn encoded<T: Message + Serialize>(status: StatusCode, format: Format, message: &T) -> Response {
    let body = match format {
        Format::Protobuf => message.encode_to_vec(),
        Format::Json => serde_json::to_vec(message).unwrap_or_default(),
    };
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

fn error_response(e: &IngestError, format: Format) -> Response {
    let status = RpcStatus {
        code: e.to_grpc().code() as i32,
        message: e.to_string(),
    };
    let mut response = encoded(e.http_status(), format, &status);
    if let Some(after) = e.retry_after() {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
