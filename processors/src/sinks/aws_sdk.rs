//! What every AWS sink shares about the AWS SDK, so that it is written and tested once:
//!
//! - the configuration each sink's client is built from ([`config`]): the standard chain
//!   (`AWS_REGION`, `AWS_ENDPOINT_URL_*`, profiles, the ECS task role), with the SDK's own
//!   retry off, since the delivery engine is the one retry layer, and with time limits, since
//!   without its retry nothing else would end a call to a service that stopped answering;
//! - an SDK error reduced to what a classification needs ([`failure`] into a [`CallFailure`]),
//!   for any `aws-sdk-*` crate: they all re-export the same smithy `SdkError` and
//!   `HttpResponse`;
//! - what a call that failed as a whole means for the engine ([`for_failure`]), the same for
//!   every AWS JSON service. Each sink reads the answers of its own service first (refusals
//!   inside a success, codes that mean something only there) and passes the codes by which
//!   its service says one of the call's items is invalid.
//!
//! | the failed call, first row that matches | [`Answer`] |
//! |---|---|
//! | a request the SDK cannot build or sign (no region, no credentials) | `Fatal` |
//! | transport, timeout, unreadable response | `Retry` |
//! | a code in the sink's invalid-call list | `Refused` (bisected until the culprit is alone) |
//! | HTTP 413, `*TooLarge*` | `TooLarge` (halves) |
//! | HTTP 401/403, a credential or permission code ([`NOT_ALLOWED`]) | `Fatal` |
//! | throttling, 5xx, any other error | `Retry` (the service's code; its `Retry-After` if any) |

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::delivery::Answer;

/// A call that has not connected in this long fails (and the engine retries it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A call that has not been answered in this long fails; well above the services' own
/// request timeouts for the largest calls the sinks make (X-Ray's 4 MiB, a 1 MiB log batch).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// Where a whole call failed, as the SDK tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The service answered with an error.
    Service,
    /// The request never reached the service (connection refused or reset, DNS).
    Transport,
    Timeout,
    /// The service's answer could not be read.
    Response,
    /// The SDK could not build or sign the request (no region, no credentials): no retry
    /// helps until an operator acts.
    Setup,
}

/// A whole call that failed, reduced to what the classification needs; the sinks' call
/// traits return it, so scripted services in tests answer with it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub stage: Stage,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl CallFailure {
    /// An error the service answered (also what scripted services answer).
    pub fn service(status: u16, code: &str, message: &str) -> CallFailure {
        CallFailure {
            stage: Stage::Service,
            status: Some(status),
            code: Some(code.to_string()),
            message: message.to_string(),
            retry_after: None,
        }
    }

    /// Whether the service answered with this error code.
    pub fn is(&self, code: &str) -> bool {
        self.stage == Stage::Service && self.code.as_deref() == Some(code)
    }

    /// The service's code, or else a name for where the call failed: every failure needs a
    /// code for the retry and refusal metrics and the dead-letter lines.
    pub fn code(&self) -> String {
        self.code
            .clone()
            .unwrap_or_else(|| match (self.stage, self.status) {
                (Stage::Service, Some(status)) => format!("HTTP{status}"),
                (Stage::Service, None) => "ServiceError".into(),
                (Stage::Transport, _) => "DispatchFailure".into(),
                (Stage::Timeout, _) => "Timeout".into(),
                (Stage::Response, _) => "ResponseError".into(),
                (Stage::Setup, _) => "SetupFailure".into(),
            })
    }
}

