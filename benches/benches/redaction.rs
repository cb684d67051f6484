//! What redaction (`collector/src/redact/`) costs the collector's hot path, on the load
//! generator's realistic requests (100 spans, 100 log records, 100 events; no secrets in
//! them): the split alone (redaction off), and redaction with the default rules then the
//! split, as `Ingest` does for every request. Then the same requests with secrets seeded in
//! one item of ten (a card number in a span name, an email and a bearer header in
//! attributes, a password in a log body), where the messages holding them are rebuilt.
//!
//!     cargo bench -p tidewater-benches --bench redaction

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use tidewater_benches::workload::Generator;
use tidewater_collector::partition::{split_logs, split_traces, Split};
use tidewater_collector::redact::{RedactionConfig, Redactor};
use tidewater_collector::wire::WireError;
use tidewater_proto::Signal;

const ITEMS: usize = 100;

/// A request to measure: its name, signal, bytes and the split the collector runs on it.
type Case = (
    &'static str,
    Signal,
    Vec<u8>,
    fn(&[u8], u32) -> Result<Split, WireError>,
);

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn otlp(c: &mut Criterion) {
    let on = Redactor::new(&RedactionConfig::default()).expect("defaults compile");
    let mut g = Generator::new(1);
    let traces = g.traces(ITEMS);
    let mut seeded = traces.clone();
    for (i, span) in seeded.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0)
    {
        span.name = format!("charge 4111 1111 1111 1111 #{i}");
        span.attributes
            .push(string("enduser.email", "jane@example.com"));
        span.attributes
            .push(string("http.request.header.authorization", "Bearer abc"));
    }
    let logs = g.logs(ITEMS);
    let mut seeded_logs = logs.clone();
    for r in seeded_logs.resource_logs[0].scope_logs[0]
        .log_records
        .iter_mut()
        .step_by(10)
    {
        r.body = Some(AnyValue {
            value: Some(any_value::Value::StringValue(
                "login failed for jane@example.com password=hunter2".into(),
            )),
        });
    }
    let cases: [Case; 4] = [
        (
            "traces",
            Signal::Traces,
            traces.encode_to_vec(),
            split_traces,
        ),
        (
            "traces_seeded",
            Signal::Traces,
            seeded.encode_to_vec(),
            split_traces,
        ),
        ("logs", Signal::Logs, logs.encode_to_vec(), split_logs),
        (
            "logs_seeded",
            Signal::Logs,
            seeded_logs.encode_to_vec(),
            split_logs,
        ),
    ];
    // Every detector off: what walking the request and judging its keys costs alone.
    let mut walk_only = RedactionConfig::default();
    let d = &mut walk_only.detectors;
    for flag in [
        &mut d.aws_access_key,
        &mut d.aws_secret_key,
        &mut d.bearer_token,
        &mut d.basic_auth,
        &mut d.jwt,
        &mut d.private_key,
        &mut d.secret_assignment,
        &mut d.card_number,
        &mut d.email,
        &mut d.us_ssn,
        &mut d.ipv4,
        &mut d.sensitive_key,
        &mut d.db_statement,
        &mut d.url_query,
    ] {
        *flag = false;
    }
    let walk_only = Redactor::new(&walk_only).expect("compiles");
    let mut group = c.benchmark_group("redaction");
    group.throughput(Throughput::Elements(ITEMS as u64));
    for (name, signal, bytes, split) in &cases {
        if !name.ends_with("seeded") {
            group.bench_function(format!("{name}_walk_only_then_split"), |b| {
                b.iter(|| {
                    let redacted = walk_only.otlp(*signal, bytes);
                    split(redacted.as_deref().unwrap_or(bytes), 4).expect("valid")
                })
            });
        }
        let changed = on.otlp(*signal, bytes).is_some();
        eprintln!(
            "{name}: {} bytes, redaction changes it: {changed}",
            bytes.len()
        );
        group.bench_function(format!("{name}_split_only"), |b| {
            b.iter(|| split(bytes, 4).expect("valid"))
        });
        group.bench_function(format!("{name}_redact_then_split"), |b| {
            b.iter(|| {
                let redacted = on.otlp(*signal, bytes);
                split(redacted.as_deref().unwrap_or(bytes), 4).expect("valid")
            })
        });
    }
    group.finish();
}

fn events(c: &mut Criterion) {
    let on = Redactor::new(&RedactionConfig::default()).expect("defaults compile");
    let events = Generator::new(2).events(ITEMS).events;
    let mut group = c.benchmark_group("redaction");
    group.throughput(Throughput::Elements(ITEMS as u64));
    group.bench_function("events_redact", |b| {
        b.iter_batched(
            || events.clone(),
            |mut events| {
                for e in &mut events {
                    on.event(e);
                }
                events
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("events_clone_only", |b| {
        b.iter_batched(
            || events.clone(),
            |events| events,
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, otlp, events);
criterion_main!(benches);
