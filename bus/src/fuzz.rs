//! Fuzz targets of the bus: what it reads back that someone else wrote. A Kinesis record may
//! come from any producer, and a segment file from a crash or a bad disk; neither may crash a
//! consumer or hand it records that were never written.
//!
//! Run briefly by the test command and for as long as asked by `scripts/fuzz`.

mod driver;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;
use prost::Message;

use crate::config::{EmbeddedConfig, FsyncPolicy};
use crate::embedded::EmbeddedLog;
use crate::kinesis::aggregation::{
    deaggregate, encode, pack, AggregatedEntry, AggregatedRecord, UserRecord, MAGIC,
};
use crate::{BusError, Consumer, PartitionKey, Position, Producer};
use driver::fuzz;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Wraps `body` the way the KPL does, so the digest check passes and the parser is reached.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    out
}

/// An `AggregatedRecord` whose indexes may point outside its tables.
fn aggregated_record() -> impl Strategy<Value = AggregatedRecord> {
    let entry = (0..6u64, prop::option::of(0..4u64), bytes(24)).prop_map(|(pk, ehk, data)| {
        AggregatedEntry {
            partition_key_index: pk,
            explicit_hash_key_index: ehk,
            data: data.into(),
            tags: Vec::new(),
        }
    });
    (
        prop::collection::vec(".{0,8}", 0..5),
        prop::collection::vec("[0-9]{1,39}", 0..3),
        prop::collection::vec(entry, 0..8),
    )
        .prop_map(|(pks, ehks, records)| AggregatedRecord {
            partition_key_table: pks,
            explicit_hash_key_table: ehks,
            records,
        })
}

/// Any Kinesis record data: random bytes, random bytes behind a valid magic and digest, and
/// real aggregates with indexes in and out of range.
fn kinesis_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(128),
        bytes(128).prop_map(|b| framed(&b)),
        aggregated_record().prop_map(|a| framed(&a.encode_to_vec())),
        (
            aggregated_record(),
            any::<prop::sample::Index>(),
            any::<u8>()
        )
            .prop_map(|(a, at, x)| {
                let mut body = a.encode_to_vec();
                if !body.is_empty() {
                    let at = at.index(body.len());
                    body[at] ^= x;
                }
                framed(&body)
            }),
    ]
}

/// A consumer either gets the records exactly as the aggregate lists them, or an error; never a
/// panic, and never records from a record that is not an aggregate.
#[test]
fn kpl_deaggregate_any_data() {
    fuzz("kpl_deaggregate_any_data", kinesis_data(), |data| {
        let data = Bytes::from(data);
        let result = deaggregate(&data);
        let aggregate = data.len() >= MAGIC.len() + 16
            && data[..4] == MAGIC
            && Md5::digest(&data[4..data.len() - 16]).as_slice() == &data[data.len() - 16..];
        if !aggregate {
            prop_assert_eq!(result, Ok(None));
            return Ok(());
        }
        let Ok(agg) = AggregatedRecord::decode(&data[4..data.len() - 16]) else {
            prop_assert!(result.is_err());
            return Ok(());
        };
        let want: Option<Vec<UserRecord>> = agg
            .records
            .iter()
            .map(|r| {
                Some(UserRecord {
                    partition_key: agg
                        .partition_key_table
                        .get(r.partition_key_index as usize)?
                        .clone(),
                    explicit_hash_key: match r.explicit_hash_key_index {
                        None => None,
                        Some(k) => Some(agg.explicit_hash_key_table.get(k as usize)?.clone()),
                    },
                    data: r.data.clone(),
                })
            })
            .collect();
        match want {
            Some(want) => prop_assert_eq!(result, Ok(Some(want))),
            None => prop_assert!(result.is_err()),
        }
        Ok(())
    });
}

fn user_records() -> impl Strategy<Value = Vec<UserRecord>> {
    // Few distinct keys, so tables are shared and records group by hash key.
    let record = (
        prop::sample::select(vec!["a", "bb", "", "ключ", "k-with-a-much-longer-name"]),
        prop::option::of(prop::sample::select(vec![
            "0",
            "170141183460469231731687303715884105728",
        ])),
        bytes(200),
    )
        .prop_map(|(pk, ehk, data)| UserRecord {
            partition_key: pk.to_string(),
            explicit_hash_key: ehk.map(str::to_string),
            data: data.into(),
        });
    prop::collection::vec(record, 0..24)
}

/// Whatever is aggregated comes back as it went in; packing keeps every record exactly once,
/// within the size and count limits, in order per hash key, on the hash key it was meant for.
#[test]
fn kpl_aggregate_round_trip() {
    let limits = (any::<bool>(), 40usize..1200, 1usize..12);
    fuzz(
        "kpl_aggregate_round_trip",
        (user_records(), limits),
        |(records, (aggregate, max_size, max_members))| {
            let all: Vec<&UserRecord> = records.iter().collect();
            prop_assert_eq!(deaggregate(&encode(&all)), Ok(Some(records.clone())));

            let (out, too_large) = pack(&records, aggregate, max_size, max_members);
            let mut seen = vec![0u32; records.len()];
            for (i, _) in &too_large {
                prop_assert!(records[*i].data.len() + records[*i].partition_key.len() > max_size);
                seen[*i] += 1;
            }
            for k in &out {
                prop_assert!(k.size() <= max_size, "{} > {max_size}", k.size());
                prop_assert!(!k.members.is_empty());
                prop_assert!(k.members.windows(2).all(|w| w[0] < w[1]));
                for &m in &k.members {
                    seen[m] += 1;
                    prop_assert_eq!(&records[m].explicit_hash_key, &k.explicit_hash_key);
                }
                let first = &records[k.members[0]];
                prop_assert_eq!(&k.partition_key, &first.partition_key);
                if k.members.len() == 1 {
                    prop_assert_eq!(&k.data, &first.data);
                } else {
                    prop_assert!(aggregate && k.members.len() <= max_members);
                    let want: Vec<UserRecord> =
                        k.members.iter().map(|&m| records[m].clone()).collect();
                    prop_assert_eq!(deaggregate(&k.data), Ok(Some(want)));
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1), "each record once: {:?}", seen);
            for key in [
                None,
                Some("0"),
                Some("170141183460469231731687303715884105728"),
            ] {
                let order: Vec<usize> = out
                    .iter()
                    .filter(|k| k.explicit_hash_key.as_deref() == key)
                    .flat_map(|k| k.members.iter().copied())
                    .collect();
                prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{:?}", order);
            }
            Ok(())
        },
    );
}