/// What the classification needs of an SDK error, from any `aws-sdk-*` crate.
pub fn failure<E>(e: SdkError<E, HttpResponse>) -> CallFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| DisplayErrorContext(&e).to_string());
    let mut code = e.code().map(str::to_string);
    let stage = match &e {
        SdkError::ServiceError(_) => Stage::Service,
        SdkError::TimeoutError(_) => Stage::Timeout,
        SdkError::ResponseError(_) => Stage::Response,
        SdkError::ConstructionFailure(_) => Stage::Setup,
        SdkError::DispatchFailure(d) if d.is_io() => Stage::Transport,
        SdkError::DispatchFailure(d) if d.is_timeout() => Stage::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => Stage::Setup,
        // The SDK resolves credentials while dispatching and reports finding none as an
        // "other" dispatch failure, whose types are not public: recognised by what it says.
        SdkError::DispatchFailure(_) if mentions_credentials(&e) => {
            code.get_or_insert_with(|| "CredentialsError".into());
            Stage::Setup
        }
        _ => Stage::Transport,
    };
    let raw = e.raw_response();
    CallFailure {
        stage,
        status: raw.map(|r| r.status().as_u16()),
        code,
        message,
        retry_after: raw
            .and_then(|r| r.headers().get("retry-after"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}

fn mentions_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.to_string().to_ascii_lowercase().contains("credential") {
            return true;
        }
        next = err.source();
    }
    false
}

/// Service error codes no retry fixes until an operator acts; the same across AWS services,
/// since they come from authentication and IAM rather than from the service.
pub const NOT_ALLOWED: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
    "NotAuthorized",
];

