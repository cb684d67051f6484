//! EMF aggregation throughput: data points folded into windows per second (cumulative counters
//! through the delta tracker, cumulative histograms, gauges), and the rendering of a window
//! into documents. Criterion reports "elements/s" = data points per second.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Av, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tidewater_processors::emf::document::{documents, DocLimits};
use tidewater_processors::emf::{State, Stats};
use tidewater_processors::sinks::emf::EmfConfig;

const SERIES: usize = 200;
const SEC: u64 = 1_000_000_000;

fn kv(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Av::StringValue(v)),
        }),
        ..Default::default()
    }
}

/// One export: `SERIES` series each of a counter, a histogram and a gauge (600 points).
fn export(at: u64, n: u64) -> ExportMetricsServiceRequest {
    let attrs = |i: usize| {
        vec![
            kv("route", format!("/r{}", i % 20)),
            kv("method", format!("M{}", i % 10)),
        ]
    };
    let start = 1_700_000_000 * SEC;
    let metrics = vec![
        Metric {
            name: "http.requests".into(),
            unit: "{request}".into(),
            data: Some(Data::Sum(Sum {
                data_points: (0..SERIES)
                    .map(|i| NumberDataPoint {
                        attributes: attrs(i),
                        start_time_unix_nano: start,
                        time_unix_nano: at,
                        value: Some(number_data_point::Value::AsInt((n * 10 + i as u64) as i64)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "http.duration".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: (0..SERIES)
                    .map(|i| {
                        let k = n + 1;
                        HistogramDataPoint {
                            attributes: attrs(i),
                            start_time_unix_nano: start,
                            time_unix_nano: at,
                            count: 15 * k,
                            sum: Some(400.0 * k as f64),
                            bucket_counts: vec![k, 2 * k, 3 * k, 4 * k, 5 * k, 0],
                            explicit_bounds: vec![5.0, 10.0, 25.0, 50.0, 100.0],
                            ..Default::default()
                        }
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
        Metric {
            name: "queue.depth".into(),
            unit: "{item}".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: (0..SERIES)
                    .map(|i| NumberDataPoint {
                        attributes: attrs(i),
                        time_unix_nano: at,
                        value: Some(number_data_point::Value::AsDouble((i % 7) as f64)),
                        ..Default::default()
                    })
                    .collect(),
            })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout".into())],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn bench(c: &mut Criterion) {
    let settings = EmfConfig {
        enabled: true,
        ..Default::default()
    }
    .settings()
    .unwrap();
    let exports: Vec<ExportMetricsServiceRequest> = (0..10)
        .map(|n| export(1_700_000_010 * SEC + n * SEC, n))
        .collect();
    let points = (exports.len() * SERIES * 3) as u64;

    let mut g = c.benchmark_group("emf");
    g.throughput(Throughput::Elements(points));
    g.bench_function("fold 10 exports x 600 points", |b| {
        b.iter_batched(
            State::default,
            |mut state| {
                let mut stats = Stats::default();
                for e in &exports {
                    state.fold_metrics(e, &settings, 0, &mut stats);
                }
                state
            },
            BatchSize::SmallInput,
        )
    });

    let mut folded = State::default();
    let mut stats = Stats::default();
    for e in &exports {
        folded.fold_metrics(e, &settings, 0, &mut stats);
    }
    g.throughput(Throughput::Elements(points));
    g.bench_function("render the window's documents", |b| {
        b.iter_batched(
            || folded.windows.clone(),
            |mut windows| {
                let mut n = 0;
                for (key, group) in windows.take_due(0, 0, 0, true) {
                    n += documents(&key, &group, 60, &DocLimits::default()).len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machine is shared.
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
