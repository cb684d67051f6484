//! `PutLogEvents` requests within the service's limits, decided before sending. Pure.
//!
//! Limits (CloudWatch Logs quotas): events in one request sorted by time; at most 10,000
//! events; at most 1,048,576 bytes, counting each event's UTF-8 message plus 26 bytes; no more
//! than 24 hours between its first and last event; each event at most the event size limit
//! (256 KiB including the 26 bytes, by default). An event over that limit is split into parts
//! that each end with a marker, never dropped and never cut silently.

/// Bytes CloudWatch counts for each event on top of its message.
pub const EVENT_OVERHEAD: usize = 26;

/// What one event looks like to `PutLogEvents`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Unix milliseconds.
    pub timestamp_ms: i64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_span_ms: i64,
    /// One event, message plus overhead.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 10_000,
            max_bytes: 1_048_576,
            max_span_ms: 24 * 3600 * 1000,
            max_event_bytes: 256 * 1024,
        }
    }
}

impl Limits {
    /// The largest message one event can carry.
    pub fn max_message(&self) -> usize {
        self.max_event_bytes.saturating_sub(EVENT_OVERHEAD)
    }
}

pub fn event_bytes(e: &LogEvent) -> usize {
    e.message.len() + EVENT_OVERHEAD
}

/// The largest index `<= at` that is a char boundary of `s`.
fn floor_boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `event` as it can be sent: itself when it fits, else parts of at most `max_message` bytes,
/// each ending with ` [tidewater: part i/n]` so a reader can put them back together.
pub fn split_oversized(event: LogEvent, max_message: usize) -> Vec<LogEvent> {
    if event.message.len() <= max_message {
        return vec![event];
    }
    // Room for the longest marker; parts are counted with that room reserved.
    let reserve = " [tidewater: part 99999/99999]".len();
    let room = max_message.saturating_sub(reserve).max(4);
    let mut chunks = Vec::new();
    let mut rest = event.message.as_str();
    while !rest.is_empty() {
        let mut cut = floor_boundary(rest, room);
        if cut == 0 {
            // A character wider than the room (impossible with UTF-8 and room >= 4).
            cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        chunks.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| LogEvent {
            timestamp_ms: event.timestamp_ms,
            message: format!("{c} [tidewater: part {}/{n}]", i + 1),
        })
        .collect()
}

/// Splits `events` into requests within `limits`, each sorted by time. Events must already fit
/// the per-event limit ([`split_oversized`]).
pub fn batches(events: Vec<LogEvent>, limits: &Limits) -> Vec<Vec<LogEvent>> {
    batches_by(events, limits, |e| e)
}

/// [`batches`] of anything that carries an event (the delivery engine's items). Every part of
/// a request, its order kept, is a valid request too: still sorted, within the same 24 hours
/// and limits. The engine relies on that when it sends parts of one again.
pub fn batches_by<T>(
    mut items: Vec<T>,
    limits: &Limits,
    event: impl Fn(&T) -> &LogEvent,
) -> Vec<Vec<T>> {
    // Stable: events with the same timestamp keep their order.
    items.sort_by_key(|i| event(i).timestamp_ms);
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for i in items {
        let e = event(&i);
        let size = event_bytes(e);
        let full = !current.is_empty()
            && (current.len() >= limits.max_events
                || bytes + size > limits.max_bytes
                || e.timestamp_ms - event(&current[0]).timestamp_ms > limits.max_span_ms);
        if full {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: i64, msg: &str) -> LogEvent {
        LogEvent {
            timestamp_ms: t,
            message: msg.into(),
        }
    }

    #[test]
    fn events_are_sorted_by_time_stably() {
        let b = batches(
            vec![ev(3, "c"), ev(1, "a"), ev(3, "d"), ev(2, "b")],
            &Limits::default(),
        );
        assert_eq!(
            b,
            vec![vec![ev(1, "a"), ev(2, "b"), ev(3, "c"), ev(3, "d")]]
        );
    }

    #[test]
    fn at_most_10000_events_per_request() {
        let events: Vec<LogEvent> = (0..25_000).map(|i| ev(i, "x")).collect();
        let sizes: Vec<usize> = batches(events, &Limits::default())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
    }

    #[test]
    fn at_most_1mib_counting_26_bytes_per_event() {
        // 100 events of 20,000 bytes: 20,026 each counted, 52 fit in 1,048,576.
        let msg = "x".repeat(20_000);
        let events: Vec<LogEvent> = (0..100).map(|i| ev(i, &msg)).collect();
        let b = batches(events, &Limits::default());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![52, 48]);
        for batch in &b {
            assert!(batch.iter().map(event_bytes).sum::<usize>() <= 1_048_576);
        }
        // Exactly at the limit still fits.
        let exact = "y".repeat(1_048_576 - 2 * EVENT_OVERHEAD - 10);
        let b = batches(vec![ev(0, &exact), ev(1, "0123456789")], &Limits::default());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn at_most_24_hours_per_request() {
        let day = 24 * 3600 * 1000;
        let b = batches(
            vec![
                ev(0, "a"),
                ev(day, "b"),
                ev(day + 1, "c"),
                ev(2 * day + 5, "d"),
            ],
            &Limits::default(),
        );
        assert_eq!(
            b,
            vec![
                vec![ev(0, "a"), ev(day, "b")],
                vec![ev(day + 1, "c")],
                vec![ev(2 * day + 5, "d")]
            ]
        );
    }

    #[test]
    fn oversized_events_are_split_with_markers_and_nothing_lost() {
        let text: String = "héllo wörld ".repeat(5_000); // multi-byte characters on boundaries
        let parts = split_oversized(ev(7, &text), 1000);
        assert!(parts.len() > 1);
        let n = parts.len();
        let mut joined = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert!(p.message.len() <= 1000);
            assert_eq!(p.timestamp_ms, 7);
            let marker = format!(" [tidewater: part {}/{n}]", i + 1);
            assert!(p.message.ends_with(&marker), "{}", p.message);
            joined.push_str(p.message.strip_suffix(&marker).unwrap());
        }
        assert_eq!(joined, text);
        // Events that fit are untouched.
        assert_eq!(split_oversized(ev(1, "small"), 1000), vec![ev(1, "small")]);
    }
}
