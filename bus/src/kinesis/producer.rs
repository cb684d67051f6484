//! The producer: bus records into Kinesis with `PutRecords`, losing nothing.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::aggregation::{pack, KinesisRecord, UserRecord};
use super::config::{limits, KinesisConfig};
use super::error::{error_code, is_throttle};
use super::shards::{list_shards, ShardMap};
use super::spool::Spool;
use crate::{partition_for_hash, Ack, BusError, PartitionKey, Position, Producer};

const BUS_LABEL: &str = "kinesis";

/// What became of one user record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Put {
        shard: String,
        sequence: String,
    },
    /// The service (or our own limit check) refuses it as is: retrying cannot help.
    Rejected(String),
    /// Not in the stream yet when the deadline passed; the last error seen.
    Unsent(String),
}

struct Pending {
    records: Vec<UserRecord>,
    reply: oneshot::Sender<Vec<Fate>>,
}

/// Puts records into the stream; shared by the batcher and the spool's drainer.
pub struct Putter {
    client: Client,
    stream: String,
    config: KinesisConfig,
    shards: RwLock<ShardMap>,
    throttle: ShardThrottle,
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
        let putter = Arc::new(Putter {
            client,
            stream: config.stream.clone(),
            shards: RwLock::new(map),
            throttle: ShardThrottle::new(config.retry_initial, config.retry_max),
            config,
        });
        let spool = Spool::open(&putter.config.spool, putter.clone())?;
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(putter.clone(), rx));
        tracing::info!(bus = BUS_LABEL, stream = %putter.stream, shards = partitions, aggregation = putter.config.aggregation, "kinesis producer ready");
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
        Some(self.putter.config.max_record_size.as_u64() as usize)
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
    let in_flight = Arc::new(Semaphore::new(putter.config.max_in_flight));
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
            let deadline = Instant::now() + putter.config.spool_after;
            let mut fates = putter.put(&records, deadline).await.into_iter();
            for p in batch {
                let mine: Vec<Fate> = fates.by_ref().take(p.records.len()).collect();
                let _ = p.reply.send(mine);
            }
            drop(permit);
        });
    }
}

impl Putter {
    pub fn new_for_tests(client: Client, config: KinesisConfig, shards: ShardMap) -> Putter {
        Putter {
            client,
            stream: config.stream.clone(),
            shards: RwLock::new(shards),
            throttle: ShardThrottle::new(config.retry_initial, config.retry_max),
            config,
        }
    }

    pub fn config(&self) -> &KinesisConfig {
        &self.config
    }

    /// Puts `records` until each is in the stream, refused, or `deadline` passes. Returns each
    /// record's fate, in order.
    pub async fn put(&self, records: &[UserRecord], deadline: Instant) -> Vec<Fate> {
        let c = &self.config;
        let (packed, too_large) = pack(
            records,
            c.aggregation,
            c.max_record_size.as_u64() as usize,
            c.max_records_per_aggregate,
        );
        let mut fates: Vec<Fate> = vec![Fate::Unsent("not sent".into()); records.len()];
        for (i, reason) in too_large {
            metrics::counter!("tidewater_kinesis_failed_records_total", "code" => "RecordTooLarge")
                .increment(1);
            fates[i] = Fate::Rejected(reason);
        }
        if !packed.is_empty() {
            metrics::counter!("tidewater_kinesis_user_records_total")
                .increment(packed.iter().map(|r| r.members.len() as u64).sum());
        }
        let mut todo: Vec<usize> = (0..packed.len()).collect();
        let mut backoff = c.retry_initial;
        let mut first_round = true;
        while !todo.is_empty() {
            if !first_round {
                metrics::counter!("tidewater_kinesis_retried_records_total")
                    .increment(todo.len() as u64);
            }
            first_round = false;
            let (ready, waiting) = self.throttle.split(&todo, |i| self.shard_of(&packed[i]));
            let mut failed = waiting;
            for chunk in requests(&packed, &ready) {
                failed.extend(self.put_request(&packed, &chunk, &mut fates).await);
            }
            todo = failed;
            if todo.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = jittered(backoff).max(
                self.throttle
                    .earliest(&todo, |i| self.shard_of(&packed[i]))
                    .saturating_duration_since(now),
            );
            tokio::time::sleep_until((now + wait).min(deadline)).await;
            backoff = (backoff * 2).min(c.retry_max);
        }
        fates
    }

