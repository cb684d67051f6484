//! Sends one call's documents until each is stored or rejected for good, retrying only
//! what X-Ray did not take.

use std::collections::VecDeque;
use std::time::Duration;

use super::request::{plan, Doc, Unprocessed};
use super::service::{CallError, SegmentApi};
use crate::runtime::jittered;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Capped exponential backoff before attempt `attempt` (2, 3, ...), with jitter.
    fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(31);
        jittered(self.initial.saturating_mul(1 << doublings).min(self.max))
    }
}

/// A document X-Ray will not take, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub doc: Doc,
    pub code: String,
    pub message: String,
}

#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub accepted: usize,
    pub rejected: Vec<Rejection>,
    /// Documents sent again after a transient failure (each resend counts).
    pub retried: usize,
}

struct Call {
    docs: Vec<Doc>,
    attempt: u32,
}

/// Delivers `docs` (one call's worth). `Err` when a whole call keeps failing transiently
/// for `max_attempts`: the caller lets the processor retry the round. Documents X-Ray
/// already stored are then sent again; X-Ray keeps one segment per id, so that is harmless.
pub async fn send(
    api: &dyn SegmentApi,
    docs: Vec<Doc>,
    policy: &RetryPolicy,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let mut queue = VecDeque::from([Call { docs, attempt: 1 }]);
    while let Some(call) = queue.pop_front() {
        if call.attempt > 1 {
            tokio::time::sleep(policy.delay(call.attempt)).await;
        }
        let bodies = call.docs.iter().map(|d| d.body.clone()).collect();
        match api.put(bodies).await {
            Ok(unprocessed) => {
                let p = plan(call.docs, unprocessed);
                out.accepted += p.accepted;
                out.rejected.extend(p.reject.into_iter().map(rejection));
                queue.extend(p.isolate.into_iter().map(|d| Call {
                    docs: vec![d],
                    attempt: call.attempt,
                }));
                if p.retry.is_empty() {
                    continue;
                }
                if call.attempt >= policy.max_attempts {
                    out.rejected
                        .extend(p.retry.into_iter().map(|(doc, u)| Rejection {
                            message: format!(
                                "still unprocessed after {} attempts: {}",
                                call.attempt, u.message
                            ),
                            ..rejection((doc, u))
                        }));
                } else {
                    for (_, u) in &p.retry {
                        metrics::counter!("tidewater_xray_retried_documents_total", "code" => u.code.clone()).increment(1);
                    }
                    out.retried += p.retry.len();
                    queue.push_back(Call {
                        docs: p.retry.into_iter().map(|(d, _)| d).collect(),
                        attempt: call.attempt + 1,
                    });
                }
            }
            Err(CallError::Rejected { code, message }) if call.docs.len() > 1 => {
                tracing::warn!(%code, %message, documents = call.docs.len(), "X-Ray refused a call; sending its documents one by one to find the culprit");
                queue.extend(call.docs.into_iter().map(|d| Call {
                    docs: vec![d],
                    attempt: call.attempt,
                }));
            }
            Err(CallError::Rejected { code, message }) => {
                out.rejected
                    .extend(call.docs.into_iter().map(|doc| Rejection {
                        doc,
                        code: code.clone(),
                        message: message.clone(),
                    }));
            }
            Err(CallError::Transient(reason)) => {
                if call.attempt >= policy.max_attempts {
                    anyhow::bail!("PutTraceSegments failed {} times: {reason}", call.attempt);
                }
                tracing::warn!(attempt = call.attempt, %reason, "PutTraceSegments failed; retrying");
                metrics::counter!("tidewater_xray_retried_calls_total").increment(1);
                out.retried += call.docs.len();
                queue.push_back(Call {
                    docs: call.docs,
                    attempt: call.attempt + 1,
                });
            }
        }
    }
    Ok(out)
}

