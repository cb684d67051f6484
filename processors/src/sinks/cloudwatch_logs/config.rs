//! `[sinks.cloudwatch_logs]`, and the checks both CloudWatch sinks share.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::batch::Limits;
use super::template::{NameKind, Template};
use super::writer::RETENTION_DAYS;
use crate::delivery::DeliveryConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchLogsConfig {
    pub enabled: bool,
    /// Log group per resource: `{attribute}` is replaced by the resource attribute's value.
    pub log_group: String,
    /// Log stream per resource, same placeholders.
    pub log_stream: String,
    /// Retention set on log groups this sink creates; 0 leaves them never expiring.
    pub retention_days: u32,
    /// Copy the resource attributes into every event.
    pub include_resource: bool,
    /// Largest event, message plus 26 bytes; larger ones are split into marked parts.
    pub max_event_size: ByteSize,
    /// `PutLogEvents` calls in flight, retries and dead letters, as for every sink: events
    /// CloudWatch refuses (too old, too new, expired) go to
    /// `<dead_letter_dir>/cloudwatch_logs.ndjson`.
    pub delivery: DeliveryConfig,
}

impl Default for CloudWatchLogsConfig {
    fn default() -> Self {
        CloudWatchLogsConfig {
            enabled: false,
            log_group: "/tidewater/{service.name}".into(),
            log_stream: "{host.name}".into(),
            retention_days: 0,
            include_resource: false,
            max_event_size: ByteSize::kib(256),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// Checks what the writer settings of both CloudWatch sinks share; `at` names the section.
pub fn validate_writer(
    at: &str,
    retention_days: u32,
    max_event_size: ByteSize,
) -> Result<(), String> {
    if retention_days != 0 && !RETENTION_DAYS.contains(&retention_days) {
        return Err(format!(
            "{at}.retention_days: {retention_days} is not a CloudWatch Logs retention (0 or one of {RETENTION_DAYS:?})"
        ));
    }
    let size = max_event_size.as_u64();
    if !(1024..=1024 * 1024).contains(&size) {
        return Err(format!(
            "{at}.max_event_size: must be between 1 KiB and 1 MiB (CloudWatch's limit), got {max_event_size}"
        ));
    }
    Ok(())
}

/// The request limits with the configured event size.
pub fn limits(max_event_size: ByteSize) -> Limits {
    Limits {
        max_event_bytes: max_event_size.as_u64() as usize,
        ..Limits::default()
    }
}

impl CloudWatchLogsConfig {
    pub fn templates(&self) -> Result<(Template, Template), String> {
        let g = Template::parse(&self.log_group, NameKind::LogGroup)
            .map_err(|e| format!("sinks.cloudwatch_logs.log_group: {e}"))?;
        let s = Template::parse(&self.log_stream, NameKind::LogStream)
            .map_err(|e| format!("sinks.cloudwatch_logs.log_stream: {e}"))?;
        Ok((g, s))
    }

    pub fn validate(&self) -> Result<(), String> {
        self.templates()?;
        validate_writer(
            "sinks.cloudwatch_logs",
            self.retention_days,
            self.max_event_size,
        )?;
        self.delivery.validate("sinks.cloudwatch_logs.delivery")
    }
}