    /// Sends one request; fills in the fate of every member of every record that got in or was
    /// refused, and returns the records to try again.
    async fn put_request(
        &self,
        packed: &[KinesisRecord],
        chunk: &[usize],
        fates: &mut [Fate],
    ) -> Vec<usize> {
        let mut entries = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let r = &packed[i];
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(r.data.to_vec()))
                .partition_key(&r.partition_key)
                .set_explicit_hash_key(r.explicit_hash_key.clone())
                .build();
            match entry {
                Ok(e) => entries.push(e),
                Err(e) => {
                    set_fate(
                        fates,
                        r,
                        Fate::Rejected(format!("cannot build a PutRecords entry: {e}")),
                    );
                }
            }
        }
        let bytes: u64 = chunk.iter().map(|&i| packed[i].size() as u64).sum();
        metrics::counter!("tidewater_kinesis_put_requests_total").increment(1);
        let response = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(entries))
            .send()
            .await;
        let out = match response {
            Ok(out) => out,
            Err(e) => {
                let code = error_code(&e);
                metrics::counter!("tidewater_kinesis_failed_requests_total", "code" => code.clone()).increment(1);
                let message = format!(
                    "PutRecords: {code}: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(&e)
                );
                if is_throttle(&code) {
                    metrics::counter!("tidewater_kinesis_throttles_total").increment(1);
                    for &i in chunk {
                        if let Some(shard) = self.shard_of(&packed[i]) {
                            self.throttle.penalize(&shard);
                        }
                    }
                }
                // A request refused as invalid stays invalid; anything else (outage, timeout,
                // throttling, a missing stream being recreated) may pass later.
                let permanent = matches!(
                    code.as_str(),
                    "InvalidArgumentException" | "ValidationException"
                );
                if !permanent && code == "ResourceNotFoundException" {
                    self.refresh_shards().await;
                }
                let mut retry = Vec::new();
                for &i in chunk {
                    if permanent {
                        set_fate(fates, &packed[i], Fate::Rejected(message.clone()));
                    } else {
                        set_fate(fates, &packed[i], Fate::Unsent(message.clone()));
                        retry.push(i);
                    }
                }
                return retry;
            }
        };
        let results = out.records();
        if results.len() != chunk.len() {
            // Cannot tell which record is which: nothing is known to be in, so all go again.
            tracing::error!(
                bus = BUS_LABEL,
                sent = chunk.len(),
                answered = results.len(),
                "PutRecords answered a different number of records"
            );
            return chunk.to_vec();
        }
        let mut retry = Vec::new();
        let mut put_records = 0u64;
        let mut put_bytes = 0u64;
        for (&i, result) in chunk.iter().zip(results) {
            let r = &packed[i];
            match (
                result.error_code(),
                result.shard_id(),
                result.sequence_number(),
            ) {
                (None, Some(shard), Some(sequence)) => {
                    self.throttle.relax(shard);
                    put_records += 1;
                    put_bytes += r.size() as u64;
                    set_fate(
                        fates,
                        r,
                        Fate::Put {
                            shard: shard.to_string(),
                            sequence: sequence.to_string(),
                        },
                    );
                }
                (code, _, _) => {
                    let code = code.unwrap_or("MissingSequenceNumber").to_string();
                    metrics::counter!("tidewater_kinesis_failed_records_total", "code" => code.clone()).increment(1);
                    if is_throttle(&code) {
                        metrics::counter!("tidewater_kinesis_throttles_total").increment(1);
                        if let Some(shard) = self.shard_of(r) {
                            self.throttle.penalize(&shard);
                        }
                    }
                    let message = format!("{code}: {}", result.error_message().unwrap_or_default());
                    set_fate(fates, r, Fate::Unsent(message));
                    retry.push(i);
                }
            }
        }
        metrics::counter!("tidewater_kinesis_put_records_total").increment(put_records);
        metrics::counter!("tidewater_kinesis_put_bytes_total").increment(put_bytes);
        let _ = bytes;
        retry
    }

    fn shard_of(&self, r: &KinesisRecord) -> Option<String> {
        let hash: u128 = r.explicit_hash_key.as_ref()?.parse().ok()?;
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shard_for(hash)
            .map(String::from)
    }

    /// Re-reads the shard list (after a reshard the throttle must know the new shards).
    pub async fn refresh_shards(&self) {
        match list_shards(&self.client, &self.stream).await {
            Ok(shards) => {
                *self.shards.write().unwrap_or_else(|p| p.into_inner()) = ShardMap::new(&shards)
            }
            Err(e) => tracing::debug!(bus = BUS_LABEL, error = %e, "cannot refresh the shard list"),
        }
    }
}

fn set_fate(fates: &mut [Fate], r: &KinesisRecord, fate: Fate) {
    for &m in &r.members {
        fates[m] = fate.clone();
    }
}

