//! Pure request building for `PutTraceSegments`: documents into calls within X-Ray's
//! limits, and what to do with each document X-Ray reports as unprocessed.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use crate::xray::MAX_DOCUMENT_BYTES;

/// X-Ray takes at most 50 segment documents per `PutTraceSegments` call.
pub const MAX_DOCUMENTS_PER_CALL: usize = 50;
/// The smallest body bound that still fits one maximal document, escaped, in a call.
pub const MIN_REQUEST_BYTES: usize = 2 * MAX_DOCUMENT_BYTES + REQUEST_OVERHEAD;
/// `{"TraceSegmentDocuments":[]}`.
const REQUEST_OVERHEAD: usize = 28;

/// One segment document on its way to X-Ray.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// The document's `id`, which X-Ray names in `UnprocessedTraceSegments`.
    pub id: Option<String>,
    pub trace_id: Option<String>,
    pub body: String,
    /// Its size inside the JSON request: a JSON string, escaped, plus a comma.
    pub request_bytes: usize,
}

impl Doc {
    pub fn new(body: String) -> Doc {
        #[derive(Deserialize)]
        struct Ids {
            id: Option<String>,
            trace_id: Option<String>,
        }
        let ids = serde_json::from_str::<Ids>(&body).ok();
        let (id, trace_id) = ids.map_or((None, None), |i| (i.id, i.trace_id));
        Doc {
            id,
            trace_id,
            request_bytes: escaped_len(&body) + 1,
            body,
        }
    }
}

/// Why a document is refused before it is sent, if it is.
pub fn precheck(doc: &Doc) -> Option<&'static str> {
    if doc.body.len() > MAX_DOCUMENT_BYTES {
        Some("document larger than X-Ray's 64 KiB segment document limit")
    } else if doc.id.is_none() {
        Some("not a JSON object with a string `id`")
    } else {
        None
    }
}

/// The length of `s` as a JSON string literal. serde_json offers no way to measure without
/// writing, so it writes into a counter instead of a buffer.
fn escaped_len(s: &str) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a str into an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut c, s);
    c.0
}

