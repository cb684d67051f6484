//! OTLP metrics into the windows: each data point becomes a counter increase or a
//! distribution, under the dimension sets its declaration gives, in the window of its
//! timestamp.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets as OtlpBuckets, metric::Data, number_data_point,
    AggregationTemporality, DataPointFlags, NumberDataPoint,
};
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

/// Where one metric's points go: the group key for a set of labels, or `None` when the
/// declarations leave the metric out.
pub(crate) struct Target<'a> {
    pub settings: &'a Settings,
    pub resource: &'a BTreeMap<String, String>,
    pub stream: &'a str,
}

impl Target<'_> {
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
            log_stream: self.stream.to_string(),
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
            let resource = rm
                .resource
                .as_ref()
                .map(|r| attributes_text(&r.attributes))
                .unwrap_or_default();
            let stream = settings.log_stream.render(&resource);
            let target = Target {
                settings,
                resource: &resource,
                stream: &stream,
            };
            for sm in &rm.scope_metrics {
                let scope = sm.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                for metric in &sm.metrics {
                    self.fold_metric(metric, scope, &target, now_ms, stats);
                }
            }
        }
    }

    fn fold_metric(
        &mut self,
        metric: &opentelemetry_proto::tonic::metrics::v1::Metric,
        scope: &str,
        target: &Target,
        now_ms: i64,
        stats: &mut Stats,
    ) {
        let name = metric.name.as_str();
        let mapped_unit = cloudwatch_unit(&metric.unit);
        let keep_first = target.settings.keep_first_value;
        // One closure per point: labels → group → (cumulative → delta) → windows.
        let mut fold = |attrs: &[KeyValue],
                        flags: u32,
                        start: u64,
                        time: u64,
                        kind: &str,
                        cumulative: bool,
                        reading: Reading,
                        min: Option<f64>,
                        max: Option<f64>,
                        as_values: bool| {
            stats.points += 1;
            if no_value(flags) {
                stats.no_value += 1;
                return;
            }
            let labels = labels(attrs, target.resource, &target.settings.resource_dimensions);
            let Some((key, unit)) = target.key(name, &labels, time, now_ms) else {
                stats.undeclared += 1;
                return;
            };
            let unit = unit.unwrap_or_else(|| mapped_unit.to_string());
            let (reading, whole) = if cumulative {
                let all = attributes_text(attrs);
                let series = series_key(name, kind, target.resource, scope, &all);
                match self.delta.update(series, start, time, reading, keep_first) {
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
                (reading, true)
            };
            let (min, max) = if whole { (min, max) } else { (None, None) };
            let value = match (as_values, reading) {
                // Gauges and non-monotonic sums: each point is one observed value.
                (true, Reading::Number(v)) => Aggregate::Distribution(Distribution::single(v)),
                (_, r) => aggregate(r, min, max),
            };
            if let Aggregate::Distribution(d) = &value {
                if d.count == 0 {
                    return;
                }
            }
            self.windows.add(key, name, &unit, value);
        };
        let is_cumulative = |t: i32| t != AggregationTemporality::Delta as i32;
        match &metric.data {
            Some(Data::Gauge(g)) => {
                for p in &g.data_points {
                    if let Some(v) = number(p) {
                        fold(
                            &p.attributes,
                            p.flags,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            "gauge",
                            false,
                            Reading::Number(v),
                            None,
                            None,
                            true,
                        );
                    }
                }
            }
            Some(Data::Sum(s)) => {
                // Only a monotonic cumulative sum is a counter to difference; an up-down
                // counter's cumulative value is a level, sent as a value like a gauge.
                let counter = s.is_monotonic && is_cumulative(s.aggregation_temporality);
                for p in &s.data_points {
                    if let Some(v) = number(p) {
                        fold(
                            &p.attributes,
                            p.flags,
                            p.start_time_unix_nano,
                            p.time_unix_nano,
                            "sum",
                            counter,
                            Reading::Number(v),
                            None,
                            None,
                            !s.is_monotonic,
                        );
                    }
                }
            }
            Some(Data::Histogram(h)) => {
                let cumulative = is_cumulative(h.aggregation_temporality);
                for p in &h.data_points {
                    let reading = Reading::Histogram {
                        count: p.count,
                        sum: p.sum,
                        bounds: p.explicit_bounds.clone(),
                        counts: p.bucket_counts.clone(),
                    };
                    fold(
                        &p.attributes,
                        p.flags,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        "histogram",
                        cumulative,
                        reading,
                        p.min,
                        p.max,
                        false,
                    );
                }
            }
            Some(Data::ExponentialHistogram(h)) => {
                let cumulative = is_cumulative(h.aggregation_temporality);
                for p in &h.data_points {
                    let reading = Reading::Exponential {
                        count: p.count,
                        sum: p.sum,
                        scale: p.scale,
                        zero_count: p.zero_count,
                        positive: buckets(&p.positive),
                        negative: buckets(&p.negative),
                    };
                    fold(
                        &p.attributes,
                        p.flags,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        "exponential",
                        cumulative,
                        reading,
                        p.min,
                        p.max,
                        false,
                    );
                }
            }
            Some(Data::Summary(s)) => {
                for p in &s.data_points {
                    let q = |want: f64| {
                        p.quantile_values
                            .iter()
                            .find(|q| q.quantile == want)
                            .map(|q| q.value)
                    };
                    let reading = Reading::Summary {
                        count: p.count,
                        sum: p.sum,
                    };
                    // Summary count and sum are cumulative (OTLP data model).
                    fold(
                        &p.attributes,
                        p.flags,
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                        "summary",
                        true,
                        reading,
                        q(0.0),
                        q(1.0),
                        false,
                    );
                }
            }
            None => {}
        }
    }
}
