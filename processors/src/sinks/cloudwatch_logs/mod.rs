//! OTLP logs → CloudWatch Logs, each record in the log group and stream its resource maps to,
//! on the delivery engine.
//!
//! One module, one job: [`config`], [`template`] (names from resource attributes), [`events`]
//! (records → JSON events, pure), [`batch`] (requests within the service limits, pure),
//! [`api`] (the SDK calls), [`writer`] (one `PutLogEvents` with its group and stream created
//! and cached) and [`answer`] (what CloudWatch's answer means), the last four shared with the
//! EMF sink. The sink translates a round into events, splits those over the event size into
//! marked parts, and hands them to its [`Engine`], which owns retries, concurrency, the
//! dead-letter file (`<delivery.dead_letter_dir>/cloudwatch_logs.ndjson`) and the
//! `tidewater_sink_*` metrics.

pub mod answer;
pub mod api;
pub mod batch;
pub mod config;
pub mod events;
pub mod template;
#[cfg(test)]
pub mod tests;
pub mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

use crate::decode::{Batch, SignalData};
use crate::delivery::{Answer, Engine, Service};
use crate::sink::Sink;
use api::{CloudWatchLogs, LogsApi};
use batch::{split_oversized, Limits};
pub use config::CloudWatchLogsConfig;
use events::log_events;
use template::Template;
use writer::{LogItem, LogsWriter};

pub struct CloudWatchLogsSink {
    include_resource: bool,
    group: Template,
    stream: Template,
    engine: Engine<LogsService>,
}

impl CloudWatchLogsSink {
    pub fn new(config: &CloudWatchLogsConfig) -> anyhow::Result<Self> {
        Self::with_api(config, Arc::new(CloudWatchLogs::default()))
    }

    /// With another implementation of the CloudWatch calls (unit tests).
    pub fn with_api(config: &CloudWatchLogsConfig, api: Arc<dyn LogsApi>) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let (group, stream) = config.templates().map_err(anyhow::Error::msg)?;
        let service = LogsService {
            writer: LogsWriter::new("cloudwatch_logs", api, config.retention_days),
            limits: config::limits(config.max_event_size),
        };
        Ok(CloudWatchLogsSink {
            include_resource: config.include_resource,
            group,
            stream,
            engine: Engine::new(service, config.delivery.clone()),
        })
    }

    /// A round's records as the engine's items, events over the size limit split into parts.
    fn items(&self, batches: &[Arc<Batch>]) -> Vec<LogItem> {
        let max_message = self.engine.service().limits.max_message();
        let mut items = Vec::new();
        let mut split = 0u64;
        for b in batches {
            let SignalData::Logs(request) = &b.data else {
                continue;
            };
            // Records with no time of their own take the batch's publish time, which a
            // redelivery repeats, so a round sent again is the same events.
            let now_ms = (b.produced_at_unix_nano / 1_000_000) as i64;
            let by_destination = log_events(
                request,
                &self.group,
                &self.stream,
                self.include_resource,
                now_ms,
            );
            for (dest, events) in by_destination {
                let destination = Arc::new(dest);
                for event in events {
                    let parts = split_oversized(event, max_message);
                    if parts.len() > 1 {
                        split += 1;
                    }
                    items.extend(parts.into_iter().map(|event| LogItem {
                        destination: destination.clone(),
                        event,
                    }));
                }
            }
        }
        if split > 0 {
            metrics::counter!("tidewater_cloudwatch_logs_split_events_total", "sink" => "cloudwatch_logs")
                .increment(split);
        }
        items
    }
}

#[async_trait]
impl Sink for CloudWatchLogsSink {
    fn name(&self) -> &'static str {
        "cloudwatch_logs"
    }

    fn accepts(&self, signal: Signal) -> bool {
        signal == Signal::Logs
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let items = self.items(batches);
        self.engine.deliver(items, stop).await?;
        Ok(())
    }
}

/// The log events' [`Service`]: requests per stream within the limits, one `PutLogEvents`.
/// Events arrive already split to fit, so nothing is refused before a call.
pub struct LogsService {
    writer: LogsWriter,
    limits: Limits,
}

#[async_trait]
impl Service for LogsService {
    type Item = LogItem;

    fn name(&self) -> &'static str {
        "cloudwatch_logs"
    }

    fn calls(&self, items: Vec<LogItem>) -> Vec<Vec<LogItem>> {
        writer::calls(items, &self.limits)
    }

    async fn call(&self, items: &[LogItem]) -> Answer {
        self.writer.put(items).await
    }

    fn describe(&self, item: &LogItem) -> serde_json::Value {
        writer::describe(item)
    }
}
