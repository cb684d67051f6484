//! How the sink reads the cluster's answer to a `_bulk`: the sink's classification, handed to
//! the delivery engine as an [`Answer`]. Pure, so every row of the tables is a golden case.
//!
//! A `_bulk` answered 200 can still hold failed items, so each item is judged on its own:
//!
//! | item status | meaning | verdict |
//! |---|---|---|
//! | 2xx | stored | `Stored` |
//! | 409 | `create` of an `_id` already there: a replay | `AlreadyStored` |
//! | 400 `index_closed_exception` | the index, not the document: wait for it to open | `Retry` |
//! | 400 | the document itself is bad: mapping conflict, parse error, field limit | `Refused` (dead-lettered with the reason) |
//! | 429, 5xx, others | the cluster is busy or not ready for it | `Retry` (sent again, alone with the other such items) |
//!
//! A request that fails as a whole:
//!
//! | answer | meaning | `Answer` |
//! |---|---|---|
//! | no answer (refused, reset, timed out) | the cluster is unreachable | `Retry` |
//! | 408, 429, 5xx | busy or down; `Retry-After` honoured | `Retry` |
//! | 413 | over the cluster's `http.max_content_length` | `TooLarge` (halved; one document alone is dead-lettered) |
//! | 400 | the body does not parse: one document is to blame | `Refused` (bisected to find it) |
//! | 401, 403, other 4xx, a 2xx that is not a `_bulk` answer | credentials, permissions or the URL: an operator must act | `Fatal` |
//!
//! Codes (metric labels, dead-letter lines) are the cluster's error `type` when it gives one
//! (`mapper_parsing_exception`), else the HTTP status; `unreachable` and `timeout` when there
//! was no answer.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::delivery::{Answer, Verdict};

/// One item of a `_bulk` response (`items[n].create`), by position; also what a document is
/// told when its whole request fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ItemResult {
    pub status: u16,
    #[serde(default)]
    pub error: Option<ItemError>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ItemError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub reason: String,
}

impl ItemResult {
    fn failed(status: u16, code: &str, reason: &str) -> ItemResult {
        ItemResult {
            status,
            error: Some(ItemError {
                kind: code.to_string(),
                reason: reason.to_string(),
            }),
        }
    }

    /// The code for metrics and dead letters: the error type, else the status.
    fn code(&self) -> String {
        match &self.error {
            Some(e) if !e.kind.is_empty() => e.kind.clone(),
            _ => self.status.to_string(),
        }
    }

    fn reason(&self) -> String {
        match &self.error {
            Some(e) if !e.reason.is_empty() => e.reason.clone(),
            _ => format!("status {}", self.status),
        }
    }
}

/// The item table.
pub fn verdict(result: &ItemResult) -> Verdict {
    let failed = |retry: bool| {
        let (code, message) = (result.code(), result.reason());
        if retry {
            Verdict::Retry { code, message }
        } else {
            Verdict::Refused { code, message }
        }
    };
    match result.status {
        200..=299 => Verdict::Stored,
        409 => Verdict::AlreadyStored,
        400 if result
            .error
            .as_ref()
            .is_some_and(|e| e.kind == "index_closed_exception") =>
        {
            failed(true)
        }
        400 => failed(false),
        _ => failed(true),
    }
}

/// What came back for one `_bulk` request.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// No answer: connection refused or reset, TLS failure, timeout.
    Unreachable { timeout: bool, error: &'a str },
    Answered {
        status: u16,
        retry_after: Option<&'a str>,
        body: &'a [u8],
    },
}

/// The reading of one reply: the engine's [`Answer`], and what each of the `count` documents
/// sent was told (kept on the document for its dead-letter line).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub answer: Answer,
    pub told: Vec<ItemResult>,
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BTreeMap<String, ItemResult>>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: ItemError,
}

