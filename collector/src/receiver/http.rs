//! OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`; protobuf or JSON; gzip) and
//! `POST /v1/events` (JSON) on one port, per the OTLP/HTTP specification: the response has
//! the request's content type, errors carry a `google.rpc.Status`, and refusals that may be
//! retried are 429/503 with `Retry-After`.
//!
//! Connections are served by hyper directly (not `axum::serve`), because the limits a listener
//! open to many clients needs live there: the connection cap ([`super::connections`]), header
//! sizes, HTTP/2 streams per connection, idle and keep-alive timeouts. Bodies have their own
//! deadline (`body_timeout`) and are counted against the memory bound as they are read.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use tokio_util::sync::CancellationToken;

use super::auth::Authenticated;
use super::{connections, serve, Listener};
use crate::config::CollectorConfig;
use crate::error::IngestError;
use crate::events;
use crate::ingest::{Ingest, Transport};
use crate::memory::{Held, Memory};

/// JSON is parsed into a tree of structs or values a few times the size of its text; while
/// parsed, a JSON body counts this many times its size more against the memory bound (so a
/// JSON body may be at most a quarter of `memory_limit`).
const JSON_PARSE_FACTOR: usize = 3;
/// Decompressed output is read and counted this much at a time.
const INFLATE_CHUNK: usize = 64 * 1024;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct HttpState {
    ingest: Arc<Ingest>,
    max_request_size: usize,
    body_timeout: Duration,
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

pub fn router(ingest: Arc<Ingest>, config: &CollectorConfig) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .route("/v1/events", post(publish_events))
        // Bodies are read with our own limit, which answers with an OTLP error body.
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(HttpState {
            ingest,
            max_request_size: config.max_request_size.as_u64() as usize,
            body_timeout: config.body_timeout,
        }))
}

/// Binds now, so a taken port fails start-up with a clear error, and serves until `stop`.
pub async fn serve(
    addr: SocketAddr,
    ingest: Arc<Ingest>,
    config: &CollectorConfig,
    listener: Listener,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let tcp = connections::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    let local = tcp.local_addr()?;
    let service = Authenticated {
        inner: router(ingest, config),
        auth: listener.auth,
        refuse: unauthenticated,
        listener: "http",
    };
    let task = serve::spawn(tcp, "http", service, config, listener.tls, stop);
    tracing::info!(addr = %local, tls = config.tls.is_some(), "OTLP/HTTP and events HTTP listening");
    Ok((local, task))
}

/// HTTP 401, with the OTLP error body and the schemes the client may use.
fn unauthenticated(why: &'static str) -> Response {
    let status = RpcStatus {
        code: tonic::Code::Unauthenticated as i32,
        message: format!("not authenticated: {why}"),
    };
    let mut response = encoded(StatusCode::UNAUTHORIZED, Format::Json, &status);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer, Basic realm=\"tidewater\""),
    );
    response
}

async fn traces(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportTraceServiceRequest, _, _, _>(
        &s,
        Signal::Traces,
        &headers,
        body,
        |ingest, req, held| async move { ingest.traces(&req, Transport::Http, held).await },
    )
    .await
}

async fn metrics(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportMetricsServiceRequest, _, _, _>(
        &s,
        Signal::Metrics,
        &headers,
        body,
        |ingest, req, held| async move { ingest.metrics(&req, Transport::Http, held).await },
    )
    .await
}

