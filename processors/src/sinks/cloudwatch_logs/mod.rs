//! OTLP logs → CloudWatch Logs, each record in the log group and stream its resource maps to.
//!
//! One module, one job: [`config`], [`template`] (names from resource attributes), [`events`]
//! (records → JSON events, pure), [`batch`] (requests within the service limits, pure) and
//! [`writer`] (the thin I/O: create-and-cache, `PutLogEvents`, refusals, retries), which the
//! EMF sink shares.

pub mod batch;
pub mod config;
pub mod events;
pub mod template;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

use crate::decode::{Batch, SignalData};
use crate::sink::Sink;
pub use config::CloudWatchLogsConfig;
use events::{log_events, Destination};
use template::Template;
use writer::LogsWriter;

pub struct CloudWatchLogsSink {
    include_resource: bool,
    group: Template,
    stream: Template,
    writer: LogsWriter,
}

impl CloudWatchLogsSink {
    pub fn new(config: &CloudWatchLogsConfig) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let (group, stream) = config.templates().map_err(anyhow::Error::msg)?;
        Ok(CloudWatchLogsSink {
            include_resource: config.include_resource,
            group,
            stream,
            writer: LogsWriter::new(config.writer()),
        })
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
        _stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut all: BTreeMap<Destination, Vec<batch::LogEvent>> = BTreeMap::new();
        for b in batches {
            if let SignalData::Logs(request) = &b.data {
                // Records with no time of their own take the batch's publish time, which a
                // redelivery repeats (so its requests are recognised as already sent).
                let now_ms = (b.produced_at_unix_nano / 1_000_000) as i64;
                for (dest, events) in log_events(
                    request,
                    &self.group,
                    &self.stream,
                    self.include_resource,
                    now_ms,
                ) {
                    all.entry(dest).or_default().extend(events);
                }
            }
        }
        self.writer.put_all(all).await?;
        self.writer.forget_sent();
        Ok(())
    }
}
