use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::batch::Limits;
use super::template::{NameKind, Template};
use super::writer::{WriterConfig, RETENTION_DAYS};

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
    /// Log streams written at the same time.
    pub concurrency: usize,
    /// Attempts per request on throttling and transient errors (the SDK's standard retry,
    /// exponential backoff with jitter from `retry_initial` up to `retry_max`).
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Events the service refuses (too old, too new, expired) go to `cloudwatch_logs.ndjson` here.
    pub dead_letter_dir: PathBuf,
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
            concurrency: 4,
            max_attempts: 8,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(20),
            dead_letter_dir: PathBuf::from("tidewater-data/dead-letter"),
        }
    }
}

/// Checks what the writer settings of both CloudWatch sinks share; `at` names the section.
pub fn validate_writer(
    at: &str,
    retention_days: u32,
    max_event_size: ByteSize,
    concurrency: usize,
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
    if concurrency == 0 {
        return Err(format!("{at}.concurrency: must be at least 1"));
    }
    Ok(())
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
            self.concurrency,
        )
    }

    pub fn writer(&self) -> WriterConfig {
        WriterConfig {
            sink: "cloudwatch_logs",
            retention_days: self.retention_days,
            limits: Limits {
                max_event_bytes: self.max_event_size.as_u64() as usize,
                ..Limits::default()
            },
            split_oversized: true,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            retry_initial: self.retry_initial,
            retry_max: self.retry_max,
            dead_letter_dir: self.dead_letter_dir.clone(),
        }
    }
}