fn rejection((doc, u): (Doc, Unprocessed)) -> Rejection {
    Rejection {
        doc,
        code: u.code,
        message: u.message,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// Answers each call from a script, recording the ids it was sent.
    struct Scripted {
        answers: Mutex<VecDeque<Result<Vec<Unprocessed>, CallError>>>,
        calls: Mutex<Vec<Vec<String>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Result<Vec<Unprocessed>, CallError>>) -> Scripted {
            Scripted {
                answers: Mutex::new(answers.into()),
                calls: Mutex::default(),
            }
        }
        fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl SegmentApi for Scripted {
        async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallError> {
            let ids = documents
                .iter()
                .map(|d| Doc::new(d.clone()).id.unwrap())
                .collect();
            self.calls.lock().unwrap().push(ids);
            self.answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(Vec::new()))
        }
    }

    fn docs(ids: &[&str]) -> Vec<Doc> {
        ids.iter()
            .map(|id| Doc::new(format!(r#"{{"id":"{id}","name":"n"}}"#)))
            .collect()
    }

    fn u(id: Option<&str>, code: &str) -> Unprocessed {
        Unprocessed {
            id: id.map(str::to_string),
            code: code.into(),
            message: "m".into(),
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    fn strings(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|c| c.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[tokio::test]
    async fn only_unprocessed_documents_are_sent_again() {
        let api = Scripted::new(vec![
            Ok(vec![
                u(Some("b"), "ThrottledException"),
                u(Some("d"), "InvalidSegment"),
            ]),
            Ok(vec![u(Some("b"), "InternalFailure")]),
            Ok(vec![]),
        ]);
        let out = send(&api, docs(&["a", "b", "c", "d"]), &policy(5))
            .await
            .unwrap();
        assert_eq!(
            api.calls(),
            strings(&[&["a", "b", "c", "d"], &["b"], &["b"]])
        );
        assert_eq!(out.accepted, 3);
        assert_eq!(out.retried, 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].doc.id.as_deref(), Some("d"));
        assert_eq!(out.rejected[0].code, "InvalidSegment");
    }

    #[tokio::test]
    async fn transient_failures_give_up_after_max_attempts() {
        let throttled = || Ok(vec![u(Some("a"), "ThrottledException")]);
        let api = Scripted::new(vec![throttled(), throttled(), throttled()]);
        let out = send(&api, docs(&["a", "b"]), &policy(3)).await.unwrap();
        assert_eq!(api.calls(), strings(&[&["a", "b"], &["a"], &["a"]]));
        assert_eq!(out.accepted, 1);
        assert_eq!(out.rejected.len(), 1);
        assert!(out.rejected[0].message.contains("after 3 attempts"));
    }

    #[tokio::test]
    async fn a_failing_call_is_retried_then_reported() {
        let down = || Err(CallError::Transient("connection refused".into()));
        let api = Scripted::new(vec![down(), Ok(vec![])]);
        let out = send(&api, docs(&["a"]), &policy(3)).await.unwrap();
        assert_eq!(out.accepted, 1);
        assert_eq!(api.calls().len(), 2);

        let api = Scripted::new(vec![down(), down()]);
        let err = send(&api, docs(&["a"]), &policy(2)).await.unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn a_rejected_call_is_split_to_find_the_bad_document() {
        let invalid = || {
            Err(CallError::Rejected {
                code: "InvalidRequestException".into(),
                message: "bad".into(),
            })
        };
        // Whole call refused; then "a" alone passes and "b" alone is refused.
        let api = Scripted::new(vec![invalid(), Ok(vec![]), invalid()]);
        let out = send(&api, docs(&["a", "b"]), &policy(3)).await.unwrap();
        assert_eq!(api.calls(), strings(&[&["a", "b"], &["a"], &["b"]]));
        assert_eq!(out.accepted, 1);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].doc.id.as_deref(), Some("b"));
        assert_eq!(out.rejected[0].code, "InvalidRequestException");
    }
}
