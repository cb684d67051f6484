//! Which of Tidewater's Prometheus series an on-call engineer needs in CloudWatch, and how a
//! reading of them becomes EMF documents. Pure (no clock, no I/O; the caller passes the time
//! and keeps the counters' last totals), so every rule is pinned by golden tests.
//!
//! The documents themselves are built by the processors' EMF translator
//! (`tidewater_processors::emf::document`), which already knows the format's limits: at most
//! 100 metrics per directive, dimension values as top-level string members, a metric renamed
//! rather than lost when a dimension takes its name, and a document halved until it fits a log
//! event (256 KiB less its overhead: the `awslogs` driver splits longer lines, which CloudWatch
//! could then not parse).

use std::collections::{BTreeMap, HashMap};

use tidewater_processors::emf::aggregate::{Aggregate, Group, GroupKey, MetricAgg};
use tidewater_processors::emf::document::{documents, DocLimits};

use super::exposition::Sample;

/// What a series measures, and so how an interval's value is taken and series are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A running total: the report carries the increase since the last report, summed.
    Counter,
    /// A level, summed across series (bytes held, sinks failing).
    GaugeSum,
    /// A level, the largest across series (lags and ages: the worst one is the news).
    GaugeMax,
}

/// Which half of Tidewater records the series: only a process that runs it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Collector,
    /// The collector's disk spool, which only the Kinesis bus has.
    KinesisSpool,
    Processor,
    /// Kinesis's own per-shard lag, which only the Kinesis bus has.
    KinesisReader,
}

