//! The processor loop: poll the bus, decode, deliver to every sink, then checkpoint.
//!
//! A round's checkpoint moves only after every sink has acknowledged the whole round, so after
//! a crash at most the last un-checkpointed round per partition is delivered again (the bus is
//! at least once). A failing sink is retried with capped exponential backoff and jitter; the
//! round is never skipped.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures::future::join_all;
use rand::Rng;
use tidewater_bus::{Consumer, Position, Record};
use tokio_util::sync::CancellationToken;

use crate::config::ProcessorConfig;
use crate::decode::{decode, Batch};
use crate::sink::Sink;

pub struct Processor {
    config: ProcessorConfig,
    consumer: Box<dyn Consumer>,
    sinks: Vec<Arc<dyn Sink>>,
}

impl Processor {
    pub fn new(
        config: ProcessorConfig,
        consumer: Box<dyn Consumer>,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Self {
        Processor {
            config,
            consumer,
            sinks,
        }
    }

    /// Runs until `stop`; a round under way is finished and checkpointed first.
    pub async fn run(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(sinks = ?self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(), "processor running");
        while !stop.is_cancelled() {
            let records = tokio::select! {
                r = self.consumer.poll(self.config.max_poll_records, self.config.poll_wait) => r?,
                _ = stop.cancelled() => break,
            };
            if !records.is_empty() && !self.round(records, &stop).await? {
                break;
            }
            tick(&self.sinks, false).await;
        }
        tick(&self.sinks, true).await;
        // Hands what this processor held back at once (leases) instead of after it expires.
        if let Err(e) = self.consumer.close().await {
            tracing::warn!(error = %e, "bus consumer did not close cleanly");
        }
        tracing::info!("processor stopped");
        Ok(())
    }

    /// Delivers one round and checkpoints it. `false` when stopped before every sink took it.
    #[tracing::instrument(level = "debug", name = "round", skip_all, fields(records = records.len()))]
    async fn round(
        &mut self,
        records: Vec<Record>,
        stop: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let mut last: HashMap<String, Position> = HashMap::new();
        let mut batches = Vec::with_capacity(records.len());
        let now_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        for record in records {
            match decode(&record.payload) {
                Ok((batch, unreadable)) => {
                    for item in unreadable {
                        self.dead_letter(&record, &item.reason, &item.bytes)?;
                    }
                    let lag = now_nanos.saturating_sub(batch.produced_at_unix_nano) as f64 / 1e9;
                    metrics::gauge!("tidewater_processor_lag_seconds", "partition" => record.partition.clone()).set(lag);
                    metrics::counter!("tidewater_processor_consumed_items_total", "signal" => batch.signal.label()).increment(batch.item_count as u64);
                    batches.push(Arc::new(batch));
                }
                Err(reason) => self.dead_letter(&record, &reason, &record.payload)?,
            }
            metrics::counter!("tidewater_processor_consumed_records_total").increment(1);
            last.insert(record.partition, record.position);
        }
        let deliveries = self.sinks.iter().map(|sink| {
            let mine: Vec<Arc<Batch>> = batches
                .iter()
                .filter(|b| sink.accepts(b.signal))
                .cloned()
                .collect();
            deliver_with_retry(sink.clone(), mine, &self.config, stop)
        });
        if !join_all(deliveries)
            .await
            .into_iter()
            .all(|delivered| delivered)
        {
            return Ok(false);
        }
        for (partition, position) in last {
            if !self.commit(&partition, &position, stop).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Commits, retrying a failure (a full disk under the offsets file, the lease table
    /// throttling) with backoff until it succeeds or the processor stops: the round is
    /// delivered, and giving up would take the process down with it; after a stop, the round is
    /// delivered again, as after a crash. `false` if stopped first.
    async fn commit(
        &mut self,
        partition: &str,
        position: &Position,
        stop: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(&self.config);
        loop {
            match self.consumer.commit(partition, position).await {
                Ok(()) => return true,
                Err(e) => {
                    metrics::counter!("tidewater_processor_commit_failures_total").increment(1);
                    tracing::warn!(partition, error = %e, "checkpoint failed; retrying");
                    if !backoff.wait(stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// A record (or an item of one) no processor can read would block its partition forever:
    /// keep it, with the reason, where an operator can look, and move on. `payload` is the
    /// whole record, or the unreadable item's encoding.
    fn dead_letter(&self, record: &Record, reason: &str, payload: &[u8]) -> anyhow::Result<()> {
        tracing::error!(partition = %record.partition, position = %record.position, reason, "undecodable bus data dead-lettered");
        metrics::counter!("tidewater_processor_dead_letter_records_total", "reason" => "undecodable").increment(1);
        let dir: &PathBuf = &self.config.dead_letter_dir;
        std::fs::create_dir_all(dir)?;
        let line = serde_json::json!({
            "partition": record.partition,
            "position": record.position.to_string(),
            "reason": reason,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("bus-records.ndjson"))?;
        writeln!(f, "{line}")?;
        f.sync_data()?;
        Ok(())
    }
}

/// Lets every sink send what it holds that is due; a failure is retried at the next tick.
async fn tick(sinks: &[Arc<dyn Sink>], stopping: bool) {
    for sink in sinks {
        if let Err(e) = sink.tick(stopping).await {
            metrics::counter!("tidewater_processor_sink_failures_total", "sink" => sink.name())
                .increment(1);
            tracing::warn!(sink = sink.name(), error = %e, stopping, "sink tick failed; will retry");
        }
    }
}

/// `true` once the sink took everything; `false` if stopped first.
#[tracing::instrument(level = "debug", name = "deliver", skip_all, fields(sink = sink.name(), batches = batches.len()))]
async fn deliver_with_retry(
    sink: Arc<dyn Sink>,
    batches: Vec<Arc<Batch>>,
    config: &ProcessorConfig,
    stop: &CancellationToken,
) -> bool {
    if batches.is_empty() {
        return true;
    }
    let mut backoff = Backoff::new(config);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match sink.deliver(&batches, stop).await {
            Ok(()) => {
                metrics::counter!("tidewater_processor_delivered_batches_total", "sink" => sink.name()).increment(batches.len() as u64);
                return true;
            }
            Err(e) => {
                metrics::counter!("tidewater_processor_sink_failures_total", "sink" => sink.name())
                    .increment(1);
                tracing::warn!(sink = sink.name(), attempt, error = %e, "sink failed; retrying");
                if !backoff.wait(stop).await {
                    return false;
                }
            }
        }
    }
}

/// The processor's wait between attempts of a delivery or a checkpoint: capped exponential
/// (`processor.retry_initial` to `retry_max`), jittered.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &ProcessorConfig) -> Self {
        Backoff {
            next: config.retry_initial,
            max: config.retry_max,
        }
    }

    /// Waits before the next attempt; `false` if the processor stopped first.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let wait = jittered(self.next);
        tracing::debug!(retry_in = ?wait, "waiting before the next attempt");
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// Equal jitter: between half and all of `max`, so processors retrying together spread out.
pub fn jittered(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos.max(1)))
}
