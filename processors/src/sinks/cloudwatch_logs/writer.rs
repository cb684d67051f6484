//! The `PutLogEvents` call both CloudWatch sinks make through the delivery engine: their items
//! (a [`LogItem`]: an event and its log group and stream) cut into requests within the limits
//! ([`calls`]), and one request made ([`LogsWriter::put`]): the group and stream created on
//! first use and cached (no describe call per batch), created again when CloudWatch says one
//! vanished, and the answer classified ([`super::answer`]). Retries, concurrency and dead
//! letters are the engine's.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::answer;
use super::api::LogsApi;
use super::batch::{batches_by, Limits, LogEvent};
use super::events::Destination;
use crate::delivery::Answer;
use crate::sinks::aws_sdk::CallFailure;

/// The retention periods CloudWatch Logs accepts, in days.
pub const RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Names this many streams at most before the cache starts over (a cache miss only costs a
/// `CreateLogStream` that answers "already exists").
const MAX_CACHED_STREAMS: usize = 100_000;

/// One event and where it goes: the engine's item for both CloudWatch sinks. The destination
/// is shared by the events of a resource, not copied into each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogItem {
    pub destination: Arc<Destination>,
    pub event: LogEvent,
}

impl AsRef<LogItem> for LogItem {
    fn as_ref(&self) -> &LogItem {
        self
    }
}

/// Items into requests: one destination per request (`PutLogEvents` names one stream), each
/// within the limits and sorted by time, so any part of one is a valid request too.
pub fn calls<T: AsRef<LogItem>>(items: Vec<T>, limits: &Limits) -> Vec<Vec<T>> {
    let mut by_destination: BTreeMap<Arc<Destination>, Vec<T>> = BTreeMap::new();
    for item in items {
        let dest = item.as_ref().destination.clone();
        by_destination.entry(dest).or_default().push(item);
    }
    by_destination
        .into_values()
        .flat_map(|items| batches_by(items, limits, |i| &i.as_ref().event))
        .collect()
}

/// What a dead-letter line keeps of an event: where it was going and the event itself, enough
/// to send it again by hand.
pub fn describe(item: &LogItem) -> Value {
    json!({
        "log_group": item.destination.0,
        "log_stream": item.destination.1,
        "timestamp": item.event.timestamp_ms,
        "message": item.event.message,
    })
}

pub struct LogsWriter {
    /// The sink's name, as a label of the creation metrics.
    sink: &'static str,
    api: Arc<dyn LogsApi>,
    /// Retention set on groups this writer creates; 0 leaves CloudWatch's default (never
    /// expire).
    retention_days: u32,
    groups: Mutex<HashSet<String>>,
    streams: Mutex<HashSet<Destination>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds a valid set.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogsWriter {
    pub fn new(sink: &'static str, api: Arc<dyn LogsApi>, retention_days: u32) -> Self {
        LogsWriter {
            sink,
            api,
            retention_days,
            groups: Mutex::default(),
            streams: Mutex::default(),
        }
    }

    /// One `PutLogEvents` of `items` (one call of [`calls`]: a single destination), after
    /// making sure its group and stream exist.
    pub async fn put<T: AsRef<LogItem>>(&self, items: &[T]) -> Answer {
        let Some(first) = items.first() else {
            return Answer::Stored;
        };
        let (group, stream) = &*first.as_ref().destination;
        let events: Vec<&LogEvent> = items.iter().map(|i| &i.as_ref().event).collect();
        if let Err(answer) = self.ensure(group, stream, events.len()).await {
            return answer;
        }
        let mut result = self.api.put_log_events(group, stream, &events).await;
        if matches!(&result, Err(f) if f.is("ResourceNotFoundException")) {
            // Deleted since we cached it: create it again, once within this call.
            self.forget(group, stream);
            if let Err(answer) = self.ensure(group, stream, events.len()).await {
                return answer;
            }
            result = self.api.put_log_events(group, stream, &events).await;
        }
        match result {
            Ok(rejected) => answer::for_put(events.len(), &rejected),
            Err(f) => answer::for_failure(events.len(), &f),
        }
    }

    fn forget(&self, group: &str, stream: &str) {
        lock(&self.groups).remove(group);
        lock(&self.streams).remove(&(group.to_string(), stream.to_string()));
    }

    /// Creates the group (with retention when configured) and the stream unless this writer
    /// already knows they exist; `Err` is the answer for the `len` events of the call.
    async fn ensure(&self, group: &str, stream: &str, len: usize) -> Result<(), Answer> {
        let dest = (group.to_string(), stream.to_string());
        if lock(&self.streams).contains(&dest) {
            return Ok(());
        }
        let sink = self.sink;
        if !lock(&self.groups).contains(group) {
            match self.api.create_log_group(group).await {
                Ok(()) => {
                    metrics::counter!("tidewater_cloudwatch_logs_groups_created_total", "sink" => sink).increment(1);
                    tracing::info!(sink, group, "log group created");
                    if self.retention_days > 0 {
                        self.set_retention(group).await;
                    }
                }
                Err(f) if f.is("ResourceAlreadyExistsException") => {}
                Err(f) => return Err(answer::for_setup(len, "CreateLogGroup", group, &f)),
            }
            lock(&self.groups).insert(group.to_string());
        }
        match self.api.create_log_stream(group, stream).await {
            Ok(()) => {
                metrics::counter!("tidewater_cloudwatch_logs_streams_created_total", "sink" => sink).increment(1);
            }
            Err(f) if f.is("ResourceAlreadyExistsException") => {}
            Err(f) => {
                // The group may be what is missing: the next attempt creates it again.
                lock(&self.groups).remove(group);
                let name = format!("{group}/{stream}");
                return Err(answer::for_setup(len, "CreateLogStream", &name, &f));
            }
        }
        let mut streams = lock(&self.streams);
        if streams.len() >= MAX_CACHED_STREAMS {
            streams.clear();
        }
        streams.insert(dest);
        Ok(())
    }

    /// Only on groups we create: an existing group's retention is its owner's choice. A
    /// failure here loses no data, so it is reported, not retried.
    async fn set_retention(&self, group: &str) {
        let sink = self.sink;
        if let Err(CallFailure { code, message, .. }) = self
            .api
            .put_retention_policy(group, self.retention_days)
            .await
        {
            metrics::counter!("tidewater_cloudwatch_logs_retention_failures_total", "sink" => sink)
                .increment(1);
            tracing::warn!(sink, group, code = ?code, error = %message, "could not set log group retention");
        }
    }
}
