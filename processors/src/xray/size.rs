//! The 64 KiB per-document cap.
//!
//! A document that serialises larger than [`MAX_DOCUMENT_BYTES`] is shrunk in this
//! order, each step only as far as needed (largest items first), re-measuring
//! between steps:
//! 1. metadata keys of nested subsegments, then of the document itself;
//! 2. annotations (except the mandatory `otel_trace_id`);
//! 3. exception stack frames (counted in the exception's `truncated`);
//! 4. nested subsegments split out (largest first) into independent subsegment
//!    documents (`type: "subsegment"`, `trace_id`, `parent_id`), each then capped
//!    the same way;
//! 5. last resort for a single oversized span: strings longer than 1024 chars
//!    truncated, then all exceptions but the first dropped. A document that still
//!    does not fit (not reachable with the fields produced here) is dropped and
//!    counted in `dropped_spans`.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::segment::Segment;
use super::TranslationStats;

/// X-Ray's segment document limit.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
const MAX_STRING_CHARS: usize = 1024;
pub(crate) const OTEL_TRACE_ID_KEY: &str = "otel_trace_id";

fn json<T: Serialize + ?Sized>(v: &T) -> String {
    // Serialising these types cannot fail (string keys, no custom impls).
    serde_json::to_string(v).unwrap_or_default()
}

/// Caps `doc` (and whatever is split out of it) and appends the serialised
/// documents to `out`. `otel_trace_id` is the original id when it was remapped; it
/// is never shed and is added to split-out documents.
pub(crate) fn emit(
    doc: Segment,
    otel_trace_id: Option<&str>,
    stats: &mut TranslationStats,
    out: &mut Vec<String>,
) {
    let mut queue = VecDeque::from([doc]);
    while let Some(mut d) = queue.pop_front() {
        match fit(&mut d, otel_trace_id, stats, &mut queue) {
            Some(s) => out.push(s),
            None => stats.dropped_spans += 1,
        }
    }
}

fn fit(
    d: &mut Segment,
    otel: Option<&str>,
    stats: &mut TranslationStats,
    queue: &mut VecDeque<Segment>,
) -> Option<String> {
    let mut s = json(d);
    if s.len() <= MAX_DOCUMENT_BYTES {
        return Some(s);
    }
    stats.metadata_keys_shed += shed_metadata(d, true, &mut s);
    stats.metadata_keys_shed += shed_metadata(d, false, &mut s);
    stats.annotations_shed += shed_annotations(d, otel.is_some(), &mut s);
    stats.stack_frames_shed += shed_stacks(d, &mut s);
    split_children(d, otel, &mut s, stats, queue);
    if s.len() > MAX_DOCUMENT_BYTES {
        stats.strings_truncated += truncate_strings(d);
        s = json(d);
    }
    if s.len() > MAX_DOCUMENT_BYTES {
        stats.exceptions_shed += drop_exceptions(d);
        s = json(d);
    }
    (s.len() <= MAX_DOCUMENT_BYTES).then_some(s)
}

/// Pre-order walk with a sequence number and depth per node.
fn walk(seg: &mut Segment, f: &mut dyn FnMut(usize, usize, &mut Segment)) {
    fn rec(
        seg: &mut Segment,
        depth: usize,
        seq: &mut usize,
        f: &mut dyn FnMut(usize, usize, &mut Segment),
    ) {
        f(*seq, depth, seg);
        *seq += 1;
        for c in &mut seg.subsegments {
            rec(c, depth + 1, seq, f);
        }
    }
    let mut seq = 0;
    rec(seg, 0, &mut seq, f);
}

/// Greedy selection: largest first until the estimated excess is covered.
/// Items are `(bytes, tie-break key, token)`.
fn select<T: Ord + Clone>(mut items: Vec<(usize, T)>, current: usize) -> Vec<T> {
    items.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut excess = current.saturating_sub(MAX_DOCUMENT_BYTES);
    let mut chosen = Vec::new();
    for (size, token) in items {
        if excess == 0 {
            break;
        }
        chosen.push(token);
        excess = excess.saturating_sub(size);
    }
    chosen
}

