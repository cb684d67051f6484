//! What every receiver does once it has read a request: split it by partition, hand it to
//! the pipeline, wait for durability, and say what was accepted. Receivers only translate
//! between their protocol and these calls.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use tidewater_proto::events::v1::{Event, PublishResponse, RejectedEvent};
use tidewater_proto::Signal;

use crate::config::CollectorConfig;
use crate::error::IngestError;
use crate::events::{self, Limits};
use crate::memory::Held;
use crate::partition::{self, Part, Rejected, Split, XraySegment};
use crate::pipeline::Pipeline;
use crate::redact::Redactor;
use crate::wire::WireError;

#[derive(Clone, Copy)]
pub enum Transport {
    Grpc,
    Http,
    Udp,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Udp => "udp",
        }
    }
}

pub struct Ingest {
    pipeline: Arc<Pipeline>,
    max_events_per_batch: usize,
    event_limits: Limits,
    redactor: Redactor,
}

impl Ingest {
    /// Fails when `[collector.redaction]` does not compile (or its key file cannot be read).
    pub fn new(pipeline: Arc<Pipeline>, config: &CollectorConfig) -> anyhow::Result<Self> {
        Ok(Ingest {
            redactor: Redactor::new(&config.redaction).map_err(anyhow::Error::msg)?,
            pipeline,
            max_events_per_batch: config.max_events_per_batch,
            event_limits: Limits {
                max_event_size: config.max_event_size.as_u64() as usize,
            },
        })
    }

    /// `request` is an encoded `ExportTraceServiceRequest`; it is split and stored as it came,
    /// never decoded (see [`crate::wire`]).
    #[tracing::instrument(level = "debug", name = "ingest", skip_all, fields(signal = "traces"))]
    pub async fn traces(
        &self,
        request: &[u8],
        transport: Transport,
        held: Held,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let rejected = self
            .otlp(
                Signal::Traces,
                transport,
                partition::split_traces,
                request,
                held,
            )
            .await?;
        Ok(ExportTraceServiceResponse {
            partial_success: rejected.map(|(count, error_message)| ExportTracePartialSuccess {
                rejected_spans: count,
                error_message,
            }),
        })
    }

    /// `request` is an encoded `ExportMetricsServiceRequest`.
    #[tracing::instrument(level = "debug", name = "ingest", skip_all, fields(signal = "metrics"))]
    pub async fn metrics(
        &self,
        request: &[u8],
        transport: Transport,
        held: Held,
    ) -> Result<ExportMetricsServiceResponse, IngestError> {
        let rejected = self
            .otlp(
                Signal::Metrics,
                transport,
                partition::split_metrics,
                request,
                held,
            )
            .await?;
        Ok(ExportMetricsServiceResponse {
            partial_success: rejected.map(|(count, error_message)| ExportMetricsPartialSuccess {
                rejected_data_points: count,
                error_message,
            }),
        })
    }

    /// `request` is an encoded `ExportLogsServiceRequest`.
    #[tracing::instrument(level = "debug", name = "ingest", skip_all, fields(signal = "logs"))]
    pub async fn logs(
        &self,
        request: &[u8],
        transport: Transport,
        held: Held,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let rejected = self
            .otlp(
                Signal::Logs,
                transport,
                partition::split_logs,
                request,
                held,
            )
            .await?;
        Ok(ExportLogsServiceResponse {
            partial_success: rejected.map(|(count, error_message)| ExportLogsPartialSuccess {
                rejected_log_records: count,
                error_message,
            }),
        })
    }

    async fn otlp(
        &self,
        signal: Signal,
        transport: Transport,
        split: fn(&[u8], u32) -> Result<Split, WireError>,
        request: &[u8],
        held: Held,
    ) -> Result<Option<(i64, String)>, IngestError> {
        // Before the split, so every part (and the resource a part is keyed by) is redacted.
        let redacted = self.redactor.otlp(signal, request);
        let request = redacted.as_deref().unwrap_or(request);
        let split = split(request, self.pipeline.partitions()).map_err(|e| {
            self.refuse(
                signal,
                IngestError::BadRequest(format!("invalid OTLP protobuf: {e}")),
            )
        })?;
        self.accept(
            signal,
            transport,
            split.received,
            split.parts,
            split.rejected,
            held,
        )
        .await
    }

