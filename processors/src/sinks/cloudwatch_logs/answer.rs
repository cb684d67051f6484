//! The CloudWatch sinks' classification: what CloudWatch Logs' answer to one call means for
//! the delivery engine. Pure, so every case is a golden test; the engine acts on the
//! [`Answer`] (retries, halves, bisects, dead-letters) the same way for every sink. What is
//! CloudWatch's own is reading `rejectedLogEventsInfo`, `DataAlreadyAcceptedException`, the
//! failures of creating a destination and its invalid-call codes; the rest of a call that
//! failed as a whole is read as by every AWS sink ([`crate::sinks::aws_sdk::for_failure`],
//! golden-tested there).
//!
//! | CloudWatch's answer | [`Answer`] / [`Verdict`] |
//! |---|---|
//! | `PutLogEvents` succeeded, no `rejectedLogEventsInfo` | `Stored` |
//! | events from `tooNewLogEventStartIndex` on (over 2 hours ahead) | their `Refused`, code `too_new` |
//! | events up to `tooOldLogEventEndIndex` (over 14 days old) | their `Refused`, code `too_old` |
//! | events up to `expiredLogEventEndIndex` (older than the group's retention) | their `Refused`, code `expired` |
//! | the other events of such a call | `Stored` |
//! | `DataAlreadyAcceptedException` | every event `AlreadyStored` |
//! | `ResourceNotFoundException` | the writer creates the group and stream again and sends once more in the same call; if still missing, call `Retry` |
//! | `InvalidParameterException`, `ValidationException`, `SerializationException` | call `Refused` (bisected until the culprit is alone) |
//! | `CreateLogGroup` / `CreateLogStream` refused as invalid | every event `Refused` (no call can reach that destination) |
//! | HTTP 413, `*TooLarge*` | `TooLarge` (halves) |
//! | HTTP 401/403, credential and permission codes, a request the SDK cannot build or sign, `LimitExceededException` creating a group | `Fatal` |
//! | throttling, `ServiceUnavailableException`, 5xx, any other error, transport, timeout, unreadable answer | call `Retry` (CloudWatch's code; its `Retry-After` if any) |

use crate::delivery::{Answer, Verdict};
use crate::sinks::aws_sdk::{self, CallFailure};

use super::api::Rejected;

/// Which events of a request the service refused, from its `rejectedLogEventsInfo` indexes,
/// with the limit each broke: events at or after `too_new_start` are too far in the future,
/// those up to `too_old_end` older than 14 days, those up to `expired_end` older than the
/// group's retention.
pub fn rejected(len: usize, r: &Rejected) -> Vec<(usize, &'static str)> {
    let upto = |end: Option<i32>| end.map_or(0, |e| (e.max(-1) + 1) as usize).min(len);
    let old = upto(r.too_old_end);
    let expired = upto(r.expired_end);
    let new_from = r
        .too_new_start
        .map_or(len, |s| (s.max(0) as usize).min(len));
    (0..len)
        .filter_map(|i| {
            if i >= new_from {
                Some((i, "too_new"))
            } else if i < old {
                Some((i, "too_old"))
            } else if i < expired {
                Some((i, "expired"))
            } else {
                None
            }
        })
        .collect()
}

/// The verdicts for a `PutLogEvents` of `len` events that succeeded. The code (and reason)
/// of a refused event is the limit it broke, the same word operators already search the
/// dead-letter file and the metrics for.
pub fn for_put(len: usize, r: &Rejected) -> Answer {
    let refused = rejected(len, r);
    if refused.is_empty() {
        return Answer::Stored;
    }
    let mut verdicts = vec![Verdict::Stored; len];
    for (i, limit) in refused {
        verdicts[i] = Verdict::Refused {
            code: limit.into(),
            message: limit.into(),
        };
    }
    Answer::Items(verdicts)
}

/// CloudWatch Logs' error codes that say one of the call's events is to blame.
const INVALID_CALL: &[&str] = &[
    "InvalidParameterException",
    "ValidationException",
    "SerializationException",
];

/// What a `PutLogEvents` of `len` events that failed as a whole means. Only
/// `DataAlreadyAcceptedException` is CloudWatch's own; the rest is the mapping every AWS sink
/// shares, under which a stream still missing after being created again
/// (`ResourceNotFoundException`) is retried like any error CloudWatch does not document.
pub fn for_failure(len: usize, f: &CallFailure) -> Answer {
    if f.is("DataAlreadyAcceptedException") {
        // Only streams still on sequence tokens answer this: the batch is in already.
        return Answer::Items(vec![Verdict::AlreadyStored; len]);
    }
    aws_sdk::for_failure(f, INVALID_CALL)
}