fn entry_len(key: &str, value: &impl Serialize) -> usize {
    json(key).len() + 1 + json(value).len() + 1
}

fn shed_metadata(d: &mut Segment, nested: bool, s: &mut String) -> usize {
    let mut shed = 0;
    while s.len() > MAX_DOCUMENT_BYTES {
        let mut items = Vec::new();
        walk(d, &mut |seq, depth, seg| {
            if (depth > 0) == nested {
                for (ns, m) in &seg.metadata {
                    for (k, v) in m {
                        items.push((entry_len(k, v), (seq, ns.clone(), k.clone())));
                    }
                }
            }
        });
        if items.is_empty() {
            break;
        }
        let mut by_node: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for (seq, ns, k) in select(items, s.len()) {
            by_node.entry(seq).or_default().push((ns, k));
            shed += 1;
        }
        walk(d, &mut |seq, _, seg| {
            for (ns, k) in by_node.remove(&seq).unwrap_or_default() {
                if let Some(m) = seg.metadata.get_mut(&ns) {
                    m.remove(&k);
                    if m.is_empty() {
                        seg.metadata.remove(&ns);
                    }
                }
            }
        });
        *s = json(d);
    }
    shed
}

fn shed_annotations(d: &mut Segment, keep_otel: bool, s: &mut String) -> usize {
    let mut shed = 0;
    while s.len() > MAX_DOCUMENT_BYTES {
        let mut items = Vec::new();
        walk(d, &mut |seq, depth, seg| {
            for (k, v) in &seg.annotations {
                if !(keep_otel && depth == 0 && k == OTEL_TRACE_ID_KEY) {
                    items.push((entry_len(k, v), (seq, k.clone())));
                }
            }
        });
        if items.is_empty() {
            break;
        }
        let mut by_node: HashMap<usize, Vec<String>> = HashMap::new();
        for (seq, k) in select(items, s.len()) {
            by_node.entry(seq).or_default().push(k);
            shed += 1;
        }
        walk(d, &mut |seq, _, seg| {
            for k in by_node.remove(&seq).unwrap_or_default() {
                seg.annotations.remove(&k);
            }
        });
        *s = json(d);
    }
    shed
}

fn shed_stacks(d: &mut Segment, s: &mut String) -> usize {
    let mut shed = 0;
    while s.len() > MAX_DOCUMENT_BYTES {
        let mut items = Vec::new();
        walk(d, &mut |seq, _, seg| {
            for (i, e) in seg
                .cause
                .iter()
                .flat_map(|c| c.exceptions.iter())
                .enumerate()
            {
                if !e.stack.is_empty() {
                    // `"stack":[...],` goes, `"truncated":N,` may appear.
                    let gain = (json(&e.stack).len() + 9).saturating_sub(20);
                    items.push((gain, (seq, i)));
                }
            }
        });
        if items.is_empty() {
            break;
        }
        let mut by_node: HashMap<usize, Vec<usize>> = HashMap::new();
        for (seq, i) in select(items, s.len()) {
            by_node.entry(seq).or_default().push(i);
        }
        walk(d, &mut |seq, _, seg| {
            let Some(cause) = seg.cause.as_mut() else {
                return;
            };
            for i in by_node.remove(&seq).unwrap_or_default() {
                let e = &mut cause.exceptions[i];
                let n = e.stack.len() as u64;
                e.truncated = Some(e.truncated.unwrap_or(0) + n);
                e.stack.clear();
                shed += n as usize;
            }
        });
        *s = json(d);
    }
    shed
}