/// Damage done to one segment after the log was closed.
#[derive(Debug, Clone)]
struct Damage {
    /// Which segment, counted from the last one.
    from_last: usize,
    truncate: Option<prop::sample::Index>,
    flips: Vec<(prop::sample::Index, u8)>,
}

fn damage() -> impl Strategy<Value = Damage> {
    (
        prop_oneof![3 => Just(0usize), 1 => 0usize..4],
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
    )
        .prop_map(|(from_last, truncate, flips)| Damage {
            from_last,
            truncate,
            flips,
        })
}

/// Segment files of partition 0, by base offset.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(dir.join("partitions/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let base = p.file_stem()?.to_str()?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    v.sort();
    v
}

async fn read_all(log: &Arc<EmbeddedLog>) -> Vec<(u64, Bytes)> {
    let mut consumer = log.consumer("fuzz").unwrap();
    let mut out = Vec::new();
    loop {
        let got = consumer
            .poll(1000, usize::MAX, Duration::ZERO)
            .await
            .unwrap();
        if got.is_empty() {
            return out;
        }
        for r in got {
            let Position::Offset(o) = r.position else {
                panic!("embedded records have offsets")
            };
            out.push((o, r.payload));
        }
    }
}

/// Write records, damage a segment (cut it anywhere, flip any bytes), reopen: the log either
/// refuses to open (damage before its last segment: what follows cannot be trusted) or keeps
/// exactly the records before the first damaged frame, in order, and appends after them.
#[test]
fn embedded_log_recovers_a_prefix() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = (
        prop::collection::vec(prop::collection::vec(bytes(48), 1..6), 1..8),
        64u64..512,
        damage(),
    );
    fuzz(
        "embedded_log_recovers_a_prefix",
        input,
        |(batches, segment_bytes, damage)| {
            let tmp = tempfile::tempdir().unwrap();
            let config = EmbeddedConfig {
                dir: tmp.path().to_path_buf(),
                partitions: 1,
                segment_bytes: bytesize::ByteSize::b(segment_bytes),
                // Nothing here outlives the process, so fsync would only slow the search.
                fsync: FsyncPolicy::Never,
                ..EmbeddedConfig::default()
            };
            let key = PartitionKey::for_partition(0, 1);
            let written: Vec<Bytes> = batches.iter().flatten().cloned().map(Bytes::from).collect();
            runtime.block_on(async {
                let log = EmbeddedLog::open(&config).unwrap();
                let producer = log.producer();
                for batch in &batches {
                    let batch = batch.iter().cloned().map(Bytes::from).collect();
                    producer.publish(&key, batch).await.unwrap();
                }
            });

            let segs = segments(tmp.path());
            let k = segs.len() - 1 - damage.from_last.min(segs.len() - 1);
            let (base, path) = &segs[k];
            let before = fs::read(path).unwrap();
            let len = before.len();
            let mut file = before.clone();
            if let Some(at) = damage.truncate {
                file.truncate(at.index(len + 1));
            }
            for (at, x) in &damage.flips {
                if !file.is_empty() {
                    let at = at.index(file.len());
                    file[at] ^= x;
                }
            }
            fs::write(path, &file).unwrap();
            // Where the damage starts, from the bytes themselves: two flips of one byte can
            // cancel out.
            let first_bad = before
                .iter()
                .zip(&file)
                .position(|(a, b)| a != b)
                .unwrap_or(file.len());

            // Frames intact in the damaged segment: those ending at or before the damage.
            let mut end = 0;
            let intact = written[*base as usize..]
                .iter()
                .take_while(|r| {
                    end += 16 + r.len();
                    end <= first_bad && end <= len
                })
                .count();
            let kept = if first_bad >= len {
                written.len()
            } else {
                *base as usize + intact
            };

            runtime.block_on(async {
                let log = match EmbeddedLog::open(&config) {
                    Ok(log) => log,
                    Err(BusError::Corrupt(why)) => {
                        prop_assert!(k + 1 < segs.len() && first_bad < len, "{}", why);
                        return Ok(());
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("reopen: {e}"))),
                };
                prop_assert!(
                    k + 1 == segs.len() || first_bad >= len,
                    "damage before the last segment went unnoticed"
                );
                let got = read_all(&log).await;
                let want: Vec<(u64, Bytes)> =
                    (0u64..).zip(written[..kept].iter().cloned()).collect();
                prop_assert_eq!(&got, &want);
                let ack = log
                    .producer()
                    .publish(&key, vec![Bytes::from_static(b"after")])
                    .await
                    .unwrap();
                prop_assert_eq!(ack.first, Position::Offset(kept as u64));
                drop(log);
                let log = EmbeddedLog::open(&config).unwrap();
                let got = read_all(&log).await;
                prop_assert_eq!(got.len(), kept + 1);
                prop_assert_eq!(&got[kept].1[..], b"after");
                Ok(())
            })
        },
    );
}
