//! Rounds: the unit the processor decodes, delivers and checkpoints.
//!
//! A round holds records of one partition only, so each sink can take a partition's rounds in
//! bus order (the EMF sink differences cumulative counters) while rounds of other partitions
//! go to it at the same time. It is cut at `max_poll_records` records or once its records'
//! decompressed size reaches `max_round_bytes`, so what one sink call receives stays bounded
//! however large the records are. Both sizes are read from the envelopes, before decoding, so
//! the memory budget can count a round before it takes the memory.
//!
//! Decoding (zstd, then prost) is CPU work: it runs on the blocking pool, a chunk of records
//! per task so a round uses every core, and at most one task per core at once so a backlog does
//! not grow the blocking pool to hundreds of threads.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tidewater_bus::{Position, Record};
use tokio::sync::Semaphore;

use super::dead_letter;
use super::memory::Held;
use crate::decode::{decode, decode_sizes, Batch, DecodeSizes};

/// Decompressed bytes decoded per blocking task: large enough that a task's overhead (a few
/// microseconds) is lost in its work (about a millisecond), small enough that a round of
/// `max_round_bytes` spreads over the cores.
const DECODE_CHUNK_BYTES: u64 = 512 * 1024;

/// A round as cut from a poll, before decoding.
pub(crate) struct Cut {
    pub(crate) partition: String,
    pub(crate) records: Vec<Record>,
    /// Per record: what decoding it takes, as its envelope declares it.
    sizes: Vec<DecodeSizes>,
    /// The records' compressed bytes, held since the poll.
    pub(crate) held: Option<Held>,
}

impl Cut {
    fn new(partition: String) -> Self {
        Cut {
            partition,
            records: Vec::new(),
            sizes: Vec::new(),
            held: None,
        }
    }

    fn push(&mut self, record: Record) {
        self.sizes.push(decode_sizes(&record.payload));
        self.records.push(record);
    }

    pub(crate) fn compressed_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.payload.len() as u64).sum()
    }

    fn decompressed_bytes(&self) -> u64 {
        self.sizes.iter().map(|s| s.decompressed).sum()
    }

    /// What decoding will add to the compressed bytes: the payloads as prost structures.
    pub(crate) fn decoded_estimate(&self) -> u64 {
        self.sizes.iter().map(|s| s.decoded).sum()
    }

    /// Hands the records and their sizes over for decoding.
    pub(crate) fn take_records(&mut self) -> (Vec<Record>, Vec<DecodeSizes>) {
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.sizes),
        )
    }

    pub(crate) fn last_position(&self) -> Position {
        self.records
            .last()
            .map(|r| r.position.clone())
            .expect("a round has at least one record")
    }
}

/// What a record costs the budget, compressed and decoded.
pub(crate) fn record_cost(record: &Record) -> u64 {
    record.payload.len() as u64 + decode_sizes(&record.payload).decoded
}

/// Splits what a poll returned into rounds, each of one partition, in bus order, of at most
/// `max_records` records and cut once their decompressed bytes reach `max_bytes` (a record
/// larger than that is a round alone). Partitions take turns in the result, so rounds waiting
/// for memory are let in fairly.
pub(crate) fn cut(records: Vec<Record>, max_records: usize, max_bytes: u64) -> Vec<Cut> {
    let mut by_partition: Vec<Vec<Cut>> = Vec::new();
    for record in records {
        let rounds = match by_partition
            .iter_mut()
            .position(|rounds| rounds[0].partition == record.partition)
        {
            Some(i) => &mut by_partition[i],
            None => {
                by_partition.push(vec![Cut::new(record.partition.clone())]);
                by_partition.last_mut().expect("just pushed")
            }
        };
        let open = rounds.last_mut().expect("never empty");
        if open.records.len() >= max_records.max(1) || open.decompressed_bytes() >= max_bytes {
            rounds.push(Cut::new(record.partition.clone()));
        }
        rounds.last_mut().expect("never empty").push(record);
    }
    let mut out = Vec::new();
    let mut queues: Vec<_> = by_partition.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = out.len();
        out.extend(queues.iter_mut().filter_map(Iterator::next));
        if out.len() == before {
            return out;
        }
    }
}

/// A round decoded: the batches for the sinks, and the dead letters to write first.
pub(crate) struct Decoded {
    pub(crate) batches: Vec<Arc<Batch>>,
    /// NDJSON lines, empty when everything decoded.
    pub(crate) dead_letters: String,
}

