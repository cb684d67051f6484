//! The `PutLogEvents` machinery both CloudWatch sinks share: log groups and streams created on
//! first use and cached (no describe call per batch), requests within the limits
//! ([`super::batch`]), partial refusals (`rejectedLogEventsInfo`) dead-lettered, throttling and
//! transient errors retried.
//!
//! Retries: the SDK's standard retry mode (exponential backoff with jitter, throttling-aware)
//! retries each request up to `max_attempts`; past that the call fails and the processor
//! retries the round with its own backoff. Requests of a failed call that did succeed are
//! remembered by fingerprint and not sent again on that retry ([`LogsWriter::forget_sent`]
//! clears them once the caller is done).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use futures::StreamExt;
use tokio::sync::OnceCell;
use xxhash_rust::xxh3::Xxh3;

use super::batch::{batches, event_bytes, rejected, split_oversized, Limits, LogEvent};
use super::events::Destination;

/// The retention periods CloudWatch Logs accepts, in days.
pub const RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Names this many streams at most before the cache starts over (a cache miss only costs a
/// `CreateLogStream` that answers "already exists").
const MAX_CACHED_STREAMS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Label of the sink in metrics and in the dead-letter file name.
    pub sink: &'static str,
    /// Retention set on groups this writer creates; 0 leaves CloudWatch's default (never
    /// expire).
    pub retention_days: u32,
    pub limits: Limits,
    /// Oversized events are split with markers (logs) or dead-lettered (EMF documents, which
    /// are only meaningful whole and are built to fit).
    pub split_oversized: bool,
    /// Streams written at the same time.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub dead_letter_dir: PathBuf,
}