/// What a `CreateLogGroup` or `CreateLogStream` (`operation` on `name`) that failed means for
/// the `len` events of the call that needed it.
pub fn for_setup(len: usize, operation: &str, name: &str, f: &CallFailure) -> Answer {
    let f = CallFailure {
        message: format!("{operation} {name}: {}", f.message),
        ..f.clone()
    };
    if INVALID_CALL.iter().any(|code| f.is(code)) {
        // The destination itself is refused, so is every event bound for it: bisecting
        // would only find that out one event at a time.
        let refused = Verdict::Refused {
            code: f.code(),
            message: f.message,
        };
        return Answer::Items(vec![refused; len]);
    }
    if f.is("LimitExceededException") {
        // The account's quota of log groups: only an operator frees or raises it.
        return Answer::Fatal {
            code: f.code(),
            message: f.message,
        };
    }
    for_failure(len, &f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> Verdict {
        Verdict::Refused {
            code: code.into(),
            message: code.into(),
        }
    }

    #[test]
    fn rejected_indexes_name_each_refused_event() {
        let r = |new, old, expired| Rejected {
            too_new_start: new,
            too_old_end: old,
            expired_end: expired,
        };
        assert_eq!(rejected(5, &r(None, None, None)), vec![]);
        assert_eq!(
            rejected(6, &r(Some(4), Some(0), Some(1))),
            vec![
                (0, "too_old"),
                (1, "expired"),
                (4, "too_new"),
                (5, "too_new")
            ]
        );
        // Out-of-range indexes from the service cannot make us index past the request.
        assert_eq!(
            rejected(2, &r(Some(9), Some(7), None)),
            vec![(0, "too_old"), (1, "too_old")]
        );
    }

    #[test]
    fn a_put_without_refusals_is_stored_and_refused_events_are_named_by_their_limit() {
        assert_eq!(for_put(3, &Rejected::default()), Answer::Stored);
        let answer = for_put(
            4,
            &Rejected {
                too_new_start: Some(3),
                too_old_end: Some(0),
                expired_end: None,
            },
        );
        assert_eq!(
            answer,
            Answer::Items(vec![
                refused("too_old"),
                Verdict::Stored,
                Verdict::Stored,
                refused("too_new"),
            ])
        );
    }

    #[test]
    fn failures_of_a_whole_put() {
        let golden: Vec<(CallFailure, Answer)> = vec![
            (
                CallFailure::service(400, "DataAlreadyAcceptedException", "dup"),
                Answer::Items(vec![Verdict::AlreadyStored; 2]),
            ),
            (
                CallFailure::service(400, "InvalidParameterException", "bad"),
                Answer::Refused {
                    code: "InvalidParameterException".into(),
                    message: "bad".into(),
                },
            ),
            (
                CallFailure::service(400, "ValidationException", "bad"),
                Answer::Refused {
                    code: "ValidationException".into(),
                    message: "bad".into(),
                },
            ),
            (
                CallFailure::service(400, "ResourceNotFoundException", "gone"),
                Answer::retry("ResourceNotFoundException", "gone"),
            ),
            (
                CallFailure::service(503, "ServiceUnavailableException", "down"),
                Answer::retry("ServiceUnavailableException", "down"),
            ),
        ];
        for (f, want) in golden {
            assert_eq!(for_failure(2, &f), want, "{f:?}");
        }
    }

    #[test]
    fn failures_of_creating_the_destination() {
        let invalid = CallFailure::service(400, "InvalidParameterException", "bad name");
        let want = Verdict::Refused {
            code: "InvalidParameterException".into(),
            message: "CreateLogGroup /x: bad name".into(),
        };
        assert_eq!(
            for_setup(2, "CreateLogGroup", "/x", &invalid),
            Answer::Items(vec![want.clone(), want])
        );
        assert!(matches!(
            for_setup(2, "CreateLogGroup", "/x", &CallFailure::service(400, "LimitExceededException", "quota")),
            Answer::Fatal { code, .. } if code == "LimitExceededException"
        ));
        assert_eq!(
            for_setup(
                1,
                "CreateLogStream",
                "/x/s",
                &CallFailure::service(400, "ThrottlingException", "slow")
            ),
            Answer::retry("ThrottlingException", "CreateLogStream /x/s: slow")
        );
        assert!(matches!(
            for_setup(1, "CreateLogGroup", "/x", &CallFailure::service(400, "AccessDeniedException", "no")),
            Answer::Fatal { code, message } if code == "AccessDeniedException" && message == "CreateLogGroup /x: no"
        ));
    }
}
