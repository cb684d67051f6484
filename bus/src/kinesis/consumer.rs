//! The consumer: the shards this worker holds a lease on, read with GetRecords, de-aggregated,
//! checkpointed in the lease table.
//!
//! Three kinds of task cooperate:
//! - the coordinator (one, in the background) renews this worker's leases, refreshes the shard
//!   list, and takes free, expired or surplus leases ([`leases::plan`]);
//! - a reader per held shard polls GetRecords within the shard's limits (5 calls/s, 2 MB/s),
//!   backs off on throttling, renews an expired iterator, reports `MillisBehindLatest`, and
//!   sends de-aggregated records, then the shard's end, to the consumer;
//! - the [`KinesisConsumer`] itself hands records to the processor and writes checkpoints.
//!   Once a closed shard's last record is checkpointed it writes `SHARD_END`, which is what
//!   lets the shard's children be taken.
//!
//! A lease that is lost (stolen, or expired because renewals failed) stops its reader; what
//! was read from it but not yet checkpointed is dropped, and the new owner reads it again
//! from the checkpoint.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aggregation::deaggregate;
use super::config::{limits, KinesisConfig};
use super::error::{error_code, is_throttle, kinesis_error};
use super::leases::{self, Checkpoint, Lease, LeaseStore, Observations};
use super::producer::jittered;
use super::shards::list_shards;
use crate::{BusError, Consumer, Position, Record};

const BUS_LABEL: &str = "kinesis";

/// A lease this worker holds, as the coordinator and the consumer both see it.
struct Held {
    counter: u64,
    /// Distinguishes this holding from an earlier one of the same shard, so records read
    /// under a lease that was lost and taken again are not mixed in.
    generation: u64,
    stop: CancellationToken,
    /// Position of the last record handed to the processor, and of the last checkpointed.
    returned: Option<Position>,
    committed: Option<Position>,
    /// Records read but not yet handed to the processor.
    buffered: usize,
    /// The reader reached the end of this closed shard.
    ended: bool,
}

