//! The collector's hot path, one stage at a time, on the load generator's realistic requests
//! (100 spans each, ~340 bytes a span):
//!
//! - `partition`: `split_traces` into 4 partitions (the embedded bus's default) on the
//!   request's protobuf bytes, checking them as it goes, as the collector does for every
//!   request; beside it, for scale, what decoding the same request into prost structs costs
//!   (what the collector did before it split on the wire);
//! - `envelope`: one bus batch of ~1 MiB (the default `collector.batch.max_size`) put
//!   together as the pipeline does (the parts' bytes one after another), then compressed
//!   with zstd at level 1 (the default) and at the faster levels 3 and -1..-5 for comparison;
//!   the compressed sizes are printed once.
//!
//!     cargo bench -p tidewater-benches --bench collector_hot_paths

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewater_benches::workload::Generator;
use tidewater_collector::partition::{split_traces, Part};
use tidewater_collector::pipeline::encode;
use tidewater_proto::Signal;

const SPANS: usize = 100;

fn requests(n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(1);
    (0..n).map(|_| g.traces(SPANS).encode_to_vec()).collect()
}

fn partition(c: &mut Criterion) {
    let bytes = requests(1).remove(0);
    let mut group = c.benchmark_group("partition");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("split_traces_100_spans_4_partitions", |b| {
        b.iter(|| split_traces(&bytes, 4).expect("valid"))
    });
    group.bench_function("prost_decode_and_drop_100_spans", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(&bytes[..]).expect("valid"))
    });
    group.finish();
}

/// The parts one lane gathers until its batch reaches 1 MiB.
fn batch_parts(requests: &[Vec<u8>]) -> (Vec<Part>, u64) {
    let mut parts = Vec::new();
    let (mut bytes, mut items) = (0, 0);
    for r in requests {
        for part in split_traces(r, 1).expect("valid").parts {
            bytes += part.bytes();
            items += part.items as u64;
            parts.push(part);
        }
        if bytes >= 1024 * 1024 {
            break;
        }
    }
    (parts, items)
}

fn envelope(c: &mut Criterion) {
    let requests = requests(64);
    let (parts, items) = batch_parts(&requests);
    let payload = encode(Signal::Traces, parts).1;
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(items));
    group.bench_function("concat_1MiB_batch", |b| {
        b.iter_batched(
            || batch_parts(&requests).0,
            |parts| encode(Signal::Traces, parts),
            BatchSize::LargeInput,
        )
    });
    for level in [3, 1, -1, -3, -5] {
        let size = zstd::bulk::compress(&payload, level)
            .expect("compresses")
            .len();
        eprintln!(
            "zstd level {level}: {} bytes -> {size} bytes (ratio {:.1})",
            payload.len(),
            payload.len() as f64 / size as f64
        );
        group.bench_function(format!("zstd{level}_1MiB_batch"), |b| {
            b.iter(|| zstd::bulk::compress(&payload, level).expect("compresses"))
        });
    }
    group.finish();
}

criterion_group!(benches, partition, envelope);
criterion_main!(benches);
