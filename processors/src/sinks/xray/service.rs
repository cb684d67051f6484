//! The X-Ray sink as the delivery engine drives it: documents into calls ([`super::request`]),
//! one `PutTraceSegments` call, and its answer read by [`super::answer`]. The call itself sits
//! behind [`SegmentApi`] so the classification is exercised through the engine with a
//! scripted X-Ray (`delivery::harness`) as well as against moto end to end.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_xray::types::UnprocessedTraceSegment;
use serde_json::json;
use tokio::sync::OnceCell;

use super::answer::{self, Unprocessed};
use super::request::{self, Doc};
use crate::delivery::{Answer, Service};
use crate::sinks::aws_sdk::{self, CallFailure};

/// One `PutTraceSegments` call: what X-Ray did not process, or why the call failed.
#[async_trait]
pub trait SegmentApi: Send + Sync + 'static {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallFailure>;
}

/// `aws-sdk-xray`, configured by the standard AWS chain (`AWS_REGION`,
/// `AWS_ENDPOINT_URL[_XRAY]`, profiles, the ECS task role) on first use, so building the
/// sink needs no async context. The SDK's own retry is off: the engine retries, once.
#[derive(Default)]
pub struct Xray {
    client: OnceCell<aws_sdk_xray::Client>,
}

impl Xray {
    async fn client(&self) -> &aws_sdk_xray::Client {
        self.client
            .get_or_init(|| async {
                let conf = aws_sdk::config().await;
                aws_sdk_xray::Client::new(&conf)
            })
            .await
    }
}

#[async_trait]
impl SegmentApi for Xray {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallFailure> {
        let output = self
            .client()
            .await
            .put_trace_segments()
            .set_trace_segment_documents(Some(documents))
            .send()
            .await
            .map_err(aws_sdk::failure)?;
        let entries = output.unprocessed_trace_segments();
        Ok(entries.iter().map(unprocessed).collect())
    }
}

/// An entry of the SDK's answer as the classification reads it: X-Ray may leave out any of
/// its fields, and an entry without them still says a document was not taken.
fn unprocessed(u: &UnprocessedTraceSegment) -> Unprocessed {
    Unprocessed {
        id: u.id().map(str::to_string),
        code: u.error_code().unwrap_or_default().to_string(),
        message: u.message().unwrap_or_default().to_string(),
    }
}

/// The sink's [`Service`]: X-Ray's limits, its call and its answer.
pub struct XrayService {
    api: Arc<dyn SegmentApi>,
    max_request_bytes: usize,
}

impl XrayService {
    pub fn new(api: Arc<dyn SegmentApi>, max_request_bytes: usize) -> Self {
        XrayService {
            api,
            max_request_bytes,
        }
    }
}

#[async_trait]
impl Service for XrayService {
    type Item = Doc;

    fn name(&self) -> &'static str {
        "xray"
    }

    fn precheck(&self, doc: &Doc) -> Option<(String, String)> {
        request::precheck(doc)
    }

    fn calls(&self, docs: Vec<Doc>) -> Vec<Vec<Doc>> {
        request::chunk(docs, self.max_request_bytes)
    }

    async fn call(&self, docs: &[Doc]) -> Answer {
        let bodies = docs.iter().map(|d| d.body.clone()).collect();
        match self.api.put(bodies).await {
            Ok(unprocessed) => answer::for_unprocessed(docs, unprocessed),
            Err(f) => answer::for_failure(&f),
        }
    }

    fn describe(&self, doc: &Doc) -> serde_json::Value {
        json!({
            "id": doc.id,
            "trace_id": doc.trace_id,
            "document": doc.body,
        })
    }
}
