//! The OTLP sink as the delivery engine drives it: items into calls ([`super::request`]), one
//! export request per call over HTTP/protobuf or gRPC ([`Exporter`]), and its answer read by
//! [`super::classify`]. The transport sits behind [`Exporter`] so the classification is
//! exercised through the engine with a scripted endpoint (`delivery::harness`) as well as
//! against a real OTLP receiver end to end.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use tokio::sync::OnceCell;

use super::classify::{self, Partial, Reply};
use super::config::{Compression, OtlpSinkConfig, Protocol, SignalKind};
use super::request::{self, Item, Request};
use crate::delivery::{Answer, Service};
use crate::sinks::sigv4::SigV4;

/// The sink's name in the engine's metrics, logs, dead letters and `/readyz`.
pub const NAME: &str = "otlp";

/// Sends one export request and says what came back; never retries on its own.
#[async_trait]
pub trait Exporter: Send + Sync + 'static {
    async fn export(&self, request: Request) -> Reply;
}

/// A partial success: what the endpoint rejected of one call, and what that call held.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub signal: SignalKind,
    pub partial: Partial,
    pub summary: serde_json::Value,
}

pub struct OtlpService {
    exporter: Arc<dyn Exporter>,
    max_size: usize,
    max_items: usize,
    /// Rejections by round, written to the dead-letter file by the sink before the round is
    /// acknowledged (the engine's dead letters are items; a rejection is not one).
    rejections: Mutex<HashMap<u64, Vec<Rejection>>>,
}

impl OtlpService {
    pub fn new(exporter: Arc<dyn Exporter>, max_size: usize, max_items: usize) -> Self {
        OtlpService {
            exporter,
            max_size,
            max_items,
            rejections: Mutex::default(),
        }
    }

    /// The rejections the endpoint answered for `round`'s calls, taken.
    pub fn take_rejections(&self, round: u64) -> Vec<Rejection> {
        self.rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&round)
            .unwrap_or_default()
    }
}

#[async_trait]
impl Service for OtlpService {
    type Item = Item;

    fn name(&self) -> &'static str {
        NAME
    }

    fn precheck(&self, item: &Item) -> Option<(String, String)> {
        (item.size > self.max_size).then(|| {
            (
                "too_large".to_string(),
                format!(
                    "one {} of {} bytes is over sinks.otlp.max_request_size ({} bytes)",
                    match item.signal() {
                        SignalKind::Traces => "span",
                        SignalKind::Metrics => "metric",
                        SignalKind::Logs => "log record",
                    },
                    item.size,
                    self.max_size
                ),
            )
        })
    }

    fn calls(&self, items: Vec<Item>) -> Vec<Vec<Item>> {
        request::calls(items, self.max_size, self.max_items)
    }

    async fn call(&self, items: &[Item]) -> Answer {
        let Some(first) = items.first() else {
            return Answer::Stored;
        };
        let signal = first.signal();
        let count: usize = items.iter().map(|i| i.count).sum();
        let bytes: usize = items.iter().map(|i| i.size).sum();
        let reply = self.exporter.export(request::request(items)).await;
        let reading = classify::read(signal, &reply, count, bytes, chrono::Utc::now());
        if reading.answer == Answer::Stored {
            let rejected = reading.partial.as_ref().map_or(0, |p| p.rejected.max(0));
            let accepted = count.saturating_sub(rejected as usize);
            metrics::counter!("tidewater_otlp_exported_total", "signal" => signal.name())
                .increment(accepted as u64);
            match reading.partial {
                Some(partial) if partial.rejected > 0 => {
                    metrics::counter!("tidewater_otlp_rejected_total", "signal" => signal.name())
                        .increment(rejected as u64);
                    self.rejections
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(first.round)
                        .or_default()
                        .push(Rejection {
                            signal,
                            partial,
                            summary: request::summary(items),
                        });
                }
                Some(partial) if !partial.message.is_empty() => {
                    tracing::warn!(sink = NAME, signal = signal.name(), message = %partial.message, "the endpoint took every item, with a warning");
                }
                _ => {}
            }
        }
        reading.answer
    }

    fn describe(&self, item: &Item) -> serde_json::Value {
        item.describe()
    }
}

