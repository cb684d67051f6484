//! What an OTLP endpoint's answer means, as the delivery engine's [`Answer`]: the sink's
//! classification, pure, so every row is a golden case. It follows the OTLP specification's
//! "Failures" and "Throttling" sections, where they say something, and the engine's rules
//! ("an outage holds the round") where they do not.
//!
//! | answer | meaning | `Answer` |
//! |---|---|---|
//! | not sent: no AWS region or credentials to sign with | an operator must act | `Fatal` (`SetupFailure`) |
//! | no answer (refused, reset, TLS, timeout) | unreachable | `Retry` |
//! | HTTP 2xx / gRPC `OK`, no `partial_success` or `rejected_* = 0` | stored (an `error_message` alone is a warning: logged) | `Stored` |
//! | HTTP 2xx / gRPC `OK` with `rejected_spans` / `rejected_data_points` / `rejected_log_records` > 0 | the endpoint took the rest and will never take those; OTLP does not say which | `Stored`, and the rejection is counted and dead-lettered as one record (see below) |
//! | HTTP 429, 502, 503, 504, 408; gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED` (with RetryInfo or not about size), `CANCELLED`, `DEADLINE_EXCEEDED`, `ABORTED`, `OUT_OF_RANGE`, `DATA_LOSS` | throttled or down | `Retry`, after `Retry-After` / RetryInfo's delay when longer than the backoff |
//! | HTTP 500 and other 5xx but 501; gRPC `INTERNAL`, `UNKNOWN` | the specification calls them final; a server's bug or outage may pass, and the bus holds the data meanwhile rather than dropping it | `Retry` |
//! | HTTP 413; gRPC `RESOURCE_EXHAUSTED` without RetryInfo saying the message is too large | over the endpoint's size limit | `TooLarge` (halved; one item alone is dead-lettered) |
//! | HTTP 400; gRPC `INVALID_ARGUMENT` | the request does not validate: one item is to blame | `Refused` (bisected until it is alone, then dead-lettered) |
//! | HTTP 401, 403; gRPC `UNAUTHENTICATED`, `PERMISSION_DENIED` | credentials, API key, IAM | `Fatal` |
//! | HTTP 404, 405, 415, 501, other 4xx; gRPC `UNIMPLEMENTED`, `NOT_FOUND`, others | the URL or the endpoint's support (a backend without metrics): an operator must act | `Fatal` |
//!
//! Codes (metric labels, dead-letter lines) are `HTTP<status>`, the gRPC code's name
//! (`UNAVAILABLE`), `unreachable` or `timeout`. The message is the endpoint's: the
//! `google.rpc.Status` an OTLP error body holds, else the start of the body.
//!
//! **Partial success.** OTLP answers only how many items it rejected and why, not which.
//! Retrying would send again what was stored, and dead-lettering the whole request would
//! claim stored items were not, so the items stay `Stored` and the sink writes one
//! dead-letter line for the rejection: code `partial_success`, the endpoint's
//! `error_message`, the rejected count and a summary of the request (signal, items sent,
//! services, scopes). Never retried; counted in `tidewater_otlp_rejected_total{signal}`.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

use super::config::SignalKind;
use crate::delivery::Answer;
use crate::sinks::elasticsearch::classify::{excerpt, parse_retry_after};

/// What came back for one export request, from either transport.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Not sent: the request could not be built or signed (no region, no credentials).
    NotSent { error: String },
    /// No answer: connection refused or reset, TLS failure, timeout.
    Unreachable { timeout: bool, error: String },
    Http {
        status: u16,
        retry_after: Option<String>,
        content_type: String,
        body: Bytes,
    },
    /// `code` as gRPC numbers it; `partial` from the `OK` response; `retry_after` from the
    /// status's RetryInfo.
    Grpc {
        code: i32,
        message: String,
        retry_after: Option<Duration>,
        partial: Option<Partial>,
    },
}

/// The `partial_success` of an export response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial {
    pub rejected: i64,
    pub message: String,
}

/// The reading of one reply: the engine's answer, and the partial success, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub answer: Answer,
    pub partial: Option<Partial>,
}