/// The request table. `bytes` is the request body's size, for the too-large message; `now`
/// reads an HTTP-date `Retry-After`.
pub fn read(reply: Reply, count: usize, bytes: usize, now: DateTime<Utc>) -> Reading {
    let whole = |status: u16, code: &str, reason: &str, answer: Answer| Reading {
        told: vec![ItemResult::failed(status, code, reason); count],
        answer,
    };
    let (status, retry_after, body) = match reply {
        Reply::Unreachable { timeout, error } => {
            let code = if timeout { "timeout" } else { "unreachable" };
            return whole(0, code, error, Answer::retry(code, error));
        }
        Reply::Answered {
            status,
            retry_after,
            body,
        } => (status, retry_after, body),
    };
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<BulkResponse>(body) {
            Ok(parsed) => {
                let told: Vec<ItemResult> = parsed
                    .items
                    .into_iter()
                    .filter_map(|op| op.into_values().next())
                    .collect();
                Reading {
                    answer: Answer::Items(told.iter().map(verdict).collect()),
                    told,
                }
            }
            Err(e) => {
                let reason = format!("not a _bulk answer ({e}): {}", excerpt(body));
                whole(
                    status,
                    "invalid_response",
                    &reason,
                    Answer::Fatal {
                        code: "invalid_response".into(),
                        message: reason.clone(),
                    },
                )
            }
        };
    }
    // The cluster's own error when the body is one (`{"error": {"type", "reason"}}`).
    let error = serde_json::from_slice::<ErrorResponse>(body)
        .ok()
        .map(|e| e.error)
        .filter(|e| !e.kind.is_empty());
    let code = error
        .as_ref()
        .map_or_else(|| status.to_string(), |e| e.kind.clone());
    let reason = match &error {
        Some(e) => format!("{status} {}", e.reason),
        None => format!("{status} {}", excerpt(body)).trim_end().to_string(),
    };
    let answer = match status {
        413 => {
            let reason = if count == 1 {
                format!("a document of {bytes} bytes is over the cluster's request size limit")
            } else {
                format!(
                    "a _bulk of {count} documents, {bytes} bytes, is over the cluster's request size limit"
                )
            };
            return whole(
                413,
                "request_too_large",
                &reason,
                Answer::TooLarge(reason.clone()),
            );
        }
        408 | 429 | 500..=599 => Answer::Retry {
            code: code.clone(),
            message: reason.clone(),
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        400 => Answer::Refused {
            code: code.clone(),
            message: reason.clone(),
        },
        _ => Answer::Fatal {
            code: code.clone(),
            message: reason.clone(),
        },
    };
    whole(status, &code, &reason, answer)
}

/// `Retry-After` in seconds or as an HTTP-date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - now).to_std().ok()
}

