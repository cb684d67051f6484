//! Kinesis faults, injected by the project's own proxy in front of kinesalite: records that
//! fail inside a successful `PutRecords` are the only ones sent again, and nothing is lost.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::peers;
use crate::kinesis_support::proxy::Proxy;
use crate::kinesis_support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use tidewater_bus::kinesis::config::SpoolFullPolicy;
use tidewater_bus::kinesis::{KinesisConfig, KinesisConsumer, KinesisProducer};
use tidewater_bus::{Consumer, PartitionKey, Producer};

#[test]
fn only_the_records_that_failed_are_sent_again() {
    let kinesis = peers::kinesalite();
    let proxy = Proxy::start(&kinesis.endpoint());
    let direct = kinesis_client(&kinesis.endpoint());
    let through_proxy = kinesis_client(&proxy.endpoint());
    // Of the first two PutRecords calls, every third record fails with a throttling error.
    proxy.fail_records(|call, index| call < 2 && index % 3 == 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut config = KinesisConfig {
        stream: "faults".into(),
        aggregation: false,
        ..Default::default()
    };
    config.spool.dir = spool.path().to_path_buf();
    config.retry_initial = Duration::from_millis(20);

    let published: Vec<Bytes> = (0..120)
        .map(|i| Bytes::from(format!("record-{i:03}")))
        .collect();
    rt.block_on(async {
        create_stream(&direct, "faults", 2).await;
        let producer = KinesisProducer::start(through_proxy, config).await.unwrap();
        let key = PartitionKey::for_partition(1, 2);
        producer
            .publish(&key, published[..60].to_vec())
            .await
            .unwrap();
        producer
            .publish(&PartitionKey::for_partition(0, 2), published[60..].to_vec())
            .await
            .unwrap();
    });

    let log = proxy.put_log();
    let decoded = |v: &Vec<String>| -> Vec<String> {
        v.iter()
            .map(|d| String::from_utf8(B64.decode(d).unwrap()).unwrap())
            .collect()
    };
    // Call 0: 60 records, 20 failed. Call 1: exactly those 20 again, of which 7 fail again.
    // Call 2: exactly those 7. Then the second publish, untouched.
    assert_eq!(log.len(), 4, "{log:?}");
    let failed0 = decoded(&log[0].1);
    assert_eq!(failed0.len(), 20);
    let mut resent1 = decoded(&log[1].0);
    resent1.extend(decoded(&log[1].1));
    resent1.sort();
    let mut want = failed0.clone();
    want.sort();
    assert_eq!(
        resent1, want,
        "the retry carries the failed records and nothing else"
    );
    let failed1 = decoded(&log[1].1);
    assert_eq!(failed1.len(), 7);
    let mut resent2 = decoded(&log[2].0);
    resent2.sort();
    let mut want = failed1.clone();
    want.sort();
    assert_eq!(resent2, want);
    assert!(log[2].1.is_empty() && log[3].1.is_empty());
    assert_eq!(log[3].0.len(), 60);

    // The stream holds every record exactly once.
    let stored = rt.block_on(read_stream(&direct, "faults"));
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in &stored {
        *counts
            .entry(String::from_utf8(s.data.clone()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 120);
    assert!(
        counts.values().all(|n| *n == 1),
        "no duplicates: {counts:?}"
    );
}

/// Kinesis is unreachable for 30 s while clients keep sending: the collector spools to disk and
/// keeps acknowledging what is durable there, then drains the spool in order once the stream
/// is back, and the processor's sink receives every span.
#[test]
fn a_30_second_outage_is_spooled_to_disk_and_drained() {
    let peers = Peers::start();
    peers.create_stream("outage", 2);
    let proxy = Proxy::start(&peers.kinesis.endpoint());
    let mut collector_env = peers.env("outage", "outage-leases");
    collector_env.retain(|(k, _)| k != "AWS_ENDPOINT_URL_KINESIS");
    collector_env.extend([
        ("AWS_ENDPOINT_URL_KINESIS".to_string(), proxy.endpoint()),
        (
            "TIDEWATER_BUS__KINESIS__SPOOL_AFTER".to_string(),
            "1s".to_string(),
        ),
        (
            "TIDEWATER_BUS__KINESIS__RETRY_MAX".to_string(),
            "1s".to_string(),
        ),
    ]);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let collector = crate::common::Tidewater::run("collector", dirs[0].path(), &collector_env);
    let processor = crate::common::Tidewater::run(
        "processor",
        dirs[1].path(),
        &peers.env("outage", "outage-leases"),
    );

    let start = std::time::Instant::now();
    let mut sent = std::collections::HashSet::new();
    let mut spooled_max = 0.0f64;
    let mut batch = 0u32;
    let mut went_down = None;
    while start.elapsed() < Duration::from_secs(40) {
        let t = start.elapsed();
        if t > Duration::from_secs(5) && went_down.is_none() {
            proxy.set_down(true);
            went_down = Some(std::time::Instant::now());
        }
        if went_down.is_some_and(|d| d.elapsed() > Duration::from_secs(30)) {
            proxy.set_down(false);
        }
        let request = crate::common::otlp_traces(batch, 8, 4);
        batch += 1;
        let resp = crate::common::post_protobuf(
            &collector.http_url("/v1/traces"),
            prost::Message::encode_to_vec(&request),
        );
        assert_eq!(
            resp.status(),
            200,
            "acknowledged once durable in the spool, at {t:?}:\n{}",
            collector.log()
        );
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    sent.insert(
                        s.span_id
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>(),
                    );
                }
            }
        }
        let m = collector.metrics();
        let depth = m
            .lines()
            .find(|l| l.starts_with("tidewater_kinesis_spool_depth_records"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        spooled_max = spooled_max.max(depth);
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.set_down(false);
    assert!(
        spooled_max > 0.0,
        "the outage went to the spool:\n{}",
        collector.log()
    );

    let seen = crate::common::wait_for(Duration::from_secs(90), || {
        let seen = crate::common::span_id_counts(&processor);
        sent.iter().all(|id| seen.contains_key(id)).then_some(seen)
    })
    .unwrap_or_else(|| {
        panic!(
            "spans lost ({} of {}):\n{}",
            crate::common::span_id_counts(&processor).len(),
            sent.len(),
            collector.log()
        )
    });
    assert_eq!(seen.len(), sent.len());
    let drained = crate::common::wait_for(Duration::from_secs(30), || {
        let m = collector.metrics();
        m.lines()
            .any(|l| l == "tidewater_kinesis_spool_depth_records 0")
            .then_some(m)
    });
    assert!(drained.is_some(), "the spool is empty again");
    eprintln!(
        "outage: {} spans sent, spool peaked at {spooled_max} records, {} delivered twice",
        sent.len(),
        seen.values().filter(|n| **n > 1).count()
    );
}

/// With the stream unreachable, the spool takes what it can hold; beyond its bound the default
/// policy refuses (the client keeps its data and retries), and "drop" acknowledges and counts.
#[test]
fn a_full_spool_pushes_back_by_default_or_drops_when_told() {
    let kinesis = peers::kinesalite();
    let proxy = Proxy::start(&kinesis.endpoint());
    let direct = kinesis_client(&kinesis.endpoint());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        create_stream(&direct, "full", 1).await;
    });
    for policy in [SpoolFullPolicy::PushBack, SpoolFullPolicy::Drop] {
        proxy.set_down(false);
        let spool = tempfile::tempdir().unwrap();
        let mut config = KinesisConfig {
            stream: "full".into(),
            ..Default::default()
        };
        config.spool.dir = spool.path().to_path_buf();
        config.spool.max_size = bytesize::ByteSize::kib(64);
        config.spool.full_policy = policy;
        config.spool_after = Duration::from_millis(300);
        config.retry_initial = Duration::from_millis(50);
        config.retry_max = Duration::from_millis(100);
        let key = PartitionKey::for_partition(0, 1);
        let outcomes: Vec<bool> = rt.block_on(async {
            let producer = KinesisProducer::start(kinesis_client(&proxy.endpoint()), config)
                .await
                .unwrap();
            proxy.set_down(true);
            let mut outcomes = Vec::new();
            for i in 0..12 {
                let record = Bytes::from(vec![i as u8; 10 * 1024]);
                outcomes.push(producer.publish(&key, vec![record]).await.is_ok());
            }
            outcomes
        });
        let accepted = outcomes.iter().filter(|ok| **ok).count();
        match policy {
            SpoolFullPolicy::PushBack => {
                assert!(
                    (4..12).contains(&accepted),
                    "some spooled, the rest refused: {outcomes:?}"
                );
                assert!(
                    outcomes[..accepted].iter().all(|ok| *ok),
                    "refusals start once full: {outcomes:?}"
                );
            }
            SpoolFullPolicy::Drop => assert_eq!(accepted, 12, "all acknowledged: {outcomes:?}"),
        }
    }
}

/// GetRecords answers with expired iterators and throttling mid-shard: the reader renews its
/// iterator right after the last record it read and backs off, so nothing is skipped or read
/// twice.
#[test]
fn expired_iterators_and_throttling_neither_skip_nor_repeat_records() {
    let kinesis = peers::kinesalite();
    let dynamodb = peers::moto();
    let proxy = Proxy::start(&kinesis.endpoint());
    let direct = kinesis_client(&kinesis.endpoint());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut config = KinesisConfig {
        stream: "iter".into(),
        lease_table: "iter-leases".into(),
        ..Default::default()
    };
    config.spool.dir = spool.path().to_path_buf();
    config.max_records_per_get = 5;
    config.idle_poll_interval = Duration::from_millis(200);
    config.retry_initial = Duration::from_millis(50);
    let want: Vec<String> = (0..100).map(|i| format!("r{i:03}")).collect();
    rt.block_on(async {
        create_stream(&direct, "iter", 1).await;
        for w in &want {
            direct
                .put_record()
                .stream_name("iter")
                .partition_key("k")
                .data(aws_sdk_kinesis::primitives::Blob::new(
                    w.as_bytes().to_vec(),
                ))
                .send()
                .await
                .unwrap();
        }
        let mut consumer = KinesisConsumer::start(
            kinesis_client(&proxy.endpoint()),
            dynamodb_client(&dynamodb.endpoint()),
            config,
            "w".into(),
        )
        .await
        .unwrap();
        let mut got: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut injected = false;
        while got.len() < want.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck at {} records",
                got.len()
            );
            let records = consumer
                .poll(3, usize::MAX, Duration::from_millis(300))
                .await
                .unwrap();
            got.extend(
                records
                    .iter()
                    .map(|r| String::from_utf8(r.payload.to_vec()).unwrap()),
            );
            if !got.is_empty() && !injected {
                injected = true;
                proxy.fail_calls(
                    "GetRecords",
                    &[
                        "ExpiredIteratorException",
                        "ProvisionedThroughputExceededException",
                        "ExpiredIteratorException",
                    ],
                );
            }
        }
        // 5 records a call, 5 calls a second: the shard takes 4 s to read, and the errors
        // were injected within its first second, so they came mid-shard.
        assert_eq!(proxy.pending_errors(), 0, "every injected error was served");
        assert_eq!(got, want);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            consumer
                .poll(10, usize::MAX, Duration::from_millis(300))
                .await
                .unwrap()
                .is_empty(),
            "nothing read twice"
        );
    });
}