/// Splits `docs` into calls of at most [`MAX_DOCUMENTS_PER_CALL`] documents and
/// `max_request_bytes` of body, in order.
pub fn chunk(docs: Vec<Doc>, max_request_bytes: usize) -> Vec<Vec<Doc>> {
    let budget = max_request_bytes
        .max(MIN_REQUEST_BYTES)
        .saturating_sub(REQUEST_OVERHEAD);
    let mut calls = Vec::new();
    let mut current: Vec<Doc> = Vec::new();
    let mut bytes = 0;
    for doc in docs {
        if !current.is_empty()
            && (current.len() == MAX_DOCUMENTS_PER_CALL || bytes + doc.request_bytes > budget)
        {
            calls.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += doc.request_bytes;
        current.push(doc);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

/// One entry of `UnprocessedTraceSegments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprocessed {
    pub id: Option<String>,
    pub code: String,
    pub message: String,
}

/// Whether X-Ray may take the same document later. Throttling and X-Ray's own failures
/// pass; every other code is about the document itself (`InvalidSegment` for a bad
/// document or a trace over its size quota, `InvalidName`, `MissingId`,
/// `JSONFormatError`, `MissingParam`, ...): the same bytes get the same answer, so those
/// are permanent. Codes are matched loosely because X-Ray documents none of them.
pub fn is_transient(code: &str) -> bool {
    let code = code.to_ascii_lowercase();
    [
        "throttl",
        "toomanyrequests",
        "internal",
        "unavailable",
        "timeout",
    ]
    .iter()
    .any(|t| code.contains(t))
}

/// What to do next with the documents of one call, given its `UnprocessedTraceSegments`.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Stored by X-Ray.
    pub accepted: usize,
    /// Transiently refused: send again (only these).
    pub retry: Vec<(Doc, Unprocessed)>,
    /// Refused for good.
    pub reject: Vec<(Doc, Unprocessed)>,
    /// X-Ray refused something it could not name (no id, or an id not in the call,
    /// as for a document it could not parse): these documents are sent again one per
    /// call, so the next answer names its document unambiguously.
    pub isolate: Vec<Doc>,
}

pub fn plan(docs: Vec<Doc>, unprocessed: Vec<Unprocessed>) -> Plan {
    let mut plan = Plan::default();
    if unprocessed.is_empty() {
        plan.accepted = docs.len();
        return plan;
    }
    let sent: HashSet<&str> = docs.iter().filter_map(|d| d.id.as_deref()).collect();
    let mut by_id: HashMap<String, Unprocessed> = HashMap::new();
    let mut unnamed = Vec::new();
    for u in unprocessed {
        match u.id.clone().filter(|id| sent.contains(id.as_str())) {
            Some(id) => {
                by_id.entry(id).or_insert(u);
            }
            None => unnamed.push(u),
        }
    }
    let mut unknown = Vec::new();
    for doc in docs {
        match doc.id.as_ref().and_then(|id| by_id.get(id)) {
            Some(u) if is_transient(&u.code) => plan.retry.push((doc, u.clone())),
            Some(u) => plan.reject.push((doc, u.clone())),
            None => unknown.push(doc),
        }
    }
    match unnamed.first() {
        None => plan.accepted = unknown.len(),
        // Only one document could be meant.
        Some(u) if unknown.len() == 1 => {
            let doc = unknown.pop().expect("one");
            if is_transient(&u.code) {
                plan.retry.push((doc, u.clone()));
            } else {
                plan.reject.push((doc, u.clone()));
            }
        }
        // Which of them failed transiently is unknowable; all are sent again together.
        Some(u) if unnamed.iter().all(|u| is_transient(&u.code)) => {
            plan.retry
                .extend(unknown.into_iter().map(|d| (d, u.clone())));
        }
        Some(_) => plan.isolate = unknown,
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> Doc {
        Doc::new(format!(
            r#"{{"name":"svc","id":"{id}","trace_id":"1-6553f100-0a0b0c0d0e0f101112131415","start_time":1,"end_time":2}}"#
        ))
    }

    fn unprocessed(id: Option<&str>, code: &str) -> Unprocessed {
        Unprocessed {
            id: id.map(str::to_string),
            code: code.into(),
            message: format!("{code} message"),
        }
    }

    fn ids(docs: &[(Doc, Unprocessed)]) -> Vec<&str> {
        docs.iter().map(|(d, _)| d.id.as_deref().unwrap()).collect()
    }

    #[test]
    fn doc_reads_its_ids_and_measures_its_escaped_size() {
        let d = doc("a1");
        assert_eq!(d.id.as_deref(), Some("a1"));
        assert_eq!(
            d.trace_id.as_deref(),
            Some("1-6553f100-0a0b0c0d0e0f101112131415")
        );
        let escaped = serde_json::to_string(&d.body).unwrap();
        assert_eq!(d.request_bytes, escaped.len() + 1);
        assert_eq!(Doc::new("not json".into()).id, None);
        assert!(precheck(&Doc::new("[1]".into())).is_some());
        assert!(precheck(&Doc::new(format!(
            r#"{{"id":"a","x":"{}"}}"#,
            "x".repeat(70_000)
        )))
        .is_some());
        assert_eq!(precheck(&d), None);
    }

    #[test]
    fn chunks_hold_at_most_50_documents() {
        let docs: Vec<Doc> = (0..120).map(|i| doc(&format!("{i:016x}"))).collect();
        let calls = chunk(docs, 4 << 20);
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![50, 50, 20]
        );
        assert_eq!(calls[1][0].id.as_deref(), Some("0000000000000032"));
    }

    #[test]
    fn chunks_stay_within_the_request_size() {
        // Quotes escape to two bytes: each of these documents is ~2 x 40 KiB in the request.
        let body = |i: usize| {
            format!(
                r#"{{"id":"{i:016x}","metadata":{{"default":{{"q":"{}"}}}}}}"#,
                "\"".repeat(40 * 1024)
            )
        };
        let docs: Vec<Doc> = (0..6).map(|i| Doc::new(body(i))).collect();
        let limit = MIN_REQUEST_BYTES; // ~128 KiB
        let calls = chunk(docs, limit);
        assert_eq!(calls.len(), 6, "one ~80 KiB escaped document per call");
        for call in &calls {
            let total: usize =
                call.iter().map(|d| d.request_bytes).sum::<usize>() + REQUEST_OVERHEAD;
            assert!(total <= limit);
        }
        // The real request body is what we measured (less the last comma).
        let bodies: Vec<&str> = calls[0].iter().map(|d| d.body.as_str()).collect();
        let request = serde_json::json!({ "TraceSegmentDocuments": bodies }).to_string();
        assert_eq!(
            request.len(),
            calls[0].iter().map(|d| d.request_bytes).sum::<usize>() + REQUEST_OVERHEAD - 1
        );
    }

    #[test]
    fn transient_and_permanent_codes() {
        for code in [
            "ThrottledException",
            "ThrottlingException",
            "InternalFailure",
            "ServiceUnavailable",
            "RequestTimeout",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in [
            "InvalidSegment",
            "InvalidName",
            "MissingId",
            "MissingParam",
            "JSONFormatError",
            "",
        ] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn only_the_named_documents_are_retried_or_rejected() {
        let docs = vec![doc("a"), doc("b"), doc("c"), doc("d")];
        let p = plan(
            docs,
            vec![
                unprocessed(Some("b"), "ThrottledException"),
                unprocessed(Some("d"), "InvalidSegment"),
            ],
        );
        assert_eq!(p.accepted, 2);
        assert_eq!(ids(&p.retry), vec!["b"]);
        assert_eq!(ids(&p.reject), vec!["d"]);
        assert_eq!(p.reject[0].1.code, "InvalidSegment");
        assert!(p.isolate.is_empty());
    }

    #[test]
    fn an_unnamed_rejection_isolates_the_unnamed_documents() {
        let docs = vec![doc("a"), doc("b"), doc("c")];
        let p = plan(
            docs.clone(),
            vec![
                unprocessed(Some("a"), "InvalidName"),
                unprocessed(None, "MissingId"),
            ],
        );
        assert_eq!(ids(&p.reject), vec!["a"]);
        assert_eq!(p.accepted, 0);
        assert_eq!(
            p.isolate
                .iter()
                .map(|d| d.id.as_deref().unwrap())
                .collect::<Vec<_>>(),
            vec!["b", "c"]
        );

        // Alone in its call, the unnamed rejection can only mean that document.
        let p = plan(vec![doc("x")], vec![unprocessed(None, "JSONFormatError")]);
        assert_eq!(ids(&p.reject), vec!["x"]);

        // An unnamed transient failure sends every unnamed document again.
        let p = plan(docs, vec![unprocessed(Some("zz"), "ThrottledException")]);
        assert_eq!(ids(&p.retry), vec!["a", "b", "c"]);
        assert_eq!(p.accepted, 0);
    }
}