/// Splits `indexes` of `packed` into PutRecords requests within the service's limits: 500
/// records and 5 MiB (data plus partition keys) each.
fn requests(packed: &[KinesisRecord], indexes: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for &i in indexes {
        let size = packed[i].size();
        if !current.is_empty()
            && (current.len() == limits::MAX_RECORDS_PER_REQUEST
                || bytes + size > limits::MAX_BYTES_PER_REQUEST)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Equal jitter: between half and all of `max`.
pub(crate) fn jittered(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos.max(1)))
}

/// Adaptive per-shard pacing: a shard that throttles gets a pause that doubles while it keeps
/// throttling and halves with each success, so a hot shard is not hammered while the others
/// go on at full speed.
struct ShardThrottle {
    min: Duration,
    max: Duration,
    shards: Mutex<HashMap<String, (Duration, Instant)>>,
}

impl ShardThrottle {
    fn new(min: Duration, max: Duration) -> Self {
        ShardThrottle {
            min,
            max,
            shards: Mutex::new(HashMap::new()),
        }
    }

    fn penalize(&self, shard: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let entry = shards
            .entry(shard.to_string())
            .or_insert((Duration::ZERO, Instant::now()));
        entry.0 = (entry.0 * 2).clamp(self.min, self.max);
        entry.1 = Instant::now() + jittered(entry.0);
        metrics::gauge!("tidewater_kinesis_shard_pause_seconds", "shard" => shard.to_string())
            .set(entry.0.as_secs_f64());
    }

    fn relax(&self, shard: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = shards.get_mut(shard) {
            entry.0 /= 2;
            if entry.0 < self.min {
                shards.remove(shard);
                metrics::gauge!("tidewater_kinesis_shard_pause_seconds", "shard" => shard.to_string()).set(0.0);
            }
        }
    }

    fn paused_until(&self, shard: Option<String>) -> Option<Instant> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let until = shards.get(&shard?)?.1;
        (until > Instant::now()).then_some(until)
    }

    /// (records that may go now, records whose shard is paused).
    fn split(
        &self,
        todo: &[usize],
        shard_of: impl Fn(usize) -> Option<String>,
    ) -> (Vec<usize>, Vec<usize>) {
        todo.iter()
            .partition(|&&i| self.paused_until(shard_of(i)).is_none())
    }

    /// When the first paused shard among `todo` may be sent to again.
    fn earliest(&self, todo: &[usize], shard_of: impl Fn(usize) -> Option<String>) -> Instant {
        todo.iter()
            .filter_map(|&i| self.paused_until(shard_of(i)))
            .min()
            .unwrap_or_else(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krec(size: usize) -> KinesisRecord {
        KinesisRecord {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::from(vec![0; size - 1]),
            members: vec![],
        }
    }

    #[test]
    fn requests_stay_within_500_records_and_5_mib() {
        let small: Vec<KinesisRecord> = (0..1201).map(|_| krec(10)).collect();
        let idx: Vec<usize> = (0..small.len()).collect();
        let chunks = requests(&small, &idx);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 201]
        );

        let big: Vec<KinesisRecord> = (0..12).map(|_| krec(1024 * 1024)).collect();
        let idx: Vec<usize> = (0..big.len()).collect();
        let chunks = requests(&big, &idx);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
        assert_eq!(chunks.concat(), idx);
    }

    #[test]
    fn throttle_pauses_a_hot_shard_and_recovers() {
        let t = ShardThrottle::new(Duration::from_millis(100), Duration::from_secs(5));
        let shard = |i: usize| {
            Some(if i == 0 {
                "hot".to_string()
            } else {
                "cold".to_string()
            })
        };
        t.penalize("hot");
        let (ready, waiting) = t.split(&[0, 1], shard);
        assert_eq!((ready, waiting), (vec![1], vec![0]));
        assert!(t.earliest(&[0], shard) > Instant::now());
        for _ in 0..10 {
            t.penalize("hot");
        }
        assert_eq!(
            t.shards.lock().unwrap()["hot"].0,
            Duration::from_secs(5),
            "capped"
        );
        for _ in 0..7 {
            t.relax("hot");
        }
        assert!(
            t.shards.lock().unwrap().get("hot").is_none(),
            "forgotten once calm"
        );
        assert_eq!(t.split(&[0, 1], shard).1, Vec::<usize>::new());
    }

    #[test]
    fn partition_keys_are_checked() {
        assert!(check_partition_key("partition-0-of-4").is_ok());
        assert!(check_partition_key("").is_err());
        assert!(check_partition_key(&"é".repeat(256)).is_ok());
        assert!(check_partition_key(&"x".repeat(257)).is_err());
    }
}
