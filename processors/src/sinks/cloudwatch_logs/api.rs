//! The four CloudWatch Logs operations both CloudWatch sinks use, behind [`LogsApi`], so the
//! writer's logic (create-and-cache, re-create, classification) runs through the delivery
//! engine against a scripted CloudWatch in unit tests and against moto end to end. This is the
//! only module that knows the CloudWatch Logs SDK: it reduces each SDK error to a
//! [`CallFailure`], as every AWS sink does ([`aws_sdk::failure`]).

use async_trait::async_trait;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use tokio::sync::OnceCell;

use super::batch::LogEvent;
use crate::sinks::aws_sdk::{self, CallFailure, Stage};

/// `rejectedLogEventsInfo` of a `PutLogEvents` that succeeded: indexes into the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rejected {
    pub too_new_start: Option<i32>,
    pub too_old_end: Option<i32>,
    pub expired_end: Option<i32>,
}

/// One request each; never retried here (the engine retries, once for all sinks).
#[async_trait]
pub trait LogsApi: Send + Sync + 'static {
    async fn create_log_group(&self, group: &str) -> Result<(), CallFailure>;
    async fn put_retention_policy(&self, group: &str, days: u32) -> Result<(), CallFailure>;
    async fn create_log_stream(&self, group: &str, stream: &str) -> Result<(), CallFailure>;
    async fn put_log_events(
        &self,
        group: &str,
        stream: &str,
        events: &[&LogEvent],
    ) -> Result<Rejected, CallFailure>;
}

/// `aws-sdk-cloudwatchlogs`, configured by the standard AWS chain (`AWS_REGION`,
/// `AWS_ENDPOINT_URL[_CLOUDWATCH_LOGS]`, profiles, the task role) on first use, so building a
/// sink needs no async context. The SDK's own retry is off: the engine's is the only one.
#[derive(Default)]
pub struct CloudWatchLogs {
    client: OnceCell<Client>,
}

impl CloudWatchLogs {
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let conf = aws_sdk::config().await;
                Client::new(&conf)
            })
            .await
    }
}

#[async_trait]
impl LogsApi for CloudWatchLogs {
    async fn create_log_group(&self, group: &str) -> Result<(), CallFailure> {
        let client = self.client().await;
        client
            .create_log_group()
            .log_group_name(group)
            .send()
            .await
            .map(|_| ())
            .map_err(aws_sdk::failure)
    }

    async fn put_retention_policy(&self, group: &str, days: u32) -> Result<(), CallFailure> {
        let client = self.client().await;
        client
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(days as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(aws_sdk::failure)
    }

    async fn create_log_stream(&self, group: &str, stream: &str) -> Result<(), CallFailure> {
        let client = self.client().await;
        client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
            .map(|_| ())
            .map_err(aws_sdk::failure)
    }

    async fn put_log_events(
        &self,
        group: &str,
        stream: &str,
        events: &[&LogEvent],
    ) -> Result<Rejected, CallFailure> {
        let input = events
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.timestamp_ms)
                    .message(&e.message)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CallFailure {
                stage: Stage::Setup,
                status: None,
                code: Some("BuildError".into()),
                message: e.to_string(),
                retry_after: None,
            })?;
        let client = self.client().await;
        let out = client
            .put_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .set_log_events(Some(input))
            .send()
            .await
            .map_err(aws_sdk::failure)?;
        Ok(out
            .rejected_log_events_info()
            .map(|r| Rejected {
                too_new_start: r.too_new_log_event_start_index(),
                too_old_end: r.too_old_log_event_end_index(),
                expired_end: r.expired_log_event_end_index(),
            })
            .unwrap_or_default())
    }
}
