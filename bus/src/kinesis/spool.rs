//! The collector's disk spool: where records go when Kinesis cannot take them in time, so a
//! client is still acknowledged as soon as its data is durable. It is an embedded log (one
//! partition, fsync before acknowledging) drained in order by a background task that resends
//! each record to the stream and commits it only once the stream holds it.
//!
//! While anything is spooled, new publishes are spooled too, behind it, so the stream receives
//! everything in the order it arrived. The bound is on disk use: drained records are reclaimed
//! when the spool empties (the log is then deleted and started afresh), so a spool that never
//! quite empties fills up and, under the default policy, pushes back until it does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::RwLock;
use tokio::time::Instant;

use super::aggregation::UserRecord;
use super::config::{SpoolConfig, SpoolFullPolicy};
use super::put::{Fate, Putter};
use crate::backoff::jittered;
use crate::config::{EmbeddedConfig, FsyncPolicy};
use crate::embedded::{EmbeddedConsumer, EmbeddedLog, EmbeddedProducer};
use crate::{Ack, BusError, Consumer, PartitionKey, Position, Producer};

const GROUP: &str = "drain";
const FORMAT_VERSION: u8 = 1;
/// Frame overhead of the embedded log per record, for the disk-use estimate.
const FRAME_OVERHEAD: u64 = 32;

struct Open {
    log: Arc<EmbeddedLog>,
    producer: EmbeddedProducer,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    policy: SpoolFullPolicy,
    open: RwLock<Option<Open>>,
    /// Something is spooled and not yet drained: publishes go behind it.
    active: AtomicBool,
    /// Records appended and not yet drained.
    depth: AtomicU64,
    /// Disk used by the log, drained records included until the spool empties.
    disk_bytes: AtomicU64,
    /// Spooled-at time (Unix ms) of the oldest record not yet drained; 0 when empty.
    oldest_ms: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Spool {
    /// Opens the spool (recovering what a previous run left) and starts draining it.
    pub fn open(config: &SpoolConfig, putter: Arc<Putter>) -> Result<Arc<Spool>, BusError> {
        let open = open_log(&config.dir)?;
        let depth = open.log.backlog(GROUP)?;
        let spool = Arc::new(Spool {
            dir: config.dir.clone(),
            max_bytes: config.max_size.as_u64(),
            policy: config.full_policy,
            open: RwLock::new(Some(open)),
            active: AtomicBool::new(depth > 0),
            depth: AtomicU64::new(depth),
            disk_bytes: AtomicU64::new(dir_size(&config.dir.join("partitions"))),
            oldest_ms: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        });
        if depth > 0 {
            tracing::info!(records = depth, dir = %config.dir.display(), "kinesis spool holds records from a previous run; draining them");
        }
        spool.report();
        tokio::spawn(drain(spool.clone(), putter));
        Ok(spool)
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Acquire)
    }

    /// Appends records under `key`; returns once they are fsynced.
    pub async fn append(&self, key: &PartitionKey, records: Vec<Bytes>) -> Result<Ack, BusError> {
        let now = unix_ms();
        let framed: Vec<Bytes> = records.iter().map(|r| encode(now, key, r)).collect();
        let bytes: u64 = framed.iter().map(|r| r.len() as u64 + FRAME_OVERHEAD).sum();
        let count = framed.len() as u64;
        let open = self.open.read().await;
        let Some(open) = open.as_ref() else {
            return Err(BusError::Closed);
        };
        if self.disk_bytes.load(Ordering::Acquire) + bytes > self.max_bytes {
            metrics::counter!("tidewater_kinesis_spool_full_total", "policy" => policy_label(self.policy)).increment(1);
            return match self.policy {
                SpoolFullPolicy::PushBack => Err(BusError::Unavailable(format!(
                    "Kinesis is not taking records and the disk spool is full ({} bytes); retry later",
                    self.max_bytes
                ))),
                SpoolFullPolicy::Drop => {
                    metrics::counter!("tidewater_kinesis_spool_dropped_records_total").increment(count);
                    tracing::warn!(records = count, "kinesis spool full: records dropped (full_policy = \"drop\")");
                    Ok(Ack { partition: "dropped".into(), first: Position::Offset(0) })
                }
            };
        }
        let ack = open.producer.publish(key, framed).await?;
        self.disk_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.depth.fetch_add(count, Ordering::AcqRel);
        let _ = self
            .oldest_ms
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.active.store(true, Ordering::Release);
        metrics::counter!("tidewater_kinesis_spooled_records_total").increment(count);
        self.report();
        self.wake.notify_one();
        Ok(Ack {
            partition: "spool".into(),
            first: ack.first,
        })
    }

