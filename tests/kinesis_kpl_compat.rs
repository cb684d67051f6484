//! Our KPL aggregates against the format's reference implementation, `aws-kinesis-agg`, through
//! a real stream (kinesalite): what our producer puts de-aggregates with the library exactly as
//! published, and what the library aggregates our consumer reads record by record, resuming
//! inside an aggregate from a sub-sequence checkpoint.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::peers;
use crate::kinesis_support::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tidewater_bus::kinesis::shards::{list_shards, ShardMap};
use tidewater_bus::kinesis::{KinesisConfig, KinesisConsumer, KinesisProducer};
use tidewater_bus::{Consumer, PartitionKey, Position, Producer};

fn kpl_agg(command: &str, input: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kpl_agg.py");
    let mut child = Command::new(crate::common::python())
        .arg(script)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kpl_agg.py {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config(stream: &str, spool: &Path) -> KinesisConfig {
    let mut c = KinesisConfig {
        stream: stream.into(),
        lease_table: format!("{stream}-leases"),
        ..Default::default()
    };
    c.spool.dir = spool.to_path_buf();
    c.lease_duration = Duration::from_secs(1);
    c.shard_sync_interval = Duration::from_secs(1);
    c.idle_poll_interval = Duration::from_millis(200);
    c
}

#[test]
fn our_aggregates_deaggregate_with_the_reference_library() {
    let kinesis = peers::kinesalite();
    let client = kinesis_client(&kinesis.endpoint());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let keys: Vec<PartitionKey> = (0..3).map(|i| PartitionKey::for_partition(i, 3)).collect();
    let published: Vec<Vec<Bytes>> = (0..3)
        .map(|k| {
            (0..40)
                .map(|i| Bytes::from(format!("key {k} record {i} {}", "x".repeat(i * 37))))
                .collect()
        })
        .collect();
    rt.block_on(async {
        create_stream(&client, "agg", 3).await;
        let producer = KinesisProducer::start(client.clone(), config("agg", spool.path()))
            .await
            .unwrap();
        assert_eq!(producer.partitions(), 3);
        for (key, records) in keys.iter().zip(&published) {
            producer.publish(key, records.clone()).await.unwrap();
        }
    });
    let stored = rt.block_on(read_stream(&client, "agg"));
    assert!(
        stored.len() < 120,
        "aggregated: {} Kinesis records for 120 user records",
        stored.len()
    );
    assert!(stored
        .iter()
        .all(|s| s.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2])));

    let input: Vec<Value> = stored
        .iter()
        .map(|s| json!({"sequence": s.sequence, "partition_key": s.partition_key, "data": B64.encode(&s.data)}))
        .collect();
    let users = kpl_agg("deaggregate", &Value::Array(input));
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 120);
    // Lane k is sent to the middle of shard k's range (in hash order).
    let middles =
        rt.block_on(async { ShardMap::new(&list_shards(&client, "agg").await.unwrap()).middles() });
    for (k, key) in keys.iter().enumerate() {
        let mine: Vec<&Value> = users
            .iter()
            .filter(|u| u["partition_key"] == key.key.as_str())
            .collect();
        let data: Vec<Bytes> = mine
            .iter()
            .map(|u| Bytes::from(B64.decode(u["data"].as_str().unwrap()).unwrap()))
            .collect();
        assert_eq!(data, published[k], "key {k}: every record, in order");
        for u in &mine {
            assert_eq!(u["explicit_hash_key"], middles[k].to_string().as_str());
            assert_eq!(u["aggregated"], true);
        }
        // Each key's aggregates sit on one shard, the one its explicit hash key names.
        let shards: std::collections::HashSet<&str> = stored
            .iter()
            .filter(|s| s.partition_key == key.key)
            .map(|s| s.shard.as_str())
            .collect();
        assert_eq!(shards.len(), 1, "{shards:?}");
    }
}

#[test]
fn reference_aggregates_are_read_by_our_consumer_and_resumed_mid_aggregate() {
    let kinesis = peers::kinesalite();
    let dynamodb = peers::moto();
    let client = kinesis_client(&kinesis.endpoint());
    let ddb = dynamodb_client(&dynamodb.endpoint());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spool = tempfile::tempdir().unwrap();

    let user_records: Vec<Value> = (0..25)
        .map(|i| json!({"partition_key": format!("user-{}", i % 4), "data": B64.encode(format!("event {i}"))}))
        .collect();
    let aggregates = kpl_agg("aggregate", &Value::Array(user_records));
    let aggregates = aggregates.as_array().unwrap();
    assert_eq!(
        aggregates
            .iter()
            .map(|a| a["count"].as_u64().unwrap())
            .sum::<u64>(),
        25
    );

    let c = config("kpl", spool.path());
    rt.block_on(async {
        create_stream(&client, "kpl", 1).await;
        for a in aggregates {
            client
                .put_record()
                .stream_name("kpl")
                .partition_key(a["partition_key"].as_str().unwrap())
                .set_explicit_hash_key(a["explicit_hash_key"].as_str().map(String::from))
                .data(aws_sdk_kinesis::primitives::Blob::new(
                    B64.decode(a["data"].as_str().unwrap()).unwrap(),
                ))
                .send()
                .await
                .unwrap();
        }
        // A plain record after the aggregate, as a non-KPL producer would put.
        client
            .put_record()
            .stream_name("kpl")
            .partition_key("plain")
            .data(aws_sdk_kinesis::primitives::Blob::new(
                b"plain record".to_vec(),
            ))
            .send()
            .await
            .unwrap();

        let mut consumer =
            KinesisConsumer::start(client.clone(), ddb.clone(), c.clone(), "worker-a".into())
                .await
                .unwrap();
        let records = poll_until(&mut consumer, 26).await;
        let payloads: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        let mut want: Vec<String> = (0..25).map(|i| format!("event {i}")).collect();
        want.push("plain record".into());
        assert_eq!(payloads, want);
        let Position::Sequence {
            sequence: first_seq,
            sub,
        } = &records[0].position
        else {
            panic!()
        };
        assert_eq!(*sub, 0);
        let subs: Vec<u32> = records[..25]
            .iter()
            .map(|r| match &r.position {
                Position::Sequence { sequence, sub } if sequence == first_seq => *sub,
                other => panic!("one aggregate expected: {other:?}"),
            })
            .collect();
        assert_eq!(subs, (0..25).collect::<Vec<u32>>());

        // Checkpoint inside the aggregate; a new worker resumes right after it.
        consumer
            .commit(&records[9].partition, &records[9].position)
            .await
            .unwrap();
        drop(consumer);
        let mut next =
            KinesisConsumer::start(client.clone(), ddb.clone(), c.clone(), "worker-b".into())
                .await
                .unwrap();
        let resumed = poll_until(&mut next, 16).await;
        let payloads: Vec<String> = resumed
            .iter()
            .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
            .collect();
        assert_eq!(payloads, want[10..].to_vec());
        assert_eq!(
            resumed[0].position,
            Position::Sequence {
                sequence: first_seq.clone(),
                sub: 10
            }
        );
    });
}

async fn poll_until(consumer: &mut KinesisConsumer, n: usize) -> Vec<tidewater_bus::Record> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records after 30s",
            out.len()
        );
        out.extend(
            consumer
                .poll(100, usize::MAX, Duration::from_millis(300))
                .await
                .unwrap(),
        );
    }
    assert_eq!(out.len(), n, "nothing extra");
    out
}
