//! Redaction of OTLP requests on their protobuf bytes, before they are split.
//!
//! The collector never decodes OTLP ([`crate::wire`]), and redaction keeps it so: the request
//! is walked field by field along the schema's tables ([`crate::wire::schema`]), every string
//! is shown to the rules with the key it sits under, and a message is rebuilt only when
//! something inside it changed. A request with nothing to redact costs a walk and the
//! detectors' scans, and is handed on as it came (no allocation).
//!
//! Bytes that are not what the schema says (bad framing, bad UTF-8, a wrong wire type) are
//! left exactly as they are: the split that follows checks the same tables and refuses the
//! item (or the request) they are in, so nothing this walk could not read is published.
//! Unknown fields inside a rewritten path are dropped, as every processor's decode would drop
//! them anyway, so no bytes the rules never saw reach the bus.

use crate::wire::schema::{self, Kind, Msg, MAX_DEPTH};

/// Deeper than the split's own limit ([`MAX_DEPTH`] counted from each item, where this walk
/// counts from the request): everything the split accepts is walked, and what is deeper the
/// split refuses.
const LIMIT: usize = MAX_DEPTH + 8;
use std::collections::HashMap;

use crate::wire::{put_nested, Fields, Value};

use super::rules::{self, KeyCtx, Rules, Special, Verdict};

use Kind::*;

/// What walking a message (or a value) came to.
enum Walk {
    Same,
    New(Vec<u8>),
    Drop,
}

static TRACES_REQUEST: Msg = Msg {
    name: "ExportTraceServiceRequest",
    fields: &[(1, "resource_spans[]", Message(&RESOURCE_SPANS))],
};
static RESOURCE_SPANS: Msg = Msg {
    name: "ResourceSpans",
    fields: &[
        (1, "resource", Message(&schema::RESOURCE)),
        (2, "scope_spans[]", Message(&SCOPE_SPANS)),
        (3, "schema_url", Str),
    ],
};
static SCOPE_SPANS: Msg = Msg {
    name: "ScopeSpans",
    fields: &[
        (1, "scope", Message(&schema::INSTRUMENTATION_SCOPE)),
        (2, "spans[]", Message(&schema::SPAN)),
        (3, "schema_url", Str),
    ],
};
static METRICS_REQUEST: Msg = Msg {
    name: "ExportMetricsServiceRequest",
    fields: &[(1, "resource_metrics[]", Message(&RESOURCE_METRICS))],
};
static RESOURCE_METRICS: Msg = Msg {
    name: "ResourceMetrics",
    fields: &[
        (1, "resource", Message(&schema::RESOURCE)),
        (2, "scope_metrics[]", Message(&SCOPE_METRICS)),
        (3, "schema_url", Str),
    ],
};
static SCOPE_METRICS: Msg = Msg {
    name: "ScopeMetrics",
    fields: &[
        (1, "scope", Message(&schema::INSTRUMENTATION_SCOPE)),
        (2, "metrics[]", Message(&schema::METRIC)),
        (3, "schema_url", Str),
    ],
};
static LOGS_REQUEST: Msg = Msg {
    name: "ExportLogsServiceRequest",
    fields: &[(1, "resource_logs[]", Message(&RESOURCE_LOGS))],
};
static RESOURCE_LOGS: Msg = Msg {
    name: "ResourceLogs",
    fields: &[
        (1, "resource", Message(&schema::RESOURCE)),
        (2, "scope_logs[]", Message(&SCOPE_LOGS)),
        (3, "schema_url", Str),
    ],
};
static SCOPE_LOGS: Msg = Msg {
    name: "ScopeLogs",
    fields: &[
        (1, "scope", Message(&schema::INSTRUMENTATION_SCOPE)),
        (2, "log_records[]", Message(&schema::LOG_RECORD)),
        (3, "schema_url", Str),
    ],
};

#[derive(Clone, Copy)]
pub enum OtlpSignal {
    Traces,
    Metrics,
    Logs,
}