    /// `events` holds each event of the request in order, or why it could not even be parsed.
    #[tracing::instrument(level = "debug", name = "ingest", skip_all, fields(signal = "events", events = events.len()))]
    pub async fn events(
        &self,
        events: Vec<Result<Event, RejectedEvent>>,
        transport: Transport,
        held: Held,
    ) -> Result<PublishResponse, IngestError> {
        if events.len() > self.max_events_per_batch {
            return Err(self.refuse(
                Signal::Events,
                IngestError::TooLarge(format!(
                    "batch has {} events; the limit is {}",
                    events.len(),
                    self.max_events_per_batch
                )),
            ));
        }
        let now = SystemTime::now();
        let received = events.len() as u64;
        let mut valid = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            // Before validation, so the size limit and the generated message id (a hash of the
            // content) see the redacted event.
            let event = event.map(|mut e| {
                self.redactor.event(&mut e);
                e
            });
            match event.and_then(|e| events::validate(e, index, now, &self.event_limits)) {
                Ok(e) => valid.push(e),
                Err(r) => rejected.push(r),
            }
        }
        let accepted = valid.len();
        let parts = partition::split_events(valid, self.pipeline.partitions());
        let summary = Rejected {
            count: rejected.len() as u64,
            message: rejected
                .first()
                .map(|r| format!("event {}: {}: {}", r.index, r.field, r.reason)),
        };
        self.accept(Signal::Events, transport, received, parts, summary, held)
            .await?;
        Ok(PublishResponse {
            accepted: accepted as u32,
            rejected,
        })
    }

    /// X-Ray segment documents, already checked by the UDP receiver.
    pub async fn xray_segments(&self, mut segments: Vec<XraySegment>) -> Result<(), IngestError> {
        let received = segments.len() as u64;
        // A document that cannot be read cannot be redacted: it is not published.
        segments.retain_mut(|s| match self.redactor.xray(&s.document) {
            Ok(Some(document)) => {
                s.document = document;
                true
            }
            Ok(None) => true,
            Err(_) => {
                metrics::counter!("tidewater_collector_xray_bad_datagrams_total", "reason" => "redaction").increment(1);
                false
            }
        });
        let parts = partition::split_xray_segments(segments, self.pipeline.partitions());
        self.accept(
            Signal::XraySegments,
            Transport::Udp,
            received,
            parts,
            Rejected::default(),
            Held::none(),
        )
        .await
        .map(|_| ())
    }

    /// Publishes `parts`, counts, and returns the partial-success report when items were
    /// rejected.
    async fn accept(
        &self,
        signal: Signal,
        transport: Transport,
        received: u64,
        parts: Vec<Part>,
        rejected: Rejected,
        held: Held,
    ) -> Result<Option<(i64, String)>, IngestError> {
        let label = signal.label();
        metrics::counter!("tidewater_collector_received_items_total", "signal" => label, "transport" => transport.label()).increment(received);
        let accepted: u64 = parts.iter().map(|p| p.items as u64).sum();
        if let Err(e) = self.pipeline.submit(signal, parts, held).await {
            return Err(self.refuse(signal, e));
        }
        metrics::counter!("tidewater_collector_accepted_items_total", "signal" => label)
            .increment(accepted);
        if rejected.count == 0 {
            return Ok(None);
        }
        metrics::counter!("tidewater_collector_rejected_items_total", "signal" => label)
            .increment(rejected.count);
        tracing::debug!(
            signal = label,
            rejected = rejected.count,
            reason = rejected.message.as_deref(),
            "rejected items"
        );
        Ok(Some((
            rejected.count as i64,
            rejected.message.unwrap_or_default(),
        )))
    }

    /// The bound a receiver counts a request's body against before handing it here.
    pub fn memory(&self) -> &std::sync::Arc<crate::memory::Memory> {
        self.pipeline.memory()
    }

    pub fn refuse(&self, signal: Signal, e: IngestError) -> IngestError {
        metrics::counter!("tidewater_collector_refused_requests_total", "signal" => signal.label(), "reason" => e.reason()).increment(1);
        e
    }
}
