//! `[sinks.otlp]`: where to export (one base endpoint, a URL per signal, or the AWS preset that
//! derives the X-Ray and CloudWatch Logs OTLP endpoints from the region), how (protocol,
//! compression, headers, TLS, SigV4), how large a request may be, and how to deliver
//! (`[sinks.otlp.delivery]`, the engine's table shared by every sink). Header values are
//! [`Secret`]s: API keys never reach a log line or what `check-config` prints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSinkConfig {
    pub enabled: bool,
    /// `none`: any OTLP endpoint (`endpoint` or `endpoints`). `aws`: the X-Ray OTLP endpoint
    /// for traces (Transaction Search) and the CloudWatch Logs one for logs, derived from the
    /// region, signed with SigV4 (`xray`, `logs`), over HTTP/protobuf.
    pub preset: Preset,
    /// What to export: `traces`, `metrics`, `logs`. Empty: every signal the endpoint takes
    /// (all three; traces and logs with the `aws` preset).
    pub signals: Vec<SignalKind>,
    /// Base URL: `<endpoint>/v1/traces` etc. over HTTP, the server itself over gRPC (as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: String,
    /// Full URLs per signal, over HTTP (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); they win over
    /// `endpoint` and the preset.
    pub endpoints: SignalEndpoints,
    pub protocol: Protocol,
    pub compression: Compression,
    /// Sent with every request, e.g. `x-honeycomb-team`; values are kept secret.
    pub headers: BTreeMap<String, Secret>,
    /// The log group and stream of the CloudWatch Logs OTLP endpoint (its `x-aws-log-group`
    /// and `x-aws-log-stream` headers, on logs requests only); required by the `aws` preset
    /// when it exports logs. Both must exist.
    pub log_group: String,
    pub log_stream: String,
    /// Largest request body before compression: requests are cut to stay within it, and an
    /// item larger alone is dead-lettered unsent. Endpoints document theirs (X-Ray OTLP: 5 MB
    /// uncompressed); the default stays under every one we know.
    pub max_request_size: ByteSize,
    /// Most spans, data points or log records in one request (X-Ray OTLP: 10,000 spans).
    pub max_request_items: usize,
    /// A request not answered in this long is abandoned and sent again.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub tls: TlsConfig,
    pub sigv4: Sigv4Config,
    pub delivery: DeliveryConfig,
}

impl Default for OtlpSinkConfig {
    fn default() -> Self {
        OtlpSinkConfig {
            enabled: false,
            preset: Preset::None,
            signals: Vec::new(),
            endpoint: "http://127.0.0.1:4318".into(),
            endpoints: SignalEndpoints::default(),
            protocol: Protocol::HttpProtobuf,
            compression: Compression::Gzip,
            headers: BTreeMap::new(),
            log_group: String::new(),
            log_stream: String::new(),
            // The X-Ray OTLP endpoint refuses requests over 5 MB uncompressed or 10,000 spans
            // (and spans over 200 KB, resource + scope over 16 KB): "Endpoint limits and
            // restrictions", https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch-OTLPEndpoint.html
            // The same page's logs table could not be read here; CloudWatch Logs' own batch
            // limit (PutLogEvents) is 1,048,576 bytes and 10,000 events, so a larger logs
            // request may be answered 413, which halves it.
            max_request_size: ByteSize::mib(4),
            max_request_items: 10_000,
            timeout: Duration::from_secs(30),
            tls: TlsConfig::default(),
            sigv4: Sigv4Config::default(),
            delivery: DeliveryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    #[default]
    None,
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Traces,
    Metrics,
    Logs,
}

impl SignalKind {
    pub const ALL: [SignalKind; 3] = [SignalKind::Traces, SignalKind::Metrics, SignalKind::Logs];

    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Traces => "traces",
            SignalKind::Metrics => "metrics",
            SignalKind::Logs => "logs",
        }
    }

