use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesize::ByteSize;

use super::segment::parse_segment_file_name;
use super::*;
use crate::config::FsyncPolicy;
use crate::{Consumer, Record};

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig {
        dir: dir.to_path_buf(),
        partitions: 4,
        ..EmbeddedConfig::default()
    }
}

fn key(i: u32, of: u32) -> PartitionKey {
    PartitionKey::for_partition(i, of)
}

fn payloads(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

/// Polls until `n` records have arrived or nothing more comes.
async fn drain(consumer: &mut EmbeddedConsumer, n: usize) -> Vec<Record> {
    let mut out = Vec::new();
    while out.len() < n {
        let got = consumer
            .poll(n - out.len(), usize::MAX, Duration::from_millis(500))
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        out.extend(got);
    }
    out
}

fn offset(r: &Record) -> u64 {
    match r.position {
        Position::Offset(o) => o,
        Position::Sequence { .. } => panic!("embedded records have offsets"),
    }
}

fn segments(dir: &Path, partition: u32) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(partition_dir(dir, partition))
        .unwrap()
        .filter_map(|e| parse_segment_file_name(&e.unwrap().file_name().to_string_lossy()))
        .collect();
    v.sort_unstable();
    v
}

fn segment_file(dir: &Path, partition: u32, base: u64) -> PathBuf {
    segment::segment_path(&partition_dir(dir, partition), base)
}

#[tokio::test]
async fn round_trip_across_partitions() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    assert_eq!(log.partitions(), 4);
    let producer = log.producer();
    assert_eq!(producer.partitions(), 4);

    let mut expected: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    for i in 0..4 {
        let ack = producer
            .publish(&key(i, 4), payloads(&format!("p{i}"), 3))
            .await
            .unwrap();
        assert_eq!(
            ack,
            Ack {
                partition: i.to_string(),
                first: Position::Offset(0)
            }
        );
        expected
            .entry(i.to_string())
            .or_default()
            .extend(payloads(&format!("p{i}"), 3));
    }
    for t in 0..20 {
        let k = PartitionKey::new(format!("trace-{t}"));
        let want = partition_for_hash(k.hash, 4).to_string();
        let payload = Bytes::from(format!("trace-{t}"));
        let ack = producer.publish(&k, vec![payload.clone()]).await.unwrap();
        assert_eq!(ack.partition, want);
        expected.entry(want).or_default().push(payload);
    }

    let mut consumer = log.consumer("g").unwrap();
    let total: usize = expected.values().map(Vec::len).sum();
    let records = drain(&mut consumer, total).await;
    assert_eq!(records.len(), total);
    let mut got: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    for r in &records {
        let list = got.entry(r.partition.clone()).or_default();
        assert_eq!(
            offset(r),
            list.len() as u64,
            "offsets are record numbers from 0"
        );
        list.push(r.payload.clone());
    }
    assert_eq!(got, expected);
    assert!(consumer
        .poll(10, usize::MAX, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

/// A poll returns no more payload than asked, shared between partitions, except that its
/// first record comes whatever its size; nothing is skipped or read twice.
#[tokio::test]
async fn polls_are_bounded_in_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    let producer = log.producer();
    producer
        .publish(&key(0, 4), vec![Bytes::from(vec![0u8; 1000]); 3])
        .await
        .unwrap();
    producer
        .publish(&key(1, 4), vec![Bytes::from(vec![1u8; 100]); 20])
        .await
        .unwrap();
    let mut consumer = log.consumer("g").unwrap();
    let sizes = |records: &[Record]| records.iter().map(|r| r.payload.len()).sum::<usize>();

    // Larger than the whole room: still one record.
    let first = consumer.poll(100, 10, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);

    let mut all = first;
    loop {
        let got = consumer.poll(100, 1500, Duration::ZERO).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert!(sizes(&got) <= 1500 || got.len() == 1, "{}", sizes(&got));
        all.extend(got);
    }
    let mut offsets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &all {
        offsets
            .entry(r.partition.clone())
            .or_default()
            .push(offset(r));
    }
    assert_eq!(offsets["0"], vec![0, 1, 2]);
    assert_eq!(offsets["1"], (0..20).collect::<Vec<_>>());

    // With room for a record of each, the next polls share it.
    producer
        .publish(&key(0, 4), vec![Bytes::from(vec![0u8; 100]); 5])
        .await
        .unwrap();
    producer
        .publish(&key(1, 4), vec![Bytes::from(vec![1u8; 100]); 5])
        .await
        .unwrap();
    let shared = consumer.poll(100, 400, Duration::ZERO).await.unwrap();
    assert_eq!(shared.len(), 4);
    assert_eq!(shared.iter().filter(|r| r.partition == "0").count(), 2);
}

#[tokio::test]
async fn order_within_partition_and_fair_polls() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    let producer = log.producer();
    // A busy partition must not starve a quiet one.
    for b in 0..10 {
        producer
            .publish(&key(0, 4), payloads(&format!("busy{b}"), 100))
            .await
            .unwrap();
    }
    producer
        .publish(&key(3, 4), payloads("quiet", 5))
        .await
        .unwrap();

    let mut consumer = log.consumer("g").unwrap();
    let first = consumer
        .poll(50, usize::MAX, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 50);
    assert_eq!(first.iter().filter(|r| r.partition == "3").count(), 5);

    let mut rest = first;
    rest.extend(drain(&mut consumer, 1005).await);
    let busy: Vec<u64> = rest
        .iter()
        .filter(|r| r.partition == "0")
        .map(offset)
        .collect();
    assert_eq!(busy, (0..1000).collect::<Vec<_>>());
    let payloads0: Vec<Bytes> = rest
        .iter()
        .filter(|r| r.partition == "0")
        .map(|r| r.payload.clone())
        .collect();
    let want: Vec<Bytes> = (0..10)
        .flat_map(|b| payloads(&format!("busy{b}"), 100))
        .collect();
    assert_eq!(payloads0, want);
}

