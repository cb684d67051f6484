//! AWS SDK errors as bus errors: the service's error code is kept in the message so logs and
//! metrics can tell throttling from outages.

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use crate::BusError;

/// The service's error code, or what went wrong before the service answered.
pub fn error_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(s) => s.err().code().unwrap_or("Unknown").to_string(),
        SdkError::TimeoutError(_) => "Timeout".into(),
        SdkError::DispatchFailure(_) => "DispatchFailure".into(),
        SdkError::ResponseError(_) => "ResponseError".into(),
        SdkError::ConstructionFailure(_) => "ConstructionFailure".into(),
        _ => "Unknown".into(),
    }
}

pub fn kinesis_error<E, R>(operation: &str, e: SdkError<E, R>) -> BusError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = error_code(&e);
    let message = match &e {
        SdkError::ServiceError(s) => s.err().message().unwrap_or_default().to_string(),
        other => aws_sdk_kinesis::error::DisplayErrorContext(other).to_string(),
    };
    BusError::Unavailable(format!("{operation}: {code}: {message}"))
}

/// Throttling codes of Kinesis and DynamoDB: back off and try again.
pub fn is_throttle(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "KMSThrottlingException"
            | "RequestLimitExceeded"
    )
}
