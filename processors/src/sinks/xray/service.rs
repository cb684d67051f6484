//! The one X-Ray call the sink makes, behind a small trait so the retry logic can be unit
//! tested without a network.

use async_trait::async_trait;
use aws_sdk_xray::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::OnceCell;

use super::request::Unprocessed;

/// Why a whole `PutTraceSegments` call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Worth trying again: network, timeouts, throttling past the SDK's own retries,
    /// X-Ray's 5xx, and credential or permission problems an operator can fix.
    Transient(String),
    /// X-Ray refused the request as invalid: one of its documents is to blame.
    Rejected { code: String, message: String },
}

#[async_trait]
pub trait SegmentApi: Send + Sync + 'static {
    /// Sends `documents` in one call; returns what X-Ray did not process.
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallError>;
}

/// `aws-sdk-xray`, configured by the standard AWS chain (`AWS_REGION`,
/// `AWS_ENDPOINT_URL[_XRAY]`, profiles, the ECS task role) on first use, so building the
/// sink needs no async context. The SDK's standard retry strategy (3 attempts with
/// backoff on throttling and 5xx) runs inside each call.
#[derive(Default)]
pub struct Xray {
    client: OnceCell<aws_sdk_xray::Client>,
}

impl Xray {
    async fn client(&self) -> &aws_sdk_xray::Client {
        self.client
            .get_or_init(|| async {
                let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                aws_sdk_xray::Client::new(&conf)
            })
            .await
    }
}

#[async_trait]
impl SegmentApi for Xray {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallError> {
        let output = self
            .client()
            .await
            .put_trace_segments()
            .set_trace_segment_documents(Some(documents))
            .send()
            .await
            .map_err(classify)?;
        Ok(output
            .unprocessed_trace_segments()
            .iter()
            .map(|u| Unprocessed {
                id: u.id().map(str::to_string),
                code: u.error_code().unwrap_or_default().to_string(),
                message: u.message().unwrap_or_default().to_string(),
            })
            .collect())
    }
}

fn classify<E, R>(e: SdkError<E, R>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e.code().map(str::to_string);
    let message = e.message().map(str::to_string);
    match (&e, code.as_deref()) {
        (
            SdkError::ServiceError(_),
            Some(
                c @ ("InvalidRequestException" | "ValidationException" | "SerializationException"),
            ),
        ) => CallError::Rejected {
            code: c.to_string(),
            message: message.unwrap_or_default(),
        },
        _ => CallError::Transient(format!(
            "{}{}",
            code.map(|c| format!("{c}: ")).unwrap_or_default(),
            aws_sdk_xray::error::DisplayErrorContext(&e)
        )),
    }
}
