//! Span -> segment translation and the segment/subsegment tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use serde_json::Value;

use super::attrs::{annotation_value, any_to_json, Attrs};
use super::segment::{Segment, Service};
use super::size::{self, OTEL_TRACE_ID_KEY};
use super::trace_id::{hex, xray_trace_id};
use super::{aws, cause, http, sql, AnnotationMode, Translation, TranslationStats, XrayConfig};

/// X-Ray's per-(sub)segment annotation limit.
pub const MAX_ANNOTATIONS: usize = 50;
/// Maximum segment name length (chars).
pub const MAX_NAME_CHARS: usize = 200;
/// Subsegments nested deeper than this are emitted as independent documents.
pub const MAX_NESTING_DEPTH: usize = 32;

const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;
const RESOURCE_PREFIX: &str = "otel.resource.";
const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Top-level segment document.
    Segment,
    /// Top-level `type: "subsegment"` document (parent not in the batch).
    Independent,
    /// Nested in its parent's `subsegments`.
    Nested,
}

struct Node<'a> {
    res_idx: usize,
    resource: &'a [KeyValue],
    span: &'a Span,
    trace: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    xray_trace_id: String,
    remapped: bool,
    is_segment: bool,
}

pub(crate) fn translate(
    request: &ExportTraceServiceRequest,
    config: &XrayConfig,
    now: SystemTime,
) -> Translation {
    let mut stats = TranslationStats::default();
    let mut nodes = Vec::new();
    for (res_idx, rs) in request.resource_spans.iter().enumerate() {
        let resource = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        for span in rs.scope_spans.iter().flat_map(|ss| ss.spans.iter()) {
            stats.spans += 1;
            let ids = (
                <[u8; 16]>::try_from(&span.trace_id[..]),
                <[u8; 8]>::try_from(&span.span_id[..]),
            );
            let (Ok(trace), Ok(span_id)) = ids else {
                stats.dropped_spans += 1;
                continue;
            };
            let xid = match xray_trace_id(&trace, span.start_time_unix_nano, now) {
                Some(x) if span_id != [0; 8] => x,
                _ => {
                    stats.dropped_spans += 1;
                    continue;
                }
            };
            stats.remapped_trace_ids += usize::from(xid.remapped);
            let parent = <[u8; 8]>::try_from(&span.parent_span_id[..])
                .ok()
                .filter(|p| *p != [0; 8]);
            let remote_parent =
                span.flags & FLAG_HAS_IS_REMOTE != 0 && span.flags & FLAG_IS_REMOTE != 0;
            nodes.push(Node {
                res_idx,
                resource,
                span,
                trace,
                span_id,
                parent,
                xray_trace_id: xid.id,
                remapped: xid.remapped,
                is_segment: span_kind(span) == SpanKind::Server
                    || parent.is_none()
                    || remote_parent,
            });
        }
    }

    // Parents are looked up within the same resource (same service).
    let mut index = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        index.entry((n.res_idx, n.trace, n.span_id)).or_insert(i);
    }
    let mut children = vec![Vec::new(); nodes.len()];
    let mut top = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let parent = n
            .parent
            .and_then(|p| index.get(&(n.res_idx, n.trace, p)).copied())
            .filter(|&p| p != i);
        match parent {
            Some(p) if !n.is_segment => children[p].push(i),
            _ => top[i] = true,
        }
    }

    let mut b = Builder {
        nodes: &nodes,
        children,
        visited: vec![false; nodes.len()],
        config,
        stats,
        documents: Vec::new(),
    };
    for (i, &is_top) in top.iter().enumerate() {
        if is_top && !b.visited[i] {
            b.emit_root(i);
        }
    }
    // Only spans in parent cycles are left; break each cycle at its first span.
    for i in 0..nodes.len() {
        if !b.visited[i] {
            b.emit_root(i);
        }
    }
    let mut stats = b.stats;
    stats.documents = b.documents.len();
    Translation {
        documents: b.documents,
        stats,
    }
}

struct Builder<'a, 'n> {
    nodes: &'n [Node<'a>],
    children: Vec<Vec<usize>>,
    visited: Vec<bool>,
    config: &'n XrayConfig,
    stats: TranslationStats,
    documents: Vec<String>,
}

impl Builder<'_, '_> {
    fn emit_root(&mut self, root: usize) {
        let mut pending = vec![root];
        let mut k = 0;
        while k < pending.len() {
            let r = pending[k];
            k += 1;
            self.visited[r] = true;
            let role = if self.nodes[r].is_segment {
                Role::Segment
            } else {
                Role::Independent
            };
            let seg = self.build(r, role, 0, &mut pending);
            let node = &self.nodes[r];
            let original = node.remapped.then(|| hex(&node.trace));
            size::emit(
                seg,
                original.as_deref(),
                &mut self.stats,
                &mut self.documents,
            );
        }
    }