impl Reading {
    fn answer(answer: Answer) -> Reading {
        Reading {
            answer,
            partial: None,
        }
    }
}

/// `google.rpc.Status`, the body OTLP/HTTP errors carry (its `details` left out).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The partial success of a `signal` response body (protobuf, or JSON from a server that
/// answers in JSON whatever was sent); `None` when there is none or it does not decode (a 2xx
/// is a success whatever its body).
pub fn partial_success(signal: SignalKind, content_type: &str, body: &[u8]) -> Option<Partial> {
    if body.is_empty() {
        return None;
    }
    if content_type.contains("json") {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let p = v
            .get("partialSuccess")
            .or_else(|| v.get("partial_success"))?;
        let field = match signal {
            SignalKind::Traces => "rejectedSpans",
            SignalKind::Metrics => "rejectedDataPoints",
            SignalKind::Logs => "rejectedLogRecords",
        };
        // int64 is a string in OTLP/JSON; some servers send a number.
        let rejected = match &p[field] {
            serde_json::Value::String(s) => s.parse().ok()?,
            v => v.as_i64().unwrap_or(0),
        };
        let message = p["errorMessage"].as_str().unwrap_or_default().to_string();
        return Some(Partial { rejected, message });
    }
    let (rejected, message) = match signal {
        SignalKind::Traces => {
            let p = ExportTraceServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_spans, p.error_message)
        }
        SignalKind::Metrics => {
            let p = ExportMetricsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_data_points, p.error_message)
        }
        SignalKind::Logs => {
            let p = ExportLogsServiceResponse::decode(body)
                .ok()?
                .partial_success?;
            (p.rejected_log_records, p.error_message)
        }
    };
    Some(Partial { rejected, message })
}

/// The table. `count` and `bytes` describe the request, for the too-large message; `now`
/// reads an HTTP-date `Retry-After`.
pub fn read(
    signal: SignalKind,
    reply: &Reply,
    count: usize,
    bytes: usize,
    now: DateTime<Utc>,
) -> Reading {
    let too_large = |code: &str, message: &str| {
        Answer::TooLarge(format!(
            "{code}: {} {} in {bytes} bytes are over the endpoint's request size limit: {message}",
            count,
            signal.name()
        ))
    };
    match reply {
        Reply::NotSent { error } => Reading::answer(Answer::Fatal {
            code: "SetupFailure".into(),
            message: error.clone(),
        }),
        Reply::Unreachable { timeout, error } => {
            let code = if *timeout { "timeout" } else { "unreachable" };
            Reading::answer(Answer::retry(code, error.clone()))
        }
        Reply::Http {
            status,
            retry_after,
            content_type,
            body,
        } => {
            let status = *status;
            if (200..300).contains(&status) {
                return Reading {
                    answer: Answer::Stored,
                    partial: partial_success(signal, content_type, body),
                };
            }
            let code = format!("HTTP{status}");
            let message = match RpcStatus::decode(body.as_ref()) {
                Ok(s) if !s.message.is_empty() && !content_type.contains("json") => s.message,
                _ => excerpt(body),
            };
            let message = format!("{status} {message}").trim_end().to_string();
            let after = retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now));
            Reading::answer(match status {
                408 | 429 | 502 | 503 | 504 => Answer::Retry {
                    code,
                    message,
                    after,
                },
                413 => too_large(&code, &message),
                400 => Answer::Refused { code, message },
                500..=599 if status != 501 => Answer::Retry {
                    code,
                    message,
                    after,
                },
                _ => Answer::Fatal { code, message },
            })
        }
        Reply::Grpc {
            code,
            message,
            retry_after,
            partial,
        } => {
            let name = grpc_name(*code).to_string();
            let message = message.clone();
            Reading::answer(match *code {
                0 => {
                    return Reading {
                        answer: Answer::Stored,
                        partial: partial.clone(),
                    }
                }
                // RESOURCE_EXHAUSTED: throttling when the server says when to come back, the
                // message's size when it says so (tonic: "message length too large").
                8 if retry_after.is_none() && about_size(&message) => too_large(&name, &message),
                1 | 4 | 8 | 10 | 11 | 14 | 15 | 2 | 13 => Answer::Retry {
                    code: name,
                    message,
                    after: *retry_after,
                },
                3 => Answer::Refused {
                    code: name,
                    message,
                },
                _ => Answer::Fatal {
                    code: name,
                    message,
                },
            })
        }
    }
}

