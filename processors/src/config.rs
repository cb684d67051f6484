use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Consumer group: processors in one group share the bus's partitions.
    pub group: String,
    /// Most records taken from the bus per round; a round is delivered to every sink and
    /// checkpointed before the next.
    pub max_poll_records: usize,
    /// How long an idle poll waits for data.
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
    /// Backoff between attempts when a sink fails, doubling up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Records that cannot be decoded are written here with the reason, then skipped.
    pub dead_letter_dir: PathBuf,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            group: "tidewater-processors".into(),
            max_poll_records: 500,
            poll_wait: Duration::from_millis(500),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            dead_letter_dir: PathBuf::from("tidewater-data/dead-letter"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub file: crate::sinks::file::FileSinkConfig,
    pub xray: crate::sinks::xray::XraySinkConfig,
    pub elasticsearch: crate::sinks::elasticsearch::ElasticsearchSinkConfig,
    pub emf: crate::sinks::emf::EmfConfig,
    pub cloudwatch_logs: crate::sinks::cloudwatch_logs::CloudWatchLogsConfig,
}

impl SinksConfig {
    /// Checks what serde cannot (templates, regular expressions, AWS limits), naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.emf.validate()?;
        self.cloudwatch_logs.validate()
    }
}