/// OTLP/HTTP with protobuf bodies: gzip, headers, TLS with a custom CA, SigV4.
pub struct HttpExporter {
    client: reqwest::Client,
    config: OtlpSinkConfig,
    headers: HeaderMap,
    sigv4: Option<SigV4>,
    /// The `aws` preset's URLs wait for the region, which the AWS chain gives asynchronously.
    urls: OnceCell<HashMap<SignalKind, reqwest::Url>>,
}

impl HttpExporter {
    pub fn new(config: &OtlpSinkConfig) -> anyhow::Result<HttpExporter> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5).min(config.timeout))
            .user_agent(concat!("tidewater/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("sinks.otlp.tls.ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "sinks.otlp.tls.ca_file {}: not PEM certificates: {e}",
                    path.display()
                )
            })?;
            if certs.is_empty() {
                anyhow::bail!(
                    "sinks.otlp.tls.ca_file {}: no certificate in it",
                    path.display()
                );
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(HttpExporter {
            client: builder.build()?,
            headers: configured_headers(config)?,
            sigv4: config.signs().then(|| {
                SigV4::with_region(
                    &config.signing_name(SignalKind::Traces),
                    Some(config.sigv4.region.clone()),
                )
            }),
            config: config.clone(),
            urls: OnceCell::new(),
        })
    }

    /// With another signer (tests: fixed credentials).
    pub fn with_sigv4(mut self, signer: SigV4) -> Self {
        self.sigv4 = Some(signer);
        self
    }

    async fn url(&self, signal: SignalKind) -> anyhow::Result<reqwest::Url> {
        let urls = self
            .urls
            .get_or_try_init(|| async {
                let mut urls = HashMap::new();
                for signal in self.config.signals() {
                    let url = match self.config.http_url(signal) {
                        Some(url) => url,
                        None => {
                            let signer = self.sigv4.as_ref().expect("the aws preset signs");
                            signal.aws_endpoint(&signer.region().await?)
                        }
                    };
                    urls.insert(signal, reqwest::Url::parse(&url)?);
                }
                anyhow::Ok(urls)
            })
            .await?;
        urls.get(&signal)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{} are not exported", signal.name()))
    }

    /// The request's headers and body, signed when configured; `Err` when it cannot be built
    /// (no region or credentials), which no retry fixes by itself.
    async fn prepare(&self, request: Request) -> anyhow::Result<(reqwest::Url, HeaderMap, Bytes)> {
        let signal = request.signal();
        let url = self.url(signal).await?;
        let compression = self.config.compression;
        // Encoding and compressing a request of megabytes is CPU work: off the async workers.
        let body = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let raw = request.encode();
            match compression {
                Compression::None => Ok(raw),
                Compression::Gzip => {
                    let mut gz = flate2::write::GzEncoder::new(
                        Vec::with_capacity(raw.len() / 4),
                        flate2::Compression::fast(),
                    );
                    gz.write_all(&raw)?;
                    gz.finish()
                }
            }
        })
        .await??;
        let mut headers = self.headers.clone();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if compression == Compression::Gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        if signal == SignalKind::Logs && !self.config.log_group.is_empty() {
            headers.insert(
                HeaderName::from_static("x-aws-log-group"),
                HeaderValue::from_str(&self.config.log_group)?,
            );
            headers.insert(
                HeaderName::from_static("x-aws-log-stream"),
                HeaderValue::from_str(&self.config.log_stream)?,
            );
        }
        if let Some(signer) = &self.sigv4 {
            let service = self.config.signing_name(signal);
            headers.extend(signer.headers_for(&service, "POST", &url, &body).await?);
        }
        Ok((url, headers, body.into()))
    }
}

/// The configured headers, their values marked sensitive so no debug output shows them.
fn configured_headers(config: &OtlpSinkConfig) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow::anyhow!("sinks.otlp.headers: {name:?} is not a header name"))?;
        let mut value = HeaderValue::from_str(&value.0)
            .map_err(|_| anyhow::anyhow!("sinks.otlp.headers.{name}: not a header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

#[async_trait]
impl Exporter for HttpExporter {
    async fn export(&self, request: Request) -> Reply {
        let (url, headers, body) = match self.prepare(request).await {
            Ok(prepared) => prepared,
            Err(e) => {
                return Reply::NotSent {
                    error: format!("{e:#}"),
                }
            }
        };
        match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let header = |name| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v: &HeaderValue| v.to_str().ok())
                        .map(str::to_string)
                };
                let retry_after = header(reqwest::header::RETRY_AFTER);
                let content_type = header(CONTENT_TYPE).unwrap_or_default();
                match response.bytes().await {
                    Ok(body) => Reply::Http {
                        status,
                        retry_after,
                        content_type,
                        body,
                    },
                    Err(e) => Reply::Unreachable {
                        timeout: e.is_timeout(),
                        error: format!("reading the answer: {}", error_chain(&e)),
                    },
                }
            }
            Err(e) => Reply::Unreachable {
                timeout: e.is_timeout(),
                error: error_chain(&e),
            },
        }
    }
}

