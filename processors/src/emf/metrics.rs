//! OTLP metrics into the windows: each data point becomes a counter increase or a
//! distribution, under the dimension sets its declaration gives, in the window of its
//! timestamp.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets as OtlpBuckets, metric::Data, number_data_point,
    AggregationTemporality, DataPointFlags, Metric, NumberDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use xxhash_rust::xxh3::Xxh3;

use super::aggregate::{window_start, Aggregate, Distribution, GroupKey};
use super::declarations::cloudwatch_unit;
use super::delta::{Buckets, Outcome, Reading};
use super::{Settings, State, Stats};
use crate::anyvalue::attributes_text;

/// CloudWatch dimension values are 1 to 1024 characters.
const MAX_DIMENSION_VALUE: usize = 1024;

/// The point's labels: its attributes plus the resource attributes asked for as dimensions.
/// Empty values are left out (CloudWatch refuses them); long ones are cut to 1024 characters.
pub(crate) fn labels(
    point: &[KeyValue],
    resource: &BTreeMap<String, String>,
    resource_dimensions: &[String],
) -> BTreeMap<String, String> {
    let mut out = attributes_text(point);
    for k in resource_dimensions {
        if let Some(v) = resource.get(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.retain(|_, v| !v.is_empty());
    for v in out.values_mut() {
        if v.chars().count() > MAX_DIMENSION_VALUE {
            *v = v.chars().take(MAX_DIMENSION_VALUE).collect();
        }
    }
    out
}

/// Where one resource's points go: its attributes and log stream, and the group key for a set
/// of labels.
pub(crate) struct Target<'a> {
    pub settings: &'a Settings,
    pub resource: BTreeMap<String, String>,
    pub stream: String,
}

impl<'a> Target<'a> {
    pub(crate) fn new(settings: &'a Settings, resource: Option<&Resource>) -> Self {
        let resource = resource
            .map(|r| attributes_text(&r.attributes))
            .unwrap_or_default();
        let stream = settings.log_stream.render(&resource);
        Target {
            settings,
            resource,
            stream,
        }
    }

    /// The group for a point of `metric` with `labels`, and the declared unit; `None` when
    /// the declarations leave the metric out.
    pub(crate) fn key(
        &self,
        metric: &str,
        labels: &BTreeMap<String, String>,
        time_nanos: u64,
        now_ms: i64,
    ) -> Option<(GroupKey, Option<String>)> {
        let selection = self.settings.declarations.select(metric, labels)?;
        let key = self.key_with_sets(labels, selection.sets, time_nanos, now_ms);
        Some((key, selection.unit))
    }

    /// The group for `labels` under `sets`: only the labels the sets name become dimensions
    /// (the others would make groups that CloudWatch cannot tell apart).
    pub(crate) fn key_with_sets(
        &self,
        labels: &BTreeMap<String, String>,
        sets: Vec<Vec<String>>,
        time_nanos: u64,
        now_ms: i64,
    ) -> GroupKey {
        let mut names: Vec<&String> = sets.iter().flatten().collect();
        names.sort();
        names.dedup();
        let dims = names
            .into_iter()
            .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let time_ms = if time_nanos == 0 {
            now_ms
        } else {
            (time_nanos / 1_000_000) as i64
        };
        GroupKey {
            window_ms: window_start(time_ms, self.settings.window_ms),
            namespace: self.settings.namespace.clone(),
            log_stream: self.stream.clone(),
            dims,
            sets,
        }
    }
}

/// Identity of a series across batches and restarts: a stable hash (xxh3, not std's
/// `DefaultHasher`, whose output may change between Rust releases and would orphan the
/// persisted baselines).
fn series_key(
    metric: &str,
    kind: &str,
    resource: &BTreeMap<String, String>,
    scope: &str,
    attributes: &BTreeMap<String, String>,
) -> u64 {
    let mut h = Xxh3::new();
    for part in [metric, kind, scope] {
        h.update(part.as_bytes());
        h.update(&[0xff]);
    }
    for map in [resource, attributes] {
        for (k, v) in map {
            h.update(k.as_bytes());
            h.update(&[0xfe]);
            h.update(v.as_bytes());
            h.update(&[0xfd]);
        }
        h.update(&[0xff]);
    }
    h.digest()
}

fn no_value(flags: u32) -> bool {
    flags & DataPointFlags::NoRecordedValueMask as u32 != 0
}

fn number(p: &NumberDataPoint) -> Option<f64> {
    match p.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

fn buckets(b: &Option<OtlpBuckets>) -> Buckets {
    b.as_ref()
        .map(|b| Buckets {
            offset: b.offset,
            counts: b.bucket_counts.clone(),
        })
        .unwrap_or_default()
}

/// A reading as what gets aggregated; `min`/`max` are the point's and only apply when the
/// reading is the point's whole value.
fn aggregate(reading: Reading, min: Option<f64>, max: Option<f64>) -> Aggregate {
    match reading {
        Reading::Number(v) => Aggregate::Sum(v),
        Reading::Histogram {
            sum,
            bounds,
            counts,
            ..
        } => Aggregate::Distribution(Distribution::from_histogram(
            &bounds, &counts, sum, min, max,
        )),
        Reading::Exponential {
            sum,
            scale,
            zero_count,
            positive,
            negative,
            ..
        } => Aggregate::Distribution(Distribution::from_exponential(
            scale, zero_count, &positive, &negative, sum, min, max,
        )),
        Reading::Summary { count, sum } => {
            Aggregate::Distribution(Distribution::from_summary(count, sum, min, max))
        }
    }
}

/// One data point, as the folding needs it.
struct Point<'p> {
    attributes: &'p [KeyValue],
    flags: u32,
    start: u64,
    time: u64,
    /// The metric's kind, part of the series identity.
    kind: &'static str,
    /// A cumulative reading, to difference against the series' baseline.
    cumulative: bool,
    reading: Reading,
    min: Option<f64>,
    max: Option<f64>,
    /// Each point is one observed value (gauges, non-monotonic sums), not an increase.
    as_value: bool,
}

impl State {
    /// Folds every data point of `request` into the windows.
    pub fn fold_metrics(
        &mut self,
        request: &ExportMetricsServiceRequest,
        settings: &Settings,
        now_ms: i64,
        stats: &mut Stats,
    ) {
        for rm in &request.resource_metrics {
            let target = Target::new(settings, rm.resource.as_ref());
            for sm in &rm.scope_metrics {
                let scope = sm.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                for metric in &sm.metrics {
                    for point in points(metric) {
                        self.fold_point(metric, scope, &target, point, now_ms, stats);
                    }
                }
            }
        }
    }

    /// labels → group → (cumulative → delta) → windows.
    fn fold_point(
        &mut self,
        metric: &Metric,
        scope: &str,
        target: &Target,
        p: Point,
        now_ms: i64,
        stats: &mut Stats,
    ) {
        stats.points += 1;
        if no_value(p.flags) {
            stats.no_value += 1;
            return;
        }
        let name = metric.name.as_str();
        let settings = target.settings;
        let labels = labels(
            p.attributes,
            &target.resource,
            &settings.resource_dimensions,
        );
        let Some((key, unit)) = target.key(name, &labels, p.time, now_ms) else {
            stats.undeclared += 1;
            return;
        };
        let unit = unit.unwrap_or_else(|| cloudwatch_unit(&metric.unit).to_string());
        let (reading, whole) = if p.cumulative {
            let all = attributes_text(p.attributes);
            let series = series_key(name, p.kind, &target.resource, scope, &all);
            match self.delta.update(
                series,
                p.start,
                p.time,
                p.reading,
                settings.keep_first_value,
            ) {
                Outcome::Delta { reading, whole } => (reading, whole),
                Outcome::Baseline => {
                    stats.baselines += 1;
                    return;
                }
                Outcome::Stale => {
                    stats.stale += 1;
                    return;
                }
                Outcome::Incompatible => {
                    stats.incompatible += 1;
                    return;
                }
            }
        } else {
            (p.reading, true)
        };
        let (min, max) = if whole { (p.min, p.max) } else { (None, None) };
        let value = match (p.as_value, reading) {
            (true, Reading::Number(v)) => Aggregate::Distribution(Distribution::single(v)),
            (_, r) => aggregate(r, min, max),
        };
        if matches!(&value, Aggregate::Distribution(d) if d.count == 0) {
            return;
        }
        self.windows.add(key, name, &unit, value);
    }
}

fn number_points<'m>(
    dps: &'m [NumberDataPoint],
    kind: &'static str,
    cumulative: bool,
    as_value: bool,
) -> Vec<Point<'m>> {
    dps.iter()
        .filter_map(|p| {
            Some(Point {
                attributes: &p.attributes,
                flags: p.flags,
                start: p.start_time_unix_nano,
                time: p.time_unix_nano,
                kind,
                cumulative,
                reading: Reading::Number(number(p)?),
                min: None,
                max: None,
                as_value,
            })
        })
        .collect()
}