/// One metric of the report.
#[derive(Debug)]
pub struct Metric {
    /// The CloudWatch metric name (what alarms and the dashboard name).
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    pub part: Part,
    /// The Prometheus series it is read from.
    pub source: &'static str,
    /// Only series whose label has one of these values (e.g. `outcome="dead_lettered"`).
    pub only: Option<(&'static str, &'static [&'static str])>,
    /// Also reported per value of this label, as this dimension (e.g. `reason` as `Reason`).
    pub by: Option<(&'static str, &'static str)>,
    /// Multiplies the series' value (seconds to milliseconds).
    pub scale: f64,
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    kind: Kind,
    part: Part,
    source: &'static str,
) -> Metric {
    Metric {
        name,
        unit,
        kind,
        part,
        source,
        only: None,
        by: None,
        scale: 1.0,
    }
}

impl Metric {
    const fn by(mut self, label: &'static str, dimension: &'static str) -> Metric {
        self.by = Some((label, dimension));
        self
    }
    const fn only(mut self, label: &'static str, values: &'static [&'static str]) -> Metric {
        self.only = Some((label, values));
        self
    }
    const fn scaled(mut self, scale: f64) -> Metric {
        self.scale = scale;
        self
    }
}

use Kind::*;
use Part::*;

/// The report: the pipeline's health from data in (collector) over the bus to data out
/// (processor and sinks). deploy/cloudformation/tidewater.yaml alarms on and graphs these
/// names; tests/deploy_stack.rs holds the two together.
// One metric a line: the table reads as one (rustfmt would spread each over five).
#[rustfmt::skip]
pub const CATALOGUE: &[Metric] = &[
    // In: what the collector took, refused and holds.
    metric("AcceptedItems", "Count", Counter, Collector, "tidewater_collector_accepted_items_total").by("signal", "Signal"),
    metric("RejectedItems", "Count", Counter, Collector, "tidewater_collector_rejected_items_total").by("signal", "Signal"),
    metric("RefusedRequests", "Count", Counter, Collector, "tidewater_collector_refused_requests_total").by("reason", "Reason"),
    metric("BufferedBytes", "Bytes", GaugeSum, Collector, "tidewater_collector_buffered_bytes"),
    // The bus: what the collector published, and what waits in its spool.
    metric("PublishedItems", "Count", Counter, Collector, "tidewater_collector_published_items_total").by("signal", "Signal"),
    metric("PublishFailures", "Count", Counter, Collector, "tidewater_collector_publish_failures_total"),
    metric("SpoolDepth", "Count", GaugeSum, KinesisSpool, "tidewater_kinesis_spool_depth_records"),
    metric("SpoolOldestAge", "Seconds", GaugeMax, KinesisSpool, "tidewater_kinesis_spool_oldest_age_seconds"),
    metric("SpooledRecords", "Count", Counter, KinesisSpool, "tidewater_kinesis_spooled_records_total"),
    metric("SpoolDroppedRecords", "Count", Counter, KinesisSpool, "tidewater_kinesis_spool_dropped_records_total"),
    // Out: what the processor read, how far behind it is, and what the sinks did with it.
    metric("ConsumedItems", "Count", Counter, Processor, "tidewater_processor_consumed_items_total").by("signal", "Signal"),
    metric("ProcessorLag", "Milliseconds", GaugeMax, Processor, "tidewater_processor_lag_seconds").by("partition", "Partition").scaled(1000.0),
    metric("MillisBehindLatest", "Milliseconds", GaugeMax, KinesisReader, "tidewater_kinesis_millis_behind_latest").by("shard", "Shard"),
    metric("DeliveredItems", "Count", Counter, Processor, "tidewater_sink_items_total").only("outcome", &["stored", "already_stored"]).by("sink", "Sink"),
    metric("DeadLetteredItems", "Count", Counter, Processor, "tidewater_sink_items_total").only("outcome", &["dead_lettered"]).by("sink", "Sink"),
    metric("DeadLetteredBusRecords", "Count", Counter, Processor, "tidewater_processor_dead_letter_records_total").by("reason", "Reason"),
    metric("SinkRetries", "Count", Counter, Processor, "tidewater_sink_retries_total").by("sink", "Sink"),
    metric("SinkFailing", "Count", GaugeSum, Processor, "tidewater_sink_failing").by("sink", "Sink"),
];

/// Everything that shapes the report, fixed for the process's life.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    /// On every document: `Pipeline`, `Role`.
    pub pipeline: String,
    pub role: &'static str,
    /// When set, the totals are also reported with a `Service` dimension.
    pub service: Option<String>,
    /// Which parts this process runs.
    pub parts: Vec<Part>,
}

impl Settings {
    pub fn metrics(&self) -> impl Iterator<Item = &'static Metric> + '_ {
        CATALOGUE.iter().filter(|m| self.parts.contains(&m.part))
    }

    /// Whether the report reads series `name`.
    pub fn reads(&self, name: &str) -> bool {
        self.metrics().any(|m| m.source == name)
    }
}

/// The counters' totals at the last report, by series, to report increases.
#[derive(Debug, Default)]
pub struct Totals(HashMap<(String, Vec<(String, String)>), f64>);

/// The report of one interval: a document of every metric's total under `[Pipeline, Role]`
/// (and `[Pipeline, Role, Service]`), whose values are there even when zero so alarms and
/// graphs see a steady series; then, per breakdown dimension value seen, a document under
/// `[Pipeline, Role, <Dimension>]`. `now_ms` is the documents' `_aws.Timestamp`.
pub fn render(
    samples: &[Sample],
    totals: &mut Totals,
    settings: &Settings,
    now_ms: i64,
) -> Vec<String> {
    let counters: Vec<&str> = settings
        .metrics()
        .filter(|m| m.kind == Counter)
        .map(|m| m.source)
        .collect();
    // Each series' value for this interval, computed once even when two metrics read it.
    let values: Vec<Option<f64>> = samples
        .iter()
        .map(|s| {
            if !s.value.is_finite() {
                return None;
            }
            if !counters.contains(&s.name.as_str()) {
                return Some(s.value);
            }
            let key = (
                s.name.clone(),
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            );
            let last = totals.0.insert(key, s.value).unwrap_or(0.0);
            // A total below the last one was reset (it cannot be within one process, but a
            // negative increase would be worse than counting from zero).
            Some(if s.value >= last {
                s.value - last
            } else {
                s.value
            })
        })
        .collect();

    let base = {
        let mut dims = vec![
            ("Pipeline".to_string(), settings.pipeline.clone()),
            ("Role".to_string(), settings.role.to_string()),
        ];
        let mut sets = vec![vec!["Pipeline".to_string(), "Role".to_string()]];
        if let Some(service) = &settings.service {
            dims.push(("Service".into(), service.clone()));
            sets.push(vec!["Pipeline".into(), "Role".into(), "Service".into()]);
        }
        dims.sort();
        (dims, sets)
    };
    let mut totals_group = Group::default();
    // (dimension, value) → that slice's metrics.
    let mut slices: BTreeMap<(&str, String), Group> = BTreeMap::new();
    for m in settings.metrics() {
        let mut total = 0.0;
        let mut by_value: BTreeMap<String, f64> = BTreeMap::new();
        for (s, v) in samples.iter().zip(&values) {
            let Some(v) = v else { continue };
            if s.name != m.source {
                continue;
            }
            let breakdown =
                m.by.map(|(label, _)| s.labels.get(label).cloned().unwrap_or_default());
            if let Some((label, allowed)) = m.only {
                if !s
                    .labels
                    .get(label)
                    .is_some_and(|l| allowed.contains(&l.as_str()))
                {
                    // A value the series knows (a sink that stored items) is reported at zero
                    // here too (none dead-lettered), so breakdown graphs and alarms see it.
                    if let Some(value) = breakdown {
                        by_value.entry(value).or_insert(0.0);
                    }
                    continue;
                }
            }
            let v = v * m.scale;
            total = combine(m.kind, total, v);
            if let Some(value) = breakdown {
                let slot = by_value.entry(value).or_insert(0.0);
                *slot = combine(m.kind, *slot, v);
            }
        }
        totals_group
            .metrics
            .insert(m.name.to_string(), agg(m, total));
        if let Some((_, dimension)) = m.by {
            for (value, v) in by_value {
                // CloudWatch refuses an empty dimension value.
                if value.is_empty() {
                    continue;
                }
                slices
                    .entry((dimension, value))
                    .or_default()
                    .metrics
                    .insert(m.name.to_string(), agg(m, v));
            }
        }
    }

    let limits = DocLimits::default();
    let key = |dims: Vec<(String, String)>, sets: Vec<Vec<String>>| GroupKey {
        window_ms: now_ms,
        namespace: settings.namespace.clone(),
        log_stream: String::new(),
        dims,
        sets,
    };
    let mut out = documents(&key(base.0, base.1), &totals_group, 60, &limits);
    for ((dimension, value), group) in slices {
        let mut dims = vec![
            ("Pipeline".to_string(), settings.pipeline.clone()),
            ("Role".to_string(), settings.role.to_string()),
            (dimension.to_string(), value),
        ];
        dims.sort();
        let set = vec!["Pipeline".into(), "Role".into(), dimension.to_string()];
        out.extend(documents(&key(dims, vec![set]), &group, 60, &limits));
    }
    out
}

fn combine(kind: Kind, a: f64, b: f64) -> f64 {
    match kind {
        Counter | GaugeSum => a + b,
        GaugeMax => a.max(b),
    }
}

fn agg(m: &Metric, v: f64) -> MetricAgg {
    MetricAgg {
        unit: m.unit.to_string(),
        value: Aggregate::Sum(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn collector() -> Settings {
        Settings {
            namespace: "Tidewater".into(),
            pipeline: "tidewater-bus".into(),
            role: "collector",
            service: Some("shop".into()),
            parts: vec![Part::Collector, Part::KinesisSpool],
        }
    }

    fn processor() -> Settings {
        Settings {
            namespace: "Tidewater".into(),
            pipeline: "tidewater-bus".into(),
            role: "processor",
            service: None,
            parts: vec![Part::Processor, Part::KinesisReader],
        }
    }

    fn parse(docs: &[String]) -> Vec<Value> {
        docs.iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn golden_collector_report() {
        let samples = vec![
            sample(
                "tidewater_collector_accepted_items_total",
                &[("signal", "traces")],
                120.0,
            ),
            sample(
                "tidewater_collector_accepted_items_total",
                &[("signal", "logs")],
                30.0,
            ),
            sample(
                "tidewater_collector_refused_requests_total",
                &[("signal", "traces"), ("reason", "busy")],
                4.0,
            ),
            sample(
                "tidewater_collector_refused_requests_total",
                &[("signal", "logs"), ("reason", "busy")],
                1.0,
            ),
            sample(
                "tidewater_collector_refused_requests_total",
                &[("signal", "logs"), ("reason", "too_large")],
                2.0,
            ),
            sample("tidewater_collector_buffered_bytes", &[], 2048.0),
            sample("tidewater_kinesis_spool_depth_records", &[], 7.0),
            sample("tidewater_kinesis_spool_oldest_age_seconds", &[], 12.5),
            // Not in the report: never read.
            sample(
                "tidewater_collector_open_connections",
                &[("listener", "grpc")],
                3.0,
            ),
        ];
        let docs = parse(&render(
            &samples,
            &mut Totals::default(),
            &collector(),
            1_700_000_000_000,
        ));
        assert_eq!(
            docs[0],
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_000i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Tidewater",
                        "Dimensions": [["Pipeline", "Role"], ["Pipeline", "Role", "Service"]],
                        "Metrics": [
                            {"Name": "AcceptedItems", "Unit": "Count"},
                            {"Name": "BufferedBytes", "Unit": "Bytes"},
                            {"Name": "PublishFailures", "Unit": "Count"},
                            {"Name": "PublishedItems", "Unit": "Count"},
                            {"Name": "RefusedRequests", "Unit": "Count"},
                            {"Name": "RejectedItems", "Unit": "Count"},
                            {"Name": "SpoolDepth", "Unit": "Count"},
                            {"Name": "SpoolDroppedRecords", "Unit": "Count"},
                            {"Name": "SpoolOldestAge", "Unit": "Seconds"},
                            {"Name": "SpooledRecords", "Unit": "Count"}
                        ]
                    }]
                },
                "Pipeline": "tidewater-bus",
                "Role": "collector",
                "Service": "shop",
                "AcceptedItems": 150.0,
                "BufferedBytes": 2048.0,
                "PublishFailures": 0.0,
                "PublishedItems": 0.0,
                "RefusedRequests": 7.0,
                "RejectedItems": 0.0,
                "SpoolDepth": 7.0,
                "SpoolDroppedRecords": 0.0,
                "SpoolOldestAge": 12.5,
                "SpooledRecords": 0.0
            })
        );
        let slice = |dim: &str, value: &str| {
            docs.iter()
                .find(|d| d[dim] == value)
                .unwrap_or_else(|| panic!("{dim}={value} in {docs:#?}"))
                .clone()
        };
        assert_eq!(
            slice("Reason", "busy"),
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_000i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Tidewater",
                        "Dimensions": [["Pipeline", "Role", "Reason"]],
                        "Metrics": [{"Name": "RefusedRequests", "Unit": "Count"}]
                    }]
                },
                "Pipeline": "tidewater-bus",
                "Reason": "busy",
                "Role": "collector",
                "RefusedRequests": 5.0
            })
        );
        assert_eq!(slice("Reason", "too_large")["RefusedRequests"], json!(2.0));
        assert_eq!(slice("Signal", "traces")["AcceptedItems"], json!(120.0));
        assert_eq!(slice("Signal", "logs")["AcceptedItems"], json!(30.0));
        // The totals, then one document per dimension value seen.
        assert_eq!(docs.len(), 1 + 2 + 2);
    }

    #[test]
    fn counters_report_increases_gauges_report_levels() {
        let settings = processor();
        let mut totals = Totals::default();
        let at = |delivered: f64, lag: f64| {
            vec![
                sample(
                    "tidewater_sink_items_total",
                    &[("sink", "xray"), ("outcome", "stored")],
                    delivered,
                ),
                sample(
                    "tidewater_sink_items_total",
                    &[("sink", "xray"), ("outcome", "already_stored")],
                    1.0,
                ),
                sample(
                    "tidewater_sink_items_total",
                    &[("sink", "xray"), ("outcome", "dead_lettered")],
                    2.0,
                ),
                sample(
                    "tidewater_processor_lag_seconds",
                    &[("partition", "shardId-0")],
                    lag,
                ),
                sample(
                    "tidewater_processor_lag_seconds",
                    &[("partition", "shardId-1")],
                    lag / 2.0,
                ),
            ]
        };
        let first = parse(&render(&at(100.0, 1.5), &mut totals, &settings, 1));
        assert_eq!(first[0]["DeliveredItems"], json!(101.0));
        assert_eq!(first[0]["DeadLetteredItems"], json!(2.0));
        // The worst partition, in milliseconds.
        assert_eq!(first[0]["ProcessorLag"], json!(1500.0));
        let second = parse(&render(&at(130.0, 0.2), &mut totals, &settings, 2));
        assert_eq!(second[0]["DeliveredItems"], json!(30.0));
        assert_eq!(second[0]["DeadLetteredItems"], json!(0.0));
        assert_eq!(second[0]["ProcessorLag"], json!(200.0));
        let partition = |docs: &[Value], p: &str| {
            docs.iter().find(|d| d["Partition"] == p).unwrap()["ProcessorLag"].clone()
        };
        assert_eq!(partition(&second, "shardId-1"), json!(100.0));
        let sink = second.iter().find(|d| d["Sink"] == "xray").unwrap();
        assert_eq!(
            (&sink["DeliveredItems"], &sink["DeadLetteredItems"]),
            (&json!(30.0), &json!(0.0))
        );
        // A sink that never dead-lettered is still reported, at zero.
        let mut only_stored = at(140.0, 0.1);
        only_stored.push(sample(
            "tidewater_sink_items_total",
            &[("sink", "emf"), ("outcome", "stored")],
            5.0,
        ));
        let third = parse(&render(&only_stored, &mut totals, &settings, 3));
        let emf = third.iter().find(|d| d["Sink"] == "emf").unwrap();
        assert_eq!(
            (&emf["DeliveredItems"], &emf["DeadLetteredItems"]),
            (&json!(5.0), &json!(0.0))
        );
        // No Service dimension unless one is configured.
        assert_eq!(
            second[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Pipeline", "Role"]])
        );
        assert!(second[0].get("Service").is_none());
    }

    #[test]
    fn a_process_reports_only_the_parts_it_runs_and_every_one_of_their_metrics() {
        let names = |settings: &Settings| -> Vec<String> {
            let docs = parse(&render(&[], &mut Totals::default(), settings, 0));
            assert_eq!(docs.len(), 1, "with nothing recorded, only the totals");
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap().to_string())
                .collect()
        };
        let c = names(&collector());
        assert!(c.contains(&"SpoolDepth".to_string()) && !c.contains(&"ProcessorLag".to_string()));
        let p = names(&processor());
        assert!(
            p.contains(&"MillisBehindLatest".to_string())
                && !p.contains(&"RefusedRequests".to_string())
        );
        let up = Settings {
            role: "up",
            parts: vec![Part::Collector, Part::Processor],
            ..processor()
        };
        let u = names(&up);
        assert_eq!(u.len(), CATALOGUE.len() - 5, "{u:?}");
    }

    #[test]
    fn every_catalogue_name_and_unit_is_one_cloudwatch_takes() {
        let mut names = std::collections::HashSet::new();
        for m in CATALOGUE {
            assert!(names.insert(m.name), "{} twice", m.name);
            assert!(
                tidewater_processors::emf::declarations::UNITS.contains(&m.unit),
                "{}: {}",
                m.name,
                m.unit
            );
            assert!(!["Pipeline", "Role", "Service", "_aws"].contains(&m.name));
        }
    }

    #[test]
    fn non_finite_values_and_empty_dimension_values_are_left_out() {
        let samples = vec![
            sample(
                "tidewater_processor_lag_seconds",
                &[("partition", "0")],
                f64::NAN,
            ),
            sample("tidewater_processor_lag_seconds", &[("partition", "")], 3.0),
        ];
        let docs = parse(&render(&samples, &mut Totals::default(), &processor(), 0));
        assert_eq!(docs.len(), 1, "{docs:#?}");
        assert_eq!(docs[0]["ProcessorLag"], json!(3000.0));
    }
}