    fn report(&self) {
        metrics::gauge!("tidewater_kinesis_spool_depth_records").set(self.depth() as f64);
        metrics::gauge!("tidewater_kinesis_spool_disk_bytes")
            .set(self.disk_bytes.load(Ordering::Acquire) as f64);
        let oldest = self.oldest_ms.load(Ordering::Acquire);
        let age = if oldest == 0 {
            0.0
        } else {
            unix_ms().saturating_sub(oldest) as f64 / 1000.0
        };
        metrics::gauge!("tidewater_kinesis_spool_oldest_age_seconds").set(age);
    }

    /// Deletes the drained log and starts an empty one, reclaiming its disk. Only when nothing
    /// is left to drain; appends wait meanwhile.
    async fn reset_if_empty(&self) -> Result<bool, BusError> {
        let mut open = self.open.write().await;
        if let Some(o) = open.as_ref() {
            if o.log.backlog(GROUP)? > 0 {
                return Ok(false);
            }
        }
        *open = None;
        // The log's writer threads are joined when its last handle goes, after which the
        // directory is free to delete.
        std::fs::remove_dir_all(&self.dir).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        *open = Some(open_log(&self.dir)?);
        self.depth.store(0, Ordering::Release);
        self.disk_bytes.store(0, Ordering::Release);
        self.oldest_ms.store(0, Ordering::Release);
        self.active.store(false, Ordering::Release);
        self.report();
        Ok(true)
    }

    async fn consumer(&self) -> Result<EmbeddedConsumer, BusError> {
        let open = self.open.read().await;
        open.as_ref().ok_or(BusError::Closed)?.log.consumer(GROUP)
    }
}

fn policy_label(p: SpoolFullPolicy) -> &'static str {
    match p {
        SpoolFullPolicy::PushBack => "push_back",
        SpoolFullPolicy::Drop => "drop",
    }
}