/// Decodes a round's records, several chunks at once on the blocking pool, at most one per
/// `cpus` permit. The batches come back in bus order.
pub(crate) async fn decode_round(
    records: Vec<Record>,
    sizes: Vec<DecodeSizes>,
    cpus: Arc<Semaphore>,
) -> anyhow::Result<Decoded> {
    let mut chunks: Vec<Vec<Record>> = Vec::new();
    let mut chunk_bytes = DECODE_CHUNK_BYTES;
    for (record, size) in records.into_iter().zip(sizes) {
        if chunk_bytes >= DECODE_CHUNK_BYTES {
            chunks.push(Vec::new());
            chunk_bytes = 0;
        }
        chunk_bytes += size.decompressed.max(record.payload.len() as u64);
        chunks.last_mut().expect("just pushed").push(record);
    }
    let tasks = chunks.into_iter().map(|chunk| {
        let cpus = Arc::clone(&cpus);
        async move {
            let _permit = cpus.acquire_owned().await?;
            tokio::task::spawn_blocking(move || decode_chunk(chunk))
                .await
                .map_err(|e| anyhow::anyhow!("decoding task failed: {e}"))
        }
    });
    let mut decoded = Decoded {
        batches: Vec::new(),
        dead_letters: String::new(),
    };
    for part in futures::future::try_join_all(tasks).await? {
        decoded.batches.extend(part.batches);
        decoded.dead_letters.push_str(&part.dead_letters);
    }
    Ok(decoded)
}

/// Decodes records on the calling (blocking) thread, counting them as consumed.
fn decode_chunk(records: Vec<Record>) -> Decoded {
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut out = Decoded {
        batches: Vec::with_capacity(records.len()),
        dead_letters: String::new(),
    };
    for record in &records {
        match decode(&record.payload) {
            Ok((batch, unreadable)) => {
                for item in unreadable {
                    out.dead_letters.push_str(&dead_letter::line(
                        record,
                        &item.reason,
                        &item.bytes,
                    ));
                }
                let lag = now_nanos.saturating_sub(batch.produced_at_unix_nano) as f64 / 1e9;
                metrics::gauge!("tidewater_processor_lag_seconds", "partition" => record.partition.clone()).set(lag);
                metrics::counter!("tidewater_processor_consumed_items_total", "signal" => batch.signal.label()).increment(batch.item_count as u64);
                out.batches.push(Arc::new(batch));
            }
            Err(reason) => {
                out.dead_letters
                    .push_str(&dead_letter::line(record, &reason, &record.payload))
            }
        }
    }
    metrics::counter!("tidewater_processor_consumed_records_total").increment(records.len() as u64);
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message;
    use tidewater_proto::{Encoding, Envelope, Signal};

    use super::*;

    fn record(partition: &str, offset: u64, size: u64) -> Record {
        Record {
            partition: partition.into(),
            position: Position::Offset(offset),
            payload: Bytes::from(
                Envelope {
                    signal: Signal::Events as i32,
                    encoding: Encoding::EventsProto as i32,
                    compression: tidewater_proto::Compression::Zstd as i32,
                    uncompressed_size: size,
                    payload: vec![0; 4],
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        }
    }

    fn shape(cuts: &[Cut]) -> Vec<(String, Vec<u64>)> {
        cuts.iter()
            .map(|c| {
                let offsets = c
                    .records
                    .iter()
                    .map(|r| match r.position {
                        Position::Offset(o) => o,
                        _ => unreachable!(),
                    })
                    .collect();
                (c.partition.clone(), offsets)
            })
            .collect()
    }

    #[test]
    fn rounds_are_one_partition_in_order_and_take_turns() {
        let records = vec![
            record("a", 0, 10),
            record("b", 0, 10),
            record("a", 1, 10),
            record("a", 2, 10),
            record("b", 1, 10),
            record("a", 3, 10),
        ];
        let cuts = cut(records, 2, u64::MAX);
        assert_eq!(
            shape(&cuts),
            vec![
                ("a".into(), vec![0, 1]),
                ("b".into(), vec![0, 1]),
                ("a".into(), vec![2, 3]),
            ]
        );
    }

    #[test]
    fn a_round_is_cut_once_its_decompressed_bytes_reach_the_limit() {
        let records = vec![
            record("a", 0, 600),
            record("a", 1, 400),
            record("a", 2, 5000),
            record("a", 3, 1),
            record("a", 4, 1),
        ];
        let cuts = cut(records, 100, 1000);
        assert_eq!(
            shape(&cuts),
            vec![
                ("a".into(), vec![0, 1]),
                ("a".into(), vec![2]),
                ("a".into(), vec![3, 4]),
            ]
        );
        assert_eq!(
            cuts[1].decoded_estimate(),
            5000 * crate::decode::decoded_factor(Signal::Events)
        );
    }
}
