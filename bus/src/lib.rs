//! The bus: the durable stream that joins collectors to processors.
//!
//! A [`Producer`] appends batches of records to the partition that owns a key and returns only
//! once they are durable. A [`Consumer`] reads the partitions it currently holds (all of them for
//! the embedded log; leased shards for Kinesis; assigned partitions for Kafka) from their last
//! checkpoint, and [`Consumer::commit`] moves a checkpoint once every sink has acknowledged the
//! records before it. Delivery is at least once: records after the last commit are read again
//! after a restart or a hand-over.

pub mod backoff;
pub mod config;
pub mod embedded;
#[cfg(test)]
mod fuzz;
mod key;
pub mod kinesis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use config::{BusConfig, BusKind};
pub use key::{partition_for_hash, PartitionKey};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot take or give data now; retrying later may succeed.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The producer or consumer was shut down.
    #[error("bus closed")]
    Closed,
    #[error("bus I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data failed its integrity check.
    #[error("bus data corrupt: {0}")]
    Corrupt(String),
    #[error("bus misconfigured: {0}")]
    Config(String),
    /// The bus refuses these records as they are (too large, invalid): retrying cannot help.
    #[error("records refused by the bus: {0}")]
    Rejected(String),
}

/// Where a record sits in its partition; what a checkpoint stores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// Embedded log and Kafka: the record's offset.
    Offset(u64),
    /// Kinesis: the record's sequence number and, for aggregated records, the index of the
    /// user record inside it.
    Sequence { sequence: String, sub: u32 },
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Offset(o) => write!(f, "{o}"),
            Position::Sequence { sequence, sub } => write!(f, "{sequence}/{sub}"),
        }
    }
}

/// What a publish returns once the records are durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: String,
    /// Position of the first record of the batch.
    pub first: Position,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: String,
    pub position: Position,
    pub payload: Bytes,
}

#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// How many partitions keys are spread over now. The collector keeps one batch per
    /// partition, so a batch never straddles two.
    fn partitions(&self) -> u32;

    /// The largest record the bus takes, if it has a limit: the collector splits a batch
    /// that would encode larger into several records under the same key.
    fn max_record_size(&self) -> Option<usize> {
        None
    }

    /// Appends `records`, in order, to the partition that owns `key`. Returns once they are
    /// durable as the bus defines it (fsynced, replicated, or acknowledged by the service).
    async fn publish(&self, key: &PartitionKey, records: Vec<Bytes>) -> Result<Ack, BusError>;
}

#[async_trait]
pub trait Consumer: Send + 'static {
    /// Up to `max` records from the partitions this consumer holds, in order within each
    /// partition. Waits up to `wait` for the first record; an empty result means idle.
    ///
    /// `max_bytes` bounds the payload bytes returned, so a caller that budgets its memory
    /// (the processor's `memory_limit`) is never handed more than it has room for: the result
    /// stops before the record that would take it past `max_bytes`, except that the first
    /// record is always returned, however large, so a record bigger than the room cannot stall
    /// its partition.
    async fn poll(
        &mut self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, BusError>;

    /// Every record of `partition` up to and including `position` has been handled: after a
    /// restart, reading resumes after it.
    async fn commit(&mut self, partition: &str, position: &Position) -> Result<(), BusError>;

    /// Stops reading and lets go of what this consumer holds (Kinesis shard leases), so other
    /// consumers of the group take over now rather than once it would have expired. Called
    /// after the last commit; nothing is read after it.
    async fn close(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}
