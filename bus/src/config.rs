use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    pub kind: BusKind,
    pub embedded: EmbeddedConfig,
    pub kinesis: crate::kinesis::KinesisConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// An on-disk log inside the process: one machine, development, `tidewater up`.
    #[default]
    Embedded,
    /// Amazon Kinesis Data Streams: many collectors, many processors sharing the shards.
    Kinesis,
}

/// When the embedded log calls fsync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Before every publish is acknowledged (concurrent publishes share one fsync).
    #[default]
    Always,
    /// Every `fsync_interval`; publishes are acknowledged after the fsync that covers them.
    Interval,
    /// Never explicitly: acknowledged once written to the OS. Survives a crash of the process,
    /// not of the machine.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where the log lives. Relative paths are relative to the working directory.
    pub dir: PathBuf,
    /// Number of partitions. Fixed once the log is created: reopening with another number is
    /// an error rather than a silent re-partitioning.
    pub partitions: u32,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: ByteSize,
    pub fsync: FsyncPolicy,
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Oldest whole segments of a partition are deleted beyond this size...
    pub retention_bytes: ByteSize,
    /// ...or once everything in them is older than this.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            dir: PathBuf::from("tidewater-data/bus"),
            partitions: 4,
            segment_bytes: ByteSize::mib(64),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(50),
            retention_bytes: ByteSize::gib(1),
            retention_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}
