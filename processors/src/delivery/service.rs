//! What a sink tells the engine: how its items become calls, the call itself, and what the
//! service's answer means. Everything else about delivering (retries, backoff, concurrency,
//! dead letters, metrics, health) is the engine's, so it is written once.

use std::time::Duration;

use async_trait::async_trait;

/// The service's word on one item of a call that it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Stored,
    /// Stored before (a redelivered round): done, counted apart.
    AlreadyStored,
    /// Not taken this time for a reason that may pass (throttled, busy, shard not ready):
    /// sent again, alone with the other such items, up to the attempt budget.
    Retry {
        code: String,
        message: String,
    },
    /// Never to be taken as it is (invalid, too old, mapping conflict): dead-lettered.
    Refused {
        code: String,
        message: String,
    },
}

/// The service's answer to a whole call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One verdict per item, in the order sent (a partial failure inside a success).
    Items(Vec<Verdict>),
    /// Every item was stored (a service without item results).
    Stored,
    /// The call failed as a whole and the same call may succeed later (transport, 429, 5xx,
    /// throttling). `after` is the service's own `Retry-After`, honoured when longer than
    /// the backoff.
    Retry {
        code: String,
        message: String,
        after: Option<Duration>,
    },
    /// The call is over the service's size limit: sent again in halves; one item alone that
    /// is too large is dead-lettered.
    TooLarge(String),
    /// The service refused the call as invalid, so one of its items is to blame: the call is
    /// bisected until the culprits are alone, and those are dead-lettered.
    Refused { code: String, message: String },
    /// No retry helps until an operator acts (credentials, permissions, a missing resource):
    /// retried at the longest backoff, never dropped, and the sink is unhealthy at once.
    Fatal { code: String, message: String },
}

impl Answer {
    /// `Retry` without a `Retry-After`.
    pub fn retry(code: impl Into<String>, message: impl Into<String>) -> Answer {
        Answer::Retry {
            code: code.into(),
            message: message.into(),
            after: None,
        }
    }
}

/// A sink's service, as the engine drives it.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    type Item: Send + Sync + 'static;

    /// The sink's name in metrics, logs, dead letters and `/readyz`.
    fn name(&self) -> &'static str;

    /// An item no call can carry (over a per-item limit, invalid for the service), with a
    /// code and the reason: dead-lettered without a call.
    fn precheck(&self, _item: &Self::Item) -> Option<(String, String)> {
        None
    }

    /// Cuts items into calls within the service's limits (count, bytes, and rules of its own
    /// such as one log stream per call). Any part of a call must also be a valid call: the
    /// engine sends parts of one when it retries, halves or bisects.
    fn calls(&self, items: Vec<Self::Item>) -> Vec<Vec<Self::Item>>;

    /// Makes one call. Never retries on its own (an SDK client's retry is turned off), so
    /// retries happen in one layer.
    async fn call(&self, items: &[Self::Item]) -> Answer;

    /// What the dead-letter line keeps of an item, besides the sink, code and reason: enough
    /// to find it and send it again by hand (its id and body).
    fn describe(&self, item: &Self::Item) -> serde_json::Value;
}