/// The request with its secrets replaced, or `None` when nothing was (the caller keeps the
/// bytes it has). `hits` gets the number of each rule that fired.
pub fn redact(
    rules: &Rules,
    signal: OtlpSignal,
    request: &[u8],
    allow_services: &[String],
    hits: &mut Vec<u16>,
) -> Option<Vec<u8>> {
    let (top, resource) = match signal {
        OtlpSignal::Traces => (&TRACES_REQUEST, &RESOURCE_SPANS),
        OtlpSignal::Metrics => (&METRICS_REQUEST, &RESOURCE_METRICS),
        OtlpSignal::Logs => (&LOGS_REQUEST, &RESOURCE_LOGS),
    };
    let walker = Walker {
        rules,
        allow_services,
        resource,
        keys: Default::default(),
    };
    match walker.message(top, request, 1, hits) {
        Walk::New(bytes) => Some(bytes),
        Walk::Same | Walk::Drop => None,
    }
}

struct Walker<'a> {
    rules: &'a Rules,
    allow_services: &'a [String],
    /// The `resource_*` message of this signal, where the service allow list applies.
    resource: &'static Msg,
    /// What each attribute key of this request (not nested in another value) says: a request
    /// repeats a few dozen keys hundreds of times, and looking one up is cheaper than judging it.
    keys: std::cell::RefCell<HashMap<&'a [u8], KeyCtx, rustc_hash::FxBuildHasher>>,
}

/// The kind of field `number` of `msg`; fields are in order of number, so it is usually at
/// its number's offset from the first.
fn kind_of(msg: &Msg, number: u32) -> Option<Kind> {
    let first = msg.fields.first()?.0;
    match msg.fields.get(number.wrapping_sub(first) as usize) {
        Some(&(n, _, kind)) if n == number => Some(kind),
        _ => msg
            .fields
            .iter()
            .find(|(n, _, _)| *n == number)
            .map(|(_, _, k)| *k),
    }
}

fn is(a: &Msg, b: &Msg) -> bool {
    std::ptr::eq(a, b)
}

