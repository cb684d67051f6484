//! Item-level outcomes of `_bulk` and the retry loop: a bulk answered 200 can still hold
//! failed items, so each item is judged on its own and only the retryable ones are sent again.
//!
//! | item status | meaning | what happens |
//! |---|---|---|
//! | 2xx | stored | done |
//! | 409 | `create` of an `_id` already there: a replay | done (counted as already indexed) |
//! | 400 | the document itself is bad: mapping conflict, parse error, field limit | rejected: dead-lettered with the reason |
//! | 429, 5xx, others | the cluster is busy or not ready for it | sent again, alone with the other failures, after backoff |
//!
//! A request that fails as a whole is sent again whole (transport errors, 429, 5xx), split in
//! two when the cluster says it is too large (413; a single document too large is rejected),
//! or, for errors no retry fixes (401, 403), given up on at once so the processor retries the
//! round later and the operator sees the error.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::request::{body, BulkItem};
use crate::runtime::jittered;

/// One item of a `_bulk` response (`items[n].create`), by position.
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
    fn describe(&self) -> String {
        match &self.error {
            Some(e) => format!("{} {}: {}", self.status, e.kind, e.reason),
            None => self.status.to_string(),
        }
    }
}

/// Why a whole request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// In transit, 429 or 5xx: the same request may succeed later.
    Retryable(String),
    /// 413: the cluster's request size limit is below `bulk.max_bytes`.
    TooLarge,
    /// Any other status (401, 403, ...): no retry here fixes it.
    Fatal(String),
}

/// Sends one `_bulk` body of `count` items; `Ok` holds one result per item, in order.
#[async_trait]
pub trait BulkSender: Send + Sync {
    async fn send_bulk(&self, body: Bytes, count: usize) -> Result<Vec<ItemResult>, SendError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Stored,
    AlreadyStored,
    Retry,
    Reject,
}

pub fn classify(result: &ItemResult) -> Verdict {
    match result.status {
        200..=299 => Verdict::Stored,
        409 => Verdict::AlreadyStored,
        // A closed index answers 400 too, but it is the index, not the document: wait for it.
        400 if result
            .error
            .as_ref()
            .is_some_and(|e| e.kind == "index_closed_exception") =>
        {
            Verdict::Retry
        }
        400 => Verdict::Reject,
        _ => Verdict::Retry,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// Wait before retry number `retry` (1-based): doubling from `initial`, capped, jittered.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(16));
        jittered(self.initial.saturating_mul(factor).min(self.max))
    }
}

/// What happened to a group of items once nothing is left to retry.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stored: Vec<BulkItem>,
    pub already_stored: Vec<BulkItem>,
    /// Each with the cluster's reason, to dead-letter.
    pub rejected: Vec<(BulkItem, ItemResult)>,
    /// Items sent again, with the status that made them be (one entry per retry).
    pub retried: Vec<u16>,
    /// Whole requests sent again after failing in transit, 429 or 5xx.
    pub retried_requests: usize,
    pub requests: usize,
}