    /// The OTLP/HTTP path.
    pub fn path(self) -> &'static str {
        match self {
            SignalKind::Traces => "/v1/traces",
            SignalKind::Metrics => "/v1/metrics",
            SignalKind::Logs => "/v1/logs",
        }
    }

    /// The SigV4 signing name of the AWS OTLP endpoint for this signal.
    pub fn aws_service(self) -> &'static str {
        match self {
            SignalKind::Traces => "xray",
            SignalKind::Metrics => "monitoring",
            SignalKind::Logs => "logs",
        }
    }

    /// The AWS OTLP endpoint in `region`.
    pub fn aws_endpoint(self, region: &str) -> String {
        format!(
            "https://{}.{region}.amazonaws.com{}",
            self.aws_service(),
            self.path()
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalEndpoints {
    pub traces: String,
    pub metrics: String,
    pub logs: String,
}

impl SignalEndpoints {
    pub fn get(&self, signal: SignalKind) -> &str {
        match signal {
            SignalKind::Traces => &self.traces,
            SignalKind::Metrics => &self.metrics,
            SignalKind::Logs => &self.logs,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted besides the public roots (a private endpoint).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sigv4Config {
    /// Sign every request with the standard AWS credential chain (on with the `aws` preset).
    pub enabled: bool,
    /// Empty: the chain's (`AWS_REGION`, the profile, the ECS task's region).
    pub region: String,
    /// The signing name; empty: the AWS OTLP endpoint's for each signal (`xray` for traces,
    /// `logs` for logs, `monitoring` for metrics).
    pub service: String,
}

/// A credential from the configuration (as the collector's `Secret`): shown as `<redacted>`
/// in debug output and in what `check-config` prints, so it never reaches a log line.
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

/// The smallest `max_request_size` accepted: a request must hold at least a resource, a scope
/// and a span of ordinary size.
pub const MIN_REQUEST_SIZE: u64 = 16 * 1024;

impl OtlpSinkConfig {
    /// The signals exported.
    pub fn signals(&self) -> Vec<SignalKind> {
        if !self.signals.is_empty() {
            let mut s = self.signals.clone();
            s.sort();
            s.dedup();
            return s;
        }
        match self.preset {
            Preset::None => SignalKind::ALL.to_vec(),
            Preset::Aws => vec![SignalKind::Traces, SignalKind::Logs],
        }
    }

    pub fn exports(&self, signal: SignalKind) -> bool {
        self.signals().contains(&signal)
    }

    /// Whether requests are signed.
    pub fn signs(&self) -> bool {
        self.sigv4.enabled || self.preset == Preset::Aws
    }

    /// The signing name for `signal`.
    pub fn signing_name(&self, signal: SignalKind) -> String {
        if self.sigv4.service.is_empty() {
            signal.aws_service().to_string()
        } else {
            self.sigv4.service.clone()
        }
    }

    /// The URL `signal` goes to over HTTP, when it does not wait for the region (the `aws`
    /// preset's endpoints do: `None`).
    pub fn http_url(&self, signal: SignalKind) -> Option<String> {
        let explicit = self.endpoints.get(signal);
        if !explicit.is_empty() {
            return Some(explicit.to_string());
        }
        match self.preset {
            Preset::Aws => None,
            Preset::None => Some(format!(
                "{}{}",
                self.endpoint.trim_end_matches('/'),
                signal.path()
            )),
        }
    }

    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let key = "sinks.otlp";
        let signals = self.signals();
        if self.preset == Preset::Aws {
            if self.protocol != Protocol::HttpProtobuf {
                return Err(format!(
                    "{key}.protocol must be \"http/protobuf\" with {key}.preset = \"aws\": the X-Ray and CloudWatch Logs OTLP endpoints do not take gRPC"
                ));
            }
            if signals.contains(&SignalKind::Metrics) && self.endpoints.metrics.is_empty() {
                return Err(format!(
                    "{key}.signals: the \"aws\" preset has no metrics endpoint; export [\"traces\"], [\"logs\"] or both (or set {key}.endpoints.metrics)"
                ));
            }
        }
        if signals.contains(&SignalKind::Logs)
            && (self.preset == Preset::Aws
                || !self.log_group.is_empty()
                || !self.log_stream.is_empty())
            && (self.log_group.is_empty() || self.log_stream.is_empty())
        {
            return Err(format!(
                "{key}.log_group and {key}.log_stream must both be set to export logs to CloudWatch Logs (its x-aws-log-group and x-aws-log-stream headers)"
            ));
        }
        if self.protocol == Protocol::Grpc {
            if self.endpoint.starts_with("https://") {
                return Err(format!(
                    "{key}.endpoint: gRPC over TLS is not built in yet; use {key}.protocol = \"http/protobuf\" for an https:// endpoint"
                ));
            }
            if self.signs() {
                return Err(format!(
                    "{key}.sigv4 signs OTLP/HTTP requests only; use {key}.protocol = \"http/protobuf\""
                ));
            }
            for signal in SignalKind::ALL {
                if !self.endpoints.get(signal).is_empty() {
                    return Err(format!(
                        "{key}.endpoints.{} is for OTLP/HTTP; over gRPC every signal goes to {key}.endpoint",
                        signal.name()
                    ));
                }
            }
        }
        for signal in &signals {
            let url = match self.protocol {
                Protocol::Grpc => Some(self.endpoint.clone()),
                Protocol::HttpProtobuf => self.http_url(*signal),
            };
            let Some(url) = url else { continue };
            let which = if !self.endpoints.get(*signal).is_empty() {
                format!("{key}.endpoints.{}", signal.name())
            } else {
                format!("{key}.endpoint")
            };
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                Ok(_) => {
                    return Err(format!(
                        "{which} {url:?} must be an http:// or https:// URL"
                    ))
                }
                Err(e) => return Err(format!("{which} {url:?}: {e}")),
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "{key}.headers: {name:?} is not a valid header name"
                ));
            }
            if reqwest::header::HeaderValue::from_str(&value.0).is_err() {
                return Err(format!(
                    "{key}.headers.{name}: the value is not a valid header value"
                ));
            }
        }
        if self.max_request_size.as_u64() < MIN_REQUEST_SIZE {
            return Err(format!(
                "{key}.max_request_size must be at least {MIN_REQUEST_SIZE} bytes"
            ));
        }
        if self.max_request_items == 0 {
            return Err(format!("{key}.max_request_items must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(format!("{key}.timeout must be above zero"));
        }
        if let Some(path) = &self.tls.ca_file {
            if !path.exists() {
                return Err(format!(
                    "{key}.tls.ca_file {}: no such file",
                    path.display()
                ));
            }
        }
        self.delivery.validate(&format!("{key}.delivery"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_otlp_exporter_settings_and_the_preset() {
        let mut c = OtlpSinkConfig {
            endpoint: "https://api.honeycomb.io/".into(),
            ..Default::default()
        };
        assert_eq!(
            c.http_url(SignalKind::Traces).unwrap(),
            "https://api.honeycomb.io/v1/traces"
        );
        c.endpoints.logs = "https://logs.example.com/otlp/logs".into();
        assert_eq!(
            c.http_url(SignalKind::Logs).unwrap(),
            "https://logs.example.com/otlp/logs"
        );
        c.preset = Preset::Aws;
        assert_eq!(c.http_url(SignalKind::Traces), None);
        assert_eq!(
            SignalKind::Traces.aws_endpoint("eu-west-1"),
            "https://xray.eu-west-1.amazonaws.com/v1/traces"
        );
        assert_eq!(
            SignalKind::Logs.aws_endpoint("eu-west-1"),
            "https://logs.eu-west-1.amazonaws.com/v1/logs"
        );
        assert_eq!(c.signals(), [SignalKind::Traces, SignalKind::Logs]);
        assert!(c.signs());
        assert_eq!(c.signing_name(SignalKind::Logs), "logs");
    }

    #[test]
    fn validation_names_the_key() {
        let ok = OtlpSinkConfig::default();
        ok.validate().unwrap();
        let err = |c: OtlpSinkConfig| c.validate().unwrap_err();

        assert!(err(OtlpSinkConfig {
            endpoint: "ftp://x".into(),
            ..Default::default()
        })
        .contains("sinks.otlp.endpoint"));
        let mut c = OtlpSinkConfig::default();
        c.endpoints.traces = "not a url".into();
        assert!(err(c).contains("sinks.otlp.endpoints.traces"));

        let aws = || OtlpSinkConfig {
            preset: Preset::Aws,
            ..Default::default()
        };
        assert!(err(aws()).contains("sinks.otlp.log_group"));
        assert!(err(OtlpSinkConfig {
            signals: vec![SignalKind::Metrics],
            ..aws()
        })
        .contains("no metrics endpoint"));
        assert!(err(OtlpSinkConfig {
            protocol: Protocol::Grpc,
            ..aws()
        })
        .contains("sinks.otlp.protocol"));
        OtlpSinkConfig {
            signals: vec![SignalKind::Traces],
            ..aws()
        }
        .validate()
        .unwrap();

        let mut c = OtlpSinkConfig::default();
        c.headers.insert("bad header".into(), Secret("k".into()));
        assert!(err(c).contains("sinks.otlp.headers"));
        let mut c = OtlpSinkConfig::default();
        c.headers
            .insert("x-honeycomb-team".into(), Secret("line\nbreak".into()));
        assert!(err(c).contains("sinks.otlp.headers.x-honeycomb-team"));
        assert!(err(OtlpSinkConfig {
            max_request_size: ByteSize::kib(1),
            ..Default::default()
        })
        .contains("sinks.otlp.max_request_size"));
        let mut c = OtlpSinkConfig::default();
        c.delivery.concurrency = 0;
        assert!(err(c).contains("sinks.otlp.delivery.concurrency"));
    }

    #[test]
    fn header_values_never_show() {
        let mut c = OtlpSinkConfig::default();
        c.headers
            .insert("x-honeycomb-team".into(), Secret("hc-key-123".into()));
        assert!(!format!("{c:?}").contains("hc-key-123"));
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            !shown.contains("hc-key-123") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