/// The start of an error body, for messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(status: u16, kind: &str) -> ItemResult {
        ItemResult::failed(status, kind, "why")
    }

    fn retry(code: &str) -> Verdict {
        Verdict::Retry {
            code: code.into(),
            message: "why".into(),
        }
    }

    #[test]
    fn item_table() {
        let stored = ItemResult {
            status: 201,
            error: None,
        };
        assert_eq!(verdict(&stored), Verdict::Stored);
        assert_eq!(
            verdict(&result(409, "version_conflict_engine_exception")),
            Verdict::AlreadyStored
        );
        assert_eq!(
            verdict(&result(400, "mapper_parsing_exception")),
            Verdict::Refused {
                code: "mapper_parsing_exception".into(),
                message: "why".into()
            }
        );
        assert_eq!(
            verdict(&result(400, "index_closed_exception")),
            retry("index_closed_exception")
        );
        for (status, kind) in [
            (429, "es_rejected_execution_exception"),
            (503, "unavailable_shards_exception"),
            (404, "index_not_found_exception"),
        ] {
            assert_eq!(verdict(&result(status, kind)), retry(kind));
        }
        let bare = ItemResult {
            status: 500,
            error: None,
        };
        assert_eq!(
            verdict(&bare),
            Verdict::Retry {
                code: "500".into(),
                message: "status 500".into()
            }
        );
    }

    fn answered(status: u16, body: &serde_json::Value) -> Reading {
        let body = body.to_string();
        let reply = Reply::Answered {
            status,
            retry_after: None,
            body: body.as_bytes(),
        };
        read(reply, 2, 300, Utc::now())
    }

    #[test]
    fn a_partial_failure_inside_a_200_is_read_item_by_item() {
        let r = answered(
            200,
            &json!({"took": 3, "errors": true, "items": [
                {"create": {"_index": "e", "_id": "a", "status": 201, "result": "created"}},
                {"create": {"_index": "e", "_id": "b", "status": 400, "error": {
                    "type": "mapper_parsing_exception",
                    "reason": "failed to parse field [properties.total] of type [double]"}}}
            ]}),
        );
        assert_eq!(
            r.answer,
            Answer::Items(vec![
                Verdict::Stored,
                Verdict::Refused {
                    code: "mapper_parsing_exception".into(),
                    message: "failed to parse field [properties.total] of type [double]".into()
                }
            ])
        );
        assert_eq!(r.told[1].status, 400);
        assert_eq!(r.told.len(), 2);
    }

    #[test]
    fn request_table() {
        let now = Utc::now();
        let r = read(
            Reply::Unreachable {
                timeout: false,
                error: "connection refused",
            },
            2,
            300,
            now,
        );
        assert_eq!(r.answer, Answer::retry("unreachable", "connection refused"));
        let r = read(
            Reply::Unreachable {
                timeout: true,
                error: "timed out",
            },
            1,
            300,
            now,
        );
        assert_eq!(r.answer, Answer::retry("timeout", "timed out"));

        let r = read(
            Reply::Answered {
                status: 429,
                retry_after: Some("7"),
                body: br#"{"error":{"type":"es_rejected_execution_exception","reason":"queue full"},"status":429}"#,
            },
            2,
            300,
            now,
        );
        assert_eq!(
            r.answer,
            Answer::Retry {
                code: "es_rejected_execution_exception".into(),
                message: "429 queue full".into(),
                after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(r.told[0].status, 429);

        // A load balancer's page, not the cluster's error.
        let r = read(
            Reply::Answered {
                status: 502,
                retry_after: None,
                body: b"<html>Bad Gateway</html>",
            },
            2,
            300,
            now,
        );
        assert_eq!(
            r.answer,
            Answer::retry("502", "502 <html>Bad Gateway</html>")
        );
        assert_eq!(
            answered(408, &json!({})).answer,
            Answer::retry("408", "408 {}")
        );

        assert_eq!(
            answered(413, &json!({})).answer,
            Answer::TooLarge(
                "a _bulk of 2 documents, 300 bytes, is over the cluster's request size limit"
                    .into()
            )
        );
        let one = read(
            Reply::Answered {
                status: 413,
                retry_after: None,
                body: b"",
            },
            1,
            300,
            now,
        );
        assert_eq!(
            one.told,
            vec![ItemResult::failed(
                413,
                "request_too_large",
                "a document of 300 bytes is over the cluster's request size limit"
            )]
        );

        assert_eq!(
            answered(
                400,
                &json!({"error": {"type": "x_content_parse_exception", "reason": "line 3: bad"}, "status": 400})
            )
            .answer,
            Answer::Refused {
                code: "x_content_parse_exception".into(),
                message: "400 line 3: bad".into()
            }
        );
        for status in [401, 403, 404] {
            let r = answered(
                status,
                &json!({"error": {"type": "security_exception", "reason": "no"}}),
            );
            assert_eq!(
                r.answer,
                Answer::Fatal {
                    code: "security_exception".into(),
                    message: format!("{status} no")
                }
            );
        }
        let r = read(
            Reply::Answered {
                status: 200,
                retry_after: None,
                body: b"<html>login</html>",
            },
            2,
            300,
            now,
        );
        assert!(
            matches!(&r.answer, Answer::Fatal { code, .. } if code == "invalid_response"),
            "{r:?}"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2026-11-01T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Nov 2026 08:00:12 GMT", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Nov 2026 07:00:00 GMT", now),
            None
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
