//! Tidewater's health in CloudWatch without an agent (`telemetry.emf`): the real binary's
//! stdout, checked line by line against the Embedded Metric Format specification's required
//! fields and limits (what CloudWatch would refuse to extract), and its numbers against the
//! `/metrics` registry they are read from. tests/deploy_stack.rs reuses [`emf_problems`] and
//! [`emitted`] to hold the stacks' alarms and dashboard to what is really written.

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use serde_json::Value;

use crate::common::*;

/// The units CloudWatch accepts in a `MetricDefinition`.
const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Why CloudWatch would not extract metrics from `line`, per the EMF specification: the root
/// is one JSON object; `_aws` holds `Timestamp` (ms since the epoch) and `CloudWatchMetrics`,
/// an array of directives with exactly `Namespace`, `Dimensions` and `Metrics`; each dimension
/// set has at most 30 names, each naming a top-level string member; at most 100 metric
/// definitions (`Name`, optional `Unit` from CloudWatch's list, optional `StorageResolution`
/// 1 or 60), each naming a top-level number or array of at most 100 numbers; and the event
/// within a log event's size (1 MB; 256 KiB for the `awslogs` driver, which splits longer
/// lines).
pub fn emf_problems(line: &str) -> Vec<String> {
    let mut p = Vec::new();
    if line.len() > 256 * 1024 - 26 {
        p.push(format!("{} bytes: over a log event", line.len()));
    }
    let doc: Value = match serde_json::from_str(line) {
        Ok(Value::Object(o)) => Value::Object(o),
        Ok(_) => return vec!["not a JSON object".into()],
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let Some(aws) = doc["_aws"].as_object() else {
        return vec!["no _aws object".into()];
    };
    match aws.get("Timestamp").and_then(Value::as_i64) {
        Some(t) if t > 1_000_000_000_000 => {}
        other => p.push(format!(
            "_aws.Timestamp is not epoch milliseconds: {other:?}"
        )),
    }
    let Some(directives) = aws.get("CloudWatchMetrics").and_then(Value::as_array) else {
        p.push("_aws.CloudWatchMetrics is not an array".into());
        return p;
    };
    if directives.is_empty() {
        p.push("_aws.CloudWatchMetrics is empty".into());
    }
    for d in directives {
        let Some(d) = d.as_object() else {
            p.push("a directive is not an object".into());
            continue;
        };
        for k in d.keys() {
            if !["Namespace", "Dimensions", "Metrics"].contains(&k.as_str()) {
                p.push(format!("directive member {k} is not in the specification"));
            }
        }
        match d.get("Namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns.len() <= 255 && !ns.starts_with("AWS/") => {}
            other => p.push(format!("Namespace {other:?}")),
        }
        match d.get("Dimensions").and_then(Value::as_array) {
            None => p.push("Dimensions is not an array".into()),
            Some(sets) => {
                for set in sets {
                    let Some(names) = set.as_array() else {
                        p.push(format!("dimension set {set} is not an array"));
                        continue;
                    };
                    if names.len() > 30 {
                        p.push(format!("dimension set of {} names", names.len()));
                    }
                    for n in names {
                        match n.as_str().map(|n| &doc[n]) {
                            Some(Value::String(v)) if !v.is_empty() && v.len() <= 1024 => {}
                            _ => p.push(format!("dimension {n} is not a top-level string member")),
                        }
                    }
                }
            }
        }
        match d.get("Metrics").and_then(Value::as_array) {
            None => p.push("Metrics is not an array".into()),
            Some(metrics) => {
                if metrics.len() > 100 {
                    p.push(format!("{} metrics in one directive", metrics.len()));
                }
                for m in metrics {
                    let Some(m) = m.as_object() else {
                        p.push("a metric definition is not an object".into());
                        continue;
                    };
                    for k in m.keys() {
                        if !["Name", "Unit", "StorageResolution"].contains(&k.as_str()) {
                            p.push(format!("metric member {k} is not in the specification"));
                        }
                    }
                    let name = m.get("Name").and_then(Value::as_str).unwrap_or_default();
                    if name.is_empty() || name.len() > 255 {
                        p.push(format!("metric Name {:?}", m.get("Name")));
                    }
                    if let Some(u) = m.get("Unit") {
                        if !u.as_str().is_some_and(|u| UNITS.contains(&u)) {
                            p.push(format!("{name}: Unit {u} is not a CloudWatch unit"));
                        }
                    }
                    if let Some(r) = m.get("StorageResolution") {
                        if r != 1 && r != 60 {
                            p.push(format!("{name}: StorageResolution {r}"));
                        }
                    }
                    match &doc[name] {
                        Value::Number(_) => {}
                        Value::Array(a) if a.len() <= 100 && a.iter().all(Value::is_number) => {}
                        other => p.push(format!("{name}: value {other} is not a number")),
                    }
                }
            }
        }
    }
    p
}

/// A metric as CloudWatch would file it: namespace, name and dimensions (name → value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Emitted {
    pub namespace: String,
    pub name: String,
    pub dimensions: BTreeMap<String, String>,
}