    fn build(&mut self, i: usize, role: Role, depth: usize, pending: &mut Vec<usize>) -> Segment {
        let node = &self.nodes[i];
        let mut seg = span_to_segment(node, role, self.config, &mut self.stats);
        for c in std::mem::take(&mut self.children[i]) {
            if self.visited[c] {
                continue;
            }
            self.visited[c] = true;
            if depth + 1 >= MAX_NESTING_DEPTH {
                pending.push(c);
            } else {
                let child = self.build(c, Role::Nested, depth + 1, pending);
                seg.subsegments.push(child);
            }
        }
        seg
    }
}

fn span_kind(span: &Span) -> SpanKind {
    SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified)
}

fn secs(unix_nanos: u64) -> f64 {
    (unix_nanos / 1_000) as f64 / 1_000_000.0
}

fn span_to_segment(
    node: &Node<'_>,
    role: Role,
    config: &XrayConfig,
    stats: &mut TranslationStats,
) -> Segment {
    let span = node.span;
    let kind = span_kind(span);
    let mut a = Attrs::new(&span.attributes);
    let mut r = Attrs::new(node.resource);
    let top_level = role != Role::Nested;
    let aws_sdk = aws::is_aws_sdk(&a);
    let outgoing = matches!(kind, SpanKind::Client | SpanKind::Producer);

    let name = segment_name(role, outgoing, &a, &r, &span.name);
    let (http, status_code) = http::make_http(&mut a, kind);
    let sql = if aws_sdk { None } else { sql::make_sql(&mut a) };
    let mut aws = aws::make_span_aws(&mut a, &r, aws_sdk);
    let mut origin = None;
    let mut service = None;
    if role == Role::Segment {
        origin = aws::origin(&r).map(str::to_string);
        aws::add_resource_blocks(&mut aws, &mut r);
        service = r
            .take_string(&["service.version"])
            .map(|v| Service { version: Some(v) });
    }
    let status_error = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    let (error, fault, throttle) = match status_code {
        Some(429) => (true, false, true),
        Some(400..=499) => (true, false, false),
        Some(500..=599) => (false, true, false),
        _ => (false, status_error, false),
    };
    let cause = cause::make_cause(span, &node.span_id, outgoing);
    let user = a.take_string(&["enduser.id", "user.id"]);
    let namespace = (role != Role::Segment && outgoing)
        .then(|| if aws_sdk { "aws" } else { "remote" }.to_string());
    let original = node.remapped.then(|| hex(&node.trace));
    let (annotations, metadata) =
        annotations_and_metadata(&a, &r, role, original.as_deref(), config, stats);

    let start = span.start_time_unix_nano;
    let (end_time, in_progress) = match span.end_time_unix_nano {
        0 => (None, Some(true)),
        end => (Some(secs(end.max(start))), None),
    };
    Segment {
        name,
        id: hex(&node.span_id),
        trace_id: top_level.then(|| node.xray_trace_id.clone()),
        parent_id: if top_level {
            node.parent.map(|p| hex(&p))
        } else {
            None
        },
        kind: (role == Role::Independent).then(|| "subsegment".to_string()),
        start_time: secs(start),
        end_time,
        in_progress,
        origin,
        namespace,
        user,
        error,
        fault,
        throttle,
        http,
        aws: (!aws.is_empty()).then_some(aws),
        sql,
        service,
        cause,
        annotations,
        metadata,
        subsegments: Vec::new(),
        precursor_ids: Vec::new(),
    }
}

/// Segment name. Segments: `service.name`. CLIENT/PRODUCER subsegments:
/// `peer.service`, the AWS service, `db@host`, `rpc.service`, the peer host, the
/// url's host. Otherwise (and as fallback) the span name. Sanitised; `span` if
/// nothing survives sanitising.
fn segment_name(
    role: Role,
    outgoing: bool,
    a: &Attrs<'_>,
    r: &Attrs<'_>,
    span_name: &str,
) -> String {
    let mut candidates: Vec<Option<String>> = Vec::new();
    if role == Role::Segment {
        candidates.push(r.str("service.name").map(str::to_string));
    } else if outgoing {
        candidates.push(a.str("peer.service").map(str::to_string));
        if aws::is_aws_sdk(a) {
            candidates.push(aws::service_name(a).map(str::to_string));
        }
        candidates.push(sql::db_segment_name(a));
        candidates.push(a.str("rpc.service").map(str::to_string));
        candidates.push(a.first_str(http::PEER_HOST).map(str::to_string));
        candidates.push(
            a.first_str(&["url.full", "http.url"])
                .and_then(http::url_host)
                .map(str::to_string),
        );
    }
    candidates.push(Some(span_name.to_string()));
    candidates
        .into_iter()
        .flatten()
        .map(|c| sanitize_name(&c))
        .find(|c| !c.is_empty())
        .unwrap_or_else(|| "span".to_string())
}