#[tokio::test]
async fn commit_then_reopen_resumes_and_redelivers_uncommitted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
        let producer = log.producer();
        producer
            .publish(&key(1, 4), payloads("a", 10))
            .await
            .unwrap();
        producer
            .publish(&key(2, 4), payloads("b", 4))
            .await
            .unwrap();
        let mut consumer = log.consumer("proc").unwrap();
        let records = drain(&mut consumer, 14).await;
        assert_eq!(records.len(), 14);
        consumer.commit("1", &Position::Offset(5)).await.unwrap();
        // Partition 2 is read but never committed.
    }
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    let mut consumer = log.consumer("proc").unwrap();
    let records = drain(&mut consumer, 100).await;
    let p1: Vec<u64> = records
        .iter()
        .filter(|r| r.partition == "1")
        .map(offset)
        .collect();
    let p2: Vec<u64> = records
        .iter()
        .filter(|r| r.partition == "2")
        .map(offset)
        .collect();
    assert_eq!(p1, vec![6, 7, 8, 9]);
    assert_eq!(p2, vec![0, 1, 2, 3]);
    assert_eq!(
        records.iter().find(|r| r.partition == "1").unwrap().payload,
        Bytes::from("a-6")
    );

    // Another group is independent.
    let mut other = log.consumer("other").unwrap();
    assert_eq!(drain(&mut other, 100).await.len(), 14);

    let text = fs::read_to_string(tmp.path().join("offsets/proc.json")).unwrap();
    let stored: BTreeMap<String, u64> = serde_json::from_str(&text).unwrap();
    assert_eq!(stored, BTreeMap::from([("1".to_string(), 6)]));
}

#[tokio::test]
async fn commit_rejects_bad_input_and_one_consumer_per_group() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    log.producer()
        .publish(&key(0, 4), payloads("x", 2))
        .await
        .unwrap();
    let mut consumer = log.consumer("g").unwrap();
    let seq = Position::Sequence {
        sequence: "1".into(),
        sub: 0,
    };
    assert!(matches!(
        consumer.commit("0", &seq).await,
        Err(BusError::Config(_))
    ));
    assert!(matches!(
        consumer.commit("4", &Position::Offset(0)).await,
        Err(BusError::Config(_))
    ));
    assert!(matches!(
        consumer.commit("zero", &Position::Offset(0)).await,
        Err(BusError::Config(_))
    ));
    assert!(matches!(
        consumer.commit("0", &Position::Offset(2)).await,
        Err(BusError::Config(_))
    ));
    consumer.commit("0", &Position::Offset(1)).await.unwrap();

    assert!(matches!(log.consumer("g"), Err(BusError::Config(_))));
    assert!(matches!(
        log.consumer("../escape"),
        Err(BusError::Config(_))
    ));
    drop(consumer);
    let mut again = log.consumer("g").unwrap();
    assert!(again
        .poll(10, usize::MAX, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn restart_preserves_acknowledged_records() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = EmbeddedConfig {
            fsync: policy,
            fsync_interval: Duration::from_millis(20),
            ..config(tmp.path())
        };
        let mut acked = Vec::new();
        {
            let log = EmbeddedLog::open(&cfg).unwrap();
            let producer = log.producer();
            for i in 0..50u32 {
                let ack = producer
                    .publish(&key(i % 4, 4), vec![Bytes::from(format!("r{i}"))])
                    .await
                    .unwrap();
                acked.push((ack.partition, ack.first, Bytes::from(format!("r{i}"))));
            }
        }
        let log = EmbeddedLog::open(&cfg).unwrap();
        let mut consumer = log.consumer("g").unwrap();
        let records = drain(&mut consumer, 100).await;
        let got: HashSet<(String, Position, Bytes)> = records
            .into_iter()
            .map(|r| (r.partition, r.position, r.payload))
            .collect();
        let want: HashSet<(String, Position, Bytes)> = acked.into_iter().collect();
        assert_eq!(got, want, "{policy:?}");
        // New records continue after the recovered ones.
        let ack = log
            .producer()
            .publish(&key(0, 4), payloads("new", 1))
            .await
            .unwrap();
        assert_eq!(ack.first, Position::Offset(13), "{policy:?}");
    }
}

