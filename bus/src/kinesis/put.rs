//! Putting records into the stream: packing into KPL aggregates, PutRecords requests within
//! the service's limits, and resending only the records that failed (a response with
//! `FailedRecordCount > 0` is a partial failure), with backoff and jitter and an adaptive
//! pause for a shard that throttles, until each record is in, refused, or a deadline passes.
//! Shared by the producer's batcher and the spool's drainer.

use std::sync::RwLock;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use tokio::time::Instant;

use super::aggregation::{pack, KinesisRecord, UserRecord};
use super::config::{limits, KinesisConfig};
use super::error::{error_code, is_throttle};
use super::shards::{list_shards, ShardMap};
use super::throttle::ShardThrottle;
use crate::backoff::jittered;

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

/// Puts records into the stream; shared by the batcher and the spool's drainer.
pub struct Putter {
    client: Client,
    stream: String,
    config: KinesisConfig,
    shards: RwLock<ShardMap>,
    throttle: ShardThrottle,
}

impl Putter {
    pub fn new(client: Client, config: KinesisConfig, shards: ShardMap) -> Putter {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

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
}
