//! Why a request was refused, and how each protocol says so.
//!
//! OTLP's rules: retryable failures are gRPC UNAVAILABLE / RESOURCE_EXHAUSTED with RetryInfo,
//! HTTP 429 / 503 with Retry-After; bad data is INVALID_ARGUMENT / 400 and must not be retried.

use std::time::Duration;

use axum::http::StatusCode;

#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The request cannot be decoded or is invalid as a whole. Not retryable.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a configured size or count limit. Not retryable as is.
    #[error("{0}")]
    TooLarge(String),
    /// The request's body did not arrive within `body_timeout`. The client may retry.
    #[error("{0}")]
    Timeout(String),
    /// The collector's memory bound is reached: try again shortly.
    #[error(
        "collector is at its memory limit ({limit} bytes buffered awaiting the bus); retry later"
    )]
    Busy { limit: usize, retry_after: Duration },
    /// The bus did not make the data durable (failed, timed out, or shutting down).
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

impl IngestError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            IngestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            IngestError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Busy { retry_after, .. }
            | IngestError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The label under which refusals are counted.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::BadRequest(_) => "bad_request",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::TooLarge(_) => "too_large",
            IngestError::Timeout(_) => "timeout",
            IngestError::Busy { .. } => "busy",
            IngestError::Unavailable { .. } => "unavailable",
        }
    }

    pub fn to_grpc(&self) -> tonic::Status {
        use tonic::Code;
        use tonic_types::{ErrorDetails, StatusExt};
        let code = match self {
            IngestError::BadRequest(_) | IngestError::UnsupportedMediaType(_) => {
                Code::InvalidArgument
            }
            IngestError::TooLarge(_) | IngestError::Busy { .. } => Code::ResourceExhausted,
            IngestError::Timeout(_) => Code::DeadlineExceeded,
            IngestError::Unavailable { .. } => Code::Unavailable,
        };
        match self.retry_after() {
            Some(after) => tonic::Status::with_error_details(
                code,
                self.to_string(),
                ErrorDetails::with_retry_info(Some(after)),
            ),
            None => tonic::Status::new(code, self.to_string()),
        }
    }
}
