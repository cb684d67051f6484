//! The EMF sink's pending documents as the delivery engine sends them: the same
//! `PutLogEvents` call and classification as the log sink ([`crate::sinks::cloudwatch_logs`]),
//! under the name `emf`, with two things of its own:
//! - a document over the event size is refused before any call (code `too_large`): it is
//!   only meaningful whole, and the documents are built to fit, so one that does not is a
//!   defect to look at, not something to cut;
//! - the service remembers which pending documents CloudWatch answered as stored, so a tick
//!   cut short by its time budget still removes those from the state file rather than sending
//!   them again (a metric counted twice) at the next tick.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::delivery::{Answer, Service, Verdict};
use crate::sinks::cloudwatch_logs::api::LogsApi;
use crate::sinks::cloudwatch_logs::batch::{event_bytes, Limits};
use crate::sinks::cloudwatch_logs::writer::{self, LogItem, LogsWriter};

/// A pending document: its place in the pending list the tick took, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub index: usize,
    pub log: LogItem,
}

impl AsRef<LogItem> for Doc {
    fn as_ref(&self) -> &LogItem {
        &self.log
    }
}

pub struct EmfService {
    writer: LogsWriter,
    limits: Limits,
    stored: Mutex<HashSet<usize>>,
}

impl EmfService {
    pub fn new(api: Arc<dyn LogsApi>, retention_days: u32, limits: Limits) -> Self {
        EmfService {
            writer: LogsWriter::new("emf", api, retention_days),
            limits,
            stored: Mutex::default(),
        }
    }

    /// The documents CloudWatch answered as stored since the last time this was asked.
    pub fn take_stored(&self) -> HashSet<usize> {
        std::mem::take(&mut *self.stored.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, docs: &[Doc], answer: &Answer) {
        let taken: Vec<usize> = match answer {
            Answer::Stored => docs.iter().map(|d| d.index).collect(),
            Answer::Items(verdicts) if verdicts.len() == docs.len() => docs
                .iter()
                .zip(verdicts)
                .filter(|(_, v)| matches!(v, Verdict::Stored | Verdict::AlreadyStored))
                .map(|(d, _)| d.index)
                .collect(),
            _ => return,
        };
        self.stored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(taken);
    }
}

#[async_trait]
impl Service for EmfService {
    type Item = Doc;

    fn name(&self) -> &'static str {
        "emf"
    }

    fn precheck(&self, doc: &Doc) -> Option<(String, String)> {
        let size = event_bytes(&doc.log.event);
        (size > self.limits.max_event_bytes).then(|| {
            (
                "too_large".to_string(),
                format!(
                    "EMF document of {size} bytes with its overhead, over max_event_size ({} bytes)",
                    self.limits.max_event_bytes
                ),
            )
        })
    }

    fn calls(&self, docs: Vec<Doc>) -> Vec<Vec<Doc>> {
        writer::calls(docs, &self.limits)
    }

    async fn call(&self, docs: &[Doc]) -> Answer {
        let answer = self.writer.put(docs).await;
        self.record(docs, &answer);
        answer
    }

    fn describe(&self, doc: &Doc) -> serde_json::Value {
        writer::describe(&doc.log)
    }
}