fn split_children(
    d: &mut Segment,
    otel: Option<&str>,
    s: &mut String,
    stats: &mut TranslationStats,
    queue: &mut VecDeque<Segment>,
) {
    while s.len() > MAX_DOCUMENT_BYTES && !d.subsegments.is_empty() {
        let items = d
            .subsegments
            .iter()
            .enumerate()
            .map(|(i, c)| (json(c).len() + 1, i))
            .collect();
        let mut chosen = select(items, s.len());
        chosen.sort_unstable();
        let children = std::mem::take(&mut d.subsegments);
        for (i, mut c) in children.into_iter().enumerate() {
            if chosen.binary_search(&i).is_err() {
                d.subsegments.push(c);
                continue;
            }
            c.kind = Some("subsegment".to_string());
            c.trace_id.clone_from(&d.trace_id);
            c.parent_id = Some(d.id.clone());
            if let Some(orig) = otel {
                c.annotations
                    .insert(OTEL_TRACE_ID_KEY.to_string(), orig.into());
            }
            stats.documents_split += 1;
            queue.push_back(c);
        }
        *s = json(d);
    }
}

fn truncate(s: &mut String) -> bool {
    match s.char_indices().nth(MAX_STRING_CHARS) {
        Some((i, _)) => {
            s.truncate(i);
            true
        }
        None => false,
    }
}

fn truncate_strings(d: &mut Segment) -> usize {
    let mut n = 0;
    walk(d, &mut |_, _, seg| {
        let mut t = |o: &mut Option<String>| {
            if o.as_mut().is_some_and(truncate) {
                n += 1;
            }
        };
        t(&mut seg.origin);
        t(&mut seg.namespace);
        t(&mut seg.user);
        if let Some(r) = seg.http.as_mut().and_then(|h| h.request.as_mut()) {
            t(&mut r.method);
            t(&mut r.url);
            t(&mut r.user_agent);
            t(&mut r.client_ip);
        }
        if let Some(a) = seg.aws.as_mut() {
            for o in [
                &mut a.operation,
                &mut a.region,
                &mut a.request_id,
                &mut a.queue_url,
                &mut a.table_name,
                &mut a.account_id,
            ] {
                t(o);
            }
            if let Some(e) = a.ecs.as_mut() {
                for o in [
                    &mut e.container,
                    &mut e.container_id,
                    &mut e.container_arn,
                    &mut e.task_arn,
                    &mut e.task_family,
                    &mut e.cluster_arn,
                    &mut e.launch_type,
                    &mut e.availability_zone,
                ] {
                    t(o);
                }
            }
            if let Some(e) = a.eks.as_mut() {
                for o in [&mut e.pod, &mut e.cluster_name, &mut e.container_id] {
                    t(o);
                }
            }
            if let Some(e) = a.ec2.as_mut() {
                for o in [
                    &mut e.instance_id,
                    &mut e.availability_zone,
                    &mut e.instance_size,
                    &mut e.ami_id,
                ] {
                    t(o);
                }
            }
            if let Some(e) = a.elastic_beanstalk.as_mut() {
                t(&mut e.environment_name);
                t(&mut e.version_label);
            }
            if let Some(x) = a.xray.as_mut() {
                t(&mut x.sdk);
                t(&mut x.sdk_version);
            }
        }
        if let Some(q) = seg.sql.as_mut() {
            for o in [
                &mut q.url,
                &mut q.connection_string,
                &mut q.database_type,
                &mut q.database_version,
                &mut q.user,
                &mut q.sanitized_query,
                &mut q.preparation,
            ] {
                t(o);
            }
        }
        if let Some(v) = seg.service.as_mut() {
            t(&mut v.version);
        }
        if let Some(c) = seg.cause.as_mut() {
            t(&mut c.working_directory);
            for e in &mut c.exceptions {
                t(&mut e.message);
                t(&mut e.kind);
            }
        }
    });
    n
}

fn drop_exceptions(d: &mut Segment) -> usize {
    let mut n = 0;
    walk(d, &mut |_, _, seg| {
        if let Some(c) = seg.cause.as_mut() {
            if c.exceptions.len() > 1 {
                n += c.exceptions.len() - 1;
                c.exceptions.truncate(1);
                c.exceptions[0].cause = None;
            }
        }
    });
    n
}
