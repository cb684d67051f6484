//! Pure request building for `PutTraceSegments`: what a document is on its way to X-Ray,
//! which documents no call can carry, and how documents are cut into calls within X-Ray's
//! limits. These are the sink's `precheck` and `calls` for the delivery engine.

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
    /// Set for a span the translator found no X-Ray form for (the body is then the span as
    /// OTLP/JSON): the reason it is dead-lettered without a call, so it is kept rather than
    /// lost and goes through the engine's one dead-letter writer like any refusal.
    pub unplaceable: Option<&'static str>,
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
            unplaceable: None,
        }
    }
}

/// Code of documents refused before any call: X-Ray would refuse them as they are.
pub const INVALID_DOCUMENT: &str = "Tidewater.InvalidDocument";

/// The code and reason a document is dead-lettered without a call, if it is.
pub fn precheck(doc: &Doc) -> Option<(String, String)> {
    let (code, reason) = if let Some(reason) = doc.unplaceable {
        (super::dropped::CODE, reason)
    } else if doc.body.len() > MAX_DOCUMENT_BYTES {
        (
            INVALID_DOCUMENT,
            "document larger than X-Ray's 64 KiB segment document limit",
        )
    } else if doc.id.is_none() {
        (INVALID_DOCUMENT, "not a JSON object with a string `id`")
    } else {
        return None;
    };
    Some((code.to_string(), reason.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> Doc {
        Doc::new(format!(
            r#"{{"name":"svc","id":"{id}","trace_id":"1-6553f100-0a0b0c0d0e0f101112131415","start_time":1,"end_time":2}}"#
        ))
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
        assert_eq!(precheck(&d), None);
    }

    #[test]
    fn documents_no_call_can_carry_are_refused_with_a_code() {
        let code = |d: &Doc| precheck(d).map(|(code, _)| code);
        assert_eq!(
            code(&Doc::new("[1]".into())).as_deref(),
            Some(INVALID_DOCUMENT)
        );
        let big = Doc::new(format!(r#"{{"id":"a","x":"{}"}}"#, "x".repeat(70_000)));
        assert_eq!(code(&big).as_deref(), Some(INVALID_DOCUMENT));
        let mut span = doc("a");
        span.unplaceable = Some("too old");
        assert_eq!(
            precheck(&span),
            Some((
                super::super::dropped::CODE.to_string(),
                "too old".to_string()
            ))
        );
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
}
