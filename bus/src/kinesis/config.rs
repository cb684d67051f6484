//! `[bus.kinesis]`: the stream, the lease table, and every limit the producer and consumer keep.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Kinesis Data Streams' own limits (they are the service's, not ours, so not configurable,
/// except the record size which a stream can raise).
pub mod limits {
    /// Records in one PutRecords request.
    pub const MAX_RECORDS_PER_REQUEST: usize = 500;
    /// Bytes in one PutRecords request, data plus partition keys.
    pub const MAX_BYTES_PER_REQUEST: usize = 5 * 1024 * 1024;
    /// Characters (Unicode) in a partition key.
    pub const MAX_PARTITION_KEY_CHARS: usize = 256;
    /// GetRecords calls per second per shard.
    pub const GET_RECORDS_PER_SECOND: u32 = 5;
    /// Bytes per second GetRecords returns per shard.
    pub const GET_RECORDS_BYTES_PER_SECOND: u64 = 2 * 1024 * 1024;
    /// Most records one GetRecords call returns.
    pub const MAX_GET_RECORDS: i32 = 10_000;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisConfig {
    /// The stream's name. Endpoint, region and credentials come from the standard AWS chain.
    pub stream: String,
    /// DynamoDB table of shard leases and checkpoints, one per processor group and stream;
    /// created (on-demand billing) when missing.
    pub lease_table: String,
    /// Largest Kinesis record, data plus partition key. 1 MiB is the service default; a
    /// stream whose limit was raised can say so here.
    pub max_record_size: ByteSize,
    /// Pack many small bus records into one Kinesis record in the KPL aggregated format,
    /// which KCL consumers and Lambda de-aggregate transparently.
    pub aggregation: bool,
    /// Most bus records packed into one aggregated Kinesis record.
    pub max_records_per_aggregate: usize,
    /// PutRecords requests in flight at once.
    pub max_in_flight: usize,
    /// First wait before resending failed records; doubles up to `retry_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A publish that is still not fully in the stream after this long goes to the disk
    /// spool instead (its records that did get in stay in).
    #[serde(with = "humantime_serde")]
    pub spool_after: Duration,
    pub spool: SpoolConfig,
    /// A shard lease not renewed for this long is expired and can be taken by another worker.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// How often the shard list is refreshed to find new shards (after a split or merge).
    #[serde(with = "humantime_serde")]
    pub shard_sync_interval: Duration,
    /// Minimum time between two GetRecords calls on one shard while it is idle; the service
    /// allows 5 calls per second per shard, shared by every consumer of the stream.
    #[serde(with = "humantime_serde")]
    pub idle_poll_interval: Duration,
    /// Records asked for per GetRecords call (the service returns at most 10000).
    pub max_records_per_get: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Where the collector keeps what Kinesis could not take (an embedded log).
    pub dir: PathBuf,
    /// The spool's bound; see `full_policy` for what happens beyond it.
    pub max_size: ByteSize,
    pub full_policy: SpoolFullPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Refuse: the client is told to retry later (HTTP 503 / gRPC UNAVAILABLE) and keeps its
    /// data. Nothing acknowledged is lost.
    #[default]
    PushBack,
    /// Acknowledge and discard what does not fit, counted in
    /// `tidewater_kinesis_spool_dropped_records_total`: the app is never slowed down.
    Drop,
}

impl Default for KinesisConfig {
    fn default() -> Self {
        KinesisConfig {
            stream: "tidewater".into(),
            lease_table: "tidewater-leases".into(),
            max_record_size: ByteSize::mib(1),
            aggregation: true,
            max_records_per_aggregate: 1000,
            max_in_flight: 4,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            spool_after: Duration::from_secs(5),
            spool: SpoolConfig::default(),
            lease_duration: Duration::from_secs(10),
            shard_sync_interval: Duration::from_secs(10),
            idle_poll_interval: Duration::from_millis(500),
            max_records_per_get: limits::MAX_GET_RECORDS,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("tidewater-data/kinesis-spool"),
            max_size: ByteSize::gib(1),
            full_policy: SpoolFullPolicy::PushBack,
        }
    }
}

impl KinesisConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.stream.is_empty() {
            return Err("bus.kinesis.stream must name a stream".into());
        }
        if self.lease_table.len() < 3 {
            return Err(
                "bus.kinesis.lease_table must be a DynamoDB table name (3 to 255 characters)"
                    .into(),
            );
        }
        if self.max_record_size.as_u64() < 1024 {
            return Err("bus.kinesis.max_record_size must be at least 1 KiB".into());
        }
        if self.max_record_size.as_u64() > limits::MAX_BYTES_PER_REQUEST as u64 {
            return Err(
                "bus.kinesis.max_record_size cannot exceed a PutRecords request's 5 MiB".into(),
            );
        }
        if self.max_in_flight == 0 || self.max_records_per_aggregate == 0 {
            return Err(
                "bus.kinesis.max_in_flight and max_records_per_aggregate must be at least 1".into(),
            );
        }
        if !(1..=limits::MAX_GET_RECORDS).contains(&self.max_records_per_get) {
            return Err("bus.kinesis.max_records_per_get must be between 1 and 10000".into());
        }
        if self.idle_poll_interval < Duration::from_millis(200) {
            return Err("bus.kinesis.idle_poll_interval must be at least 200ms (5 GetRecords calls per second per shard)".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("bus.kinesis.lease_duration must be at least 1s".into());
        }
        Ok(())
    }
}
