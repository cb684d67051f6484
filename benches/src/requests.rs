//! What the load generator sends, where, and how it reads the answer.

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde::Serialize;
use tidewater_proto::events::v1::PublishResponse;

use crate::workload::Generator;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
    Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
}

impl Signal {
    pub fn label(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
            Signal::Events => "events",
        }
    }

    /// What one item is, for reports.
    pub fn item(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Logs => "log records",
            Signal::Metrics => "data points",
            Signal::Events => "events",
        }
    }

    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Events => "/tidewater.events.v1.EventsService/Publish",
        }
    }

    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Logs => "/v1/logs",
            Signal::Metrics => "/v1/metrics",
            Signal::Events => "/v1/events",
        }
    }

    /// OTLP/HTTP is sent as protobuf; events over HTTP are JSON, the only form that route takes.
    pub fn http_content_type(self) -> &'static str {
        match self {
            Signal::Events => "application/json",
            _ => "application/x-protobuf",
        }
    }
}

/// `size` distinct requests of `items` items each, encoded for `protocol`.
pub fn pool(
    signal: Signal,
    protocol: Protocol,
    items: usize,
    size: usize,
    seed: u64,
) -> Vec<Bytes> {
    let mut g = Generator::new(seed);
    (0..size.max(1))
        .map(|_| {
            let bytes = match (signal, protocol) {
                (Signal::Traces, _) => g.traces(items).encode_to_vec(),
                (Signal::Logs, _) => g.logs(items).encode_to_vec(),
                (Signal::Metrics, _) => g.metrics(items).encode_to_vec(),
                (Signal::Events, Protocol::Grpc) => g.events(items).encode_to_vec(),
                (Signal::Events, Protocol::Http) => {
                    serde_json::to_vec(&serde_json::json!({ "events": g.events_json(items) }))
                        .expect("JSON values serialise")
                }
            };
            Bytes::from(bytes)
        })
        .collect()
}

/// Items the server refused inside a success answer (OTLP partial success, events `rejected`).
/// An answer that cannot be read counts as nothing rejected: a null server answers with empty
/// bodies.
pub fn rejected_items(signal: Signal, protocol: Protocol, body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    match (signal, protocol) {
        (Signal::Traces, _) => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_spans.max(0) as u64),
        (Signal::Logs, _) => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_log_records.max(0) as u64),
        (Signal::Metrics, _) => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_data_points.max(0) as u64),
        (Signal::Events, Protocol::Grpc) => {
            PublishResponse::decode(body).map_or(0, |r| r.rejected.len() as u64)
        }
        (Signal::Events, Protocol::Http) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("rejected").and_then(|r| r.as_array()).map(Vec::len))
            .unwrap_or(0) as u64,
    }
}

/// Resolves `target` (`host:port`) and insists on a loopback address: the load generator
/// and the null server are for this machine only.
pub fn loopback(target: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve {target:?}: {e}"))?
        .collect();
    match addrs.iter().find(|a| a.ip().is_loopback()) {
        Some(a) if addrs.iter().all(|a| a.ip().is_loopback()) => Ok(*a),
        _ => anyhow::bail!(
            "{target} is not a loopback address: the load generator only targets this machine \
             (127.0.0.0/8 or [::1])"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(loopback("127.0.0.1:4317").is_ok());
        assert!(loopback("localhost:4317").is_ok());
        assert!(loopback("[::1]:4317").is_ok());
        assert!(loopback("10.0.0.1:4317").is_err());
        assert!(loopback("0.0.0.0:4317").is_err());
    }

    #[test]
    fn rejected_counts_are_read_from_answers() {
        let answer = ExportTraceServiceResponse {
            partial_success: Some(
                opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                    rejected_spans: 3,
                    error_message: "bad".into(),
                },
            ),
        };
        let body = answer.encode_to_vec();
        assert_eq!(rejected_items(Signal::Traces, Protocol::Grpc, &body), 3);
        assert_eq!(rejected_items(Signal::Traces, Protocol::Grpc, &[]), 0);
        let events = br#"{"accepted":1,"rejected":[{"index":1}]}"#;
        assert_eq!(rejected_items(Signal::Events, Protocol::Http, events), 1);
    }
}