fn open_log(dir: &Path) -> Result<Open, BusError> {
    let log = EmbeddedLog::open(&EmbeddedConfig {
        dir: dir.to_path_buf(),
        partitions: 1,
        fsync: FsyncPolicy::Always,
        // The spool's own bound applies; retention must never delete what is not drained.
        retention_bytes: bytesize::ByteSize::b(u64::MAX / 2),
        retention_age: Duration::from_secs(100 * 365 * 24 * 3600),
        ..EmbeddedConfig::default()
    })?;
    let producer = log.producer();
    Ok(Open { log, producer })
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// Drains the spool in order, forever: each batch is resent until the stream holds all of it,
/// then committed.
async fn drain(spool: Arc<Spool>, putter: Arc<Putter>) {
    let mut backoff = putter.config().retry_initial;
    loop {
        if !spool.is_active() {
            let _ = tokio::time::timeout(Duration::from_secs(1), spool.wake.notified()).await;
            spool.report();
            continue;
        }
        match drain_all(&spool, &putter).await {
            Ok(()) => backoff = putter.config().retry_initial,
            Err(e) => {
                tracing::warn!(error = %e, "kinesis spool drain failed; retrying");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(putter.config().retry_max);
            }
        }
    }
}

/// Drains until the spool is empty and has been reset.
async fn drain_all(spool: &Spool, putter: &Putter) -> Result<(), BusError> {
    loop {
        let mut consumer = spool.consumer().await?;
        loop {
            let records = consumer
                .poll(500, usize::MAX, Duration::from_millis(200))
                .await?;
            if records.is_empty() {
                break;
            }
            let mut user_records = Vec::with_capacity(records.len());
            for r in &records {
                match decode(&r.payload) {
                    Ok((spooled_at, record)) => {
                        spool.oldest_ms.store(spooled_at.max(1), Ordering::Release);
                        user_records.push(record);
                    }
                    Err(reason) => {
                        metrics::counter!("tidewater_kinesis_spool_rejected_records_total")
                            .increment(1);
                        tracing::error!(position = %r.position, reason, "unreadable spool record skipped");
                    }
                }
            }
            spool.report();
            put_all(putter, user_records).await;
            let last = records.last().expect("not empty");
            consumer.commit(&last.partition, &last.position).await?;
            spool
                .depth
                .fetch_sub((records.len() as u64).min(spool.depth()), Ordering::AcqRel);
            spool.report();
        }
        drop(consumer);
        if spool.reset_if_empty().await? {
            tracing::info!("kinesis spool drained");
            return Ok(());
        }
    }
}

/// Resends until every record is in the stream (or refused by it, which retrying cannot
/// change); only those not yet in are sent again.
async fn put_all(putter: &Putter, mut records: Vec<UserRecord>) {
    let mut backoff = putter.config().retry_initial;
    while !records.is_empty() {
        let deadline = Instant::now() + putter.config().spool_after;
        let fates = putter.put(&records, deadline).await;
        let mut left = Vec::new();
        for (fate, record) in fates.into_iter().zip(records) {
            match fate {
                Fate::Put { .. } => {
                    metrics::counter!("tidewater_kinesis_spool_drained_records_total").increment(1)
                }
                Fate::Rejected(reason) => {
                    metrics::counter!("tidewater_kinesis_spool_rejected_records_total")
                        .increment(1);
                    tracing::error!(reason, "the stream refuses a spooled record; it is dropped");
                }
                Fate::Unsent(_) => left.push(record),
            }
        }
        records = left;
        if !records.is_empty() {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(putter.config().retry_max);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `[version][spooled-at ms, u64][hash, u128][key length, u16][key][data]`, big-endian.
fn encode(spooled_at: u64, key: &PartitionKey, data: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(27 + key.key.len() + data.len());
    b.put_u8(FORMAT_VERSION);
    b.put_u64(spooled_at);
    b.put_u128(key.hash);
    b.put_u16(key.key.len() as u16);
    b.put_slice(key.key.as_bytes());
    b.put_slice(data);
    b.freeze()
}

fn decode(frame: &Bytes) -> Result<(u64, UserRecord), String> {
    if frame.len() < 27 || frame[0] != FORMAT_VERSION {
        return Err(format!("not a version {FORMAT_VERSION} spool record"));
    }
    let spooled_at = u64::from_be_bytes(frame[1..9].try_into().expect("8 bytes"));
    let hash = u128::from_be_bytes(frame[9..25].try_into().expect("16 bytes"));
    let key_len = u16::from_be_bytes(frame[25..27].try_into().expect("2 bytes")) as usize;
    let key = frame
        .get(27..27 + key_len)
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or("truncated or non-UTF-8 partition key")?
        .to_string();
    Ok((
        spooled_at,
        UserRecord {
            partition_key: key,
            explicit_hash_key: Some(hash.to_string()),
            data: frame.slice(27 + key_len..),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_frames_round_trip() {
        let key = PartitionKey::for_partition(2, 4);
        let data = Bytes::from_static(b"envelope bytes");
        let (at, r) = decode(&encode(1234, &key, &data)).unwrap();
        assert_eq!(at, 1234);
        assert_eq!(r.partition_key, key.key);
        assert_eq!(r.explicit_hash_key, Some(key.hash.to_string()));
        assert_eq!(r.data, data);
        assert!(decode(&Bytes::from_static(b"\x02short")).is_err());
        let mut bad = encode(1, &key, &data).to_vec();
        bad[26] = 200; // key length past the end
        assert!(decode(&Bytes::from(bad)).is_err());
    }
}
