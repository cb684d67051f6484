//! Documents serialised per second by the Elasticsearch sink: events (and log records) to
//! documents, to `create` actions, to `_bulk` bodies — everything but the network.
//!
//! `cargo bench -p tidewater-benches --bench es_documents`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidewater_benches::es::{events, logs, shared};
use tidewater_processors::sinks::elasticsearch::request::{batch_items, body, chunks};
use tidewater_processors::sinks::elasticsearch::ElasticsearchSinkConfig;

const N: usize = 1000;

fn serialise(c: &mut Criterion) {
    let config = ElasticsearchSinkConfig {
        logs: true,
        ..Default::default()
    };
    let now = chrono::Utc::now();
    let max_bytes = config.bulk.max_bytes.as_u64() as usize;
    let mut group = c.benchmark_group("elasticsearch_documents");
    group.throughput(Throughput::Elements(N as u64));
    for (name, batches) in [
        ("events_to_bulk_bodies", shared(vec![events("bench", N, 7)])),
        ("logs_to_bulk_bodies", shared(vec![logs(N)])),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let items = batch_items(black_box(&batches), &config, now);
                let bytes: usize = chunks(items, max_bytes, config.bulk.max_actions)
                    .map(|chunk| body(&chunk).len())
                    .sum();
                black_box(bytes)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machine is shared.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = serialise
}
criterion_main!(benches);
