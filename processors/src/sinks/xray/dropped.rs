//! Spans the translator cannot place in X-Ray (it drops them and counts them in
//! `dropped_spans`), found again so they are dead-lettered with the reason instead of lost
//! silently: each becomes a [`Doc`] marked unplaceable, which the engine's precheck refuses
//! and its one writer dead-letters. Runs only when the translator reported drops.

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

use super::request::Doc;
use crate::xray::xray_trace_id;

pub const CODE: &str = "Tidewater.UnplaceableSpan";

/// Each span of `request` that has no X-Ray form, as a one-span OTLP/JSON request with the
/// span's ids and the reason.
pub fn unplaceable(request: &ExportTraceServiceRequest, now: SystemTime) -> Vec<Doc> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                let ids = (
                    <[u8; 16]>::try_from(&span.trace_id[..]),
                    <[u8; 8]>::try_from(&span.span_id[..]),
                );
                let reason = match ids {
                    (Ok(trace), Ok(id)) if id != [0; 8] => {
                        if xray_trace_id(&trace, span.start_time_unix_nano, now).is_some() {
                            continue;
                        }
                        "no X-Ray trace id can hold it: the trace id is all zero, or the span \
                         started too long ago (X-Ray takes trace ids of the last 30 days; \
                         remapped ids are up to 21 days older than the span)"
                    }
                    _ => "trace_id must be 16 bytes and span_id 8 bytes, not all zero",
                };
                let one = ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans: vec![ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: vec![span.clone()],
                        schema_url: ss.schema_url.clone(),
                    }],
                    schema_url: rs.schema_url.clone(),
                };
                let body = serde_json::to_string(&ExportTraceServiceRequest {
                    resource_spans: vec![one],
                })
                .unwrap_or_default();
                let mut doc = Doc::new(body);
                doc.id = Some(hex(&span.span_id));
                doc.trace_id = Some(hex(&span.trace_id));
                doc.unplaceable = Some(reason);
                out.push(doc);
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