/// Every data point of a metric, whatever its kind.
fn points(metric: &Metric) -> Vec<Point<'_>> {
    let is_cumulative = |t: i32| t != AggregationTemporality::Delta as i32;
    match &metric.data {
        Some(Data::Gauge(g)) => number_points(&g.data_points, "gauge", false, true),
        // Only a monotonic cumulative sum is a counter to difference; an up-down counter's
        // value is a level, sent as a value like a gauge.
        Some(Data::Sum(s)) => number_points(
            &s.data_points,
            "sum",
            s.is_monotonic && is_cumulative(s.aggregation_temporality),
            !s.is_monotonic,
        ),
        Some(Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| Point {
                attributes: &p.attributes,
                flags: p.flags,
                start: p.start_time_unix_nano,
                time: p.time_unix_nano,
                kind: "histogram",
                cumulative: is_cumulative(h.aggregation_temporality),
                reading: Reading::Histogram {
                    count: p.count,
                    sum: p.sum,
                    bounds: p.explicit_bounds.clone(),
                    counts: p.bucket_counts.clone(),
                },
                min: p.min,
                max: p.max,
                as_value: false,
            })
            .collect(),
        Some(Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .map(|p| Point {
                attributes: &p.attributes,
                flags: p.flags,
                start: p.start_time_unix_nano,
                time: p.time_unix_nano,
                kind: "exponential",
                cumulative: is_cumulative(h.aggregation_temporality),
                reading: Reading::Exponential {
                    count: p.count,
                    sum: p.sum,
                    scale: p.scale,
                    zero_count: p.zero_count,
                    positive: buckets(&p.positive),
                    negative: buckets(&p.negative),
                },
                min: p.min,
                max: p.max,
                as_value: false,
            })
            .collect(),
        Some(Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|p| {
                let q = |want: f64| {
                    p.quantile_values
                        .iter()
                        .find(|q| q.quantile == want)
                        .map(|q| q.value)
                };
                Point {
                    attributes: &p.attributes,
                    flags: p.flags,
                    start: p.start_time_unix_nano,
                    time: p.time_unix_nano,
                    kind: "summary",
                    // Summary count and sum are cumulative (OTLP data model).
                    cumulative: true,
                    reading: Reading::Summary {
                        count: p.count,
                        sum: p.sum,
                    },
                    min: q(0.0),
                    max: q(1.0),
                    as_value: false,
                }
            })
            .collect(),
        None => Vec::new(),
    }
}
