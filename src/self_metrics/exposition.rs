//! Reads back the Prometheus text that `/metrics` serves, so the EMF report is taken from the
//! very registry an operator scrapes and the two can never disagree.
//!
//! Why a small reader here rather than a crate: the exporter keeps its registry private and
//! only renders it (text, or protobuf behind a feature whose build script needs a `protoc` this
//! project does not install for that crate). The text parsers on crates.io do not fit:
//! `prometheus-parse` splits labels on `,` and `=` without unescaping (a label value with a
//! comma or a quote comes back wrong) and drags in chrono and regex; `openmetrics-parser` is
//! LGPL. A `metrics-util` layer teeing every handle into a second registry would read a copy,
//! not the registry `/metrics` serves, and would add a lookup and an allocation to every
//! `counter!` on the collector's hot path. What this reader must understand is only what
//! `metrics-exporter-prometheus` writes (`formatting::write_metric_line`): `name{k="v",...}
//! value`, label values escaped with `\\`, `\"` and `\n`; the tests render through the real
//! exporter to hold it to that.

use std::collections::BTreeMap;

/// One line of the exposition: a series and its current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample whose name is in `wanted`; comments and other series are skipped unread, and
/// a line that does not parse is skipped (the report goes on without it).
pub fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let end = line.find(['{', ' '])?;
            let name = &line[..end];
            if !wanted(name) {
                return None;
            }
            parse_line(name, &line[end..])
        })
        .collect()
}

fn parse_line(name: &str, rest: &str) -> Option<Sample> {
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"")?;
            let key = inner[..eq].trim_start_matches(',');
            let (value, after) = unescape(&inner[eq + 2..])?;
            labels.insert(key.to_string(), value);
            inner = after;
        }
    }
    // A timestamp may follow the value; this exporter writes none, but it costs nothing.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, and what follows the quote.
fn unescape(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_what_the_exporter_renders() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("tidewater_collector_refused_requests_total", "signal" => "traces", "reason" => "busy").increment(3);
            metrics::counter!("tidewater_collector_refused_requests_total", "signal" => "logs", "reason" => "bad_request").increment(1);
            metrics::gauge!("tidewater_collector_buffered_bytes").set(1536.0);
            metrics::gauge!("tidewater_processor_lag_seconds", "partition" => "shardId-000000000002").set(0.25);
            // Punctuation the naive parsers trip on, and what the format escapes.
            metrics::counter!("tidewater_sink_retries_total", "sink" => "es", "reason" => "a,b=c} \"quoted\"\nnext line, ünïcode").increment(7);
            metrics::histogram!("tidewater_sink_call_seconds", "sink" => "es").record(0.5);
        });
        let text = handle.render();
        let all = parse(&text, |_| true);
        let find = |name: &str, l: &[(&str, &str)]| {
            all.iter()
                .find(|s| s.name == name && s.labels == labels(l))
                .unwrap_or_else(|| panic!("{name} {l:?} in {all:#?}\nfrom:\n{text}"))
                .value
        };
        assert_eq!(
            find(
                "tidewater_collector_refused_requests_total",
                &[("signal", "traces"), ("reason", "busy")]
            ),
            3.0
        );
        assert_eq!(
            find(
                "tidewater_collector_refused_requests_total",
                &[("signal", "logs"), ("reason", "bad_request")]
            ),
            1.0
        );
        assert_eq!(find("tidewater_collector_buffered_bytes", &[]), 1536.0);
        assert_eq!(
            find(
                "tidewater_processor_lag_seconds",
                &[("partition", "shardId-000000000002")]
            ),
            0.25
        );
        assert_eq!(
            find(
                "tidewater_sink_retries_total",
                &[
                    ("sink", "es"),
                    ("reason", "a,b=c} \"quoted\"\nnext line, ünïcode")
                ]
            ),
            7.0
        );
        // A summary's quantile lines and _sum/_count are read as what they are, not mistaken
        // for the series asked for.
        let wanted = parse(&text, |n| n == "tidewater_collector_buffered_bytes");
        assert_eq!(wanted.len(), 1);
    }

    #[test]
    fn golden_lines_and_malformed_ones() {
        let text = "# HELP x y\n# TYPE a counter\n\
                    a 12\n\
                    a{k=\"v\"} 3 1700000000000\n\
                    g{p=\"0\",q=\"x\\\\y\"} -1.5\n\
                    broken{k=\"unterminated} 1\n\
                    novalue{k=\"v\"}\n\
                    nan NaN\n";
        let got = parse(text, |_| true);
        assert_eq!(
            got[..3],
            [
                Sample {
                    name: "a".into(),
                    labels: BTreeMap::new(),
                    value: 12.0
                },
                Sample {
                    name: "a".into(),
                    labels: labels(&[("k", "v")]),
                    value: 3.0
                },
                Sample {
                    name: "g".into(),
                    labels: labels(&[("p", "0"), ("q", "x\\y")]),
                    value: -1.5
                },
            ]
        );
        // The unterminated and value-less lines are skipped; NaN is read (and dropped later).
        assert_eq!(got.len(), 4);
        assert!(got[3].name == "nan" && got[3].value.is_nan());
    }
}
