//! The sink's classification: what X-Ray's answer to one `PutTraceSegments` call means for the
//! delivery engine. Pure, so every case is a golden test: the engine acts on the [`Answer`]
//! (retries, halves, bisects, dead-letters) the same way for every sink. What is X-Ray's own
//! is reading `UnprocessedTraceSegments` and its invalid-call codes; a call that failed as a
//! whole is read as by every AWS sink ([`crate::sinks::aws_sdk::for_failure`], the last four
//! rows, golden-tested there).
//!
//! | X-Ray's answer | [`Answer`] / [`Verdict`] |
//! |---|---|
//! | success, `UnprocessedTraceSegments` empty | `Stored` |
//! | a document named in `UnprocessedTraceSegments`, throttling or X-Ray's own failure | its `Retry` (that code) |
//! | a document named there with any other code (`InvalidSegment`, ...) | its `Refused` (that code) |
//! | a document not named there | `Stored` |
//! | entries naming no document of the call, all passing | the documents not named: `Retry` |
//! | such an entry refused for good, one document not named | that document: `Refused` |
//! | such an entry refused for good, several documents not named | call `Refused`: bisected until the culprit is alone |
//! | `InvalidRequestException`, `ValidationException`, `SerializationException` | call `Refused` (bisect) |
//! | HTTP 413, `*TooLarge*` | `TooLarge` (halves) |
//! | HTTP 401/403, credential and permission codes, a request the SDK cannot build or sign | `Fatal` |
//! | throttling, 5xx, any other error, transport, timeout, unreadable response | call `Retry` (X-Ray's code; its `Retry-After` if any) |

use std::collections::{HashMap, HashSet};

use crate::delivery::{Answer, Verdict};
use crate::sinks::aws_sdk::{self, CallFailure};

use super::request::Doc;

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

/// An entry without a code still says the document was not taken; a label keeps the
/// metrics and dead letters readable.
fn code(u: &Unprocessed) -> String {
    if u.code.is_empty() {
        "Unprocessed".to_string()
    } else {
        u.code.clone()
    }
}

fn verdict(u: &Unprocessed) -> Verdict {
    let code = code(u);
    let message = u.message.clone();
    if is_transient(&code) {
        Verdict::Retry { code, message }
    } else {
        Verdict::Refused { code, message }
    }
}

/// The verdicts for `docs` (one call, in order) given the call's `UnprocessedTraceSegments`.
pub fn for_unprocessed(docs: &[Doc], unprocessed: Vec<Unprocessed>) -> Answer {
    if unprocessed.is_empty() {
        return Answer::Stored;
    }
    let sent: HashSet<&str> = docs.iter().filter_map(|d| d.id.as_deref()).collect();
    let mut by_id: HashMap<String, Unprocessed> = HashMap::new();
    // Entries X-Ray could not tie to a document of the call (no id, or one not sent, as for
    // a document it could not parse).
    let mut unnamed = Vec::new();
    for u in unprocessed {
        match u.id.clone().filter(|id| sent.contains(id.as_str())) {
            Some(id) => {
                by_id.entry(id).or_insert(u);
            }
            None => unnamed.push(u),
        }
    }
    let mut verdicts: Vec<Option<Verdict>> = docs
        .iter()
        .map(|d| d.id.as_ref().and_then(|id| by_id.get(id)).map(verdict))
        .collect();
    let not_named = verdicts.iter().filter(|v| v.is_none()).count();
    let fill = match unnamed.first() {
        // Every document is accounted for: an entry naming something else changes nothing.
        _ if not_named == 0 => Verdict::Stored,
        None => Verdict::Stored,
        // Only one document could be meant.
        Some(u) if not_named == 1 => verdict(u),
        // Which of them X-Ray did not take is unknowable, but each may pass: all are sent
        // again (X-Ray keeps one segment per id, so those it did take replace themselves).
        Some(u) if unnamed.iter().all(|u| is_transient(&u.code)) => verdict(u),
        // One of several is refused for good: retrying them together would get the same
        // answer until the budget dead-letters the innocent ones too, so the call is
        // bisected until the culprit is alone and its answer names it.
        Some(_) => {
            let u = unnamed
                .iter()
                .find(|u| !is_transient(&u.code))
                .expect("a permanent one");
            return Answer::Refused {
                code: code(u),
                message: format!(
                    "X-Ray refused one of {not_named} documents without naming it: {}",
                    u.message
                ),
            };
        }
    };
    for v in verdicts.iter_mut().filter(|v| v.is_none()) {
        *v = Some(fill.clone());
    }
    Answer::Items(verdicts.into_iter().map(|v| v.expect("filled")).collect())
}