async fn logs(State(s): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    otlp::<ExportLogsServiceRequest, _, _, _>(
        &s,
        Signal::Logs,
        &headers,
        body,
        |ingest, req, held| async move { ingest.logs(&req, Transport::Http, held).await },
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
    F: FnOnce(Arc<Ingest>, Bytes, Held) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, IngestError>>,
{
    let format = match content_format(headers) {
        Ok(f) => f,
        Err(e) => return error_response(&s.ingest.refuse(signal, e), Format::Json),
    };
    let memory = s.ingest.memory();
    let result = async {
        let (bytes, mut held) =
            read_body(memory, headers, body, s.max_request_size, s.body_timeout).await?;
        match format {
            Format::Protobuf => Ok((bytes, held)),
            Format::Json => {
                memory.grow(&mut held, bytes.len() * JSON_PARSE_FACTOR, "http_json")?;
                let request = serde_json::from_slice::<Req>(&bytes)
                    .map(|request| Bytes::from(request.encode_to_vec()))
                    .map_err(|e| IngestError::BadRequest(format!("invalid OTLP JSON: {e}")))?;
                memory.resize(&mut held, request.len(), "http_json")?;
                Ok((request, held))
            }
        }
    }
    .await;
    let (request, held) = match result {
        Ok(r) => r,
        Err(e) => return error_response(&s.ingest.refuse(signal, e), format),
    };
    match handle(s.ingest.clone(), request, held).await {
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
        let memory = s.ingest.memory();
        let (bytes, mut held) =
            read_body(memory, &headers, body, s.max_request_size, s.body_timeout).await?;
        memory.grow(&mut held, bytes.len() * JSON_PARSE_FACTOR, "http_json")?;
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
        Ok((items, held))
    }
    .await;
    let (items, held) = match result {
        Ok(items) => items,
        Err(e) => return error_response(&s.ingest.refuse(Signal::Events, e), Format::Json),
    };
    // Consumed as converted: the JSON tree must not outlive the parse (it is counted against
    // the memory bound only until the request holds its parts).
    let parsed = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| events::from_json(&v, i))
        .collect();
    match s.ingest.events(parsed, Transport::Http, held).await {
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
/// a small compressed bomb can take more memory than the limit; and counts what it holds
/// against the collector's memory bound before holding it: a declared length is taken before
/// any byte is read, a streamed body as it arrives, decompressed output chunk by chunk. The
/// returned [`Held`] is the body's share, handed on with it.
async fn read_body(
    memory: &Arc<Memory>,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<(Bytes, Held), IngestError> {
    let deadline = tokio::time::Instant::now() + timeout;
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
    let mut held = memory.take(declared.unwrap_or(0), "http_body")?;
    let mut raw = Vec::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| {
            IngestError::Timeout(format!(
                "request body not received within {timeout:?} (body_timeout)"
            ))
        })?
    {
        let frame = frame
            .map_err(|e| IngestError::BadRequest(format!("could not read request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if raw.len() + data.len() > limit {
            return Err(too_large());
        }
        if raw.len() + data.len() > raw.capacity() {
            // What the buffer will grow to (doubling, so reading stays linear), counted
            // before it does.
            let capacity = (raw.capacity() * 2).max(raw.len() + data.len()).min(limit);
            memory.resize(&mut held, capacity, "http_body")?;
            raw.reserve_exact(capacity - raw.len());
        }
        raw.extend_from_slice(&data);
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => {
            memory.resize(&mut held, raw.capacity(), "http_body")?;
            Ok((raw.into(), held))
        }
        "gzip" => {
            let mut inflate = flate2::read::GzDecoder::new(&raw[..]);
            let mut out: Vec<u8> = Vec::new();
            loop {
                if out.len() > limit {
                    return Err(too_large());
                }
                if out.capacity() - out.len() < INFLATE_CHUNK {
                    // Doubling, so inflating is linear; the new capacity is counted before it
                    // is allocated.
                    let capacity = (out.capacity() * 2).max(out.len() + INFLATE_CHUNK);
                    memory.resize(&mut held, raw.len() + capacity, "http_gzip")?;
                    out.reserve_exact(capacity - out.len());
                }
                let read = (&mut inflate)
                    .take(INFLATE_CHUNK as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| IngestError::BadRequest(format!("invalid gzip body: {e}")))?;
                if read == 0 {
                    break;
                }
            }
            if out.len() > limit {
                return Err(too_large());
            }
            drop(raw);
            memory.resize(&mut held, out.capacity(), "http_gzip")?;
            Ok((out.into(), held))
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
