//! Traces, metrics and logs out over OTLP, on the delivery engine: to any OTLP endpoint
//! (an OpenTelemetry Collector, Honeycomb, ...) over HTTP/protobuf or gRPC, and to AWS's own
//! OTLP endpoints, X-Ray (Transaction Search: W3C trace ids kept, spans not cut into segment
//! documents) and CloudWatch Logs, signed with SigV4.
//!
//! - `config.rs`: `[sinks.otlp]` and the `aws` preset;
//! - `request.rs`: a round's batches into items (one scope with its resource, or a piece of
//!   one) and calls within `max_request_size` / `max_request_items`, pure;
//! - `service.rs`: the transports (HTTP with gzip, headers, custom CA, SigV4; gRPC) and the
//!   engine's [`crate::delivery::Service`];
//! - `classify.rs`: what the endpoint's answer means, including OTLP's partial success.
//!
//! Retries, halving, bisecting, concurrency, the dead-letter file and the `tidewater_sink_*`
//! metrics are the engine's. The sink's own: the partial-success records (written to the same
//! dead-letter file before the round is acknowledged) and `tidewater_otlp_exported_total` /
//! `tidewater_otlp_rejected_total{signal}`, counted in spans, data points and log records.

pub mod classify;
pub mod config;
pub mod request;
pub mod service;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

pub use config::OtlpSinkConfig;

use crate::decode::Batch;
use crate::delivery::backoff::Backoff;
use crate::delivery::dead_letter::DeadLetters;
use crate::delivery::{Engine, Refusal};
use crate::sink::Sink;
use config::SignalKind;
use service::{Exporter, OtlpService, Rejection, NAME};

pub struct OtlpSink {
    signals: Vec<SignalKind>,
    max_size: usize,
    max_items: usize,
    engine: Engine<OtlpService>,
    /// The partial-success records, in the engine's dead-letter file.
    rejections: DeadLetters,
    rounds: AtomicU64,
    summary: String,
}

impl OtlpSink {
    pub fn new(config: &OtlpSinkConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        Self::with_exporter(config, service::exporter(config)?)
    }

    /// With another transport (unit tests).
    pub fn with_exporter(
        config: &OtlpSinkConfig,
        exporter: Arc<dyn Exporter>,
    ) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let max_size = config.max_request_size.as_u64() as usize;
        let service = OtlpService::new(exporter, max_size, config.max_request_items);
        let d = &config.delivery;
        Ok(OtlpSink {
            signals: config.signals(),
            max_size,
            max_items: config.max_request_items,
            rejections: DeadLetters::new(
                NAME,
                d.dead_letter_path(NAME),
                Backoff::new(d.retry_initial, d.retry_max),
            ),
            engine: Engine::new(service, d.clone()),
            rounds: AtomicU64::new(0),
            summary: describe(config),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "{}; dead letters in {}",
            self.summary,
            self.engine.dead_letter_path().display()
        )
    }
}

/// What `check-config` prints: where each signal goes and how; never a header's value.
pub fn describe(config: &OtlpSinkConfig) -> String {
    let targets: Vec<String> = config
        .signals()
        .into_iter()
        .map(|s| {
            let to = match config.protocol {
                config::Protocol::Grpc => config.endpoint.clone(),
                config::Protocol::HttpProtobuf => config
                    .http_url(s)
                    .unwrap_or_else(|| s.aws_endpoint("<region>")),
            };
            format!("{} → {to}", s.name())
        })
        .collect();
    let headers: Vec<&str> = config.headers.keys().map(String::as_str).collect();
    format!(
        "sink otlp: {} ({:?}, {:?}{}{})",
        targets.join(", "),
        config.protocol,
        config.compression,
        if config.signs() { ", SigV4" } else { "" },
        if headers.is_empty() {
            String::new()
        } else {
            format!(", headers {}", headers.join(" "))
        }
    )
}

fn signal_kind(signal: Signal) -> Option<SignalKind> {
    match signal {
        Signal::Traces => Some(SignalKind::Traces),
        Signal::Metrics => Some(SignalKind::Metrics),
        Signal::Logs => Some(SignalKind::Logs),
        _ => None,
    }
}

fn rejection_record(r: &Rejection) -> serde_json::Value {
    let mut out = json!({
        "signal": r.signal.name(),
        "rejected": r.partial.rejected,
        "request": r.summary,
    });
    out["note"] = json!(
        "OTLP partial success: the endpoint stored the rest of the request and does not say which items it rejected"
    );
    out
}

#[async_trait]
impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn accepts(&self, signal: Signal) -> bool {
        signal_kind(signal).is_some_and(|s| self.signals.contains(&s))
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let round = self.rounds.fetch_add(1, Ordering::Relaxed);
        let (owned, signals) = (batches.to_vec(), self.signals.clone());
        let (max_size, max_items) = (self.max_size, self.max_items);
        // Cutting and copying a round's data is CPU work: off the async workers.
        let items = tokio::task::spawn_blocking(move || {
            request::items(&owned, &signals, round, max_size, max_items)
        })
        .await?;
        let delivered = self.engine.deliver(items, stop).await;
        let rejections = self.engine.service().take_rejections(round);
        delivered?;
        if !rejections.is_empty() {
            let refusals: Vec<Refusal<Rejection>> = rejections
                .into_iter()
                .map(|r| Refusal {
                    code: "partial_success".into(),
                    message: if r.partial.message.is_empty() {
                        format!(
                            "the endpoint rejected {} {}",
                            r.partial.rejected,
                            r.signal.name()
                        )
                    } else {
                        r.partial.message.clone()
                    },
                    item: r,
                })
                .collect();
            self.rejections
                .write(&refusals, rejection_record, stop)
                .await?;
        }
        Ok(())
    }
}