impl<'a> Walker<'a> {
    /// Walks a message that is not an attribute value: its strings have no key.
    fn message(&self, msg: &Msg, bytes: &'a [u8], depth: usize, hits: &mut Vec<u16>) -> Walk {
        if depth > LIMIT {
            return Walk::Same;
        }
        if is(msg, self.resource) && !self.allow_services.is_empty() && self.allowed(bytes) {
            return Walk::Same;
        }
        let plain = self.rules.plain();
        let mut out: Option<Vec<u8>> = None;
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            let walked = match (kind_of(msg, field.number), field.value) {
                // Unknown: dropped, as a decode would drop it, so nothing unread travels.
                (None, _) => Walk::Drop,
                (Some(Str), Value::Len(b)) if !self.rules.could_change(b, &plain) => Walk::Same,
                (Some(Str), Value::Len(b)) => match std::str::from_utf8(b) {
                    Ok(s) => self.string(s, &plain, hits),
                    Err(_) => return Walk::Same,
                },
                (Some(Message(inner)), Value::Len(b)) if is(inner, &schema::KEY_VALUE) => {
                    self.key_value(b, bytes, field.number, &plain, depth + 1, hits)
                }
                (Some(Message(inner)), Value::Len(b)) if is(inner, &schema::ANY_VALUE) => {
                    self.any_value(b, &plain, depth + 1, hits)
                }
                (Some(Message(inner)), Value::Len(b)) => self.message(inner, b, depth + 1, hits),
                (Some(Bytes), Value::Len(_)) => Walk::Same,
                // The wrong wire type: the split refuses this message.
                (Some(Message(_) | Str | Bytes), _) => return Walk::Same,
                _ => Walk::Same,
            };
            splice(&mut out, bytes, &field, walked);
        }
        out.map_or(Walk::Same, Walk::New)
    }

    /// A `KeyValue` met as field `number` of `parent`: its value is judged under its key.
    fn key_value(
        &self,
        bytes: &'a [u8],
        parent: &'a [u8],
        number: u32,
        outer: &KeyCtx,
        depth: usize,
        hits: &mut Vec<u16>,
    ) -> Walk {
        if depth > LIMIT {
            return Walk::Same;
        }
        let mut key: &[u8] = &[];
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            if let (1, Value::Len(b)) = (field.number, field.value) {
                key = b;
            }
        }
        let top = *outer == self.rules.plain();
        let cached = top.then(|| self.keys.borrow().get(key).copied()).flatten();
        let mut ctx = match cached {
            Some(ctx) => ctx,
            None => {
                let Ok(text) = std::str::from_utf8(key) else {
                    return Walk::Same;
                };
                let ctx = self.rules.key(text, outer);
                if top {
                    self.keys.borrow_mut().insert(key, ctx);
                }
                ctx
            }
        };
        // A secret key whose rule drops: the attribute goes whatever its value's type.
        if let Some(rule) = ctx.whole {
            if self.rules.action(rule) == crate::redact::config::Action::Drop {
                hits.push(rule);
                return Walk::Drop;
            }
        }
        if let Special::Sql(_) = ctx.special {
            ctx.special = Special::Sql(rules::dialect(&sibling_string(
                parent,
                number,
                &["db.system.name", "db.system"],
            )));
        }
        let mut out: Option<Vec<u8>> = None;
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            let walked = match (field.number, field.value) {
                (1 | 3, _) => Walk::Same,
                (2, Value::Len(b)) => self.any_value(b, &ctx, depth + 1, hits),
                (2, _) => return Walk::Same,
                _ => Walk::Drop,
            };
            if let Walk::Drop = walked {
                if field.number == 2 {
                    return Walk::Drop;
                }
            }
            splice(&mut out, bytes, &field, walked);
        }
        out.map_or(Walk::Same, Walk::New)
    }

    fn any_value(&self, bytes: &'a [u8], ctx: &KeyCtx, depth: usize, hits: &mut Vec<u16>) -> Walk {
        if depth > LIMIT || ctx.allowed {
            return Walk::Same;
        }
        let mut out: Option<Vec<u8>> = None;
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            let walked = match (field.number, field.value) {
                (1, Value::Len(b)) if !self.rules.could_change(b, ctx) => Walk::Same,
                (1, Value::Len(b)) => match std::str::from_utf8(b) {
                    Ok(s) => self.string(s, ctx, hits),
                    Err(_) => return Walk::Same,
                },
                // Bytes holding text are judged as text; other bytes only by their key.
                (7, Value::Len(b)) => match std::str::from_utf8(b) {
                    Ok(s) => self.string(s, ctx, hits),
                    Err(_) if ctx.whole.is_some() => {
                        self.string(&String::from_utf8_lossy(b), ctx, hits)
                    }
                    Err(_) => Walk::Same,
                },
                (5, Value::Len(b)) => self.array(b, ctx, depth + 1, hits),
                (6, Value::Len(b)) => self.kvlist(b, ctx, depth + 1, hits),
                (1 | 5 | 6 | 7, _) => return Walk::Same,
                (2..=4 | 8, _) => Walk::Same,
                _ => Walk::Drop,
            };
            if let Walk::Drop = walked {
                if matches!(field.number, 1 | 5 | 6 | 7) {
                    return Walk::Drop;
                }
            }
            splice(&mut out, bytes, &field, walked);
        }
        out.map_or(Walk::Same, Walk::New)
    }

    fn array(&self, bytes: &'a [u8], ctx: &KeyCtx, depth: usize, hits: &mut Vec<u16>) -> Walk {
        if depth > LIMIT {
            return Walk::Same;
        }
        let mut out: Option<Vec<u8>> = None;
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            let walked = match (field.number, field.value) {
                (1, Value::Len(b)) => self.any_value(b, ctx, depth + 1, hits),
                (1, _) => return Walk::Same,
                _ => Walk::Drop,
            };
            if let (Walk::Drop, 1) = (&walked, field.number) {
                return Walk::Drop;
            }
            splice(&mut out, bytes, &field, walked);
        }
        out.map_or(Walk::Same, Walk::New)
    }

    fn kvlist(&self, bytes: &'a [u8], ctx: &KeyCtx, depth: usize, hits: &mut Vec<u16>) -> Walk {
        if depth > LIMIT {
            return Walk::Same;
        }
        let mut out: Option<Vec<u8>> = None;
        for field in Fields::new(bytes) {
            let Ok(field) = field else {
                return Walk::Same;
            };
            let walked = match (field.number, field.value) {
                (1, Value::Len(b)) => self.key_value(b, bytes, 1, ctx, depth + 1, hits),
                (1, _) => return Walk::Same,
                _ => Walk::Drop,
            };
            splice(&mut out, bytes, &field, walked);
        }
        out.map_or(Walk::Same, Walk::New)
    }

    fn string(&self, s: &str, ctx: &KeyCtx, hits: &mut Vec<u16>) -> Walk {
        match self.rules.value(s, ctx, hits) {
            Verdict::Keep => Walk::Same,
            Verdict::Replace(new) => Walk::New(new.into_bytes()),
            Verdict::Drop => Walk::Drop,
        }
    }

    /// Whether a `resource_*` message's resource names an allow-listed service.
    fn allowed(&self, resource_entry: &[u8]) -> bool {
        Fields::new(resource_entry)
            .flatten()
            .filter(|f| f.number == 1)
            .filter_map(|f| match f.value {
                Value::Len(b) => Some(sibling_string(b, 1, &["service.name"])),
                _ => None,
            })
            .any(|name| self.allow_services.contains(&name))
    }
}

