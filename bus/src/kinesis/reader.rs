//! A shard's reader: GetRecords within the shard's limits (5 calls/s, 2 MB/s), backing off on
//! throttling, renewing an expired iterator right after the last record read, reporting
//! `MillisBehindLatest`, and sending de-aggregated records, then the shard's end (for a closed
//! shard), to the consumer.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aggregation::deaggregate;
use super::config::limits;
use super::consumer::{lost, Event, Shared, BUS_LABEL};
use super::error::{error_code, is_throttle, kinesis_error};
use super::leases::Checkpoint;
use crate::backoff::jittered;
use crate::{BusError, Position, Record};

pub(super) struct Reader {
    shared: Arc<Shared>,
    shard: String,
    generation: u64,
    stop: CancellationToken,
}

impl Reader {
    pub(super) fn new(
        shared: Arc<Shared>,
        shard: String,
        generation: u64,
        stop: CancellationToken,
    ) -> Reader {
        Reader {
            shared,
            shard,
            generation,
            stop,
        }
    }

    pub(super) async fn run(self, from: Checkpoint) {
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
