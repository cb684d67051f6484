use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// OTLP/gRPC (traces, metrics, logs) and `tidewater.events.v1.EventsService`. Loopback by
    /// default: a sidecar shares localhost with its app (ECS awsvpc task, k8s pod).
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`) and `POST /v1/events`.
    pub http_addr: SocketAddr,
    /// The X-Ray daemon's UDP protocol, for apps instrumented with the AWS X-Ray SDKs
    /// (`AWS_XRAY_DAEMON_ADDRESS`). 2000 is the daemon's own port.
    pub xray_udp_addr: SocketAddr,
    /// Receive buffer of the X-Ray UDP socket. X-Ray SDKs send in bursts (a segment or
    /// subsegment per datagram) and the kernel drops datagrams silently once the buffer is
    /// full, so the default is far above the kernel's. The kernel caps the request at
    /// `net.core.rmem_max` unless the process has CAP_NET_ADMIN, in which case SO_RCVBUFFORCE
    /// lifts the cap.
    pub xray_udp_receive_buffer: ByteSize,
    /// Largest request accepted, after decompression. Beyond it: HTTP 413, gRPC RESOURCE_EXHAUSTED.
    pub max_request_size: ByteSize,
    /// Most events in one publish request.
    pub max_events_per_batch: usize,
    /// Largest single event (encoded); larger events are rejected, not truncated.
    pub max_event_size: ByteSize,
    /// Data received but not yet durable on the bus. When full, new requests are refused with
    /// HTTP 429 / gRPC RESOURCE_EXHAUSTED and `retry_after`, instead of growing memory.
    pub memory_limit: ByteSize,
    /// How long a client waits for its data to become durable before it gets a retryable
    /// UNAVAILABLE / 503. The data may still be published: clients retrying may duplicate.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Sent with every refusal (Retry-After, gRPC RetryInfo).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Connections each listener (gRPC, HTTP) holds open at once. At the cap a listener stops
    /// accepting until one closes (new connections wait in the kernel's backlog), so a flood
    /// of idle connections cannot exhaust the process's open files.
    pub max_connections: usize,
    /// Requests in flight on one HTTP/2 connection (gRPC and HTTP/2 clients).
    pub max_concurrent_streams: u32,
    /// Largest request header block, HTTP/1 and HTTP/2.
    pub max_header_size: ByteSize,
    /// A request body must arrive whole within this, or the request is refused (HTTP 408,
    /// gRPC DEADLINE_EXCEEDED) and the memory it took is given back: a slow sender cannot
    /// hold its share of `memory_limit` for long.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// An HTTP/1 connection waiting this long for its next request's headers is closed; HTTP/2
    /// connections are pinged at this interval and closed when the peer stops answering.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// TLS on the gRPC and HTTP listeners (off by default: a sidecar's receivers are on
    /// loopback). Needed, with `auth`, when they listen beyond it.
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
    /// Lets the gRPC or HTTP listener bind a non-loopback address with neither TLS nor
    /// authentication (with a warning): anyone who can reach the port can then publish.
    pub allow_insecure_non_loopback: bool,
    pub batch: BatchConfig,
    /// Secrets and personal data removed before anything is published (`crate::redact`).
    #[serde(deserialize_with = "crate::redact::config::checked")]
    pub redaction: crate::redact::RedactionConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, server certificate first.
    pub cert: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one (mTLS).
    pub client_ca: Option<std::path::PathBuf>,
    /// How often the files are checked for a renewed certificate; new connections get it,
    /// open ones keep theirs.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: Default::default(),
            key: Default::default(),
            client_ca: None,
            reload_interval: Duration::from_secs(30),
        }
    }
}

/// Credentials a client must send, checked before its body is read. Empty: no authentication.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted `Authorization: Bearer <token>` values (OTLP exporters' `headers` setting).
    pub bearer_tokens: Vec<Secret>,
    /// Accepted `Authorization: Basic` credentials, each `user:password`.
    pub basic: Vec<Secret>,
}

impl AuthConfig {
    pub fn is_enabled(&self) -> bool {
        !self.bearer_tokens.is_empty() || !self.basic.is_empty()
    }
}

/// A credential from the configuration: shown as `<redacted>` in debug output and in what
/// `check-config` prints, so it never reaches a log line.
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A batch is published once it holds this many items (spans, data points, log records,
    /// events)...
    pub max_items: usize,
    /// ...or this many bytes before compression...
    pub max_size: ByteSize,
    /// ...or its first item has waited this long. Kept short because a client is answered
    /// only once its batch is durable, and SDKs send one export at a time: a 200 ms linger caps
    /// an app at its batch size five times a second. Under load, batches grow anyway: a lane
    /// has one publish in flight, and what arrives meanwhile goes out together next.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// zstd level for the batch payload (1 is fast; 3 is zstd's default).
    pub zstd_level: i32,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 4318)),
            xray_udp_addr: SocketAddr::from(([127, 0, 0, 1], 2000)),
            xray_udp_receive_buffer: ByteSize::mib(8),
            max_request_size: ByteSize::mib(16),
            max_events_per_batch: 1000,
            max_event_size: ByteSize::kib(64),
            memory_limit: ByteSize::mib(64),
            ack_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            max_connections: 256,
            max_concurrent_streams: 64,
            max_header_size: ByteSize::kib(16),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls: None,
            auth: AuthConfig::default(),
            allow_insecure_non_loopback: false,
            batch: BatchConfig::default(),
            redaction: Default::default(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_items: 8192,
            max_size: ByteSize::mib(1),
            timeout: Duration::from_millis(10),
            zstd_level: 1,
        }
    }
}
