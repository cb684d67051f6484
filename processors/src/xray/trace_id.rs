//! OTLP trace/span ids -> X-Ray ids, including the stateless remapping of random
//! (W3C) trace ids. The rule is described in the module documentation of
//! [`crate::xray`]; this file is its single implementation.

use std::time::{SystemTime, UNIX_EPOCH};

/// X-Ray rejects trace ids whose epoch is older than this (30 days).
pub const MAX_TRACE_ID_AGE_SECS: u64 = 30 * 86_400;
/// X-Ray rejects trace ids whose epoch is further in the future than this.
pub const MAX_TRACE_ID_SKEW_SECS: u64 = 5 * 60;
/// Length of the per-trace window used when remapping (21 days). Leaves at least
/// 9 days for late delivery (bus replay, retries) before X-Ray's 30-day limit.
pub const REMAP_WINDOW_SECS: u64 = 21 * 86_400;

/// An X-Ray trace id (`1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XrayTraceId {
    pub id: String,
    /// `true` when the epoch part was rewritten (the OTLP id was not X-Ray-valid).
    pub remapped: bool,
}

/// Converts an OTLP trace id to an X-Ray trace id.
///
/// Ids whose first four bytes already are an acceptable epoch (within
/// `[now - 30 days, now + 5 min]`) are kept unchanged. Any other id is remapped:
/// the low 12 bytes are kept as the X-Ray random part and the epoch becomes the most
/// recent *trace boundary* at or before the span's start, where the trace's
/// boundaries are `phase + k * 21 days` and `phase` is a stable hash of the full
/// 16-byte id modulo 21 days (see the module docs for why).
///
/// Returns `None` when no acceptable id exists: an all-zero id, or a remapped epoch
/// that X-Ray would reject (the span started so long ago that its boundary is older
/// than 30 days).
pub fn xray_trace_id(
    otel_trace_id: &[u8; 16],
    span_start_unix_nanos: u64,
    now: SystemTime,
) -> Option<XrayTraceId> {
    if otel_trace_id == &[0u8; 16] {
        return None;
    }
    let now_s = unix_secs(now);
    let original = u64::from(u32::from_be_bytes([
        otel_trace_id[0],
        otel_trace_id[1],
        otel_trace_id[2],
        otel_trace_id[3],
    ]));
    if epoch_acceptable(original, now_s) {
        return Some(XrayTraceId {
            id: format_id(original, otel_trace_id),
            remapped: false,
        });
    }
    let epoch = remapped_epoch(otel_trace_id, span_start_unix_nanos / 1_000_000_000, now_s)?;
    Some(XrayTraceId {
        id: format_id(epoch, otel_trace_id),
        remapped: true,
    })
}

/// The deterministic epoch for a remapped trace, or `None` if X-Ray would reject it.
fn remapped_epoch(trace_id: &[u8; 16], start_s: u64, now_s: u64) -> Option<u64> {
    let phase = trace_hash(trace_id) % REMAP_WINDOW_SECS;
    if start_s < phase {
        return None;
    }
    let mut epoch = start_s - (start_s - phase) % REMAP_WINDOW_SECS;
    // A span from a host whose clock runs ahead can start after `now + skew`; if its
    // boundary also lies in that future, fall back to the previous boundary.
    if epoch > now_s + MAX_TRACE_ID_SKEW_SECS && epoch >= REMAP_WINDOW_SECS {
        epoch -= REMAP_WINDOW_SECS;
    }
    (epoch <= u64::from(u32::MAX) && epoch_acceptable(epoch, now_s)).then_some(epoch)
}

fn epoch_acceptable(epoch: u64, now_s: u64) -> bool {
    epoch + MAX_TRACE_ID_AGE_SECS >= now_s && epoch <= now_s + MAX_TRACE_ID_SKEW_SECS
}

fn format_id(epoch: u64, trace_id: &[u8; 16]) -> String {
    format!("1-{:08x}-{}", epoch as u32, hex(&trace_id[4..]))
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// splitmix64 finaliser: a fixed, version-independent 64-bit mixer (unlike
/// `std`'s hasher, whose output may change between Rust releases).
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stable hash of a full 16-byte trace id.
pub(crate) fn trace_hash(id: &[u8; 16]) -> u64 {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id[..8]);
    lo.copy_from_slice(&id[8..]);
    mix64(u64::from_be_bytes(hi) ^ mix64(u64::from_be_bytes(lo) ^ 0x9e37_79b9_7f4a_7c15))
}

/// Deterministic 16-hex-char exception id from the span id, the event index and
/// the position in a `Caused by` chain.
pub(crate) fn exception_id(span_id: &[u8; 8], event_index: u64, chain_index: u64) -> String {
    let h =
        mix64(u64::from_be_bytes(*span_id) ^ mix64(event_index ^ mix64(chain_index ^ 0x5851_f42d)));
    format!("{h:016x}")
}