/// X-Ray's error codes that say one of the call's documents is to blame.
const INVALID_CALL: &[&str] = &[
    "InvalidRequestException",
    "ValidationException",
    "SerializationException",
];

/// What a call that failed as a whole means: X-Ray has no failure of its own to read, so
/// this is the mapping every AWS sink shares, with X-Ray's invalid-call codes.
pub fn for_failure(f: &CallFailure) -> Answer {
    aws_sdk::for_failure(f, INVALID_CALL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> Doc {
        Doc::new(format!(
            r#"{{"name":"svc","id":"{id}","start_time":1,"end_time":2}}"#
        ))
    }

    fn docs(ids: &[&str]) -> Vec<Doc> {
        ids.iter().map(|id| doc(id)).collect()
    }

    fn u(id: Option<&str>, code: &str) -> Unprocessed {
        Unprocessed {
            id: id.map(str::to_string),
            code: code.into(),
            message: format!("{code} message"),
        }
    }

    fn retry(code: &str) -> Verdict {
        Verdict::Retry {
            code: code.into(),
            message: format!("{code} message"),
        }
    }

    fn refused(code: &str) -> Verdict {
        Verdict::Refused {
            code: code.into(),
            message: format!("{code} message"),
        }
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
    fn nothing_unprocessed_is_all_stored() {
        assert_eq!(for_unprocessed(&docs(&["a", "b"]), vec![]), Answer::Stored);
    }

    #[test]
    fn named_documents_get_their_own_verdict_and_the_rest_are_stored() {
        let answer = for_unprocessed(
            &docs(&["a", "b", "c", "d"]),
            vec![
                u(Some("b"), "ThrottledException"),
                u(Some("d"), "InvalidSegment"),
            ],
        );
        assert_eq!(
            answer,
            Answer::Items(vec![
                Verdict::Stored,
                retry("ThrottledException"),
                Verdict::Stored,
                refused("InvalidSegment"),
            ])
        );
    }

    #[test]
    fn an_unnamed_entry_alone_in_doubt_means_the_one_document_not_named() {
        let answer = for_unprocessed(
            &docs(&["a", "b"]),
            vec![u(Some("a"), "InvalidName"), u(None, "JSONFormatError")],
        );
        assert_eq!(
            answer,
            Answer::Items(vec![refused("InvalidName"), refused("JSONFormatError")])
        );
        let answer = for_unprocessed(&docs(&["x"]), vec![u(Some("zz"), "InternalFailure")]);
        assert_eq!(answer, Answer::Items(vec![retry("InternalFailure")]));
    }

    #[test]
    fn unnamed_passing_entries_send_every_document_not_named_again() {
        let answer = for_unprocessed(
            &docs(&["a", "b", "c"]),
            vec![
                u(Some("a"), "InvalidName"),
                u(Some("zz"), "ThrottledException"),
            ],
        );
        assert_eq!(
            answer,
            Answer::Items(vec![
                refused("InvalidName"),
                retry("ThrottledException"),
                retry("ThrottledException"),
            ])
        );
    }

    #[test]
    fn an_unnamed_refusal_among_several_documents_bisects_the_call() {
        let answer = for_unprocessed(
            &docs(&["a", "b", "c"]),
            vec![u(None, "ThrottledException"), u(None, "MissingId")],
        );
        let Answer::Refused { code, message } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(code, "MissingId");
        assert!(message.contains("MissingId message"), "{message}");
    }

    #[test]
    fn an_entry_naming_no_document_changes_nothing_when_all_are_named() {
        let answer = for_unprocessed(
            &docs(&["a"]),
            vec![u(Some("a"), "ThrottledException"), u(None, "MissingId")],
        );
        assert_eq!(answer, Answer::Items(vec![retry("ThrottledException")]));
    }

    #[test]
    fn an_entry_without_a_code_is_refused_under_a_label() {
        let answer = for_unprocessed(&docs(&["a"]), vec![u(Some("a"), "")]);
        assert_eq!(
            answer,
            Answer::Items(vec![Verdict::Refused {
                code: "Unprocessed".into(),
                message: " message".into()
            }])
        );
    }

    #[test]
    fn x_rays_invalid_call_codes_bisect_the_call() {
        for code in INVALID_CALL {
            assert_eq!(
                for_failure(&CallFailure::service(400, code, "bad")),
                Answer::Refused {
                    code: code.to_string(),
                    message: "bad".into(),
                },
            );
        }
    }
}
