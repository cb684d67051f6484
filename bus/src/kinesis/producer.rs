//! The producer: bus records into Kinesis, losing nothing.
//!
//! Publishes from every lane of the collector meet in one queue; a batcher takes whatever is
//! queued, packs it into KPL aggregates (per explicit hash key, so per shard), and sends it in
//! requests within the service's limits, up to `max_in_flight` at once. A response with
//! `FailedRecordCount > 0` is a partial failure: only the failed records are sent again, after
//! exponential backoff with jitter, and a shard that throttles is given an adaptive pause
//! before anything else is sent to it. What is still not in the stream after `spool_after`
//! goes to the disk spool, and the publish is acknowledged once the spool holds it.
//!
//! Ordering: a lane has one publish in flight, so its batches reach the stream in order. The
//! records of one publish can be reordered among themselves when some of them are retried;
//! each bus record is a self-contained batch, so nothing downstream depends on that order.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::aggregation::UserRecord;
use super::config::{limits, KinesisConfig};
use super::put::{Fate, Putter};
use super::shards::{list_shards, ShardMap};
use super::spool::Spool;
use crate::{partition_for_hash, Ack, BusError, PartitionKey, Position, Producer};

const BUS_LABEL: &str = "kinesis";

struct Pending {
    records: Vec<UserRecord>,
    reply: oneshot::Sender<Vec<Fate>>,
}

pub struct KinesisProducer {
    putter: Arc<Putter>,
    queue: mpsc::UnboundedSender<Pending>,
    spool: Arc<Spool>,
    /// The middle of each open shard's hash range when the producer started, in hash order:
    /// lane `i` publishes there, so each lane is exactly one shard however the ranges are cut.
    lane_hash_keys: Vec<u128>,
}

impl KinesisProducer {
    /// Lists the stream's shards (failing if the stream does not exist), opens the spool and
    /// starts the batcher and the spool's drainer.
    pub async fn start(client: Client, config: KinesisConfig) -> Result<KinesisProducer, BusError> {
        let shards = list_shards(&client, &config.stream).await?;
        let map = ShardMap::new(&shards);
        if map.is_empty() {
            return Err(BusError::Config(format!(
                "stream {:?} has no open shard",
                config.stream
            )));
        }
        let lane_hash_keys = map.middles();
        let partitions = lane_hash_keys.len() as u32;
        let putter = Arc::new(Putter::new(client, config, map));
        let spool = Spool::open(&putter.config().spool, putter.clone())?;
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(putter.clone(), rx));
        tracing::info!(bus = BUS_LABEL, stream = %putter.config().stream, shards = partitions, aggregation = putter.config().aggregation, "kinesis producer ready");
        Ok(KinesisProducer {
            putter,
            queue,
            spool,
            lane_hash_keys,
        })
    }

    pub fn putter(&self) -> &Arc<Putter> {
        &self.putter
    }
}

#[async_trait]
impl Producer for KinesisProducer {
    /// The open shards when the producer started: one lane per shard.
    fn partitions(&self) -> u32 {
        self.lane_hash_keys.len() as u32
    }

    fn max_record_size(&self) -> Option<usize> {
        Some(self.putter.config().max_record_size.as_u64() as usize)
    }

    async fn publish(&self, key: &PartitionKey, records: Vec<Bytes>) -> Result<Ack, BusError> {
        check_partition_key(&key.key)?;
        if records.is_empty() {
            return Err(BusError::Config("publish of no records".into()));
        }
        // The key's partition (of `partitions()` equal ranges, as the collector splits data)
        // is sent to the middle of that shard's actual range, so uneven shards still get one
        // lane each, and a trace stays on one shard.
        let lane = partition_for_hash(key.hash, self.partitions());
        let key = &PartitionKey {
            key: key.key.clone(),
            hash: self.lane_hash_keys[lane as usize],
        };
        if self.spool.is_active() {
            // Behind what is already spooled, so the stream gets it in order once it recovers.
            return self.spool.append(key, records).await;
        }
        let user_records: Vec<UserRecord> = records
            .iter()
            .map(|data| UserRecord {
                partition_key: key.key.clone(),
                explicit_hash_key: Some(key.hash.to_string()),
                data: data.clone(),
            })
            .collect();
        let (reply, fates) = oneshot::channel();
        self.queue
            .send(Pending {
                records: user_records,
                reply,
            })
            .map_err(|_| BusError::Closed)?;
        let fates = fates.await.map_err(|_| BusError::Closed)?;
        if let Some(Fate::Rejected(reason)) = fates.iter().find(|f| matches!(f, Fate::Rejected(_)))
        {
            return Err(BusError::Rejected(reason.clone()));
        }
        let unsent: Vec<Bytes> = fates
            .iter()
            .zip(records)
            .filter(|(f, _)| matches!(f, Fate::Unsent(_)))
            .map(|(_, r)| r)
            .collect();
        let first_put = fates.iter().find_map(|f| match f {
            Fate::Put { shard, sequence } => Some(Ack {
                partition: shard.clone(),
                first: Position::Sequence {
                    sequence: sequence.clone(),
                    sub: 0,
                },
            }),
            _ => None,
        });
        if unsent.is_empty() {
            return first_put.ok_or(BusError::Closed);
        }
        if let Some(Fate::Unsent(reason)) = fates.iter().find(|f| matches!(f, Fate::Unsent(_))) {
            tracing::warn!(bus = BUS_LABEL, records = unsent.len(), reason = %reason, "stream did not take records in time; spooling them");
        }
        let spooled = self.spool.append(key, unsent).await?;
        Ok(first_put.unwrap_or(spooled))
    }
}

/// Partition keys must be 1 to 256 Unicode characters.
fn check_partition_key(key: &str) -> Result<(), BusError> {
    let chars = key.chars().count();
    if chars == 0 || chars > limits::MAX_PARTITION_KEY_CHARS {
        return Err(BusError::Config(format!(
            "Kinesis partition keys are 1 to {} characters; {key:?} has {chars}",
            limits::MAX_PARTITION_KEY_CHARS
        )));
    }
    Ok(())
}

/// Takes every publish queued, and sends them together, up to `max_in_flight` jobs at once.
async fn batcher(putter: Arc<Putter>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(putter.config().max_in_flight));
    // Enough user records to fill a request many times over; more waits for the next job.
    let max_batch_bytes = limits::MAX_BYTES_PER_REQUEST * 2;
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while we waited for a slot goes in the same job.
        let mut batch = vec![first];
        let mut bytes: usize = batch[0].records.iter().map(|r| r.data.len()).sum();
        while bytes < max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.records.iter().map(|r| r.data.len()).sum::<usize>();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let putter = putter.clone();
        tokio::spawn(async move {
            let records: Vec<UserRecord> = batch
                .iter()
                .flat_map(|p| p.records.iter().cloned())
                .collect();
            let deadline = Instant::now() + putter.config().spool_after;
            let mut fates = putter.put(&records, deadline).await.into_iter();
            for p in batch {
                let mine: Vec<Fate> = fates.by_ref().take(p.records.len()).collect();
                let _ = p.reply.send(mine);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_are_checked() {
        assert!(check_partition_key("partition-0-of-4").is_ok());
        assert!(check_partition_key("").is_err());
        assert!(check_partition_key(&"é".repeat(256)).is_ok());
        assert!(check_partition_key(&"x".repeat(257)).is_err());
    }
}