enum Event {
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

struct Shared {
    kinesis: aws_sdk_kinesis::Client,
    leases: LeaseStore,
    config: KinesisConfig,
    worker: String,
    held: Mutex<HashMap<String, Held>>,
    generations: AtomicU64,
    /// Asks the coordinator to look for work now (a shard ended: its children may be ready).
    rescan: Notify,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct KinesisConsumer {
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    buffer: VecDeque<(u64, Record)>,
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
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = Instant::now() + wait;
        loop {
            while let Ok(event) = self.events.try_recv() {
                self.accept(event);
            }
            self.finish_ended().await?;
            let mut out = Vec::new();
            {
                let mut held = self.shared.held();
                while out.len() < max {
                    let Some((generation, record)) = self.buffer.pop_front() else {
                        break;
                    };
                    // Records of a lease lost since they were read are the new owner's now.
                    if let Some(h) = held
                        .get_mut(&record.partition)
                        .filter(|h| h.generation == generation)
                    {
                        h.buffered -= 1;
                        h.returned = Some(record.position.clone());
                        out.push(record);
                    }
                }
            }
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

fn lost(shared: &Shared, shard: &str, why: &str) {
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

/// Renews, syncs shards, takes leases; every third of a lease duration.
async fn coordinate(shared: Arc<Shared>) {
    let c = &shared.config;
    let tick = (c.lease_duration / 3).max(Duration::from_millis(200));
    let mut observations = Observations::default();
    let mut next_sync = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = async {
            renew(&shared).await?;
            if Instant::now() >= next_sync {
                sync_shards(&shared).await?;
                next_sync = Instant::now() + c.shard_sync_interval;
            }
            take(&shared, &mut observations).await
        }
        .await;
        metrics::gauge!("tidewater_kinesis_leases_held").set(shared.held().len() as f64);
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(bus = BUS_LABEL, error = %e, "lease coordination failed; retrying");
                backoff = (backoff * 2).min(tick);
            }
        }
        let wait = if backoff > Duration::from_millis(200) {
            jittered(backoff)
        } else {
            tick
        };
        tokio::select! {
            _ = shared.stop.cancelled() => {
                for (_, h) in shared.held().drain() {
                    h.stop.cancel();
                }
                return;
            }
            _ = shared.rescan.notified() => next_sync = Instant::now(),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn renew(shared: &Shared) -> Result<(), BusError> {
    let mine: Vec<(String, u64)> = shared
        .held()
        .iter()
        .map(|(s, h)| (s.clone(), h.counter))
        .collect();
    for (shard, counter) in mine {
        match shared.leases.renew(&shard, &shared.worker, counter).await? {
            Some(next) => {
                if let Some(h) = shared.held().get_mut(&shard) {
                    h.counter = next;
                }
            }
            None => lost(shared, &shard, "it was taken by another worker"),
        }
    }
    Ok(())
}

async fn sync_shards(shared: &Shared) -> Result<(), BusError> {
    for shard in list_shards(&shared.kinesis, &shared.config.stream).await? {
        if shared.leases.create_if_missing(&shard).await? {
            tracing::info!(bus = BUS_LABEL, shard = %shard.id, parents = ?shard.parents, "lease created for shard");
        }
    }
    Ok(())
}

async fn take(shared: &Arc<Shared>, observations: &mut Observations) -> Result<(), BusError> {
    let leases = shared.leases.list().await?;
    let now = Instant::now();
    observations.observe(&leases, now);
    let held: HashSet<String> = shared.held().keys().cloned().collect();
    let duration = shared.config.lease_duration;
    let wanted = leases::plan(&leases, &shared.worker, &held, |l| {
        observations.expired(l, now, duration)
    });
    for lease in wanted {
        if held.contains(&lease.shard) {
            continue;
        }
        let Some(counter) = shared.leases.take(&lease, &shared.worker).await? else {
            continue;
        };
        tracing::info!(bus = BUS_LABEL, shard = %lease.shard, from = ?lease.owner, checkpoint = ?lease.checkpoint, "shard lease taken");
        metrics::counter!("tidewater_kinesis_leases_taken_total").increment(1);
        start_reader(shared, &lease, counter);
    }
    Ok(())
}

fn start_reader(shared: &Arc<Shared>, lease: &Lease, counter: u64) {
    let generation = shared.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let stop = shared.stop.child_token();
    let committed = match &lease.checkpoint {
        Checkpoint::At { sequence, sub } => Some(Position::Sequence {
            sequence: sequence.clone(),
            sub: *sub,
        }),
        _ => None,
    };
    shared.held().insert(
        lease.shard.clone(),
        Held {
            counter,
            generation,
            stop: stop.clone(),
            returned: committed.clone(),
            committed,
            buffered: 0,
            ended: false,
        },
    );
    let reader = Reader {
        shared: shared.clone(),
        shard: lease.shard.clone(),
        generation,
        stop,
    };
    tokio::spawn(reader.run(lease.checkpoint.clone()));
}

struct Reader {
    shared: Arc<Shared>,
    shard: String,
    generation: u64,
    stop: CancellationToken,
}

impl Reader {
    async fn run(self, from: Checkpoint) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            result = self.read(from) => if let Err(e) = result {
                tracing::warn!(bus = BUS_LABEL, shard = %self.shard, error = %e, "shard reader stopped");
                lost(&self.shared, &self.shard, "its reader failed");
            }
        }
    }

    async fn iterator(
        &self,
        from: &Checkpoint,
        after: Option<&str>,
    ) -> Result<Option<String>, BusError> {
        let mut req = self
            .shared
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.shared.config.stream)
            .shard_id(&self.shard);
        req = match (after, from) {
            (Some(seq), _) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            (None, Checkpoint::At { sequence, .. }) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence),
            (None, _) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req
            .send()
            .await
            .map_err(|e| kinesis_error("GetShardIterator", e))?;
        Ok(out.shard_iterator().map(String::from))
    }

    async fn read(&self, from: Checkpoint) -> Result<(), BusError> {
        let c = &self.shared.config;
        // Resuming at a checkpointed aggregate: its user records up to `sub` are done.
        let (skip_seq, skip_sub) = match &from {
            Checkpoint::At { sequence, sub } => (Some(sequence.clone()), *sub),
            _ => (None, 0),
        };
        let mut last_seq: Option<String> = None;
        let mut iterator = self.iterator(&from, None).await?;
        let min_gap = Duration::from_secs(1) / limits::GET_RECORDS_PER_SECOND;
        let mut next_call = Instant::now();
        let mut backoff = c.retry_initial;
        while let Some(it) = iterator.take() {
            tokio::time::sleep_until(next_call).await;
            let started = Instant::now();
            let response = self
                .shared
                .kinesis
                .get_records()
                .shard_iterator(&it)
                .limit(c.max_records_per_get)
                .send()
                .await;
            let out = match response {
                Ok(out) => out,
                Err(e) => {
                    let code = error_code(&e);
                    metrics::counter!("tidewater_kinesis_get_records_errors_total", "code" => code.clone()).increment(1);
                    if code == "ExpiredIteratorException" {
                        iterator = self.iterator(&from, last_seq.as_deref()).await?;
                        continue;
                    }
                    if is_throttle(&code) {
                        metrics::counter!("tidewater_kinesis_get_records_throttles_total")
                            .increment(1);
                    } else {
                        tracing::warn!(bus = BUS_LABEL, shard = %self.shard, error = %kinesis_error("GetRecords", e), "GetRecords failed; retrying");
                    }
                    next_call = Instant::now() + jittered(backoff);
                    backoff = (backoff * 2).min(c.retry_max);
                    iterator = Some(it);
                    continue;
                }
            };
            backoff = c.retry_initial;
            if let Some(ms) = out.millis_behind_latest() {
                metrics::gauge!("tidewater_kinesis_millis_behind_latest", "shard" => self.shard.clone()).set(ms as f64);
            }
            let mut bytes = 0u64;
            let mut records = Vec::new();
            for r in out.records() {
                let seq = r.sequence_number().to_string();
                let data = Bytes::copy_from_slice(r.data().as_ref());
                bytes += data.len() as u64;
                let users = match deaggregate(&data) {
                    Ok(Some(users)) => users.into_iter().map(|u| u.data).collect(),
                    Ok(None) => vec![data],
                    Err(reason) => {
                        // Kept as one record: the processor dead-letters what it cannot decode.
                        tracing::error!(bus = BUS_LABEL, shard = %self.shard, sequence = %seq, reason, "unreadable aggregated record");
                        vec![data]
                    }
                };
                for (sub, payload) in users.into_iter().enumerate() {
                    let sub = sub as u32;
                    if skip_seq.as_deref() == Some(seq.as_str()) && sub <= skip_sub {
                        continue;
                    }
                    records.push(Record {
                        partition: self.shard.clone(),
                        position: Position::Sequence {
                            sequence: seq.clone(),
                            sub,
                        },
                        payload,
                    });
                }
                last_seq = Some(seq);
            }
            metrics::counter!("tidewater_kinesis_get_records_bytes_total").increment(bytes);
            metrics::counter!("tidewater_kinesis_get_records_records_total")
                .increment(out.records().len() as u64);
            let empty = out.records().is_empty();
            if !records.is_empty() {
                let event = Event::Records {
                    shard: self.shard.clone(),
                    generation: self.generation,
                    records,
                };
                if self.shared.events.send(event).await.is_err() {
                    return Ok(());
                }
            }
            iterator = out.next_shard_iterator().map(String::from);
            // 5 calls a second, and no more than 2 MB a second on average, per shard.
            let paced =
                Duration::from_secs_f64(bytes as f64 / limits::GET_RECORDS_BYTES_PER_SECOND as f64);
            let gap = if empty {
                c.idle_poll_interval
            } else {
                min_gap.max(paced)
            };
            next_call = started + gap;
        }
        let _ = self
            .shared
            .events
            .send(Event::End {
                shard: self.shard.clone(),
                generation: self.generation,
            })
            .await;
        Ok(())
    }
}