/// Every metric the EMF lines in `stdout` define, each with its values.
pub fn emitted(stdout: &str) -> BTreeMap<Emitted, Vec<f64>> {
    let mut out: BTreeMap<Emitted, Vec<f64>> = BTreeMap::new();
    for line in stdout.lines() {
        let problems = emf_problems(line);
        assert!(problems.is_empty(), "{problems:?} in {line}");
        let doc: Value = serde_json::from_str(line).unwrap();
        for d in doc["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
            for set in d["Dimensions"].as_array().unwrap() {
                let dimensions: BTreeMap<String, String> = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| {
                        let n = n.as_str().unwrap();
                        (n.to_string(), doc[n].as_str().unwrap().to_string())
                    })
                    .collect();
                for m in d["Metrics"].as_array().unwrap() {
                    let name = m["Name"].as_str().unwrap();
                    out.entry(Emitted {
                        namespace: d["Namespace"].as_str().unwrap().to_string(),
                        name: name.to_string(),
                        dimensions: dimensions.clone(),
                    })
                    .or_default()
                    .push(doc[name].as_f64().unwrap());
                }
            }
        }
    }
    out
}

fn dims(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The sum of a metric's reports.
fn total(emitted: &BTreeMap<Emitted, Vec<f64>>, name: &str, d: &[(&str, &str)]) -> f64 {
    let key = Emitted {
        namespace: "Tidewater".into(),
        name: name.into(),
        dimensions: dims(d),
    };
    emitted.get(&key).map(|v| v.iter().sum()).unwrap_or(0.0)
}

/// The sum of a Prometheus series over its label sets that contain every one of `with`.
fn prometheus_total(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn stdout_is_valid_emf_and_adds_up_to_the_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut tw = Tidewater::up(
        dir.path(),
        &[
            ("TIDEWATER_TELEMETRY__EMF__ENABLED", "true"),
            ("TIDEWATER_TELEMETRY__EMF__INTERVAL", "1s"),
            ("TIDEWATER_TELEMETRY__EMF__PIPELINE", "orders-bus"),
            ("TIDEWATER_TELEMETRY__EMF__SERVICE", "shop"),
        ],
    );
    for batch in 0..2 {
        let body = otlp_traces(batch, 3, 2).encode_to_vec();
        assert_eq!(
            post_protobuf(&tw.http_url("/v1/traces"), body).status(),
            200
        );
    }
    let refused = post_protobuf(&tw.http_url("/v1/traces"), b"\xff\xff\xffnot OTLP".to_vec());
    assert_eq!(refused.status(), 400);

    let base = [("Pipeline", "orders-bus"), ("Role", "up")];
    let seen = wait_for(Duration::from_secs(30), || {
        let e = emitted(&tw.stdout());
        (total(&e, "ConsumedItems", &base) >= 12.0 && total(&e, "DeliveredItems", &base) > 0.0)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "no report of the delivery:\nstdout:\n{}\nlog:\n{}",
        tw.stdout(),
        tw.log()
    );
    let prometheus = tw.metrics();
    // SIGTERM: the last report carries what happened since the one before.
    tw.stop();
    let stdout = tw.stdout();
    let e = emitted(&stdout);

    // In, bus, out: every increase reported once, so the reports add up to the totals the
    // /metrics endpoint holds.
    for (name, series, with) in [
        (
            "AcceptedItems",
            "tidewater_collector_accepted_items_total",
            &[][..],
        ),
        (
            "PublishedItems",
            "tidewater_collector_published_items_total",
            &[],
        ),
        (
            "RefusedRequests",
            "tidewater_collector_refused_requests_total",
            &[],
        ),
        (
            "ConsumedItems",
            "tidewater_processor_consumed_items_total",
            &[],
        ),
        (
            "DeliveredItems",
            "tidewater_sink_items_total",
            &["outcome=\"stored\""],
        ),
    ] {
        assert_eq!(
            total(&e, name, &base),
            prometheus_total(&prometheus, series, with),
            "{name} against {series}"
        );
    }
    assert_eq!(total(&e, "AcceptedItems", &base), 12.0);
    assert_eq!(total(&e, "ConsumedItems", &base), 12.0);
    assert_eq!(total(&e, "DeadLetteredItems", &base), 0.0);
    // The same totals under the Service dimension, and the breakdowns.
    let with_service = [
        ("Pipeline", "orders-bus"),
        ("Role", "up"),
        ("Service", "shop"),
    ];
    assert_eq!(total(&e, "AcceptedItems", &with_service), 12.0);
    fn by(d: &'static str, v: &'static str) -> [(&'static str, &'static str); 3] {
        [("Pipeline", "orders-bus"), ("Role", "up"), (d, v)]
    }
    assert_eq!(
        total(&e, "RefusedRequests", &by("Reason", "bad_request")),
        1.0
    );
    assert_eq!(total(&e, "AcceptedItems", &by("Signal", "traces")), 12.0);
    assert_eq!(
        total(&e, "DeliveredItems", &by("Sink", "file")),
        total(&e, "DeliveredItems", &base)
    );
    let lags: Vec<&Emitted> = e
        .keys()
        .filter(|k| k.name == "ProcessorLag" && k.dimensions.contains_key("Partition"))
        .collect();
    assert!(!lags.is_empty(), "lag per partition: {stdout}");
    // Levels, present in every report even when nothing is held.
    for name in ["BufferedBytes", "SinkFailing", "ProcessorLag"] {
        let key = Emitted {
            namespace: "Tidewater".into(),
            name: name.into(),
            dimensions: dims(&base),
        };
        assert!(e.contains_key(&key), "{name} in {stdout}");
    }
    // No Kinesis bus here: no spool and no shard metrics.
    assert!(
        !e.keys()
            .any(|k| k.name.starts_with("Spool") || k.name == "MillisBehindLatest"),
        "{stdout}"
    );
    // Nothing but EMF on stdout.
    assert!(stdout.lines().all(|l| l.starts_with('{')));
}

#[test]
fn the_specification_check_catches_what_cloudwatch_refuses() {
    let good = r#"{"_aws":{"Timestamp":1700000000000,"CloudWatchMetrics":[{"Namespace":"Tidewater","Dimensions":[["Role"]],"Metrics":[{"Name":"A","Unit":"Count"}]}]},"Role":"collector","A":1}"#;
    assert_eq!(emf_problems(good), Vec::<String>::new());
    for (bad, expected) in [
        (good.replace("1700000000000", "\"now\""), "Timestamp"),
        (
            good.replace("\"Role\":\"collector\",", ""),
            "dimension \"Role\"",
        ),
        (good.replace("\"A\":1", "\"A\":\"1\""), "A: value"),
        (good.replace("Count", "Things"), "not a CloudWatch unit"),
        (good.replace("Tidewater", "AWS/Tidewater"), "Namespace"),
        (
            good.replace("\"Metrics\"", "\"Metric\""),
            "Metrics is not an array",
        ),
        (good.replace("_aws", "aws"), "no _aws"),
    ] {
        let problems = emf_problems(&bad).join("; ");
        assert!(
            problems.contains(expected),
            "{expected:?} in {problems:?} for {bad}"
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("{{\"Name\":\"m{i}\"}}")).collect();
    let values: Vec<String> = (0..101).map(|i| format!("\"m{i}\":1")).collect();
    let over = format!(
        r#"{{"_aws":{{"Timestamp":1700000000000,"CloudWatchMetrics":[{{"Namespace":"T","Dimensions":[],"Metrics":[{}]}}]}},{}}}"#,
        many.join(","),
        values.join(",")
    );
    assert!(emf_problems(&over).join("").contains("101 metrics"));
}
