//! OTLP metrics (and request metrics from spans) → CloudWatch metrics, as Embedded Metric
//! Format documents written to CloudWatch Logs, which extracts the metrics.
//!
//! # Windows and the checkpoint
//!
//! The processor checkpoints a round once every sink's `deliver` returned `Ok`, but this sink
//! sends a window's aggregate only after the window closed: the data of an acknowledged round
//! lives in memory for up to `window + grace`. So `deliver` returns `Ok` only once the round
//! is folded into the windows **and** the state file (`state_dir/emf-state.json`: open
//! windows, cumulative baselines, rendered-but-unsent documents, recent bus record ids) is
//! written and fsynced; a write that fails (a full disk) is retried with backoff until it
//! succeeds or the processor stops. The runtime's `tick` then sends windows as they close:
//! documents are rendered into the persisted pending list first, sent through the delivery
//! engine ([`service`]), and removed (and the file rewritten) once CloudWatch stored them or
//! the engine dead-lettered them (`<delivery.dead_letter_dir>/emf.ndjson`). A tick sends for
//! at most `delivery.retry_max` (at least a second): while CloudWatch is down the documents
//! wait in the state file, and the processor goes on folding rounds between ticks.
//!
//! Restart behaviour:
//! - open windows and unsent documents come back from the state file and are sent then;
//! - cumulative baselines come back too, so the first export after a restart is differenced
//!   against the last one seen, not sent whole as a spike (and with the default
//!   `keep_first_value = false`, a series this sink never saw sends nothing for its first
//!   point either);
//! - a crash after the state file was written but before the checkpoint moved makes the bus
//!   deliver that round again: the remembered record ids (`dedup_records`) skip it, and a
//!   cumulative point is in any case not newer than its baseline, so nothing is counted twice;
//! - a crash between a successful `PutLogEvents` and the rewrite of the state file sends
//!   those documents again (at least once, like the bus), as does a tick whose time ran out
//!   while CloudWatch was storing a call (the engine stops without its answer).
//!
//! A state file that cannot be read is moved aside (`.corrupt`) and the sink starts empty: the
//! open windows in it are lost, and with `keep_first_value` the next points are sent whole.
//!
//! Rewriting the whole state each round keeps this simple; its size is bounded by
//! `max_series` and the open windows' groups.

pub mod config;
pub mod service;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidewater_proto::Signal;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::decode::{Batch, SignalData};
use crate::delivery::{Backoff, Engine, Report, Stopped};
use crate::emf::document::{documents, DocLimits};
use crate::emf::{Settings, State, Stats};
use crate::sink::Sink;
use crate::sinks::cloudwatch_logs::api::{CloudWatchLogs, LogsApi};
use crate::sinks::cloudwatch_logs::batch::{LogEvent, EVENT_OVERHEAD};
use crate::sinks::cloudwatch_logs::writer::LogItem;
pub use config::EmfConfig;
use service::{Doc, EmfService};

const STATE_FILE: &str = "emf-state.json";
const STATE_VERSION: u32 = 1;

/// A rendered document waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Pending {
    log_stream: String,
    timestamp_ms: i64,
    document: String,
}

/// Bus record ids already folded (as 64-bit hashes, to keep the state file small), oldest
/// first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Recent {
    order: VecDeque<u64>,
    #[serde(skip)]
    set: HashSet<u64>,
}

impl Recent {
    fn contains(&self, id: u64) -> bool {
        self.set.contains(&id)
    }

