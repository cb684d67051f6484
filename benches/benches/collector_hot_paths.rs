//! The collector's hot path, one stage at a time, on the load generator's realistic requests
//! (100 spans each, ~340 bytes a span):
//!
//! - `otlp_decode`: an `ExportTraceServiceRequest` from its protobuf bytes, as tonic does for
//!   every request;
//! - `partition`: `split_traces` into 4 partitions (the embedded bus's default), alone and
//!   with the decode before it, and the same split done on the wire bytes without decoding
//!   (`tidewater_benches::wire_split`, the sketch of the next step);
//! - `envelope`: one bus batch of ~1 MiB (the default `collector.batch.max_size`) encoded as
//!   the pipeline does, then compressed with zstd level 1 (the default).
//!
//!     cargo bench -p tidewater-benches --bench collector_hot_paths

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewater_benches::wire_split::split_traces_wire;
use tidewater_benches::workload::Generator;
use tidewater_collector::partition::{split_traces, Part};
use tidewater_collector::pipeline::encode;
use tidewater_proto::Signal;

const SPANS: usize = 100;

fn requests(n: usize) -> Vec<ExportTraceServiceRequest> {
    let mut g = Generator::new(1);
    (0..n).map(|_| g.traces(SPANS)).collect()
}

fn decode(c: &mut Criterion) {
    let bytes = requests(1)[0].encode_to_vec();
    let mut group = c.benchmark_group("otlp_decode");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("traces_100_spans", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(&bytes[..]).expect("valid"))
    });
    group.finish();
}

fn partition(c: &mut Criterion) {
    let request = requests(1).remove(0);
    let bytes = request.encode_to_vec();
    let mut group = c.benchmark_group("partition");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("decode_and_split_traces_100_spans_4_partitions", |b| {
        b.iter(|| {
            let request = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid");
            split_traces(request.resource_spans, 4)
        })
    });
    group.bench_function("wire_split_100_spans_4_partitions", |b| {
        b.iter(|| split_traces_wire(&bytes, 4).expect("valid"))
    });
    group.bench_function("split_traces_100_spans_4_partitions", |b| {
        b.iter_batched(
            || request.resource_spans.clone(),
            |rs| split_traces(rs, 4),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The parts one lane gathers until its batch reaches 1 MiB.
fn batch_parts(requests: &[ExportTraceServiceRequest]) -> (Vec<Part>, u64) {
    let mut parts = Vec::new();
    let (mut bytes, mut items) = (0, 0);
    for r in requests {
        for part in split_traces(r.resource_spans.clone(), 1).0 {
            bytes += part.bytes;
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
    group.bench_function("encode_1MiB_batch", |b| {
        b.iter_batched(
            || batch_parts(&requests).0,
            |parts| encode(Signal::Traces, parts),
            BatchSize::LargeInput,
        )
    });
    // On the wire path a batch is the concatenation of the parts' bytes (a repeated field's
    // encodings concatenate), so this replaces `encode_1MiB_batch`.
    let wire_parts: Vec<Vec<u8>> = requests
        .iter()
        .flat_map(|r| {
            split_traces_wire(&r.encode_to_vec(), 1)
                .expect("valid")
                .parts
                .into_iter()
                .map(|(_, bytes)| bytes)
        })
        .scan(0, |size, part| {
            *size += part.len();
            (*size <= payload.len()).then_some(part)
        })
        .collect();
    group.bench_function("concat_wire_parts_1MiB_batch", |b| {
        b.iter(|| wire_parts.concat())
    });
    group.bench_function("zstd1_1MiB_batch", |b| {
        b.iter(|| zstd::bulk::compress(&payload, 1).expect("compresses"))
    });
    group.bench_function("encode_and_zstd1_1MiB_batch", |b| {
        b.iter_batched(
            || batch_parts(&requests).0,
            |parts| zstd::bulk::compress(&encode(Signal::Traces, parts).1, 1).expect("compresses"),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, partition, envelope);
criterion_main!(benches);
