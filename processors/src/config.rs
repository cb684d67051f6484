//! The processor's settings (`[processor]` and `[sinks.*]`), with the defaults a processor
//! runs with when nothing is set: they are what `benches/run` measures and the example file
//! documents.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorConfig {
    /// Consumer group: processors in one group share the bus's partitions.
    pub group: String,
    /// Most records taken from the bus per poll, and so per round (a round is the records of
    /// one partition from one poll). A crash delivers at most the rounds a sink took past the
    /// last checkpoint again, so this also bounds what a sink sees twice.
    pub max_poll_records: usize,
    /// A round is also cut once its records' decompressed size reaches this (read from each
    /// record's envelope, before decoding): records of up to 1 MiB compressed can decompress
    /// to many MiB, and a round of `max_poll_records` of them would be one sink request of
    /// gigabytes. Small rounds also keep the pipeline fine-grained: a round's memory is given
    /// back only once every sink took all of it, so draining a backlog with 2 MiB rounds
    /// peaked at 126–142 MiB of RSS against 188–213 MiB with 8 MiB, for 5–15% less CPU per
    /// span (benches/README.md, "The processor").
    pub max_round_bytes: ByteSize,
    /// Most memory the processor holds for records in flight: each record counts its
    /// compressed bytes plus its decompressed size times its signal's
    /// [`crate::decode::decoded_factor`] for its decoded form, from the poll that read it
    /// until every sink acknowledged its round. Polling waits while it is reached, so a
    /// backlog is drained at this footprint rather than as fast as the bus hands it out; a
    /// slow or failing sink holds its rounds (and the other sinks' lead on it) within it. A
    /// single round larger than this still goes through, alone.
    pub memory_limit: ByteSize,
    /// How long an idle poll waits for data; sinks' `tick` runs at least this often.
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
    /// On a stop, how long deliveries under way may take to finish before their sinks are
    /// told to stop too. A delivery a sink finishes is checkpointed, so the restart repeats
    /// nothing; one it abandons may have reached the destination and is delivered again.
    /// Orchestrators wait 30 s after SIGTERM by default, and the collector and the sinks'
    /// final flush need part of that.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Backoff between attempts of a checkpoint that failed (a full disk under the offsets
    /// file, the lease table throttling), doubling up to `retry_max`, with jitter. Sinks
    /// retry their own deliveries.
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
            max_round_bytes: ByteSize::mib(2),
            memory_limit: ByteSize::mib(128),
            poll_wait: Duration::from_millis(500),
            stop_grace: Duration::from_secs(10),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
            dead_letter_dir: PathBuf::from("tidewater-data/dead-letter"),
        }
    }
}

impl ProcessorConfig {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_poll_records == 0 {
            return Err("processor.max_poll_records must be at least 1".into());
        }
        if self.max_round_bytes.as_u64() == 0 {
            return Err("processor.max_round_bytes must be more than 0".into());
        }
        if self.memory_limit.as_u64() < self.max_round_bytes.as_u64() {
            return Err(format!(
                "processor.memory_limit ({}) must be at least processor.max_round_bytes ({})",
                self.memory_limit, self.max_round_bytes
            ));
        }
        Ok(())
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
    pub otlp: crate::sinks::otlp::OtlpSinkConfig,
}

impl SinksConfig {
    /// Checks what serde cannot (templates, regular expressions, AWS limits), naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.xray.validate()?;
        self.emf.validate()?;
        self.cloudwatch_logs.validate()?;
        if self.otlp.enabled {
            self.otlp.validate()?;
        }
        Ok(())
    }
}