/// Sends `items` until each is stored, already stored or rejected. An error means some items
/// are neither after `max_retries` (or a fatal error): the caller fails the round, and the
/// processor delivers it again later.
pub async fn send_with_retry(
    sender: &dyn BulkSender,
    items: Vec<BulkItem>,
    policy: &RetryPolicy,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    // (items, retries so far). A stack: a split request's halves go before anything else.
    let mut pending = vec![(items, 0u32)];
    while let Some((group, retries)) = pending.pop() {
        if group.is_empty() {
            continue;
        }
        if retries > 0 {
            tokio::time::sleep(policy.backoff(retries)).await;
        }
        outcome.requests += 1;
        let give_up = |why: String| {
            anyhow::anyhow!(
                "{} documents not indexed after {retries} retries: {why}",
                group.len()
            )
        };
        match sender.send_bulk(body(&group), group.len()).await {
            Err(SendError::Fatal(why)) => return Err(give_up(why)),
            Err(SendError::Retryable(why)) => {
                if retries >= policy.max_retries {
                    return Err(give_up(why));
                }
                tracing::warn!(items = group.len(), reason = %why, "bulk request failed; retrying it");
                outcome.retried_requests += 1;
                pending.push((group, retries + 1));
            }
            Err(SendError::TooLarge) if group.len() == 1 => {
                let item = group.into_iter().next().expect("one item");
                let result = ItemResult {
                    status: 413,
                    error: Some(ItemError {
                        kind: "request_too_large".into(),
                        reason: format!(
                            "a document of {} bytes is over the cluster's request size limit",
                            item.len()
                        ),
                    }),
                };
                outcome.rejected.push((item, result));
            }
            Err(SendError::TooLarge) => {
                let mut first = group;
                let second = first.split_off(first.len() / 2);
                pending.push((second, retries));
                pending.push((first, retries));
            }
            Ok(results) => {
                if results.len() != group.len() {
                    return Err(give_up(format!(
                        "the cluster answered {} item results for {} items",
                        results.len(),
                        group.len()
                    )));
                }
                let mut again = Vec::new();
                let mut last_reason = String::new();
                for (item, result) in group.into_iter().zip(results) {
                    match classify(&result) {
                        Verdict::Stored => outcome.stored.push(item),
                        Verdict::AlreadyStored => outcome.already_stored.push(item),
                        Verdict::Reject => outcome.rejected.push((item, result)),
                        Verdict::Retry => {
                            outcome.retried.push(result.status);
                            last_reason = result.describe();
                            again.push(item);
                        }
                    }
                }
                if !again.is_empty() {
                    if retries >= policy.max_retries {
                        let n = again.len();
                        return Err(anyhow::anyhow!(
                            "{n} documents not indexed after {retries} retries: {last_reason}"
                        ));
                    }
                    tracing::debug!(items = again.len(), reason = %last_reason, "retrying failed bulk items");
                    pending.push((again, retries + 1));
                }
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::elasticsearch::request::DocKind;
    use serde_json::json;
    use std::sync::Mutex;

    /// Answers each request with the next scripted reply and records the ids it was sent.
    struct Scripted {
        replies: Mutex<Vec<Result<Vec<u16>, SendError>>>,
        seen: Mutex<Vec<Vec<String>>>,
    }

    impl Scripted {
        fn new(mut replies: Vec<Result<Vec<u16>, SendError>>) -> Self {
            replies.reverse();
            Scripted {
                replies: Mutex::new(replies),
                seen: Mutex::default(),
            }
        }
    }

    #[async_trait]
    impl BulkSender for Scripted {
        async fn send_bulk(&self, body: Bytes, count: usize) -> Result<Vec<ItemResult>, SendError> {
            let ids: Vec<String> = std::str::from_utf8(&body)
                .unwrap()
                .lines()
                .step_by(2)
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["create"]["_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(ids.len(), count);
            self.seen.lock().unwrap().push(ids);
            let reply = self
                .replies
                .lock()
                .unwrap()
                .pop()
                .expect("a scripted reply");
            reply.map(|statuses| {
                statuses
                    .into_iter()
                    .map(|status| ItemResult {
                        status,
                        error: (status >= 300).then(|| ItemError {
                            kind: if status == 400 {
                                "mapper_parsing_exception"
                            } else {
                                "x"
                            }
                            .into(),
                            reason: "why".into(),
                        }),
                    })
                    .collect()
            })
        }
    }

    fn items(ids: &[&str]) -> Vec<BulkItem> {
        ids.iter()
            .map(|id| BulkItem::create(DocKind::Event, "i".into(), id, &json!({})).unwrap())
            .collect()
    }

    const FAST: RetryPolicy = RetryPolicy {
        max_retries: 3,
        initial: Duration::from_millis(1),
        max: Duration::from_millis(2),
    };

    fn ids(items: &[BulkItem]) -> Vec<&str> {
        items.iter().map(|i| i.id.as_str()).collect()
    }

    #[tokio::test]
    async fn only_failed_items_are_retried_and_bad_ones_rejected() {
        let s = Scripted::new(vec![
            Ok(vec![201, 429, 400, 409, 503]),
            Ok(vec![201, 429]),
            Ok(vec![201]),
        ]);
        let out = send_with_retry(&s, items(&["a", "b", "c", "d", "e"]), &FAST)
            .await
            .unwrap();
        assert_eq!(
            *s.seen.lock().unwrap(),
            vec![vec!["a", "b", "c", "d", "e"], vec!["b", "e"], vec!["e"]]
        );
        assert_eq!(ids(&out.stored), ["a", "b", "e"]);
        assert_eq!(ids(&out.already_stored), ["d"]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].0.id, "c");
        assert_eq!(
            out.rejected[0].1.error.as_ref().unwrap().kind,
            "mapper_parsing_exception"
        );
        assert_eq!(out.retried, [429, 503, 429]);
        assert_eq!(out.requests, 3);
    }

    #[tokio::test]
    async fn whole_request_failures_retry_split_or_give_up() {
        let s = Scripted::new(vec![
            Err(SendError::Retryable("connection reset".into())),
            Err(SendError::TooLarge),
            Ok(vec![201]),
            Err(SendError::TooLarge),
            Ok(vec![201]),
            Err(SendError::TooLarge),
        ]);
        let out = send_with_retry(&s, items(&["a", "b", "c"]), &FAST)
            .await
            .unwrap();
        assert_eq!(
            *s.seen.lock().unwrap(),
            vec![
                vec!["a", "b", "c"],
                vec!["a", "b", "c"],
                vec!["a"],
                vec!["b", "c"],
                vec!["b"],
                vec!["c"]
            ]
        );
        assert_eq!(ids(&out.stored), ["a", "b"]);
        assert_eq!(out.rejected[0].0.id, "c");
        assert_eq!(out.rejected[0].1.status, 413);

        let s = Scripted::new(vec![Err(SendError::Fatal("403 forbidden".into()))]);
        let e = send_with_retry(&s, items(&["a"]), &FAST).await.unwrap_err();
        assert!(e.to_string().contains("403 forbidden"), "{e}");

        let s = Scripted::new(vec![Ok(vec![429]); 4]);
        let e = send_with_retry(&s, items(&["a"]), &FAST).await.unwrap_err();
        assert!(e.to_string().contains("after 3 retries"), "{e}");
        assert_eq!(s.seen.lock().unwrap().len(), 4);
    }

    #[test]
    fn classification() {
        let r = |status, kind: &str| ItemResult {
            status,
            error: Some(ItemError {
                kind: kind.into(),
                reason: String::new(),
            }),
        };
        assert_eq!(classify(&r(201, "")), Verdict::Stored);
        assert_eq!(
            classify(&r(409, "version_conflict_engine_exception")),
            Verdict::AlreadyStored
        );
        assert_eq!(
            classify(&r(400, "mapper_parsing_exception")),
            Verdict::Reject
        );
        assert_eq!(classify(&r(400, "index_closed_exception")), Verdict::Retry);
        assert_eq!(
            classify(&r(429, "es_rejected_execution_exception")),
            Verdict::Retry
        );
        assert_eq!(
            classify(&r(503, "unavailable_shards_exception")),
            Verdict::Retry
        );
        assert_eq!(
            classify(&r(404, "index_not_found_exception")),
            Verdict::Retry
        );
    }
}