    fn push(&mut self, id: u64, capacity: usize) {
        if self.set.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn rebuild(&mut self) {
        self.set = self.order.iter().cloned().collect();
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    state: State,
    pending: Vec<Pending>,
    recent: Recent,
}

impl Persisted {
    fn empty() -> Self {
        Persisted {
            version: STATE_VERSION,
            state: State::default(),
            pending: Vec::new(),
            recent: Recent::default(),
        }
    }
}

pub struct EmfSink {
    config: EmfConfig,
    settings: Settings,
    log_group: String,
    state_path: PathBuf,
    engine: Engine<EmfService>,
    /// How long one tick may send.
    budget: Duration,
    /// Held by the tick that is sending: the documents it took stay the first of the pending
    /// list (only a tick adds to it) until it removes those that are done.
    sending: Mutex<()>,
    inner: Mutex<Persisted>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A bus record's id as a 64-bit hash; `None` for records without one.
fn record_key(id: &[u8]) -> Option<u64> {
    (!id.is_empty()).then(|| xxhash_rust::xxh3::xxh3_64(id))
}

impl EmfSink {
    pub fn new(config: &EmfConfig) -> anyhow::Result<Self> {
        Self::with_api(config, Arc::new(CloudWatchLogs::default()))
    }

    /// With another implementation of the CloudWatch calls (unit tests).
    pub fn with_api(config: &EmfConfig, api: Arc<dyn LogsApi>) -> anyhow::Result<Self> {
        let settings = config.settings().map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("create EMF state dir {}", config.state_dir.display()))?;
        let state_path = config.state_dir.join(STATE_FILE);
        let persisted = load(&state_path)?;
        tracing::info!(
            groups = persisted.state.windows.len(),
            series = persisted.state.delta.len(),
            pending = persisted.pending.len(),
            "EMF state loaded"
        );
        let service = EmfService::new(api, config.retention_days, config.limits());
        Ok(EmfSink {
            settings,
            log_group: config.log_group_name(),
            state_path,
            engine: Engine::new(service, config.delivery.clone()),
            budget: config.delivery.retry_max.max(Duration::from_secs(1)),
            sending: Mutex::new(()),
            config: config.clone(),
            inner: Mutex::new(persisted),
        })
    }

    async fn persist(&self, p: &Persisted) -> anyhow::Result<()> {
        let text = serde_json::to_vec(p)?;
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &text)).await?
    }

    /// Writes the state, retrying a failure with backoff: a round is acknowledged only once
    /// it is durable, and giving up would only make the processor deliver it again. `Err`
    /// only when stopped first.
    async fn persist_until_written(
        &self,
        p: &Persisted,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let cfg = self.engine.config();
        let mut backoff = Backoff::new(cfg.retry_initial, cfg.retry_max);
        loop {
            match self.persist(p).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    metrics::counter!("tidewater_emf_state_write_failures_total").increment(1);
                    tracing::error!(path = %self.state_path.display(), error = %e, "cannot write the EMF state; retrying");
                    if !backoff.wait(stop).await {
                        return Err(e.context("stopped before the EMF state was written"));
                    }
                }
            }
        }
    }

    /// The pending documents as the engine's items, `index` being their place in `pending`.
    fn docs(&self, pending: Vec<Pending>) -> Vec<Doc> {
        let mut destinations: HashMap<String, Arc<(String, String)>> = HashMap::new();
        pending
            .into_iter()
            .enumerate()
            .map(|(index, d)| {
                let destination = destinations
                    .entry(d.log_stream.clone())
                    .or_insert_with(|| Arc::new((self.log_group.clone(), d.log_stream)))
                    .clone();
                let event = LogEvent {
                    timestamp_ms: d.timestamp_ms,
                    message: d.document,
                };
                Doc {
                    index,
                    log: LogItem { destination, event },
                }
            })
            .collect()
    }

    /// Sends `docs` through the engine for at most the tick's budget.
    async fn send(&self, docs: Vec<Doc>) -> Result<Report<Doc>, Stopped> {
        let stop = CancellationToken::new();
        let deliver = self.engine.deliver(docs, &stop);
        tokio::pin!(deliver);
        tokio::select! {
            report = &mut deliver => report,
            _ = tokio::time::sleep(self.budget) => {
                // The engine stops at its next wait; dead letters it is writing are finished.
                stop.cancel();
                deliver.await
            }
        }
    }

    /// Renders the due windows into the pending documents. `true` if any were.
    fn render_due(&self, p: &mut Persisted, now: i64, all: bool) -> bool {
        let due = p.state.windows.take_due(
            now,
            self.settings.window_ms,
            self.config.grace.as_millis() as i64,
            all,
        );
        if due.is_empty() {
            return false;
        }
        let limits = DocLimits {
            max_bytes: (self.config.max_event_size.as_u64() as usize)
                .saturating_sub(EVENT_OVERHEAD),
            ..DocLimits::default()
        };
        for (key, group) in due {
            for document in documents(&key, &group, self.config.storage_resolution, &limits) {
                p.pending.push(Pending {
                    log_stream: key.log_stream.clone(),
                    timestamp_ms: key.window_ms,
                    document,
                });
            }
        }
        true
    }
}