pub struct LogsWriter {
    config: WriterConfig,
    client: OnceCell<Client>,
    groups: Mutex<HashSet<String>>,
    streams: Mutex<HashSet<Destination>>,
    sent: Mutex<HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds a valid set.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogsWriter {
    pub fn new(config: WriterConfig) -> Self {
        LogsWriter {
            config,
            client: OnceCell::new(),
            groups: Mutex::default(),
            streams: Mutex::default(),
            sent: Mutex::default(),
        }
    }

    /// The client, made on first use from the standard AWS configuration chain.
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
                let retry = RetryConfig::standard()
                    .with_max_attempts(self.config.max_attempts.max(1))
                    .with_initial_backoff(self.config.retry_initial)
                    .with_max_backoff(self.config.retry_max);
                let conf = aws_sdk_cloudwatchlogs::config::Builder::from(&shared)
                    .retry_config(retry)
                    .build();
                Client::from_conf(conf)
            })
            .await
    }

    /// Sends every destination's events, `concurrency` streams at a time. An error means some
    /// request failed after its retries; call again with the same events.
    pub async fn put_all(
        &self,
        by_destination: BTreeMap<Destination, Vec<LogEvent>>,
    ) -> anyhow::Result<()> {
        self.put_each(by_destination)
            .await
            .into_iter()
            .try_for_each(|(_, r)| r)
    }

    /// Like [`LogsWriter::put_all`], with the outcome per destination.
    pub async fn put_each(
        &self,
        by_destination: BTreeMap<Destination, Vec<LogEvent>>,
    ) -> Vec<(Destination, anyhow::Result<()>)> {
        futures::stream::iter(by_destination)
            .map(|(dest, events)| async move {
                let result = self.put(&dest.0, &dest.1, events).await;
                (dest, result)
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await
    }

    /// Sends `events` to one stream, in as many requests as the limits need.
    pub async fn put(
        &self,
        group: &str,
        stream: &str,
        events: Vec<LogEvent>,
    ) -> anyhow::Result<()> {
        let limits = self.config.limits;
        let sink = self.config.sink;
        let mut ready = Vec::with_capacity(events.len());
        for e in events {
            if event_bytes(&e) <= limits.max_event_bytes {
                ready.push(e);
            } else if self.config.split_oversized {
                metrics::counter!("tidewater_cloudwatch_logs_split_events_total", "sink" => sink)
                    .increment(1);
                ready.extend(split_oversized(e, limits.max_message()));
            } else {
                self.dead_letter(group, stream, std::slice::from_ref(&e), "too_large")?;
            }
        }
        for (i, batch) in batches(ready, &limits).into_iter().enumerate() {
            let fp = fingerprint(group, stream, i, &batch);
            if lock(&self.sent).contains(&fp) {
                continue;
            }
            self.put_batch(group, stream, &batch).await?;
            lock(&self.sent).insert(fp);
        }
        Ok(())
    }

    /// Forgets which requests were sent: the caller's events are all delivered.
    pub fn forget_sent(&self) {
        lock(&self.sent).clear();
    }

    async fn put_batch(&self, group: &str, stream: &str, batch: &[LogEvent]) -> anyhow::Result<()> {
        let sink = self.config.sink;
        self.ensure(group, stream).await?;
        let input = batch
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut recreated = false;
        loop {
            let result = self
                .client()
                .await
                .put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .set_log_events(Some(input.clone()))
                .send()
                .await;
            metrics::counter!("tidewater_cloudwatch_logs_requests_total", "sink" => sink)
                .increment(1);
            match result {
                Ok(out) => {
                    let refused = out
                        .rejected_log_events_info()
                        .map(|r| {
                            rejected(
                                batch.len(),
                                r.too_new_log_event_start_index(),
                                r.too_old_log_event_end_index(),
                                r.expired_log_event_end_index(),
                            )
                        })
                        .unwrap_or_default();
                    for reason in ["too_new", "too_old", "expired"] {
                        let events: Vec<LogEvent> = refused
                            .iter()
                            .filter(|(_, r)| *r == reason)
                            .map(|(i, _)| batch[*i].clone())
                            .collect();
                        if !events.is_empty() {
                            self.dead_letter(group, stream, &events, reason)?;
                        }
                    }
                    metrics::counter!("tidewater_cloudwatch_logs_events_total", "sink" => sink)
                        .increment((batch.len() - refused.len()) as u64);
                    return Ok(());
                }
                Err(e) => {
                    let service = e.as_service_error();
                    if !recreated && service.is_some_and(|s| s.is_resource_not_found_exception()) {
                        // Deleted since we cached it: create it again, once.
                        lock(&self.groups).remove(group);
                        lock(&self.streams).remove(&(group.to_string(), stream.to_string()));
                        self.ensure(group, stream).await?;
                        recreated = true;
                        continue;
                    }
                    if service.is_some_and(|s| s.is_invalid_parameter_exception()) {
                        // The request itself is refused and will be every time: keep its
                        // events with the reason rather than block every later one.
                        let reason = format!("invalid_parameter: {}", DisplayErrorContext(&e));
                        self.dead_letter(group, stream, batch, &reason)?;
                        return Ok(());
                    }
                    return Err(anyhow::anyhow!(
                        "PutLogEvents to {group}/{stream}: {}",
                        DisplayErrorContext(&e)
                    ));
                }
            }
        }
    }

    /// Creates the group (with retention when configured) and the stream unless this writer
    /// already knows they exist.
    async fn ensure(&self, group: &str, stream: &str) -> anyhow::Result<()> {
        let dest = (group.to_string(), stream.to_string());
        if lock(&self.streams).contains(&dest) {
            return Ok(());
        }
        let client = self.client().await;
        let sink = self.config.sink;
        if !lock(&self.groups).contains(group) {
            match client.create_log_group().log_group_name(group).send().await {
                Ok(_) => {
                    metrics::counter!("tidewater_cloudwatch_logs_groups_created_total", "sink" => sink).increment(1);
                    tracing::info!(sink, group, "log group created");
                    if self.config.retention_days > 0 {
                        // Only on groups we create: an existing group's retention is its
                        // owner's choice. A failure here loses no data, so it is reported,
                        // not retried.
                        if let Err(e) = client
                            .put_retention_policy()
                            .log_group_name(group)
                            .retention_in_days(self.config.retention_days as i32)
                            .send()
                            .await
                        {
                            metrics::counter!("tidewater_cloudwatch_logs_retention_failures_total", "sink" => sink).increment(1);
                            tracing::warn!(sink, group, error = %DisplayErrorContext(&e), "could not set log group retention");
                        }
                    }
                }
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "CreateLogGroup {group}: {}",
                        DisplayErrorContext(&e)
                    ))
                }
            }
            lock(&self.groups).insert(group.to_string());
        }
        match client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => {
                metrics::counter!("tidewater_cloudwatch_logs_streams_created_total", "sink" => sink).increment(1);
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
            Err(e) => {
                lock(&self.groups).remove(group);
                return Err(anyhow::anyhow!(
                    "CreateLogStream {group}/{stream}: {}",
                    DisplayErrorContext(&e)
                ));
            }
        }
        let mut streams = lock(&self.streams);
        if streams.len() >= MAX_CACHED_STREAMS {
            streams.clear();
        }
        streams.insert(dest);
        Ok(())
    }

    /// Keeps refused events, with the reason, where an operator can look; they are not
    /// retried (the service would refuse them again).
    fn dead_letter(
        &self,
        group: &str,
        stream: &str,
        events: &[LogEvent],
        reason: &str,
    ) -> anyhow::Result<()> {
        let sink = self.config.sink;
        let label = reason.split(':').next().unwrap_or(reason).to_string();
        metrics::counter!("tidewater_cloudwatch_logs_rejected_events_total", "sink" => sink, "reason" => label)
            .increment(events.len() as u64);
        tracing::warn!(
            sink,
            group,
            stream,
            reason,
            events = events.len(),
            "log events refused; dead-lettered"
        );
        let dir = &self.config.dead_letter_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(format!("{sink}.ndjson"));
        let mut text = String::new();
        for e in events {
            let line = serde_json::json!({
                "log_group": group,
                "log_stream": stream,
                "reason": reason,
                "timestamp": e.timestamp_ms,
                "message": e.message,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        Ok(())
    }
}

/// Identifies request `index` of a call by what it carries.
fn fingerprint(group: &str, stream: &str, index: usize, batch: &[LogEvent]) -> u64 {
    let mut h = Xxh3::new();
    h.update(group.as_bytes());
    h.update(&[0]);
    h.update(stream.as_bytes());
    h.update(&[0]);
    h.update(&index.to_le_bytes());
    for e in batch {
        h.update(&e.timestamp_ms.to_le_bytes());
        h.update(e.message.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}