/// An error with its causes: reqwest's own message alone says only "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// OTLP/gRPC with the `opentelemetry-proto` clients (tonic): gzip, headers as metadata.
/// Plaintext (`http://`) only for now: the workspace's tonic is built without TLS.
pub struct GrpcExporter {
    channel: tonic::transport::Channel,
    metadata: tonic::metadata::MetadataMap,
    gzip: bool,
    timeout: Duration,
}

impl GrpcExporter {
    pub fn new(config: &OtlpSinkConfig) -> anyhow::Result<GrpcExporter> {
        let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| anyhow::anyhow!("sinks.otlp.endpoint {:?}: {e}", config.endpoint))?
            .connect_timeout(Duration::from_secs(5).min(config.timeout))
            .timeout(config.timeout);
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &config.headers {
            let key =
                tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        anyhow::anyhow!("sinks.otlp.headers: {name:?} is not a gRPC metadata key")
                    })?;
            let value = tonic::metadata::MetadataValue::try_from(value.0.as_str())
                .map_err(|_| anyhow::anyhow!("sinks.otlp.headers.{name}: not a metadata value"))?;
            metadata.insert(key, value);
        }
        Ok(GrpcExporter {
            channel: endpoint.connect_lazy(),
            metadata,
            gzip: config.compression == Compression::Gzip,
            timeout: config.timeout,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        *r.metadata_mut() = self.metadata.clone();
        r.set_timeout(self.timeout);
        r
    }
}

#[async_trait]
impl Exporter for GrpcExporter {
    async fn export(&self, request: Request) -> Reply {
        use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        use tonic::codec::CompressionEncoding::Gzip;

        let channel = self.channel.clone();
        let result = match request {
            Request::Traces(r) => {
                let mut c = TraceServiceClient::new(channel).accept_compressed(Gzip);
                if self.gzip {
                    c = c.send_compressed(Gzip);
                }
                c.export(self.request(r)).await.map(|ok| {
                    ok.into_inner().partial_success.map(|p| Partial {
                        rejected: p.rejected_spans,
                        message: p.error_message,
                    })
                })
            }
            Request::Metrics(r) => {
                let mut c = MetricsServiceClient::new(channel).accept_compressed(Gzip);
                if self.gzip {
                    c = c.send_compressed(Gzip);
                }
                c.export(self.request(r)).await.map(|ok| {
                    ok.into_inner().partial_success.map(|p| Partial {
                        rejected: p.rejected_data_points,
                        message: p.error_message,
                    })
                })
            }
            Request::Logs(r) => {
                let mut c = LogsServiceClient::new(channel).accept_compressed(Gzip);
                if self.gzip {
                    c = c.send_compressed(Gzip);
                }
                c.export(self.request(r)).await.map(|ok| {
                    ok.into_inner().partial_success.map(|p| Partial {
                        rejected: p.rejected_log_records,
                        message: p.error_message,
                    })
                })
            }
        };
        match result {
            Ok(partial) => Reply::Grpc {
                code: 0,
                message: String::new(),
                retry_after: None,
                partial,
            },
            Err(status) => {
                use tonic_types::StatusExt;
                let retry_after = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay);
                Reply::Grpc {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                    retry_after,
                    partial: None,
                }
            }
        }
    }
}

/// The transport the configuration asks for.
pub fn exporter(config: &OtlpSinkConfig) -> anyhow::Result<Arc<dyn Exporter>> {
    Ok(match config.protocol {
        Protocol::HttpProtobuf => Arc::new(HttpExporter::new(config)?),
        Protocol::Grpc => Arc::new(GrpcExporter::new(config)?),
    })
}
