//! Request metrics from the spans flowing through, with no client instrumentation: for each
//! service, operation (span name) and status class, how many requests, how many failed, and
//! how long they took.
//!
//! Only entry spans count as requests (server and consumer by default), so a request is not
//! counted again for each of its internal or client spans. Latency values are rounded to a few
//! significant digits: a busy operation's thousands of distinct durations would otherwise need
//! dozens of EMF documents per window; counts and the sum stay exact.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use serde::{Deserialize, Serialize};

use super::aggregate::{Aggregate, Distribution};
use super::metrics::Target;
use super::{Settings, State, Stats};

pub const REQUESTS: &str = "RequestCount";
pub const ERRORS: &str = "ErrorCount";
pub const LATENCY: &str = "Latency";
pub const SERVICE: &str = "Service";
pub const OPERATION: &str = "Operation";
pub const STATUS_CLASS: &str = "StatusClass";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanMetricsConfig {
    pub enabled: bool,
    /// Span kinds that are requests: "server", "consumer", "client", "producer", "internal".
    pub span_kinds: Vec<String>,
    /// Significant digits latencies are rounded to (1 to 15).
    pub latency_digits: u32,
}

impl Default for SpanMetricsConfig {
    fn default() -> Self {
        SpanMetricsConfig {
            enabled: true,
            span_kinds: vec!["server".into(), "consumer".into()],
            latency_digits: 2,
        }
    }
}

impl SpanMetricsConfig {
    /// The span kinds as OTLP numbers, or the name that is not a kind.
    pub fn kinds(&self) -> Result<Vec<i32>, String> {
        self.span_kinds
            .iter()
            .map(|k| match k.as_str() {
                "internal" => Ok(SpanKind::Internal as i32),
                "server" => Ok(SpanKind::Server as i32),
                "client" => Ok(SpanKind::Client as i32),
                "producer" => Ok(SpanKind::Producer as i32),
                "consumer" => Ok(SpanKind::Consumer as i32),
                other => Err(format!(
                    "sinks.emf.span_metrics.span_kinds: {other:?} is not a span kind"
                )),
            })
            .collect()
    }
}

/// The HTTP status of a span, under the current or the legacy semantic-convention name.
fn http_status(span: &Span) -> Option<i64> {
    span.attributes
        .iter()
        .filter(|kv| kv.key == "http.response.status_code" || kv.key == "http.status_code")
        .find_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Av::IntValue(i) => Some(*i),
            Av::StringValue(s) => s.parse().ok(),
            _ => None,
        })
}

/// "2xx".."5xx" for HTTP spans, else the span status: "ok", "error" or "unset".
pub fn status_class(span: &Span) -> String {
    if let Some(code) = http_status(span).filter(|c| (100..600).contains(c)) {
        return format!("{}xx", code / 100);
    }
    match span.status.as_ref().map(|s| s.code) {
        Some(c) if c == StatusCode::Error as i32 => "error".into(),
        Some(c) if c == StatusCode::Ok as i32 => "ok".into(),
        _ => "unset".into(),
    }
}

/// A failed request: status Error, or an HTTP 5xx.
pub fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32)
        || http_status(span).is_some_and(|c| c >= 500)
}

/// `v` rounded to `digits` significant digits.
pub fn round_significant(v: f64, digits: u32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let magnitude = v.abs().log10().floor() as i32;
    let factor = 10f64.powi(digits.clamp(1, 15) as i32 - 1 - magnitude);
    (v * factor).round() / factor
}

impl State {
    /// Folds the entry spans of `request` into the windows as request metrics.
    pub fn fold_spans(
        &mut self,
        request: &ExportTraceServiceRequest,
        settings: &Settings,
        now_ms: i64,
        stats: &mut Stats,
    ) {
        for rs in &request.resource_spans {
            let target = Target::new(settings, rs.resource.as_ref());
            let service = target
                .resource
                .get("service.name")
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "unknown_service".into());
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                if !settings.span_kinds.contains(&span.kind) {
                    continue;
                }
                stats.spans += 1;
                let labels: BTreeMap<String, String> = [
                    (SERVICE, service.clone()),
                    (OPERATION, span.name.clone()),
                    (STATUS_CLASS, status_class(span)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                let sets = vec![
                    vec![SERVICE.into(), OPERATION.into(), STATUS_CLASS.into()],
                    vec![SERVICE.into(), OPERATION.into()],
                    vec![SERVICE.into()],
                ];
                let time = span.end_time_unix_nano;
                // Span metrics have fixed dimension sets, not the declarations'.
                let key = target.key_with_sets(&labels, sets, time, now_ms);
                let millis = span
                    .end_time_unix_nano
                    .saturating_sub(span.start_time_unix_nano) as f64
                    / 1e6;
                let mut latency =
                    Distribution::single(round_significant(millis, settings.latency_digits));
                latency.sum = millis;
                self.windows
                    .add(key.clone(), REQUESTS, "Count", Aggregate::Sum(1.0));
                let errors = if is_error(span) { 1.0 } else { 0.0 };
                self.windows
                    .add(key.clone(), ERRORS, "Count", Aggregate::Sum(errors));
                self.windows.add(
                    key,
                    LATENCY,
                    "Milliseconds",
                    Aggregate::Distribution(latency),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn span(kind: SpanKind, status: StatusCode, http: Option<i64>) -> Span {
        Span {
            kind: kind as i32,
            status: Some(Status {
                code: status as i32,
                message: String::new(),
            }),
            attributes: http
                .map(|c| KeyValue {
                    key: "http.response.status_code".into(),
                    value: Some(AnyValue {
                        value: Some(Av::IntValue(c)),
                    }),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn status_classes_and_errors() {
        let s = span(SpanKind::Server, StatusCode::Unset, Some(404));
        assert_eq!((status_class(&s), is_error(&s)), ("4xx".into(), false));
        let s = span(SpanKind::Server, StatusCode::Unset, Some(503));
        assert_eq!((status_class(&s), is_error(&s)), ("5xx".into(), true));
        let s = span(SpanKind::Server, StatusCode::Error, None);
        assert_eq!((status_class(&s), is_error(&s)), ("error".into(), true));
        let s = span(SpanKind::Server, StatusCode::Ok, None);
        assert_eq!((status_class(&s), is_error(&s)), ("ok".into(), false));
        let s = span(SpanKind::Server, StatusCode::Unset, None);
        assert_eq!(status_class(&s), "unset");
    }

    #[test]
    fn rounding_keeps_significant_digits() {
        assert_eq!(round_significant(12.345, 2), 12.0);
        assert_eq!(round_significant(0.012345, 3), 0.0123);
        assert_eq!(round_significant(98765.0, 2), 99000.0);
        assert_eq!(round_significant(0.0, 2), 0.0);
    }

    #[test]
    fn unknown_span_kinds_are_refused() {
        let c = SpanMetricsConfig {
            span_kinds: vec!["server".into(), "sever".into()],
            ..Default::default()
        };
        assert!(c.kinds().unwrap_err().contains("sever"));
    }
}
