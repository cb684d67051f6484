//! The consumer: the shards this worker holds a lease on, read with GetRecords, de-aggregated,
//! checkpointed in the lease table.
//!
//! Three kinds of task cooperate:
//! - the coordinator ([`super::coordinator`], one, in the background) renews this worker's
//!   leases, refreshes the shard list, and takes free, expired or surplus leases;
//! - a reader per held shard ([`super::reader`]) polls GetRecords within the shard's limits
//!   and sends de-aggregated records, then the shard's end, to the consumer;
//! - the [`KinesisConsumer`] itself hands records to the processor and writes checkpoints.
//!   Once a closed shard's last record is checkpointed it writes `SHARD_END`, which is what
//!   lets the shard's children be taken.
//!
//! A lease that is lost (stolen, or expired because renewals failed) stops its reader; what
//! was read from it but not yet checkpointed is dropped, and the new owner reads it again
//! from the checkpoint.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::KinesisConfig;
use super::coordinator::coordinate;
use super::leases::{Checkpoint, LeaseStore};
use super::shards::list_shards;
use crate::{BusError, Consumer, Position, Record};

pub(super) const BUS_LABEL: &str = "kinesis";

/// A lease this worker holds, as the coordinator and the consumer both see it.
pub(super) struct Held {
    pub(super) counter: u64,
    /// Distinguishes this holding from an earlier one of the same shard, so records read
    /// under a lease that was lost and taken again are not mixed in.
    pub(super) generation: u64,
    pub(super) stop: CancellationToken,
    /// Position of the last record handed to the processor, and of the last checkpointed.
    pub(super) returned: Option<Position>,
    pub(super) committed: Option<Position>,
    /// Records read but not yet handed to the processor.
    pub(super) buffered: usize,
    /// The reader reached the end of this closed shard.
    pub(super) ended: bool,
}

pub(super) enum Event {
    Records {
        shard: String,
        generation: u64,
        records: Vec<Record>,
    },
    End {
        shard: String,
        generation: u64,
    },
}

pub(super) struct Shared {
    pub(super) kinesis: aws_sdk_kinesis::Client,
    pub(super) leases: LeaseStore,
    pub(super) config: KinesisConfig,
    pub(super) worker: String,
    pub(super) held: Mutex<HashMap<String, Held>>,
    pub(super) generations: AtomicU64,
    /// Asks the coordinator to look for work now (a shard ended: its children may be ready).
    pub(super) rescan: Notify,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) stop: CancellationToken,
}

impl Shared {
    pub(super) fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct KinesisConsumer {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    /// Records read but not yet handed out, with the lease generation they were read under.
    /// Filled from `events` only while it holds less than a poll asks for, so it stays within
    /// one poll's worth plus one GetRecords response; readers wait on the channel beyond that.
    buffer: VecDeque<(u64, Record)>,
    /// Payload bytes in `buffer`.
    buffered_bytes: usize,
}

impl KinesisConsumer {
    /// Checks the stream, creates the lease table if missing, and starts the coordinator.
    pub async fn start(
        kinesis: aws_sdk_kinesis::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        config: KinesisConfig,
        worker: String,
    ) -> Result<KinesisConsumer, BusError> {
        list_shards(&kinesis, &config.stream).await?;
        let leases = LeaseStore::new(dynamodb, &config.lease_table);
        leases.ensure_table().await?;
        // A few GetRecords responses ahead of the processor; readers wait beyond that.
        let (tx, rx) = mpsc::channel(8);
        let shared = Arc::new(Shared {
            kinesis,
            leases,
            config,
            worker,
            held: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            rescan: Notify::new(),
            events: tx,
            stop: CancellationToken::new(),
        });
        tracing::info!(bus = BUS_LABEL, stream = %shared.config.stream, lease_table = %shared.config.lease_table, worker = %shared.worker, "kinesis consumer starting");
        tokio::spawn(coordinate(shared.clone()));
        Ok(KinesisConsumer {
            shared,
            events: rx,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
        })
    }

    /// Shards this worker holds now.
    pub fn held_shards(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.held().keys().cloned().collect();
        v.sort();
        v
    }

