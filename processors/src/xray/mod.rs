//! OTLP spans -> AWS X-Ray segment documents (for `PutTraceSegments`).
//!
//! Pure translation: no I/O and no clock reads; the caller passes `now`, which is
//! only used to decide whether a trace id is acceptable to X-Ray.
//!
//! # Documents
//! - A SERVER span, or a local root (no parent, or a parent flagged remote in
//!   `Span.flags`), becomes a segment document. Its `parent_id` is the remote parent
//!   when there is one.
//! - Any other span (CLIENT, PRODUCER, INTERNAL, CONSUMER, unspecified) is a
//!   subsegment: nested in its parent's `subsegments` when the parent is in the
//!   same request under the same resource, otherwise an independent document with
//!   `type: "subsegment"`, `trace_id` and `parent_id`. Nesting deeper than
//!   [`MAX_NESTING_DEPTH`] also yields independent documents, as does a cycle of
//!   parent ids (broken at its first span).
//! - One document or nested subsegment per span; document order follows the
//!   input.
//!
//! # Trace ids
//! Span ids become 16 hex chars and trace ids `1-<8 hex epoch>-<24 hex>`. An OTLP
//! trace id whose first 4 bytes already are an epoch X-Ray accepts (within
//! `[now - 30 days, now + 5 min]`) is kept as is. Any other id (random W3C ids) is
//! remapped without state:
//!
//! - the 24-hex random part is bytes 4..16 of the original id, unchanged;
//! - the epoch is the most recent *boundary of the trace* at or before the span's
//!   start time, where the boundaries of a trace are `phase + k * 21 days` and
//!   `phase = splitmix64(original 16 bytes) mod 21 days`.
//!
//! Every span of a trace computes the same value from the same id as long as no
//! boundary of that trace falls between their start times, independently of
//! `now`, of batching and of restarts. A stateless mapping that must move forward
//! in time cannot avoid a discontinuity somewhere; the per-trace phase puts it at
//! a pseudo-random point of a 21-day cycle, so a trace whose spans start `d` apart
//! is split in two X-Ray traces with probability `d / 21 days` (1 s: 5.5e-7,
//! 1 h: 0.2 %), and never at a shared instant such as midnight for all traces at
//! once. The epoch is at most 21 days before the span start, so X-Ray accepts it
//! as long as the span is translated within 9 days of starting; older spans (and
//! spans without a start time) are dropped and counted in
//! [`TranslationStats::dropped_spans`]. A span whose start is more than 5 minutes
//! in the future of `now` uses the previous boundary when its own lies in that
//! future. Every top-level document of a remapped trace carries the original id as
//! the annotation `otel_trace_id` (32 hex chars), which is never shed.
//!
//! # Fields
//! See [`translate`]: `name`, `namespace`, `http`, `sql`, `aws`, `origin`,
//! `error`/`fault`/`throttle`, `cause`, `user`, `service`, annotations and
//! metadata, both for current and legacy OpenTelemetry semantic conventions.
//! Attributes copied into a typed field are not repeated in metadata.
//!
//! # Size
//! No document exceeds [`MAX_DOCUMENT_BYTES`] (64 KiB); see [`size`] for the
//! shedding order.

mod attrs;
mod aws;
pub mod cause;
mod http;
pub mod segment;
pub mod size;
mod sql;
pub mod trace_id;
mod translate;

#[cfg(test)]
mod tests;

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::{Deserialize, Serialize};

pub(crate) use attrs::any_to_json;
pub use cause::MAX_STACK_FRAMES;
pub use size::MAX_DOCUMENT_BYTES;
pub use trace_id::{xray_trace_id, XrayTraceId};
pub use translate::{MAX_ANNOTATIONS, MAX_NAME_CHARS, MAX_NESTING_DEPTH};

