//! EMF documents: one group's metrics as JSON log events carrying an `_aws.CloudWatchMetrics`
//! directive, within the format's limits. Nothing is dropped to fit: a metric with more
//! distinct values than one array may hold is split across documents (counts and sums add up
//! to the exact totals), more metrics than one directive may name go to further documents, and
//! a document over the event size is halved until it fits.

use serde_json::{json, Map, Value};

use super::aggregate::{Aggregate, Distribution, Group, GroupKey};

/// Limits of the format and of the log event that carries it.
#[derive(Debug, Clone, Copy)]
pub struct DocLimits {
    /// Metric definitions in one directive (EMF: 100).
    pub max_metrics: usize,
    /// Values in one metric's value array (EMF: 100).
    pub max_values: usize,
    /// Bytes of one document: the log event size limit less its 26 bytes of overhead.
    pub max_bytes: usize,
}

impl Default for DocLimits {
    fn default() -> Self {
        DocLimits {
            max_metrics: 100,
            max_values: 100,
            max_bytes: 256 * 1024 - 26,
        }
    }
}

/// The documents for one group, each a JSON text, with the group's window start as
/// `_aws.Timestamp`. `storage_resolution` 1 asks for high-resolution metrics.
pub fn documents(
    key: &GroupKey,
    group: &Group,
    storage_resolution: u32,
    limits: &DocLimits,
) -> Vec<String> {
    // Each metric as one or more parts (value, unit); part j of every metric goes to the
    // j-th run of documents.
    let mut parts: Vec<(String, &str, Vec<Value>)> = Vec::new();
    for (name, m) in &group.metrics {
        let name = field_name(name, key);
        let values = match &m.value {
            Aggregate::Sum(v) => vec![number(*v)],
            Aggregate::Distribution(d) => distribution_parts(d, limits.max_values.max(1)),
        };
        if !values.is_empty() {
            parts.push((name, m.unit.as_str(), values));
        }
    }
    let runs = parts.iter().map(|p| p.2.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for run in 0..runs {
        let metrics: Vec<(&str, &str, &Value)> = parts
            .iter()
            .filter_map(|(n, u, v)| v.get(run).map(|v| (n.as_str(), *u, v)))
            .collect();
        for chunk in metrics.chunks(limits.max_metrics.max(1)) {
            fit(key, chunk, storage_resolution, limits.max_bytes, &mut out);
        }
    }
    out
}

/// Renders `metrics` as one document, or as several when one would be over `max_bytes`. A
/// single metric that is still too large (huge dimension values) is returned as it is, for the
/// writer to refuse with a reason.
fn fit(
    key: &GroupKey,
    metrics: &[(&str, &str, &Value)],
    storage_resolution: u32,
    max_bytes: usize,
    out: &mut Vec<String>,
) {
    let doc = render(key, metrics, storage_resolution);
    if doc.len() <= max_bytes || metrics.len() == 1 {
        out.push(doc);
        return;
    }
    let (a, b) = metrics.split_at(metrics.len() / 2);
    fit(key, a, storage_resolution, max_bytes, out);
    fit(key, b, storage_resolution, max_bytes, out);
}

fn render(key: &GroupKey, metrics: &[(&str, &str, &Value)], storage_resolution: u32) -> String {
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, unit, _)| {
            let mut d = Map::new();
            d.insert("Name".into(), json!(name));
            if !unit.is_empty() {
                d.insert("Unit".into(), json!(unit));
            }
            if storage_resolution == 1 {
                d.insert("StorageResolution".into(), json!(1));
            }
            Value::Object(d)
        })
        .collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": key.window_ms,
            "CloudWatchMetrics": [{
                "Namespace": key.namespace,
                "Dimensions": key.sets,
                "Metrics": definitions,
            }],
        }),
    );
    for (k, v) in &key.dims {
        doc.insert(k.clone(), json!(v));
    }
    for (name, _, value) in metrics {
        doc.insert(name.to_string(), (*value).clone());
    }
    Value::Object(doc).to_string()
}