#[tokio::test]
async fn torn_tail_is_truncated_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    {
        let log = EmbeddedLog::open(&cfg).unwrap();
        log.producer()
            .publish(&key(0, 4), payloads("keep", 5))
            .await
            .unwrap();
        log.producer()
            .publish(&key(1, 4), payloads("keep", 5))
            .await
            .unwrap();
    }
    let seg0 = segment_file(tmp.path(), 0, 0);
    let seg1 = segment_file(tmp.path(), 1, 0);
    let good0 = fs::metadata(&seg0).unwrap().len();
    let good1 = fs::metadata(&seg1).unwrap().len();
    {
        // Half a frame: a header that promises more payload than follows.
        let mut frame = Vec::new();
        segment::encode_frame(&mut frame, 1, b"this record was torn by a crash");
        let mut f = OpenOptions::new().append(true).open(&seg0).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        // Garbage, and a whole frame whose bytes were damaged.
        let mut f = OpenOptions::new().append(true).open(&seg1).unwrap();
        let mut bad = Vec::new();
        segment::encode_frame(&mut bad, 1, b"flipped");
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        f.write_all(&bad).unwrap();
        f.write_all(&[0u8; 40]).unwrap();
    }
    let log = EmbeddedLog::open(&cfg).unwrap();
    assert_eq!(fs::metadata(&seg0).unwrap().len(), good0);
    assert_eq!(fs::metadata(&seg1).unwrap().len(), good1);
    let ack = log
        .producer()
        .publish(&key(0, 4), payloads("after", 1))
        .await
        .unwrap();
    assert_eq!(ack.first, Position::Offset(5));
    let mut consumer = log.consumer("g").unwrap();
    let records = drain(&mut consumer, 100).await;
    assert_eq!(records.len(), 11);
    let p0: Vec<Bytes> = records
        .iter()
        .filter(|r| r.partition == "0")
        .map(|r| r.payload.clone())
        .collect();
    let mut want = payloads("keep", 5);
    want.extend(payloads("after", 1));
    assert_eq!(p0, want);
}

#[tokio::test]
async fn corruption_in_an_older_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        partitions: 1,
        segment_bytes: ByteSize::b(200),
        ..config(tmp.path())
    };
    {
        let log = EmbeddedLog::open(&cfg).unwrap();
        for i in 0..10 {
            log.producer()
                .publish(&key(0, 1), payloads(&format!("r{i}"), 3))
                .await
                .unwrap();
        }
    }
    let segs = segments(tmp.path(), 0);
    assert!(segs.len() > 2);
    let older = segment_file(tmp.path(), 0, segs[1]);
    let mut bytes = fs::read(&older).unwrap();
    bytes[20] ^= 0x55;
    fs::write(&older, bytes).unwrap();
    let err = EmbeddedLog::open(&cfg).unwrap_err();
    assert!(matches!(err, BusError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn segments_roll_and_reopen_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        partitions: 2,
        segment_bytes: ByteSize::b(256),
        ..config(tmp.path())
    };
    let payload = Bytes::from(vec![7u8; 48]); // 64-byte frames: four per segment
    {
        let log = EmbeddedLog::open(&cfg).unwrap();
        let producer = log.producer();
        producer
            .publish(&key(0, 2), vec![payload.clone(); 10])
            .await
            .unwrap();
        for _ in 0..3 {
            producer
                .publish(&key(0, 2), vec![payload.clone()])
                .await
                .unwrap();
        }
    }
    assert_eq!(segments(tmp.path(), 0), vec![0, 4, 8, 12]);
    for base in [0, 4, 8] {
        assert_eq!(
            fs::metadata(segment_file(tmp.path(), 0, base))
                .unwrap()
                .len(),
            256
        );
    }
    assert_eq!(segments(tmp.path(), 1), vec![0]);
    let name = segment_file(tmp.path(), 0, 12);
    assert_eq!(name.file_name().unwrap(), "00000000000000000012.log");

    let log = EmbeddedLog::open(&cfg).unwrap();
    let ack = log
        .producer()
        .publish(&key(0, 2), vec![payload.clone()])
        .await
        .unwrap();
    assert_eq!(ack.first, Position::Offset(13));
    let mut consumer = log.consumer("g").unwrap();
    // Start mid-segment after a commit to exercise locating an offset inside a segment.
    consumer.commit("0", &Position::Offset(5)).await.unwrap();
    drop(consumer);
    let mut consumer = log.consumer("g").unwrap();
    let records = drain(&mut consumer, 100).await;
    assert_eq!(
        records.iter().map(offset).collect::<Vec<_>>(),
        (6..14).collect::<Vec<_>>()
    );
    assert!(records.iter().all(|r| r.payload == payload));
}