/// Which span attributes become (indexed) annotations rather than metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationMode {
    /// No annotations (besides `otel_trace_id` on remapped traces).
    #[default]
    None,
    /// Every span attribute not consumed by a typed field, in attribute order.
    All,
    /// These attribute keys, in this order. `otel.resource.<key>` selects a
    /// resource attribute (on top-level documents).
    Keys(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct XrayConfig {
    pub annotations: AnnotationMode,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translation {
    /// JSON segment documents, each at most [`MAX_DOCUMENT_BYTES`].
    pub documents: Vec<String>,
    pub stats: TranslationStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslationStats {
    /// Spans in the request.
    pub spans: usize,
    /// Documents produced (`documents.len()`).
    pub documents: usize,
    /// Spans whose trace id was remapped.
    pub remapped_trace_ids: usize,
    /// Spans dropped: malformed or all-zero ids, a trace id X-Ray would reject
    /// (see the module docs), or (unreachable in practice) a document that could
    /// not be shrunk under the cap.
    pub dropped_spans: usize,
    /// Annotation candidates beyond the 50-per-segment limit (or colliding after
    /// key sanitising) that went to metadata instead.
    pub annotations_to_metadata: usize,
    /// Size cap: metadata keys removed.
    pub metadata_keys_shed: usize,
    /// Size cap: annotations removed.
    pub annotations_shed: usize,
    /// Size cap: stack frames removed (also counted in the exceptions' `truncated`).
    pub stack_frames_shed: usize,
    /// Size cap: nested subsegments moved to their own documents.
    pub documents_split: usize,
    /// Size cap: strings cut to 1024 chars.
    pub strings_truncated: usize,
    /// Size cap: exceptions removed (all but the first of a segment).
    pub exceptions_shed: usize,
}

/// Translates an OTLP export request into X-Ray segment documents.
///
/// Field mapping (current semantic-convention name first, legacy after `|`):
/// - `name`: segments use resource `service.name`; CLIENT/PRODUCER subsegments use
///   `peer.service`, the AWS service (`rpc.service` with `rpc.system=aws-api` |
///   `aws.service`), `db.namespace|db.name` + `@host`, `rpc.service`,
///   `server.address|net.peer.name|http.host`, the url's host; everything falls
///   back to the span name. Sanitised to X-Ray's characters, at most 200 chars.
/// - `namespace` (subsegments of CLIENT/PRODUCER spans): `aws` for AWS SDK calls,
///   `remote` otherwise.
/// - `http`: `http.request.method|http.method`, `url.full|http.url` (or built from
///   `url.scheme|http.scheme`, `server.address|net.host.name|net.peer.name|http.host`,
///   `server.port|net.host.port|net.peer.port`, `url.path`+`url.query|http.target`,
///   `http.route`), `user_agent.original|http.user_agent`,
///   `client.address|http.client_ip` (server spans: else
///   `network.peer.address|net.sock.peer.addr|net.peer.ip`),
///   `http.response.status_code|http.status_code`,
///   `http.response.body.size|http.response_content_length`.
/// - `sql` (`db.system.name|db.system` present, not AWS SDK): `url`
///   (`db.connection_string` or `<system>://host[:port]`, plus `/<db>`),
///   `database_type`, `user` (`db.user`), `sanitized_query`
///   (`db.query.text|db.statement`).
/// - `aws`: `operation` (`rpc.method` for AWS SDK | `aws.operation`), `region`
///   (`aws.region`, AWS SDK spans fall back to resource `cloud.region`),
///   `request_id` (`aws.request_id|aws.requestId`), `queue_url`
///   (`aws.sqs.queue.url|aws.sqs.queue_url|aws.queue_url|messaging.url`),
///   `table_name` (`aws.dynamodb.table_names[0]|aws.table_name`), `account_id`;
///   segments also get `ecs`/`eks`/`ec2`/`elastic_beanstalk` from the resource
///   (per `cloud.platform`) and `xray.sdk*` from `telemetry.sdk.*`.
/// - `origin` (segments): from `cloud.platform` `aws_ecs|aws_eks|aws_ec2|
///   aws_elastic_beanstalk`.
/// - `error`/`fault`/`throttle`: HTTP 429 -> error+throttle, other 4xx -> error,
///   5xx -> fault; otherwise status ERROR -> fault.
/// - `cause`: `exception` events (see [`cause`]); else the ERROR status message.
/// - `user`: `enduser.id|user.id`; `service.version` (segments): resource
///   `service.version`.
/// - annotations per [`XrayConfig::annotations`] (at most 50 per segment or
///   subsegment, keys sanitised); every other span attribute goes to
///   `metadata.default`, plus resource attributes as `otel.resource.<key>` once per
///   top-level document.
pub fn translate(
    request: &ExportTraceServiceRequest,
    config: &XrayConfig,
    now: SystemTime,
) -> Translation {
    translate::translate(request, config, now)
}
