//! `cause` from span events named `exception` (or, failing that, from an ERROR
//! status message), with `exception.stacktrace` parsed into frames.
//!
//! Recognised stack formats (detected per trace, no `telemetry.sdk.language`
//! needed):
//! - Python tracebacks: `  File "x.py", line 12, in func` (frames of the last
//!   `Traceback (most recent call last):` section, reversed to most-recent-first);
//! - Java: `\tat pkg.Class.method(File.java:123)`, with `Caused by: T: msg`
//!   sections becoming chained exceptions and `Suppressed:` sections skipped;
//! - JavaScript (V8): `    at func (file.js:10:5)` and `    at file.js:10:5`.

use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};

use super::attrs::Attrs;
use super::segment::{Cause, Exception, StackFrame};
use super::trace_id::exception_id;

/// Frames kept per exception; the rest are counted in `truncated`.
pub const MAX_STACK_FRAMES: usize = 50;

pub(crate) fn make_cause(span: &Span, span_id: &[u8; 8], remote: bool) -> Option<Cause> {
    let remote = remote.then_some(true);
    let mut exceptions = Vec::new();
    for (idx, event) in span.events.iter().enumerate() {
        if event.name != "exception" {
            continue;
        }
        let attrs = Attrs::new(&event.attributes);
        let parsed = attrs
            .str("exception.stacktrace")
            .map(parse_stacktrace)
            .unwrap_or_default();
        let mut chain = vec![Exception {
            id: exception_id(span_id, idx as u64, 0),
            message: attrs.string("exception.message"),
            kind: attrs.string("exception.type"),
            remote,
            ..Exception::default()
        }];
        set_stack(&mut chain[0], parsed.frames);
        for (n, c) in parsed.causes.into_iter().enumerate() {
            let mut e = Exception {
                id: exception_id(span_id, idx as u64, n as u64 + 1),
                message: c.message,
                kind: Some(c.kind),
                remote,
                ..Exception::default()
            };
            set_stack(&mut e, c.frames);
            let last = chain.len() - 1;
            chain[last].cause = Some(e.id.clone());
            chain.push(e);
        }
        exceptions.extend(chain);
    }
    let status = span.status.as_ref();
    if exceptions.is_empty() {
        let msg = status
            .filter(|s| s.code == StatusCode::Error as i32 && !s.message.is_empty())
            .map(|s| s.message.clone())?;
        exceptions.push(Exception {
            id: exception_id(span_id, u64::MAX, 0),
            message: Some(msg),
            remote,
            ..Exception::default()
        });
    }
    Some(Cause {
        working_directory: None,
        exceptions,
    })
}

fn set_stack(e: &mut Exception, mut frames: Vec<StackFrame>) {
    if frames.len() > MAX_STACK_FRAMES {
        e.truncated = Some((frames.len() - MAX_STACK_FRAMES) as u64);
        frames.truncate(MAX_STACK_FRAMES);
    }
    e.stack = frames;
}

#[derive(Debug, Default, PartialEq)]
pub(crate) struct ParsedTrace {
    /// Frames of the exception itself, most recent first.
    pub frames: Vec<StackFrame>,
    /// Java `Caused by:` chain, outermost first.
    pub causes: Vec<ParsedCause>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct ParsedCause {
    pub kind: String,
    pub message: Option<String>,
    pub frames: Vec<StackFrame>,
}

pub(crate) fn parse_stacktrace(text: &str) -> ParsedTrace {
    const PY_HEADER: &str = "Traceback (most recent call last):";
    if let Some(pos) = text.rfind(PY_HEADER) {
        let mut frames: Vec<_> = text[pos + PY_HEADER.len()..]
            .lines()
            .filter_map(python_frame)
            .collect();
        frames.reverse();
        return ParsedTrace {
            frames,
            causes: Vec::new(),
        };
    }
    let mut parsed = ParsedTrace::default();
    let mut in_suppressed = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("Caused by: ") {
            in_suppressed = false;
            let (kind, message) = match rest.split_once(": ") {
                Some((k, m)) => (k.trim().to_string(), Some(m.trim().to_string())),
                None => (rest.trim().to_string(), None),
            };
            parsed.causes.push(ParsedCause {
                kind,
                message,
                frames: Vec::new(),
            });
            continue;
        }
        let trimmed = line.trim();
        if trimmed.starts_with("Suppressed: ") {
            in_suppressed = true;
            continue;
        }
        if in_suppressed {
            continue;
        }
        if let Some(frame) = at_frame(trimmed) {
            match parsed.causes.last_mut() {
                Some(c) => c.frames.push(frame),
                None => parsed.frames.push(frame),
            }
        }
    }
    parsed
}

/// `  File "/app/x.py", line 12, in func`
fn python_frame(line: &str) -> Option<StackFrame> {
    let rest = line.trim_start().strip_prefix("File \"")?;
    let (path, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(", line ")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let line_no = rest[..digits].parse().ok();
    let label = rest[digits..]
        .strip_prefix(", in ")
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty());
    Some(StackFrame {
        path: Some(path.to_string()),
        line: line_no,
        label,
    })
}

/// Java `at pkg.Class.method(File.java:123)` and V8 `at func (file.js:10:5)` /
/// `at file.js:10:5`.
fn at_frame(trimmed: &str) -> Option<StackFrame> {
    let body = trimmed.strip_prefix("at ")?.trim();
    let (label, location) = if let Some(inner) = body.strip_suffix(')') {
        let (label, loc) = match inner.rfind(" (") {
            Some(i) => (&inner[..i], &inner[i + 2..]),
            None => inner.split_at(inner.rfind('(')?),
        };
        (Some(label.trim()), loc.trim_start_matches('('))
    } else {
        (None, body)
    };
    let label = label
        .map(|l| l.strip_prefix("async ").unwrap_or(l))
        .map(|l| match l.rsplit_once('/') {
            // Java module / class-loader prefix: `java.base/java.lang.Thread.run`.
            Some((_, rest)) if !l.contains(char::is_whitespace) => rest,
            _ => l,
        })
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    let (path, line) = split_location(location);
    if path.is_none() && label.is_none() {
        return None;
    }
    Some(StackFrame { path, line, label })
}

/// `file.js:10:5` -> (file.js, 10); `File.java:123` -> (File.java, 123);
/// `Native Method` -> (Native Method, none).
fn split_location(loc: &str) -> (Option<String>, Option<u32>) {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut parts = loc.rsplitn(3, ':');
    if let (Some(col), Some(line), Some(path)) = (parts.next(), parts.next(), parts.next()) {
        if numeric(col) && numeric(line) && !path.is_empty() {
            return (Some(path.to_string()), line.parse().ok());
        }
    }
    if let Some((path, line)) = loc.rsplit_once(':') {
        if numeric(line) && !path.is_empty() {
            return (Some(path.to_string()), line.parse().ok());
        }
    }
    ((!loc.is_empty()).then(|| loc.to_string()), None)
}
