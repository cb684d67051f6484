//! `[sinks.xray]`: what users of the OpenTelemetry Collector's `awsxray` exporter expect
//! (`index_all_attributes`, `indexed_attributes`), plus our own explicit bounds; retries,
//! concurrency and dead letters are the delivery engine's table, `[sinks.xray.delivery]`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryConfig;
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
    /// Largest `PutTraceSegments` request body (besides X-Ray's 50 documents per call).
    pub max_request_size: ByteSize,
    /// Calls in flight, the attempt budget of documents X-Ray leaves unprocessed for a
    /// passing reason, backoff, and where refused documents go (`<dead_letter_dir>/xray.ndjson`).
    pub delivery: DeliveryConfig,
}

impl Default for XraySinkConfig {
    fn default() -> Self {
        XraySinkConfig {
            enabled: false,
            index_all_attributes: false,
            indexed_attributes: Vec::new(),
            max_request_size: ByteSize::mib(4),
            // The sink's backoff from before the engine, kept so an upgrade does not change
            // how it paces retries against X-Ray's per-second limits.
            delivery: DeliveryConfig {
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_secs(5),
                ..DeliveryConfig::default()
            },
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

    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let min = super::request::MIN_REQUEST_BYTES;
        if self.max_request_size.as_u64() < min as u64 {
            return Err(format!(
                "sinks.xray.max_request_size must be at least {min} bytes, so a 64 KiB document fits"
            ));
        }
        self.delivery.validate("sinks.xray.delivery")
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

    #[test]
    fn dead_letters_stay_where_they_were_and_bad_delivery_settings_name_their_key() {
        let mut c = XraySinkConfig::default();
        assert_eq!(
            c.delivery.dead_letter_path("xray"),
            std::path::Path::new("tidewater-data/dead-letter/xray.ndjson")
        );
        assert!(c.validate().is_ok());
        c.delivery.max_attempts = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("sinks.xray.delivery.max_attempts"));
    }
}
