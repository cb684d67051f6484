//! `[sinks.emf]`: the translation's settings (compiled into [`Settings`]), the state file's
//! place, and the CloudWatch Logs writer's.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryConfig;
use crate::emf::declarations::{Declaration, Declarations, Rollup};
use crate::emf::span_metrics::SpanMetricsConfig;
use crate::emf::Settings;
use crate::sinks::cloudwatch_logs::batch::Limits;
use crate::sinks::cloudwatch_logs::config::{limits, validate_writer};
use crate::sinks::cloudwatch_logs::template::{NameKind, Template};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmfConfig {
    pub enabled: bool,
    /// CloudWatch namespace of every metric (not starting with "AWS/").
    pub namespace: String,
    /// Aggregation window: each series sends at most one value (or one distribution) per window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long after a window ends its documents wait for late points before being sent.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The log group the documents go to (created on first use).
    pub log_group: String,
    /// Log stream per resource: `{attribute}` is replaced by the resource attribute's value.
    pub log_stream: String,
    /// Resource attributes that become labels, usable as dimensions.
    pub resource_dimensions: Vec<String>,
    /// Send a cumulative series' first value whole instead of keeping it as the baseline.
    pub keep_first_value: bool,
    /// Extra dimension sets: "none", "single" (one per dimension), "zero_and_single".
    pub dimension_rollup: Rollup,
    /// 60 (standard) or 1 (high resolution).
    pub storage_resolution: u32,
    /// Cumulative series whose baselines are kept; beyond, the least recently seen are dropped.
    pub max_series: usize,
    /// A series with no point for this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub series_ttl: Duration,
    /// Bus record ids remembered so a round delivered again after a crash is not counted
    /// twice; keep it above processor.max_poll_records.
    pub dedup_records: usize,
    /// Where the open windows, baselines and unsent documents are kept across restarts.
    pub state_dir: PathBuf,
    pub retention_days: u32,
    pub max_event_size: ByteSize,
    /// `PutLogEvents` calls in flight, retries and dead letters, as for every sink: documents
    /// CloudWatch refuses go to `<dead_letter_dir>/emf.ndjson`. A tick sends for at most
    /// `retry_max` (at least a second); what is left waits in the state file for the next.
    pub delivery: DeliveryConfig,
    pub span_metrics: SpanMetricsConfig,
    pub declarations: Vec<Declaration>,
}

impl Default for EmfConfig {
    fn default() -> Self {
        EmfConfig {
            enabled: false,
            namespace: "Tidewater".into(),
            window: Duration::from_secs(60),
            grace: Duration::from_secs(5),
            log_group: "/tidewater/metrics".into(),
            log_stream: "{service.name}".into(),
            resource_dimensions: vec!["service.name".into()],
            keep_first_value: false,
            dimension_rollup: Rollup::None,
            storage_resolution: 60,
            max_series: 100_000,
            series_ttl: Duration::from_secs(3600),
            dedup_records: 2048,
            state_dir: PathBuf::from("tidewater-data/emf"),
            retention_days: 0,
            max_event_size: ByteSize::kib(256),
            delivery: DeliveryConfig::default(),
            span_metrics: SpanMetricsConfig::default(),
            declarations: Vec::new(),
        }
    }
}

impl EmfConfig {
    /// The compiled settings, or what is wrong, naming the key.
    pub fn settings(&self) -> Result<Settings, String> {
        let ns = &self.namespace;
        if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") {
            return Err(format!(
                "sinks.emf.namespace: {ns:?} must be 1 to 255 characters, not starting with \"AWS/\""
            ));
        }
        if self.window < Duration::from_secs(1) {
            return Err("sinks.emf.window: must be at least 1s".into());
        }
        if ![1, 60].contains(&self.storage_resolution) {
            return Err("sinks.emf.storage_resolution: must be 1 or 60".into());
        }
        let group = Template::parse(&self.log_group, NameKind::LogGroup)
            .map_err(|e| format!("sinks.emf.log_group: {e}"))?;
        if !group.is_constant() {
            return Err(
                "sinks.emf.log_group: must be a fixed name (the stream can vary by resource)"
                    .into(),
            );
        }
        let log_stream = Template::parse(&self.log_stream, NameKind::LogStream)
            .map_err(|e| format!("sinks.emf.log_stream: {e}"))?;
        validate_writer("sinks.emf", self.retention_days, self.max_event_size)?;
        self.delivery.validate("sinks.emf.delivery")?;
        let sm = &self.span_metrics;
        if !(1..=15).contains(&sm.latency_digits) {
            return Err("sinks.emf.span_metrics.latency_digits: must be 1 to 15".into());
        }
        Ok(Settings {
            namespace: ns.clone(),
            window_ms: self.window.as_millis() as i64,
            keep_first_value: self.keep_first_value,
            resource_dimensions: self.resource_dimensions.clone(),
            log_stream,
            declarations: Declarations::new(&self.declarations, self.dimension_rollup)?,
            span_kinds: if sm.enabled { sm.kinds()? } else { Vec::new() },
            latency_digits: sm.latency_digits,
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        self.settings().map(|_| ())
    }

    /// The log group (a fixed name), with any character CloudWatch refuses replaced.
    pub fn log_group_name(&self) -> String {
        Template::parse(&self.log_group, NameKind::LogGroup)
            .map(|t| t.render(&Default::default()))
            .unwrap_or_else(|_| self.log_group.clone())
    }

    /// The request limits, with the configured document size.
    pub fn limits(&self) -> Limits {
        limits(self.max_event_size)
    }
}