#[tokio::test]
async fn retention_by_bytes_deletes_whole_old_segments_and_lagging_reader_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        partitions: 1,
        segment_bytes: ByteSize::b(256),
        retention_bytes: ByteSize::b(600),
        ..config(tmp.path())
    };
    let log = EmbeddedLog::open(&cfg).unwrap();
    let producer = log.producer();
    let mut consumer = log.consumer("slow").unwrap();
    producer
        .publish(&key(0, 1), vec![Bytes::from(vec![1u8; 48]); 2])
        .await
        .unwrap();
    let first = consumer
        .poll(1, usize::MAX, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(offset(&first[0]), 0);

    for _ in 0..30 {
        producer
            .publish(&key(0, 1), vec![Bytes::from(vec![1u8; 48])])
            .await
            .unwrap();
    }
    // 32 records of 64 bytes, 4 per segment: bases 0..=28. Within 600 bytes only the active
    // segment (28) and the one before it fit: 256 + 256 = 512, the next would make 768.
    assert_eq!(segments(tmp.path(), 0), vec![24, 28]);

    let records = drain(&mut consumer, 100).await;
    assert_eq!(
        records.iter().map(offset).collect::<Vec<_>>(),
        (24..32).collect::<Vec<_>>()
    );

    // A group created now starts at the oldest retained record.
    let mut fresh = log.consumer("fresh").unwrap();
    assert_eq!(
        offset(
            &fresh
                .poll(1, usize::MAX, Duration::from_secs(1))
                .await
                .unwrap()[0]
        ),
        24
    );
    drop((consumer, fresh, producer));
    drop(log);

    // Reopening keeps the retained segments and offsets.
    let log = EmbeddedLog::open(&cfg).unwrap();
    let ack = log
        .producer()
        .publish(&key(0, 1), vec![Bytes::from(vec![1u8; 48])])
        .await
        .unwrap();
    assert_eq!(ack.first, Position::Offset(32));
}

