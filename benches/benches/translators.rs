//! The processors' translators on the load generator's realistic requests (100 spans from one
//! service, ~340 bytes a span; 100 analytics events):
//!
//! - `translate/xray`: OTLP spans to X-Ray segment documents;
//! - `translate/file_traces`: a traces bus batch to the file sink's OTLP/JSON line;
//! - `translate/event_documents`: analytics events to the JSON documents sinks store.
//!
//!     cargo bench -p tidewater-benches --bench translators

use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tidewater_benches::workload::Generator;
use tidewater_processors::decode::{Batch, SignalData};
use tidewater_processors::documents::event_document;
use tidewater_processors::sinks::file::render;
use tidewater_processors::xray::{translate, XrayConfig};
use tidewater_proto::Signal;

const ITEMS: usize = 100;

fn translators(c: &mut Criterion) {
    let mut g = Generator::new(1);
    let traces = g.traces(ITEMS);
    let events = g.events(ITEMS);
    let now = SystemTime::now();
    let processed_at = chrono::Utc::now();
    let batch = Batch {
        signal: Signal::Traces,
        record_id: vec![0; 16],
        produced_at_unix_nano: 0,
        item_count: ITEMS as u32,
        data: SignalData::Traces(traces.clone()),
    };

    let mut group = c.benchmark_group("translate");
    group.throughput(Throughput::Elements(ITEMS as u64));
    let config = XrayConfig::default();
    group.bench_function("xray_100_spans", |b| {
        b.iter(|| translate(&traces, &config, now))
    });
    group.bench_function("file_traces_100_spans", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            render(&batch, processed_at, &mut out);
            out
        })
    });
    group.bench_function("event_documents_100_events", |b| {
        b.iter(|| {
            events
                .events
                .iter()
                .map(|e| event_document(e, processed_at))
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

criterion_group!(benches, translators);
criterion_main!(benches);
