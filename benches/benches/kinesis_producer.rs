//! Kinesis producer throughput against kinesalite on loopback: user records and bytes per
//! second through `KinesisProducer::publish` (four lanes publishing concurrently, as the
//! collector's do), with KPL aggregation on and off, and the aggregation ratio achieved.
//!
//! Needs kinesalite (`scripts/setup-node` installs it into `.peers/node`); without it the
//! benchmark says so and does nothing. Run: `cargo bench -p tidewater-benches`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tidewater_bus::kinesis::{KinesisConfig, KinesisProducer};
use tidewater_bus::{PartitionKey, Producer};

const LANES: u32 = 4;
const RECORDS_PER_LANE: usize = 100;
const RECORD_BYTES: usize = 2048;

struct Kinesalite(Child, u16);

impl Drop for Kinesalite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kinesalite() -> Option<Kinesalite> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.peers/node");
    if !dir.join("node_modules/kinesalite").exists() {
        eprintln!("kinesalite is not installed (run scripts/setup-node): skipping the Kinesis producer benchmark");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("node")
        .current_dir(&dir)
        .args(["-e", "require('kinesalite')({createStreamMs: 0, shardLimit: 100}).listen(Number(process.argv[1]), '127.0.0.1')", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Kinesalite(child, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn client(port: u16) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .build(),
    )
}

/// Envelope-like payloads: mostly incompressible bytes, so sizes are what they seem.
fn payloads() -> Vec<Vec<Bytes>> {
    (0..LANES)
        .map(|lane| {
            (0..RECORDS_PER_LANE)
                .map(|i| {
                    Bytes::from(
                        (0..RECORD_BYTES)
                            .map(|b| (b * 31 + i * 7 + lane as usize) as u8)
                            .collect::<Vec<u8>>(),
                    )
                })
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let Some(peer) = kinesalite() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kinesis = client(peer.1);
    let spool = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("kinesis_producer");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let total_records = (LANES as usize * RECORDS_PER_LANE) as u64;
    for aggregation in [true, false] {
        let stream = format!("bench-{aggregation}");
        let producer = rt.block_on(async {
            kinesis
                .create_stream()
                .stream_name(&stream)
                .shard_count(LANES as i32)
                .send()
                .await
                .unwrap();
            for _ in 0..50 {
                let d = kinesis
                    .describe_stream_summary()
                    .stream_name(&stream)
                    .send()
                    .await
                    .unwrap();
                if d.stream_description_summary()
                    .map(|s| s.stream_status().as_str())
                    == Some("ACTIVE")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut config = KinesisConfig {
                stream: stream.clone(),
                aggregation,
                ..Default::default()
            };
            config.spool.dir = spool.path().join(&stream);
            std::sync::Arc::new(
                KinesisProducer::start(kinesis.clone(), config)
                    .await
                    .unwrap(),
            )
        });
        let keys: Vec<PartitionKey> = (0..LANES)
            .map(|i| PartitionKey::for_partition(i, LANES))
            .collect();
        let label = if aggregation { "aggregated" } else { "plain" };
        for (name, throughput) in [
            ("records", Throughput::Elements(total_records)),
            (
                "bytes",
                Throughput::Bytes(total_records * RECORD_BYTES as u64),
            ),
        ] {
            group.throughput(throughput);
            group.bench_function(format!("{label}/{name}"), |b| {
                b.to_async(&rt).iter_batched(
                    payloads,
                    |lanes| async {
                        // Concurrently, as the collector's lanes publish.
                        let tasks: Vec<_> = keys
                            .iter()
                            .cloned()
                            .zip(lanes)
                            .map(|(key, records)| {
                                let producer = producer.clone();
                                tokio::spawn(async move { producer.publish(&key, records).await })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("publish task").expect("published");
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        // What the stream holds for what was published: the aggregation ratio.
        let (kinesis_records, user_records) = rt.block_on(count(&kinesis, &stream));
        println!(
            "kinesis_producer/{label}: aggregation ratio {:.1} user records per Kinesis record ({user_records} in {kinesis_records})",
            user_records as f64 / kinesis_records.max(1) as f64
        );
    }
    group.finish();
}

async fn count(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> (u64, u64) {
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let (mut records, mut users) = (0u64, 0u64);
    for shard in shards.shards() {
        let mut it = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(String::from);
        while let Some(i) = it.take() {
            let r = kinesis
                .get_records()
                .shard_iterator(i)
                .send()
                .await
                .unwrap();
            if r.records().is_empty() {
                break;
            }
            for rec in r.records() {
                records += 1;
                let data = Bytes::copy_from_slice(rec.data().as_ref());
                users += match tidewater_bus::kinesis::aggregation::deaggregate(&data) {
                    Ok(Some(u)) => u.len() as u64,
                    _ => 1,
                };
            }
            it = r.next_shard_iterator().map(String::from);
        }
    }
    (records, users)
}

criterion_group!(benches, bench);
criterion_main!(benches);