/// Puts `field` (as it was, rebuilt, or not at all) into the rebuilt message `out`, which is
/// started, with the fields before this one, at the first change.
fn splice(out: &mut Option<Vec<u8>>, bytes: &[u8], field: &crate::wire::Field, walked: Walk) {
    let start = field.whole.as_ptr() as usize - bytes.as_ptr() as usize;
    match walked {
        Walk::Same => {
            if let Some(out) = out {
                out.extend_from_slice(field.whole);
            }
        }
        Walk::New(value) => {
            let out = out.get_or_insert_with(|| {
                let mut v = Vec::with_capacity(bytes.len() + 64);
                v.extend_from_slice(&bytes[..start]);
                v
            });
            put_nested(out, field.number, value.len());
            out.extend_from_slice(&value);
        }
        Walk::Drop => {
            out.get_or_insert_with(|| bytes[..start].to_vec());
        }
    }
}

/// The string value of the first `KeyValue` among field `number` of `message` whose key is
/// one of `keys` (in the order of `keys`), or "".
fn sibling_string(message: &[u8], number: u32, keys: &[&str]) -> String {
    let mut found: Vec<(usize, String)> = Vec::new();
    for field in Fields::new(message).flatten() {
        let (true, Value::Len(kv)) = (field.number == number, field.value) else {
            continue;
        };
        let mut key: &[u8] = &[];
        let mut value: &[u8] = &[];
        for f in Fields::new(kv).flatten() {
            match (f.number, f.value) {
                (1, Value::Len(b)) => key = b,
                (2, Value::Len(b)) => value = b,
                _ => {}
            }
        }
        let Some(rank) = keys.iter().position(|k| k.as_bytes() == key) else {
            continue;
        };
        for f in Fields::new(value).flatten() {
            if let (1, Value::Len(s)) = (f.number, f.value) {
                found.push((rank, String::from_utf8_lossy(s).into_owned()));
            }
        }
    }
    found
        .into_iter()
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        metric, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    use super::*;
    use crate::redact::config::{Action, RedactionConfig};

    const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
    const CARD: &str = "4111111111111111";
    const EMAIL: &str = "jane@example.com";

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        })
    }

    fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            ..Default::default()
        }
    }

    fn resource(extra: Vec<KeyValue>) -> Option<Resource> {
        let mut attributes = vec![kv("service.name", s("shop"))];
        attributes.extend(extra);
        Some(Resource {
            attributes,
            ..Default::default()
        })
    }

    fn traces() -> ExportTraceServiceRequest {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: format!("charge {CARD}"),
            attributes: vec![
                kv("http.route", s("/checkout")),
                kv("db.system", s("mysql")),
                kv(
                    "db.statement",
                    s(r#"SELECT * FROM cards WHERE number = "4111111111111111" AND n = 3"#),
                ),
                kv(
                    "url.full",
                    s("https://api.example.com/pay?amount=5&api_key=k-123"),
                ),
                kv("http.request.header.authorization", s("Bearer abc")),
                kv(
                    "env",
                    Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue {
                            values: vec![
                                s("HOME=/root").unwrap(),
                                s(&format!("KEY={AWS_KEY}")).unwrap(),
                            ],
                        })),
                    }),
                ),
                kv(
                    "user",
                    Some(AnyValue {
                        value: Some(any_value::Value::KvlistValue(KeyValueList {
                            values: vec![
                                kv("mail", s(EMAIL)),
                                kv("password", s("hunter2")),
                                kv("id", s("u-1")),
                            ],
                        })),
                    }),
                ),
                kv(
                    "app.items",
                    Some(AnyValue {
                        value: Some(any_value::Value::IntValue(3)),
                    }),
                ),
                // Not a credential: kept, unless the rule drops.
                kv(
                    "retry.password",
                    Some(AnyValue {
                        value: Some(any_value::Value::IntValue(1234)),
                    }),
                ),
            ],
            events: vec![span::Event {
                name: "exception".into(),
                attributes: vec![kv("exception.message", s(&format!("no user {EMAIL}")))],
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                attributes: vec![kv("note", s(&format!("from {AWS_KEY}")))],
                ..Default::default()
            }],
            status: Some(Status {
                message: format!("card {CARD} declined"),
                code: 2,
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(vec![kv("deploy.by", s(EMAIL))]),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        attributes: vec![kv("lib.token", s("t"))],
                        ..Default::default()
                    }),
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn redacted(
        config: &RedactionConfig,
        signal: OtlpSignal,
        bytes: &[u8],
    ) -> (Option<Vec<u8>>, Vec<&'static str>) {
        let rules = Rules::new(config).unwrap();
        let mut hits = Vec::new();
        let out = redact(&rules, signal, bytes, &config.allow_services, &mut hits);
        let names = hits
            .iter()
            .map(|h| rules::BUILTIN.get(*h as usize).copied().unwrap_or("custom"))
            .collect();
        (out, names)
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        attrs
            .iter()
            .find(|k| k.key == key)
            .and_then(|k| k.value.as_ref()?.value.as_ref())
    }

    fn string(v: Option<&any_value::Value>) -> &str {
        match v {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("not a string: {other:?}"),
        }
    }

    #[test]
    fn every_string_of_a_span_is_redacted_and_the_rest_kept() {
        let request = traces();
        let (out, hits) = redacted(
            &RedactionConfig::default(),
            OtlpSignal::Traces,
            &request.encode_to_vec(),
        );
        let out = ExportTraceServiceRequest::decode(&out.expect("changed")[..]).unwrap();
        let rs = &out.resource_spans[0];
        let res = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(string(attr(res, "service.name")), "shop");
        assert_eq!(string(attr(res, "deploy.by")), "[REDACTED:email]");
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            string(attr(&scope.attributes, "lib.token")),
            "[REDACTED:sensitive_key]"
        );
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.name, "charge [REDACTED:card_number]");
        assert_eq!(span.trace_id, vec![1; 16]);
        let a = &span.attributes;
        assert_eq!(string(attr(a, "http.route")), "/checkout");
        // MySQL: double quotes hold a string.
        assert_eq!(
            string(attr(a, "db.statement")),
            "SELECT * FROM cards WHERE number = ? AND n = ?"
        );
        assert_eq!(
            string(attr(a, "url.full")),
            "https://api.example.com/pay?amount=5&api_key=[REDACTED:url_query]"
        );
        assert_eq!(
            string(attr(a, "http.request.header.authorization")),
            "[REDACTED:sensitive_key]"
        );
        let Some(any_value::Value::ArrayValue(env)) = attr(a, "env") else {
            panic!()
        };
        assert_eq!(string(env.values[0].value.as_ref()), "HOME=/root");
        assert_eq!(
            string(env.values[1].value.as_ref()),
            "KEY=[REDACTED:aws_access_key]"
        );
        let Some(any_value::Value::KvlistValue(user)) = attr(a, "user") else {
            panic!()
        };
        assert_eq!(string(attr(&user.values, "mail")), "[REDACTED:email]");
        assert_eq!(
            string(attr(&user.values, "password")),
            "[REDACTED:sensitive_key]"
        );
        assert_eq!(string(attr(&user.values, "id")), "u-1");
        assert_eq!(attr(a, "app.items"), Some(&any_value::Value::IntValue(3)));
        assert_eq!(
            attr(a, "retry.password"),
            Some(&any_value::Value::IntValue(1234))
        );
        assert_eq!(
            string(attr(&span.events[0].attributes, "exception.message")),
            "no user [REDACTED:email]"
        );
        assert_eq!(
            string(attr(&span.links[0].attributes, "note")),
            "from [REDACTED:aws_access_key]"
        );
        assert_eq!(
            span.status.as_ref().unwrap().message,
            "card [REDACTED:card_number] declined"
        );
        assert_eq!(hits.len(), 12, "{hits:?}");
        // Everything else is as it was.
        let mut expected = traces();
        let e = &mut expected.resource_spans[0].scope_spans[0].spans[0];
        e.name.clone_from(&span.name);
        e.attributes.clone_from(&span.attributes);
        e.events.clone_from(&span.events);
        e.links.clone_from(&span.links);
        e.status.clone_from(&span.status);
        expected.resource_spans[0].resource.clone_from(&rs.resource);
        expected.resource_spans[0].scope_spans[0]
            .scope
            .clone_from(&rs.scope_spans[0].scope);
        assert_eq!(out, expected);
    }

    #[test]
    fn nothing_to_redact_is_no_copy() {
        let mut request = traces();
        let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
        span.name = "GET /api/cart".into();
        span.attributes.truncate(2);
        span.events.clear();
        span.links.clear();
        span.status = None;
        request.resource_spans[0].resource = resource(vec![]);
        request.resource_spans[0].scope_spans[0].scope = None;
        let (out, hits) = redacted(
            &RedactionConfig::default(),
            OtlpSignal::Traces,
            &request.encode_to_vec(),
        );
        assert!(out.is_none() && hits.is_empty(), "{hits:?}");
    }

    #[test]
    fn drop_removes_the_attribute_and_allow_lists_keep_values() {
        let mut config = RedactionConfig::default();
        config.actions.insert("sensitive_key".into(), Action::Drop);
        config.allow_keys = vec!["deploy.*".into()];
        let (out, _) = redacted(&config, OtlpSignal::Traces, &traces().encode_to_vec());
        let out = ExportTraceServiceRequest::decode(&out.unwrap()[..]).unwrap();
        let rs = &out.resource_spans[0];
        assert_eq!(
            string(attr(&rs.resource.as_ref().unwrap().attributes, "deploy.by")),
            EMAIL
        );
        let span = &rs.scope_spans[0].spans[0];
        assert!(attr(&span.attributes, "http.request.header.authorization").is_none());
        assert_eq!(span.attributes.len(), 7);
        let Some(any_value::Value::KvlistValue(user)) = attr(&span.attributes, "user") else {
            panic!()
        };
        assert_eq!(user.values.len(), 2);

        let config = RedactionConfig {
            allow_services: vec!["shop".into()],
            ..Default::default()
        };
        let (out, hits) = redacted(&config, OtlpSignal::Traces, &traces().encode_to_vec());
        assert!(out.is_none() && hits.is_empty());
    }

    #[test]
    fn log_bodies_and_metric_points_are_redacted() {
        let body = |v| Some(AnyValue { value: Some(v) });
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(vec![]),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord {
                            body: s(&format!("login by {EMAIL} with password=hunter2")),
                            ..Default::default()
                        },
                        LogRecord {
                            body: body(any_value::Value::KvlistValue(KeyValueList {
                                values: vec![
                                    kv("msg", s(&format!("paid {CARD}"))),
                                    kv("api_key", s("k")),
                                ],
                            })),
                            attributes: vec![kv("order.id", s("4111111111111112"))],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (out, _) = redacted(
            &RedactionConfig::default(),
            OtlpSignal::Logs,
            &logs.encode_to_vec(),
        );
        let out = ExportLogsServiceRequest::decode(&out.unwrap()[..]).unwrap();
        let records = &out.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(
            string(records[0].body.as_ref().unwrap().value.as_ref()),
            "login by [REDACTED:email] with password=[REDACTED:secret_assignment]"
        );
        let Some(any_value::Value::KvlistValue(b)) =
            records[1].body.as_ref().unwrap().value.as_ref()
        else {
            panic!()
        };
        assert_eq!(
            string(attr(&b.values, "msg")),
            "paid [REDACTED:card_number]"
        );
        assert_eq!(
            string(attr(&b.values, "api_key")),
            "[REDACTED:sensitive_key]"
        );
        // Fails Luhn: an order id, kept.
        assert_eq!(
            string(attr(&records[1].attributes, "order.id")),
            "4111111111111112"
        );

        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(vec![]),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "logins".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                attributes: vec![kv("user", s(EMAIL))],
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let (out, hits) = redacted(
            &RedactionConfig::default(),
            OtlpSignal::Metrics,
            &metrics.encode_to_vec(),
        );
        let out = ExportMetricsServiceRequest::decode(&out.unwrap()[..]).unwrap();
        let Some(metric::Data::Gauge(g)) =
            &out.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!()
        };
        assert_eq!(
            string(attr(&g.data_points[0].attributes, "user")),
            "[REDACTED:email]"
        );
        assert_eq!(hits, ["email"]);
    }

    #[test]
    fn what_the_walk_cannot_read_is_left_for_the_split_to_refuse() {
        let mut request = traces();
        request.resource_spans[0].scope_spans[0].spans.push(Span {
            trace_id: vec![5; 16],
            span_id: vec![6; 8],
            name: "\u{1F600} secret".into(),
            attributes: vec![kv("x", s(EMAIL))],
            ..Default::default()
        });
        let mut bytes = request.encode_to_vec();
        let at = bytes
            .windows(4)
            .position(|w| w == "\u{1F600}".as_bytes())
            .unwrap();
        bytes[at] = 0xff;
        let (out, _) = redacted(&RedactionConfig::default(), OtlpSignal::Traces, &bytes);
        let out = out.unwrap();
        // The bad bytes are still there (a string nothing could match is not even checked as
        // UTF-8 here), and the split refuses their span alone.
        let mut bad = "\u{1F600}".as_bytes().to_vec();
        bad[0] = 0xff;
        assert!(out.windows(4).any(|w| w == bad));
        let split = crate::partition::split_traces(&out, 4).unwrap();
        assert_eq!(split.rejected.count, 1);
        for part in &split.parts {
            assert!(!part
                .body
                .windows(EMAIL.len())
                .any(|w| w == EMAIL.as_bytes()));
            assert!(!part.body.windows(CARD.len()).any(|w| w == CARD.as_bytes()));
        }
    }

    #[test]
    fn unknown_fields_on_a_rewritten_path_are_dropped() {
        let mut span = traces().resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
        // Field 99, a string holding a key.
        prost::encoding::string::encode(99, &format!("x {AWS_KEY}"), &mut span);
        let mut scope = Vec::new();
        put_nested(&mut scope, 2, span.len());
        scope.extend_from_slice(&span);
        let mut resource = Vec::new();
        put_nested(&mut resource, 2, scope.len());
        resource.extend_from_slice(&scope);
        let mut request = Vec::new();
        put_nested(&mut request, 1, resource.len());
        request.extend_from_slice(&resource);
        let (out, _) = redacted(&RedactionConfig::default(), OtlpSignal::Traces, &request);
        let out = out.unwrap();
        assert!(!out.windows(AWS_KEY.len()).any(|w| w == AWS_KEY.as_bytes()));
        ExportTraceServiceRequest::decode(&out[..]).unwrap();
    }
}
