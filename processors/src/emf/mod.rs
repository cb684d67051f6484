//! OTLP metrics and spans → CloudWatch Embedded Metric Format documents. Pure: no I/O, no
//! clock (callers pass the time), so every rule is tested with golden cases. The sink that
//! persists this state and sends the documents is `sinks::emf`.
//!
//! - [`delta`]: cumulative → delta per series, with reset detection and out-of-order points;
//! - [`declarations`]: which metrics, under which dimension sets and units;
//! - [`metrics`], [`span_metrics`]: data points and entry spans folded into the windows;
//! - [`aggregate`]: the windows, per dimension set, as counter sums and value/count
//!   distributions;
//! - [`document`]: EMF JSON within the format's limits.

pub mod aggregate;
pub mod declarations;
pub mod delta;
pub mod document;
pub mod metrics;
pub mod span_metrics;

use serde::{Deserialize, Serialize};

use crate::sinks::cloudwatch_logs::template::Template;
use aggregate::Windows;
use declarations::Declarations;
use delta::DeltaTracker;

/// Everything that shapes the translation, compiled from the sink's configuration.
pub struct Settings {
    pub namespace: String,
    pub window_ms: i64,
    /// Send a cumulative series' first value whole instead of keeping it as the baseline.
    pub keep_first_value: bool,
    /// Resource attributes that become labels (and so can be dimensions).
    pub resource_dimensions: Vec<String>,
    pub log_stream: Template,
    pub declarations: Declarations,
    /// OTLP span kinds counted as requests; empty turns span metrics off.
    pub span_kinds: Vec<i32>,
    pub latency_digits: u32,
}

/// What the sink keeps between batches, and persists: the open windows and the cumulative
/// baselines.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub windows: Windows,
    pub delta: DeltaTracker,
}

/// What folding saw, for the sink's metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Data points read.
    pub points: u64,
    /// Points flagged as having no recorded value.
    pub no_value: u64,
    /// Points of metrics no declaration selects.
    pub undeclared: u64,
    /// First points of cumulative series, kept as baselines.
    pub baselines: u64,
    /// Cumulative points not newer than the series' last (duplicates, out of order).
    pub stale: u64,
    /// Cumulative histogram points whose bucket layout changed (a new baseline).
    pub incompatible: u64,
    /// Entry spans counted as requests.
    pub spans: u64,
}

#[cfg(test)]
mod tests;