#[tokio::test]
async fn retention_by_age_deletes_only_non_active_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        partitions: 1,
        segment_bytes: ByteSize::b(256),
        retention_age: Duration::from_millis(400),
        ..config(tmp.path())
    };
    let log = EmbeddedLog::open(&cfg).unwrap();
    let producer = log.producer();
    let mut consumer = log.consumer("slow").unwrap();
    producer
        .publish(&key(0, 1), vec![Bytes::from(vec![2u8; 48]); 10])
        .await
        .unwrap();
    assert_eq!(segments(tmp.path(), 0), vec![0, 4, 8]);

    let deadline = Instant::now() + Duration::from_secs(10);
    while segments(tmp.path(), 0) != vec![8] {
        assert!(
            Instant::now() < deadline,
            "segments left: {:?}",
            segments(tmp.path(), 0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The active segment stays however old its records are.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(segments(tmp.path(), 0), vec![8]);

    let records = drain(&mut consumer, 100).await;
    assert_eq!(records.iter().map(offset).collect::<Vec<_>>(), vec![8, 9]);
}

#[tokio::test]
async fn second_open_fails_while_first_is_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let log = EmbeddedLog::open(&cfg).unwrap();
    let producer = log.producer();
    drop(log);
    // The producer keeps the log, and its lock, alive.
    match EmbeddedLog::open(&cfg) {
        Err(BusError::Config(msg)) => {
            assert!(msg.contains(&tmp.path().display().to_string()), "{msg}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    drop(producer);
    EmbeddedLog::open(&cfg).unwrap();
}

#[tokio::test]
async fn partition_count_mismatch_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    drop(EmbeddedLog::open(&config(tmp.path())).unwrap());
    let cfg = EmbeddedConfig {
        partitions: 8,
        ..config(tmp.path())
    };
    match EmbeddedLog::open(&cfg) {
        Err(BusError::Config(msg)) => {
            assert!(msg.contains("4 partitions") && msg.contains('8'), "{msg}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let zero = EmbeddedConfig {
        partitions: 0,
        dir: tmp.path().join("other"),
        ..config(tmp.path())
    };
    assert!(matches!(EmbeddedLog::open(&zero), Err(BusError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_all_acknowledged_and_read_once() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Interval] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = EmbeddedConfig {
            fsync: policy,
            fsync_interval: Duration::from_millis(5),
            segment_bytes: ByteSize::kib(8),
            ..config(tmp.path())
        };
        let log = EmbeddedLog::open(&cfg).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let producer = log.producer();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..200 {
                    let k = PartitionKey::new(format!("task{t}-key{}", i % 7));
                    let ack = producer
                        .publish(
                            &k,
                            vec![
                                Bytes::from(format!("{t}:{i}:a")),
                                Bytes::from(format!("{t}:{i}:b")),
                            ],
                        )
                        .await
                        .unwrap();
                    acks.push(ack);
                }
                acks
            }));
        }
        let mut firsts = HashSet::new();
        for task in tasks {
            for ack in task.await.unwrap() {
                assert!(
                    firsts.insert((ack.partition, ack.first)),
                    "two publishes got the same offset"
                );
            }
        }
        assert_eq!(firsts.len(), 1600);

        let mut consumer = log.consumer("g").unwrap();
        let records = drain(&mut consumer, 4000).await;
        assert_eq!(records.len(), 3200, "{policy:?}");
        let payloads: HashSet<Bytes> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads.len(), 3200, "every record exactly once");
        // A publish's records are contiguous and in order.
        for r in &records {
            let text = std::str::from_utf8(&r.payload).unwrap();
            if text.ends_with(":a") {
                let next = records
                    .iter()
                    .find(|n| n.partition == r.partition && offset(n) == offset(r) + 1)
                    .unwrap();
                assert_eq!(next.payload, Bytes::from(text.replace(":a", ":b")));
            }
        }
        for p in 0..4 {
            let mut offs: Vec<u64> = records
                .iter()
                .filter(|r| r.partition == p.to_string())
                .map(offset)
                .collect();
            let n = offs.len() as u64;
            offs.sort_unstable();
            assert_eq!(offs, (0..n).collect::<Vec<_>>());
        }
        assert!(
            segments(tmp.path(), 0).len() > 1,
            "8 KiB segments must have rolled"
        );
    }
}

#[tokio::test]
async fn waiting_poll_is_woken_by_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    let mut consumer = log.consumer("g").unwrap();
    let producer = log.producer();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        producer
            .publish(&key(2, 4), payloads("wake", 1))
            .await
            .unwrap();
    });
    let started = Instant::now();
    let records = consumer
        .poll(10, usize::MAX, Duration::from_secs(10))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].partition, "2");
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
    publisher.await.unwrap();

    // And an idle poll returns empty after its wait.
    let started = Instant::now();
    assert!(consumer
        .poll(10, usize::MAX, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn empty_publish_is_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&config(tmp.path())).unwrap();
    let producer = log.producer();
    producer
        .publish(&key(0, 4), payloads("x", 3))
        .await
        .unwrap();
    let ack = producer.publish(&key(0, 4), Vec::new()).await.unwrap();
    assert_eq!(ack.first, Position::Offset(3));
    let ack = producer
        .publish(&key(0, 4), vec![Bytes::new()])
        .await
        .unwrap();
    assert_eq!(ack.first, Position::Offset(3));
    let mut consumer = log.consumer("g").unwrap();
    let records = drain(&mut consumer, 10).await;
    assert_eq!(records.len(), 4);
    assert!(records[3].payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_share_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = EmbeddedConfig {
        partitions: 1,
        ..config(tmp.path())
    };
    let log = EmbeddedLog::open(&cfg).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let producer = log.producer();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                producer
                    .publish(&key(0, 1), vec![Bytes::from(format!("{t}:{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let syncs = log.partitions[0]
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(syncs < 1200, "{syncs} fsyncs for 1600 publishes");
}