fn about_size(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("too large") || m.contains("message length") || m.contains("larger than")
}

/// gRPC's name for a status code.
pub fn grpc_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-01T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn http(status: u16, retry_after: Option<&str>, body: &[u8]) -> Reply {
        Reply::Http {
            status,
            retry_after: retry_after.map(str::to_string),
            content_type: "application/x-protobuf".into(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn grpc(code: i32, message: &str, retry_after: Option<Duration>) -> Reply {
        Reply::Grpc {
            code,
            message: message.into(),
            retry_after,
            partial: None,
        }
    }

    fn status(code: i32, message: &str) -> Vec<u8> {
        RpcStatus {
            code,
            message: message.into(),
        }
        .encode_to_vec()
    }

    fn read_traces(reply: &Reply) -> Reading {
        read(SignalKind::Traces, reply, 3, 1200, now())
    }

    fn retry(code: &str, message: &str, after: Option<u64>) -> Answer {
        Answer::Retry {
            code: code.into(),
            message: message.into(),
            after: after.map(Duration::from_secs),
        }
    }

    fn fatal(code: &str, message: &str) -> Answer {
        Answer::Fatal {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn http_table() {
        let golden: Vec<(Reply, Answer)> = vec![
            (http(200, None, b""), Answer::Stored),
            (http(202, None, &[]), Answer::Stored),
            (
                http(429, Some("7"), &status(8, "slow down")),
                retry("HTTP429", "429 slow down", Some(7)),
            ),
            (
                http(503, Some("Sun, 01 Nov 2026 08:00:12 GMT"), b""),
                retry("HTTP503", "503", Some(12)),
            ),
            (
                http(502, None, b"<html>Bad Gateway</html>"),
                retry("HTTP502", "502 <html>Bad Gateway</html>", None),
            ),
            (http(504, None, b""), retry("HTTP504", "504", None)),
            (http(408, None, b""), retry("HTTP408", "408", None)),
            (
                http(500, None, &status(13, "boom")),
                retry("HTTP500", "500 boom", None),
            ),
            (
                http(413, None, b"Request Entity Too Large"),
                Answer::TooLarge(
                    "HTTP413: 3 traces in 1200 bytes are over the endpoint's request size limit: 413 Request Entity Too Large"
                        .into(),
                ),
            ),
            (
                http(400, None, &status(3, "span 2: invalid trace id")),
                Answer::Refused {
                    code: "HTTP400".into(),
                    message: "400 span 2: invalid trace id".into(),
                },
            ),
            (
                http(401, None, &status(16, "missing API key")),
                fatal("HTTP401", "401 missing API key"),
            ),
            (
                http(
                    403,
                    None,
                    br#"{"message":"The security token included in the request is invalid."}"#,
                ),
                fatal(
                    "HTTP403",
                    r#"403 {"message":"The security token included in the request is invalid."}"#,
                ),
            ),
            (http(404, None, b"not found"), fatal("HTTP404", "404 not found")),
            (http(501, None, b""), fatal("HTTP501", "501")),
            (http(415, None, b""), fatal("HTTP415", "415")),
            (
                Reply::Unreachable {
                    timeout: false,
                    error: "connection refused".into(),
                },
                Answer::retry("unreachable", "connection refused"),
            ),
            (
                Reply::Unreachable {
                    timeout: true,
                    error: "timed out".into(),
                },
                Answer::retry("timeout", "timed out"),
            ),
            (
                Reply::NotSent {
                    error: "no AWS region: set AWS_REGION".into(),
                },
                fatal("SetupFailure", "no AWS region: set AWS_REGION"),
            ),
        ];
        for (reply, want) in golden {
            let got = read_traces(&reply);
            assert_eq!(got.answer, want, "{reply:?}");
            assert_eq!(got.partial, None);
        }
    }

    #[test]
    fn grpc_table() {
        let after = Some(Duration::from_secs(3));
        let golden: Vec<(Reply, Answer)> = vec![
            (grpc(0, "", None), Answer::Stored),
            (
                grpc(14, "connection reset", None),
                retry("UNAVAILABLE", "connection reset", None),
            ),
            (
                grpc(8, "memory limit", after),
                retry("RESOURCE_EXHAUSTED", "memory limit", Some(3)),
            ),
            (
                grpc(8, "busy", None),
                retry("RESOURCE_EXHAUSTED", "busy", None),
            ),
            (
                grpc(8, "grpc: received message larger than max (5000000 vs. 4194304)", None),
                Answer::TooLarge("RESOURCE_EXHAUSTED: 3 traces in 1200 bytes are over the endpoint's request size limit: grpc: received message larger than max (5000000 vs. 4194304)".into()),
            ),
            (
                grpc(4, "deadline", None),
                retry("DEADLINE_EXCEEDED", "deadline", None),
            ),
            (grpc(1, "", None), retry("CANCELLED", "", None)),
            (grpc(10, "", None), retry("ABORTED", "", None)),
            (grpc(11, "", None), retry("OUT_OF_RANGE", "", None)),
            (grpc(15, "", None), retry("DATA_LOSS", "", None)),
            (grpc(13, "panic", None), retry("INTERNAL", "panic", None)),
            (grpc(2, "", None), retry("UNKNOWN", "", None)),
            (
                grpc(3, "bad span", None),
                Answer::Refused {
                    code: "INVALID_ARGUMENT".into(),
                    message: "bad span".into(),
                },
            ),
            (grpc(16, "no key", None), fatal("UNAUTHENTICATED", "no key")),
            (grpc(7, "denied", None), fatal("PERMISSION_DENIED", "denied")),
            (grpc(12, "", None), fatal("UNIMPLEMENTED", "")),
            (grpc(5, "", None), fatal("NOT_FOUND", "")),
        ];
        for (reply, want) in golden {
            assert_eq!(read_traces(&reply).answer, want, "{reply:?}");
        }
        let partial = Partial {
            rejected: 2,
            message: "2 spans too old".into(),
        };
        let r = read_traces(&Reply::Grpc {
            code: 0,
            message: String::new(),
            retry_after: None,
            partial: Some(partial.clone()),
        });
        assert_eq!((r.answer, r.partial), (Answer::Stored, Some(partial)));
    }

    #[test]
    fn partial_success_of_each_signal_in_protobuf_and_json() {
        let traces = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "2 spans older than 14 days".into(),
            }),
        }
        .encode_to_vec();
        let r = read(SignalKind::Traces, &http(200, None, &traces), 5, 900, now());
        assert_eq!(r.answer, Answer::Stored);
        assert_eq!(
            r.partial,
            Some(Partial {
                rejected: 2,
                message: "2 spans older than 14 days".into()
            })
        );
        let metrics = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 4,
                error_message: "NaN".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(SignalKind::Metrics, "application/x-protobuf", &metrics),
            Some(Partial {
                rejected: 4,
                message: "NaN".into()
            })
        );
        let logs = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 0,
                error_message: "a warning".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            partial_success(SignalKind::Logs, "application/x-protobuf", &logs),
            Some(Partial {
                rejected: 0,
                message: "a warning".into()
            })
        );
        assert_eq!(
            partial_success(
                SignalKind::Logs,
                "application/json",
                br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"too big"}}"#
            ),
            Some(Partial {
                rejected: 3,
                message: "too big".into()
            })
        );
        // A success whatever its body says.
        let r = read(
            SignalKind::Traces,
            &http(200, None, b"<html>ok</html>"),
            1,
            1,
            now(),
        );
        assert_eq!((r.answer, r.partial), (Answer::Stored, None));
        assert_eq!(
            partial_success(SignalKind::Traces, "application/json", b"{}"),
            None
        );
    }
}