    fn accept(&mut self, event: Event) {
        match event {
            Event::Records {
                shard,
                generation,
                records,
            } => {
                let mut held = self.shared.held();
                match held.get_mut(&shard) {
                    Some(h) if h.generation == generation => {
                        h.buffered += records.len();
                        self.buffered_bytes +=
                            records.iter().map(|r| r.payload.len()).sum::<usize>();
                        self.buffer
                            .extend(records.into_iter().map(|r| (generation, r)));
                    }
                    _ => {}
                }
            }
            Event::End { shard, generation } => {
                if let Some(h) = self.shared.held().get_mut(&shard) {
                    if h.generation == generation {
                        h.ended = true;
                    }
                }
            }
        }
    }

    /// Writes SHARD_END for every ended shard whose records are all checkpointed, and lets
    /// the shard go.
    async fn finish_ended(&mut self) -> Result<(), BusError> {
        let done: Vec<String> = self
            .shared
            .held()
            .iter()
            .filter(|(_, h)| h.ended && h.buffered == 0 && h.returned == h.committed)
            .map(|(s, _)| s.clone())
            .collect();
        for shard in done {
            let kept = match self
                .shared
                .leases
                .checkpoint(&shard, &self.shared.worker, &Checkpoint::ShardEnd)
                .await
            {
                Ok(kept) => kept,
                Err(e) => {
                    // Kept as ended: the next poll tries again.
                    tracing::warn!(bus = BUS_LABEL, shard, error = %e, "cannot store SHARD_END yet");
                    metrics::counter!("tidewater_kinesis_checkpoint_failures_total").increment(1);
                    continue;
                }
            };
            if let Some(h) = self.shared.held().remove(&shard) {
                h.stop.cancel();
            }
            if kept {
                tracing::info!(bus = BUS_LABEL, shard, "shard read to its end");
                metrics::counter!("tidewater_kinesis_shards_ended_total").increment(1);
            }
            self.shared.rescan.notify_one();
        }
        Ok(())
    }
}

impl Drop for KinesisConsumer {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

#[async_trait]
impl Consumer for KinesisConsumer {
    async fn poll(
        &mut self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            while self.buffer.len() < max && self.buffered_bytes < max_bytes {
                let Ok(event) = self.events.try_recv() else {
                    break;
                };
                self.accept(event);
            }
            self.finish_ended().await?;
            let out = {
                let mut held = self.shared.held();
                take(
                    &mut self.buffer,
                    &mut self.buffered_bytes,
                    &mut held,
                    max,
                    max_bytes,
                )
            };
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(e) => self.accept(e),
                    None => return Err(BusError::Closed),
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn commit(&mut self, partition: &str, position: &Position) -> Result<(), BusError> {
        let Position::Sequence { sequence, sub } = position else {
            return Err(BusError::Config(format!(
                "commit of {position} on shard {partition}: Kinesis positions are sequence numbers"
            )));
        };
        if !self.shared.held().contains_key(partition) {
            tracing::info!(
                bus = BUS_LABEL,
                shard = partition,
                "not checkpointing a shard this worker no longer holds"
            );
            return Ok(());
        }
        let checkpoint = Checkpoint::At {
            sequence: sequence.clone(),
            sub: *sub,
        };
        match self
            .shared
            .leases
            .checkpoint(partition, &self.shared.worker, &checkpoint)
            .await
        {
            Ok(true) => {
                if let Some(h) = self.shared.held().get_mut(partition) {
                    h.committed = Some(position.clone());
                }
                metrics::counter!("tidewater_kinesis_checkpoints_total").increment(1);
            }
            Ok(false) => lost(&self.shared, partition, "its checkpoint was refused"),
            // The table is unreachable: processing goes on and the next commit covers this
            // one; if the worker dies first, its successor re-reads from the last stored one.
            Err(e) => {
                tracing::warn!(bus = BUS_LABEL, shard = partition, error = %e, "checkpoint not stored; the next one will cover it");
                metrics::counter!("tidewater_kinesis_checkpoint_failures_total").increment(1);
            }
        }
        self.finish_ended().await
    }

    async fn close(&mut self) -> Result<(), BusError> {
        // The coordinator stops first so it neither renews nor takes anything meanwhile.
        self.shared.stop.cancel();
        let shards: Vec<String> = self
            .shared
            .held()
            .drain()
            .map(|(shard, h)| {
                h.stop.cancel();
                shard
            })
            .collect();
        self.buffer.clear();
        self.buffered_bytes = 0;
        for shard in shards {
            match self
                .shared
                .leases
                .release(&shard, &self.shared.worker)
                .await
            {
                Ok(_) => tracing::info!(bus = BUS_LABEL, shard, "shard lease released"),
                Err(e) => {
                    tracing::warn!(bus = BUS_LABEL, shard, error = %e, "cannot release shard lease; it will expire")
                }
            }
        }
        Ok(())
    }
}

/// Hands out up to `max` buffered records and `max_bytes` of payload, at least one record
/// (however large) if any is buffered, and drops those of leases lost since they were read.
fn take(
    buffer: &mut VecDeque<(u64, Record)>,
    buffered_bytes: &mut usize,
    held: &mut HashMap<String, Held>,
    max: usize,
    max_bytes: usize,
) -> Vec<Record> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < max {
        let Some((generation, record)) = buffer.front() else {
            break;
        };
        let len = record.payload.len();
        let current = held
            .get(&record.partition)
            .is_some_and(|h| h.generation == *generation);
        if current && !out.is_empty() && bytes + len > max_bytes {
            break;
        }
        let Some((generation, record)) = buffer.pop_front() else {
            break;
        };
        *buffered_bytes -= len;
        // Records of a lease lost since they were read are the new owner's now.
        if let Some(h) = held
            .get_mut(&record.partition)
            .filter(|h| h.generation == generation)
        {
            h.buffered -= 1;
            h.returned = Some(record.position.clone());
            bytes += len;
            out.push(record);
        }
    }
    out
}

pub(super) fn lost(shared: &Shared, shard: &str, why: &str) {
    if let Some(h) = shared.held().remove(shard) {
        h.stop.cancel();
        tracing::warn!(
            bus = BUS_LABEL,
            shard,
            why,
            "shard lease lost; another worker resumes from the checkpoint"
        );
        metrics::counter!("tidewater_kinesis_leases_lost_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn held(generation: u64) -> Held {
        Held {
            counter: 0,
            generation,
            stop: CancellationToken::new(),
            returned: None,
            committed: None,
            buffered: 0,
            ended: false,
        }
    }

    fn buffered(records: &[(&str, u64, usize)]) -> (VecDeque<(u64, Record)>, usize) {
        let buffer: VecDeque<(u64, Record)> = records
            .iter()
            .enumerate()
            .map(|(i, (shard, generation, len))| {
                let record = Record {
                    partition: shard.to_string(),
                    position: Position::Sequence {
                        sequence: i.to_string(),
                        sub: 0,
                    },
                    payload: Bytes::from(vec![0u8; *len]),
                };
                (*generation, record)
            })
            .collect();
        let bytes = records.iter().map(|r| r.2).sum();
        (buffer, bytes)
    }

    #[test]
    fn hands_out_up_to_max_bytes_but_at_least_one_record() {
        let (mut buffer, mut bytes) = buffered(&[("a", 1, 600), ("a", 1, 300), ("a", 1, 300)]);
        let mut held = HashMap::from([("a".to_string(), held(1))]);
        held.get_mut("a").unwrap().buffered = 3;
        let lens = |v: Vec<Record>| v.iter().map(|r| r.payload.len()).collect::<Vec<_>>();

        assert_eq!(
            lens(take(&mut buffer, &mut bytes, &mut held, 10, 100)),
            [600],
            "the first record goes out whatever its size"
        );
        assert_eq!(
            lens(take(&mut buffer, &mut bytes, &mut held, 10, 599)),
            [300],
            "stops before passing max_bytes"
        );
        assert_eq!(
            lens(take(&mut buffer, &mut bytes, &mut held, 10, 600)),
            [300]
        );
        assert_eq!((buffer.len(), bytes, held["a"].buffered), (0, 0, 0));
    }

    #[test]
    fn records_of_a_lost_lease_are_dropped_without_counting() {
        let (mut buffer, mut bytes) = buffered(&[("a", 1, 500), ("b", 2, 100), ("b", 2, 100)]);
        // Shard a was lost and taken again since its record was read.
        let mut held = HashMap::from([("a".to_string(), held(3)), ("b".to_string(), held(2))]);
        held.get_mut("b").unwrap().buffered = 2;
        let out = take(&mut buffer, &mut bytes, &mut held, 10, 200);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.partition == "b"));
        assert_eq!(bytes, 0);
    }
}