/// A metric whose name is taken by a dimension (or by `_aws`) gets a `_` suffix: both must be
/// top-level members of the document.
fn field_name(name: &str, key: &GroupKey) -> String {
    let mut name = name.to_string();
    while name == "_aws" || key.dims.iter().any(|(k, _)| *k == name) {
        name.push('_');
    }
    name
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// EMF's histogram value: `{Values, Counts, Max, Min, Count, Sum}`, at most `max_values`
/// values per part. Parts partition the values; each carries its own count, min and max, and
/// the sums add up to the exact total (the first part takes the remainder).
fn distribution_parts(d: &Distribution, max_values: usize) -> Vec<Value> {
    if d.count == 0 {
        return Vec::new();
    }
    let values: Vec<(f64, u64)> = d.values().collect();
    if values.is_empty() {
        // A statistic set (summaries).
        return vec![
            json!({"Max": number(d.max), "Min": number(d.min), "Count": d.count, "Sum": number(d.sum)}),
        ];
    }
    let chunks: Vec<&[(f64, u64)]> = values.chunks(max_values).collect();
    let last = chunks.len() - 1;
    let estimated: Vec<f64> = chunks
        .iter()
        .map(|c| c.iter().map(|(v, n)| v * *n as f64).sum())
        .collect();
    let rest: f64 = estimated.iter().skip(1).sum();
    chunks
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let count: u64 = c.iter().map(|(_, n)| n).sum();
            let sum = if j == 0 { d.sum - rest } else { estimated[j] };
            let min = if j == 0 { d.min } else { c[0].0 };
            let max = if j == last { d.max } else { c[c.len() - 1].0 };
            json!({
                "Values": c.iter().map(|(v, _)| number(*v)).collect::<Vec<_>>(),
                "Counts": c.iter().map(|(_, n)| n).collect::<Vec<_>>(),
                "Max": number(max),
                "Min": number(min),
                "Count": count,
                "Sum": number(sum),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emf::aggregate::{MetricAgg, Windows};

    fn key() -> GroupKey {
        GroupKey {
            window_ms: 1_700_000_040_000,
            namespace: "Shop".into(),
            log_stream: "checkout".into(),
            dims: vec![
                ("route".into(), "/checkout".into()),
                ("service.name".into(), "checkout".into()),
            ],
            sets: vec![
                vec!["service.name".into(), "route".into()],
                vec!["service.name".into()],
            ],
        }
    }

    fn group(metrics: Vec<(&str, &str, Aggregate)>) -> Group {
        Group {
            metrics: metrics
                .into_iter()
                .map(|(n, u, value)| {
                    (
                        n.to_string(),
                        MetricAgg {
                            unit: u.into(),
                            value,
                        },
                    )
                })
                .collect(),
        }
    }

    fn parse(docs: &[String]) -> Vec<Value> {
        docs.iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn golden_counter_and_histogram_document() {
        let hist = Distribution::from_histogram(
            &[0.0, 5.0, 10.0, 25.0],
            &[0, 0, 2, 3, 0],
            Some(57.0),
            Some(10.0),
            Some(14.0),
        );
        let g = group(vec![
            ("app.requests", "Count", Aggregate::Sum(5.0)),
            ("app.latency", "Milliseconds", Aggregate::Distribution(hist)),
        ]);
        let docs = parse(&documents(&key(), &g, 60, &DocLimits::default()));
        assert_eq!(
            docs,
            vec![json!({
                "_aws": {
                    "Timestamp": 1_700_000_040_000i64,
                    "CloudWatchMetrics": [{
                        "Namespace": "Shop",
                        "Dimensions": [["service.name", "route"], ["service.name"]],
                        "Metrics": [
                            {"Name": "app.latency", "Unit": "Milliseconds"},
                            {"Name": "app.requests", "Unit": "Count"}
                        ]
                    }]
                },
                "route": "/checkout",
                "service.name": "checkout",
                "app.latency": {"Values": [10.0, 14.0], "Counts": [2, 3], "Max": 14.0, "Min": 10.0, "Count": 5, "Sum": 57.0},
                "app.requests": 5.0
            })]
        );
    }

    #[test]
    fn golden_summary_statistic_set_and_high_resolution() {
        let g = group(vec![(
            "rpc.duration",
            "",
            Aggregate::Distribution(Distribution::from_summary(4, 20.0, Some(1.0), Some(9.0))),
        )]);
        let docs = parse(&documents(&key(), &g, 1, &DocLimits::default()));
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([{"Name": "rpc.duration", "StorageResolution": 1}])
        );
        assert_eq!(
            docs[0]["rpc.duration"],
            json!({"Max": 9.0, "Min": 1.0, "Count": 4, "Sum": 20.0})
        );
    }

    #[test]
    fn more_than_100_values_split_into_documents_with_exact_totals() {
        let mut w = Windows::default();
        for i in 0..250 {
            w.add(
                key(),
                "gauge",
                "",
                Aggregate::Distribution(Distribution::single(i as f64)),
            );
        }
        w.add(key(), "requests", "Count", Aggregate::Sum(7.0));
        let (k, g) = w.take_due(0, 0, 0, true).pop().unwrap();
        let docs = parse(&documents(&k, &g, 60, &DocLimits::default()));
        assert_eq!(docs.len(), 3);
        let parts: Vec<&Value> = docs.iter().map(|d| &d["gauge"]).collect();
        assert!(parts
            .iter()
            .all(|p| p["Values"].as_array().unwrap().len() <= 100));
        let count: u64 = parts.iter().map(|p| p["Count"].as_u64().unwrap()).sum();
        let sum: f64 = parts.iter().map(|p| p["Sum"].as_f64().unwrap()).sum();
        let counts: u64 = parts
            .iter()
            .flat_map(|p| p["Counts"].as_array().unwrap())
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(
            (count, counts, sum),
            (250, 250, (0..250).sum::<i32>() as f64)
        );
        assert_eq!(
            (parts[0]["Min"].as_f64(), parts[2]["Max"].as_f64()),
            (Some(0.0), Some(249.0))
        );
        // The counter is sent once, not once per part.
        assert_eq!(
            docs.iter().filter(|d| d.get("requests").is_some()).count(),
            1
        );
        // Each document names exactly the metrics it carries.
        for d in &docs {
            let names: Vec<&str> = d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap())
                .collect();
            for n in names {
                assert!(d.get(n).is_some());
            }
        }
    }

    #[test]
    fn more_than_100_metrics_split_into_directives_of_100() {
        let g = group(
            (0..230)
                .map(|i| {
                    (
                        Box::leak(format!("m{i:03}").into_boxed_str()) as &str,
                        "Count",
                        Aggregate::Sum(1.0),
                    )
                })
                .collect(),
        );
        let docs = parse(&documents(&key(), &g, 60, &DocLimits::default()));
        let sizes: Vec<usize> = docs
            .iter()
            .map(|d| {
                d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, vec![100, 100, 30]);
    }

    #[test]
    fn documents_over_the_event_size_are_halved_until_they_fit() {
        let g = group(
            (0..40)
                .map(|i| {
                    (
                        Box::leak(format!("metric_with_a_long_name_{i:03}").into_boxed_str())
                            as &str,
                        "Count",
                        Aggregate::Sum(1.0),
                    )
                })
                .collect(),
        );
        let limits = DocLimits {
            max_bytes: 1500,
            ..Default::default()
        };
        let docs = documents(&key(), &g, 60, &limits);
        assert!(docs.len() > 1);
        assert!(docs.iter().all(|d| d.len() <= 1500), "{docs:?}");
        let total: usize = parse(&docs)
            .iter()
            .map(|d| {
                d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total, 40);
    }

    #[test]
    fn a_metric_named_like_a_dimension_is_renamed_not_lost() {
        let g = group(vec![("route", "Count", Aggregate::Sum(2.0))]);
        let docs = parse(&documents(&key(), &g, 60, &DocLimits::default()));
        assert_eq!(docs[0]["route"], "/checkout");
        assert_eq!(docs[0]["route_"], json!(2.0));
        assert_eq!(
            docs[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "route_"
        );
    }
}