/// Keeps Unicode letters and numbers, whitespace (as a space) and
/// `_ . : / % & # = + \ - @`; drops everything else; caps at 200 chars.
pub(crate) fn sanitize_name(name: &str) -> String {
    name.chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || "_.:/%&#=+\\-@".contains(c) {
                Some(c)
            } else if c.is_whitespace() {
                Some(' ')
            } else {
                None
            }
        })
        .take(MAX_NAME_CHARS)
        .collect()
}

/// Annotation keys: ASCII letters, digits and `_`; anything else becomes `_`.
pub(crate) fn sanitize_annotation_key(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

type Metadata = BTreeMap<String, BTreeMap<String, Value>>;

fn annotations_and_metadata<'a>(
    a: &Attrs<'a>,
    r: &Attrs<'a>,
    role: Role,
    original_trace_id: Option<&str>,
    config: &XrayConfig,
    stats: &mut TranslationStats,
) -> (BTreeMap<String, Value>, Metadata) {
    let top_level = role != Role::Nested;
    let mut annotations = BTreeMap::new();
    // The mandatory `otel_trace_id` takes one slot of the 50 on every segment of a
    // remapped trace (it is added to split-out subsegments too).
    let budget = MAX_ANNOTATIONS - usize::from(original_trace_id.is_some());
    if let (Some(orig), true) = (original_trace_id, top_level) {
        annotations.insert(OTEL_TRACE_ID_KEY.to_string(), Value::from(orig));
    }
    let mut used: HashSet<String> = annotations.keys().cloned().collect();
    if original_trace_id.is_some() {
        used.insert(OTEL_TRACE_ID_KEY.to_string());
    }

    let candidates: Vec<(&KeyValue, bool)> = match &config.annotations {
        AnnotationMode::None => Vec::new(),
        AnnotationMode::All => a.unconsumed().map(|kv| (kv, false)).collect(),
        AnnotationMode::Keys(keys) => keys
            .iter()
            .filter_map(|k| {
                a.unconsumed()
                    .find(|kv| kv.key == *k)
                    .map(|kv| (kv, false))
                    .or_else(|| {
                        let rk = k.strip_prefix(RESOURCE_PREFIX).filter(|_| top_level)?;
                        r.unconsumed().find(|kv| kv.key == rk).map(|kv| (kv, true))
                    })
            })
            .collect(),
    };
    let mut annotated: HashSet<(bool, &str)> = HashSet::new();
    let mut count = 0;
    for (kv, is_resource) in candidates {
        if annotated.contains(&(is_resource, kv.key.as_str())) {
            continue;
        }
        let Some(value) = annotation_value(kv.value.as_ref()) else {
            continue;
        };
        let key = if is_resource {
            sanitize_annotation_key(&format!("{RESOURCE_PREFIX}{}", kv.key))
        } else {
            sanitize_annotation_key(&kv.key)
        };
        if count >= budget || used.contains(&key) {
            stats.annotations_to_metadata += 1;
            continue;
        }
        used.insert(key.clone());
        annotations.insert(key, value);
        annotated.insert((is_resource, kv.key.as_str()));
        count += 1;
    }

    let mut default = BTreeMap::new();
    for kv in a.unconsumed() {
        if !annotated.contains(&(false, kv.key.as_str())) {
            default
                .entry(kv.key.clone())
                .or_insert_with(|| any_to_json(kv.value.as_ref()));
        }
    }
    if top_level {
        for kv in r.unconsumed() {
            if !annotated.contains(&(true, kv.key.as_str())) {
                default
                    .entry(format!("{RESOURCE_PREFIX}{}", kv.key))
                    .or_insert_with(|| any_to_json(kv.value.as_ref()));
            }
        }
    }
    let mut metadata = Metadata::new();
    if !default.is_empty() {
        metadata.insert(DEFAULT_NAMESPACE.to_string(), default);
    }
    (annotations, metadata)
}