fn load(path: &Path) -> anyhow::Result<Persisted> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Persisted::empty()),
        Err(e) => return Err(anyhow::anyhow!("read {}: {e}", path.display())),
    };
    match serde_json::from_slice::<Persisted>(&text) {
        Ok(mut p) if p.version == STATE_VERSION => {
            p.recent.rebuild();
            Ok(p)
        }
        other => {
            let why = match other {
                Ok(p) => format!("unknown version {}", p.version),
                Err(e) => e.to_string(),
            };
            let aside = path.with_extension("json.corrupt");
            tracing::error!(path = %path.display(), aside = %aside.display(), error = %why, "EMF state unreadable; starting empty");
            metrics::counter!("tidewater_emf_state_unreadable_total").increment(1);
            std::fs::rename(path, &aside)?;
            Ok(Persisted::empty())
        }
    }
}

/// Write to a temporary file, fsync, rename over, fsync the directory: a crash leaves the old
/// state or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn report(stats: &Stats) {
    let counters = [
        ("tidewater_emf_points_total", stats.points),
        ("tidewater_emf_no_value_points_total", stats.no_value),
        ("tidewater_emf_undeclared_points_total", stats.undeclared),
        ("tidewater_emf_baseline_points_total", stats.baselines),
        ("tidewater_emf_stale_points_total", stats.stale),
        (
            "tidewater_emf_incompatible_points_total",
            stats.incompatible,
        ),
        ("tidewater_emf_span_requests_total", stats.spans),
    ];
    for (name, n) in counters {
        if n > 0 {
            metrics::counter!(name).increment(n);
        }
    }
}

