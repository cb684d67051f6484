//! `[sinks.xray]`: what users of the OpenTelemetry Collector's `awsxray` exporter expect
//! (`index_all_attributes`, `indexed_attributes`), plus our own explicit bounds.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::xray::{AnnotationMode, XrayConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XraySinkConfig {
    pub enabled: bool,
    /// Every span attribute becomes an annotation (indexed, searchable in filter
    /// expressions), up to X-Ray's 50 per segment; the rest go to metadata.
    pub index_all_attributes: bool,
    /// These span attributes become annotations (when `index_all_attributes` is off);
    /// `otel.resource.<key>` selects a resource attribute. Empty: no annotations besides
    /// `otel_trace_id` on remapped traces.
    pub indexed_attributes: Vec<String>,
    /// Documents X-Ray rejects for good are appended here (one JSON line each, with the
    /// error code and message), then counted and skipped.
    pub dead_letter_path: PathBuf,
    /// Most `PutTraceSegments` calls in flight at once.
    pub concurrency: usize,
    /// Largest `PutTraceSegments` request body (besides X-Ray's 50 documents per call).
    pub max_request_size: ByteSize,
    /// Attempts per document (or per call) for transient failures: throttling, internal
    /// errors, network. Past them a document is dead-lettered; a failing call makes the
    /// processor retry the round.
    pub max_attempts: u32,
    /// Backoff between attempts: doubles from `retry_initial` up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for XraySinkConfig {
    fn default() -> Self {
        XraySinkConfig {
            enabled: false,
            index_all_attributes: false,
            indexed_attributes: Vec::new(),
            dead_letter_path: PathBuf::from("tidewater-data/dead-letter/xray.ndjson"),
            concurrency: 4,
            max_request_size: ByteSize::mib(4),
            max_attempts: 8,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

impl XraySinkConfig {
    /// The translator's view of the annotation settings.
    pub fn translation(&self) -> XrayConfig {
        let annotations = if self.index_all_attributes {
            AnnotationMode::All
        } else if self.indexed_attributes.is_empty() {
            AnnotationMode::None
        } else {
            AnnotationMode::Keys(self.indexed_attributes.clone())
        };
        XrayConfig { annotations }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let min = super::request::MIN_REQUEST_BYTES;
        if self.max_request_size.as_u64() < min as u64 {
            anyhow::bail!(
                "sinks.xray.max_request_size must be at least {min} bytes, so a 64 KiB document fits"
            );
        }
        if self.concurrency == 0 || self.max_attempts == 0 {
            anyhow::bail!("sinks.xray.concurrency and sinks.xray.max_attempts must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_settings_map_to_the_translator_modes() {
        let mut c = XraySinkConfig::default();
        assert_eq!(c.translation().annotations, AnnotationMode::None);
        c.indexed_attributes = vec!["order.id".into()];
        assert_eq!(
            c.translation().annotations,
            AnnotationMode::Keys(vec!["order.id".into()])
        );
        c.index_all_attributes = true;
        assert_eq!(c.translation().annotations, AnnotationMode::All);
    }
}
