//! Kinesis faults, injected by the project's own proxy in front of kinesalite: records that
//! fail inside a successful `PutRecords` are the only ones sent again, and nothing is lost.

mod common;
mod kinesis_support;

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use common::peers;
use kinesis_support::proxy::Proxy;
use kinesis_support::*;
use tidewater_bus::kinesis::{KinesisConfig, KinesisProducer};
use tidewater_bus::{PartitionKey, Producer};

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
        direct
            .create_stream()
            .stream_name("faults")
            .shard_count(2)
            .send()
            .await
            .unwrap();
        wait_active(&direct, "faults").await;
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