#[async_trait]
impl Sink for EmfSink {
    fn name(&self) -> &'static str {
        "emf"
    }

    fn accepts(&self, signal: Signal) -> bool {
        signal == Signal::Metrics
            || (signal == Signal::Traces && !self.settings.span_kinds.is_empty())
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut p = self.inner.lock().await;
        let now = now_ms();
        let mut stats = Stats::default();
        let mut changed = false;
        for b in batches {
            let id = record_key(&b.record_id);
            if id.is_some_and(|id| p.recent.contains(id)) {
                metrics::counter!("tidewater_emf_duplicate_records_total").increment(1);
                continue;
            }
            match &b.data {
                SignalData::Metrics(r) => p.state.fold_metrics(r, &self.settings, now, &mut stats),
                SignalData::Traces(r) => p.state.fold_spans(r, &self.settings, now, &mut stats),
                _ => continue,
            }
            if let Some(id) = id {
                p.recent.push(id, self.config.dedup_records);
            }
            changed = true;
        }
        report(&stats);
        if !changed {
            return Ok(());
        }
        let evicted = p.state.delta.evict_to(self.config.max_series);
        if evicted > 0 {
            metrics::counter!("tidewater_emf_evicted_series_total", "reason" => "max_series")
                .increment(evicted as u64);
        }
        metrics::gauge!("tidewater_emf_series").set(p.state.delta.len() as f64);
        metrics::gauge!("tidewater_emf_open_groups").set(p.state.windows.len() as f64);
        // The acknowledgement: the round is durable here, so the checkpoint may pass it.
        self.persist_until_written(&p, stop).await
    }

    async fn tick(&self, stopping: bool) -> anyhow::Result<()> {
        let _sending = self.sending.lock().await;
        let pending = {
            let mut p = self.inner.lock().await;
            let now = now_ms();
            let mut changed = self.render_due(&mut p, now, stopping);
            let ttl_ms = self.config.series_ttl.as_millis() as i64;
            let before_nanos = (now - ttl_ms).max(0) as u64 * 1_000_000;
            let evicted = p.state.delta.evict_older_than(before_nanos);
            if evicted > 0 {
                metrics::counter!("tidewater_emf_evicted_series_total", "reason" => "ttl")
                    .increment(evicted as u64);
                changed = true;
            }
            if changed {
                // Rendered documents are sent only once they are in the state file.
                self.persist(&p).await?;
            }
            metrics::gauge!("tidewater_emf_pending_documents").set(p.pending.len() as f64);
            p.pending.clone()
        };
        if pending.is_empty() {
            return Ok(());
        }
        // Sent without holding the state, so rounds are folded meanwhile.
        let taken = pending.len();
        let result = self.send(self.docs(pending)).await;
        let stored = self.engine.service().take_stored();
        let done = |i: usize| result.is_ok() || stored.contains(&i);
        let mut p = self.inner.lock().await;
        let before = p.pending.len();
        let mut index = 0;
        p.pending.retain(|_| {
            let keep = index >= taken || !done(index);
            index += 1;
            keep
        });
        metrics::counter!("tidewater_emf_documents_total")
            .increment((before - p.pending.len()) as u64);
        metrics::gauge!("tidewater_emf_pending_documents").set(p.pending.len() as f64);
        self.persist(&p).await?;
        match result {
            Ok(_) => Ok(()),
            Err(Stopped) => Err(anyhow::anyhow!(
                "{} EMF documents not sent within {:?}; they wait in the state file for the next tick",
                p.pending.len(),
                self.budget
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::cloudwatch_logs::tests::{error, ScriptedLogs};

    #[test]
    fn recent_ids_are_bounded_and_survive_a_round_trip() {
        let mut r = Recent::default();
        for i in 0..10 {
            r.push(i, 4);
        }
        assert!(!r.contains(5) && r.contains(6) && r.contains(9));
        let mut back: Recent = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        back.rebuild();
        assert!(back.contains(9) && !back.contains(1));
    }

    #[test]
    fn unreadable_state_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"{not json").unwrap();
        let p = load(&path).unwrap();
        assert!(p.pending.is_empty());
        assert!(dir.path().join("emf-state.json.corrupt").exists());
        // What an empty sink writes reads back as it is, not as unreadable.
        std::fs::remove_file(path.with_extension("json.corrupt")).unwrap();
        write_atomically(&path, &serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap().version, STATE_VERSION);
        assert!(!path.with_extension("json.corrupt").exists());
        write_atomically(&path, br#"{"version":1,"state":{"windows":{"groups":[]},"delta":{"series":{}}},"pending":[],"recent":{"order":[42]}}"#).unwrap();
        let p = load(&path).unwrap();
        assert!(p.recent.contains(42));
    }

    /// A delta counter export of `value` in bus record `id`.
    fn batch(id: u8, value: i64) -> Arc<Batch> {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{
            metric::Data, number_data_point, AggregationTemporality, Metric, NumberDataPoint,
            ResourceMetrics, ScopeMetrics, Sum,
        };
        let metric = Metric {
            name: "jobs".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: 1_700_000_000_000_000_000,
                    value: Some(number_data_point::Value::AsInt(value)),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        Arc::new(Batch {
            signal: Signal::Metrics,
            record_id: vec![id; 16],
            produced_at_unix_nano: 0,
            item_count: 1,
            data: SignalData::Metrics(ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![metric],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }),
        })
    }

    async fn jobs(sink: &EmfSink) -> Vec<f64> {
        let mut p = sink.inner.lock().await;
        let groups = p.state.windows.take_due(0, 0, 0, true);
        let out = groups
            .iter()
            .map(|(_, g)| match g.metrics["jobs"].value {
                crate::emf::aggregate::Aggregate::Sum(v) => v,
                _ => f64::NAN,
            })
            .collect();
        p.state.windows.restore(groups);
        out
    }

    #[tokio::test]
    async fn a_round_delivered_again_is_not_counted_twice_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = EmfConfig {
            enabled: true,
            state_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let sink = EmfSink::new(&config).unwrap();
        sink.deliver(&[batch(1, 5), batch(2, 3)], &CancellationToken::new())
            .await
            .unwrap();
        sink.deliver(&[batch(2, 3)], &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(jobs(&sink).await, vec![8.0]);
        drop(sink);
        // Restarted from the state file: the windows are back, and the redelivery of record 1
        // (a crash before the checkpoint) is still recognised.
        let sink = EmfSink::new(&config).unwrap();
        assert_eq!(jobs(&sink).await, vec![8.0]);
        sink.deliver(&[batch(1, 5), batch(3, 1)], &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(jobs(&sink).await, vec![9.0]);
    }

    fn sink_over(dir: &Path, api: Arc<ScriptedLogs>) -> EmfSink {
        let config = EmfConfig {
            enabled: true,
            state_dir: dir.to_path_buf(),
            max_event_size: bytesize::ByteSize::kib(1),
            delivery: crate::delivery::harness::config(dir),
            ..Default::default()
        };
        EmfSink::with_api(&config, api).unwrap()
    }

    async fn add_pending(sink: &EmfSink, docs: &[(&str, &str)]) {
        let mut p = sink.inner.lock().await;
        for (stream, document) in docs {
            p.pending.push(Pending {
                log_stream: stream.to_string(),
                timestamp_ms: 1_700_000_000_000,
                document: document.to_string(),
            });
        }
    }

    fn pending_on_disk(dir: &Path) -> Vec<Pending> {
        load(&dir.join(STATE_FILE)).unwrap().pending
    }

    #[tokio::test]
    async fn a_tick_removes_documents_once_stored_or_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(ScriptedLogs::default());
        let sink = sink_over(dir.path(), api.clone());
        let huge = format!("{{\"x\":\"{}\"}}", "y".repeat(2000));
        add_pending(
            &sink,
            &[("a", "{\"n\":1}"), ("b", &huge), ("b", "{\"n\":2}")],
        )
        .await;
        sink.tick(false).await.unwrap();
        assert_eq!(api.puts_made(), [vec![r#"{"n":1}"#], vec![r#"{"n":2}"#]]);
        assert!(sink.inner.lock().await.pending.is_empty());
        assert!(pending_on_disk(dir.path()).is_empty());
        // The document no call can carry is kept where an operator can look.
        let dead = std::fs::read_to_string(dir.path().join("emf.ndjson")).unwrap();
        let dead: serde_json::Value = serde_json::from_str(dead.trim()).unwrap();
        assert_eq!(dead["code"], "too_large");
        assert_eq!(dead["log_group"], "/tidewater/metrics");
        assert_eq!(dead["log_stream"], "b");
        assert_eq!(dead["message"], huge.as_str());
    }

    #[tokio::test]
    async fn a_tick_cut_short_keeps_only_what_was_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(ScriptedLogs::new(vec![Ok(Default::default())]));
        *api.then.lock().unwrap() = Err(error("AccessDeniedException"));
        let sink = sink_over(dir.path(), api.clone());
        add_pending(&sink, &[("a", "{\"n\":1}"), ("b", "{\"n\":2}")]).await;
        // Stream b keeps failing until the tick's budget is spent: a stays sent, b waits.
        let e = sink.tick(false).await.unwrap_err().to_string();
        assert!(e.contains("1 EMF documents not sent"), "{e}");
        let waiting: Vec<String> = pending_on_disk(dir.path())
            .into_iter()
            .map(|p| p.log_stream)
            .collect();
        assert_eq!(waiting, ["b"]);
        *api.then.lock().unwrap() = Ok(Default::default());
        sink.tick(false).await.unwrap();
        assert!(pending_on_disk(dir.path()).is_empty());
        let puts = api.puts_made();
        assert_eq!(puts.iter().filter(|p| p[0] == r#"{"n":1}"#).count(), 1);
        assert!(puts.iter().filter(|p| p[0] == r#"{"n":2}"#).count() >= 2);
        assert!(!dir.path().join("emf.ndjson").exists());
    }

    #[tokio::test]
    async fn a_state_write_that_fails_is_retried_until_it_succeeds_or_the_processor_stops() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_over(dir.path(), Arc::new(ScriptedLogs::default()));
        // A directory where the temporary file goes makes every write fail.
        let tmp = dir.path().join("emf-state.json.tmp");
        std::fs::create_dir(&tmp).unwrap();
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            stopper.cancel();
        });
        assert!(sink.deliver(&[batch(1, 5)], &stop).await.is_err());
        let unblock = tmp.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            std::fs::remove_dir(unblock).unwrap();
        });
        sink.deliver(&[batch(2, 3)], &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            load(&dir.path().join(STATE_FILE))
                .unwrap()
                .recent
                .order
                .len(),
            2
        );
    }

    #[test]
    fn default_config_is_valid() {
        EmfConfig::default().validate().unwrap();
        let bad = EmfConfig {
            log_group: "/m/{service.name}".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("fixed name"));
        let bad = EmfConfig {
            namespace: "AWS/EC2".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("namespace"));
    }
}