/// What a call that failed as a whole means, given the codes by which the sink's service
/// says one of the call's items is invalid (each service names that differently).
pub fn for_failure(f: &CallFailure, invalid_call_codes: &[&str]) -> Answer {
    let code = f.code();
    let message = f.message.clone();
    match f.stage {
        Stage::Setup => return Answer::Fatal { code, message },
        Stage::Transport | Stage::Timeout | Stage::Response => return Answer::retry(code, message),
        Stage::Service => {}
    }
    if invalid_call_codes.contains(&code.as_str()) {
        Answer::Refused { code, message }
    } else if f.status == Some(413) || code.contains("TooLarge") {
        Answer::TooLarge(format!("{code}: {message}"))
    } else if NOT_ALLOWED.contains(&code.as_str()) || matches!(f.status, Some(401 | 403)) {
        Answer::Fatal { code, message }
    } else {
        // Throttling, 5xx, and what the service does not document: the same call may pass
        // later, and holding the round keeps the data on the bus rather than dropping it.
        Answer::Retry {
            code,
            message,
            after: f.retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    const INVALID: &[&str] = &["InvalidRequestException", "SerializationException"];

    fn failure_at(stage: Stage, code: Option<&str>, message: &str) -> CallFailure {
        CallFailure {
            stage,
            status: None,
            code: code.map(str::to_string),
            message: message.into(),
            retry_after: None,
        }
    }

    fn fatal(code: &str, message: &str) -> Answer {
        Answer::Fatal {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn failures_of_a_whole_call() {
        let service = CallFailure::service;
        let golden: Vec<(CallFailure, Answer)> = vec![
            (
                service(429, "ThrottledException", "Rate exceeded"),
                Answer::retry("ThrottledException", "Rate exceeded"),
            ),
            (
                service(400, "ThrottlingException", "Rate exceeded"),
                Answer::retry("ThrottlingException", "Rate exceeded"),
            ),
            (
                service(500, "InternalFailure", "oops"),
                Answer::retry("InternalFailure", "oops"),
            ),
            (
                CallFailure {
                    retry_after: Some(Duration::from_secs(2)),
                    code: None,
                    ..service(503, "", "busy")
                },
                Answer::Retry {
                    code: "HTTP503".into(),
                    message: "busy".into(),
                    after: Some(Duration::from_secs(2)),
                },
            ),
            (
                failure_at(Stage::Service, None, "no status"),
                Answer::retry("ServiceError", "no status"),
            ),
            (
                service(400, "InvalidRequestException", "bad"),
                Answer::Refused {
                    code: "InvalidRequestException".into(),
                    message: "bad".into(),
                },
            ),
            (
                service(400, "SerializationException", "bad json"),
                Answer::Refused {
                    code: "SerializationException".into(),
                    message: "bad json".into(),
                },
            ),
            (
                CallFailure {
                    code: None,
                    ..service(413, "", "Request Entity Too Large")
                },
                Answer::TooLarge("HTTP413: Request Entity Too Large".into()),
            ),
            (
                service(400, "RequestEntityTooLarge", "big"),
                Answer::TooLarge("RequestEntityTooLarge: big".into()),
            ),
            (
                service(403, "AccessDeniedException", "not authorized"),
                fatal("AccessDeniedException", "not authorized"),
            ),
            (
                service(400, "UnrecognizedClientException", "bad token"),
                fatal("UnrecognizedClientException", "bad token"),
            ),
            (
                CallFailure {
                    code: None,
                    ..service(403, "", "Forbidden")
                },
                fatal("HTTP403", "Forbidden"),
            ),
            (
                failure_at(Stage::Transport, None, "connection refused"),
                Answer::retry("DispatchFailure", "connection refused"),
            ),
            (
                failure_at(Stage::Timeout, None, "timed out"),
                Answer::retry("Timeout", "timed out"),
            ),
            (
                failure_at(Stage::Response, None, "truncated"),
                Answer::retry("ResponseError", "truncated"),
            ),
            (
                failure_at(Stage::Setup, None, "no region"),
                fatal("SetupFailure", "no region"),
            ),
            (
                failure_at(Stage::Setup, Some("CredentialsError"), "no credentials"),
                fatal("CredentialsError", "no credentials"),
            ),
        ];
        for (f, want) in golden {
            assert_eq!(for_failure(&f, INVALID), want, "{f:?}");
        }
    }

    #[test]
    fn only_the_sinks_own_codes_refuse_a_call() {
        // Another service's word for an invalid call is, here, an error not documented.
        let f = CallFailure::service(400, "InvalidParameterException", "bad");
        assert_eq!(
            for_failure(&f, INVALID),
            Answer::retry("InvalidParameterException", "bad")
        );
        assert!(matches!(
            for_failure(&f, &["InvalidParameterException"]),
            Answer::Refused { .. }
        ));
    }

    fn answered(status: u16, retry_after: Option<&'static str>) -> HttpResponse {
        let mut raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        if let Some(after) = retry_after {
            raw.headers_mut().insert("retry-after", after);
        }
        raw
    }

    #[test]
    fn service_errors_of_any_sdk_keep_their_code_status_and_retry_after() {
        use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;
        use aws_sdk_xray::operation::put_trace_segments::PutTraceSegmentsError;

        let meta = || {
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build()
        };
        let xray = failure(SdkError::service_error(
            PutTraceSegmentsError::generic(meta()),
            answered(429, Some(" 7 ")),
        ));
        assert_eq!(
            xray,
            CallFailure {
                retry_after: Some(Duration::from_secs(7)),
                ..CallFailure::service(429, "ThrottlingException", "Rate exceeded")
            }
        );
        let logs = failure(SdkError::service_error(
            PutLogEventsError::generic(meta()),
            answered(400, Some("a date")),
        ));
        assert_eq!(
            logs,
            CallFailure::service(400, "ThrottlingException", "Rate exceeded")
        );
    }

    #[test]
    fn errors_before_an_answer_are_placed_by_stage() {
        use aws_sdk_xray::operation::put_trace_segments::PutTraceSegmentsError;
        type E = SdkError<PutTraceSegmentsError, HttpResponse>;

        let stage = |e: E| {
            let f = failure(e);
            assert_eq!((f.status, f.retry_after), (None, None), "{f:?}");
            (f.stage, f.code)
        };
        assert_eq!(
            stage(SdkError::dispatch_failure(ConnectorError::io(
                "reset".into()
            ))),
            (Stage::Transport, None)
        );
        assert_eq!(
            stage(SdkError::dispatch_failure(ConnectorError::timeout(
                "slow".into()
            ))),
            (Stage::Timeout, None)
        );
        assert_eq!(
            stage(SdkError::dispatch_failure(ConnectorError::other(
                "no credentials in the environment or the profile".into(),
                None
            ))),
            (Stage::Setup, Some("CredentialsError".into()))
        );
        assert_eq!(
            stage(SdkError::dispatch_failure(ConnectorError::other(
                "something else".into(),
                None
            ))),
            (Stage::Transport, None)
        );
        assert_eq!(
            stage(SdkError::construction_failure("no region")),
            (Stage::Setup, None)
        );
        assert_eq!(
            stage(SdkError::timeout_error("attempt timeout")),
            (Stage::Timeout, None)
        );
    }
}
