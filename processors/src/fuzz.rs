//! Fuzz target of the processors: a bus record is read whoever wrote it (another producer, a
//! bug, a damaged segment), so decoding one must end in a batch or an error, never a panic,
//! and must not allocate past the bound the envelope's size field is held to.
//!
//! Run briefly by the test command and for as long as asked by `scripts/fuzz`.

#[path = "../../bus/src/fuzz/driver.rs"]
mod driver;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use prost::Message;
use tidewater_proto::events::v1::{Event, PublishRequest};
use tidewater_proto::{Compression, Envelope};

use crate::decode::{decode, SignalData, MAX_UNCOMPRESSED};
use driver::fuzz;

/// Counts what the current thread allocates while a measurement is on, so a test can see the
/// largest single allocation and the peak a call reached. It wraps the system allocator for
/// this test binary only; outside a measurement it adds one thread-local read per call.
struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Clone, Copy)]
struct Usage {
    on: bool,
    live: i64,
    peak: i64,
    largest: usize,
}

thread_local! {
    // Const-initialised and without a destructor, so reading it never allocates.
    static USAGE: Cell<Usage> = const {
        Cell::new(Usage { on: false, live: 0, peak: 0, largest: 0 })
    };
}

fn note(delta: i64, size: usize) {
    let _ = USAGE.try_with(|u| {
        let mut v = u.get();
        if v.on {
            v.live += delta;
            v.peak = v.peak.max(v.live);
            v.largest = v.largest.max(size);
            u.set(v);
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; only counting is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64, layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64, layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64), 0);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64, new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs `f` and returns the largest single allocation and the peak of live bytes it made.
fn measured<R>(f: impl FnOnce() -> R) -> (R, usize, u64) {
    USAGE.with(|u| {
        u.set(Usage {
            on: true,
            live: 0,
            peak: 0,
            largest: 0,
        })
    });
    let r = f();
    let usage = USAGE.with(|u| {
        let v = u.get();
        u.set(Usage { on: false, ..v });
        v
    });
    (r, usage.largest, usage.peak.max(0) as u64)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Payloads of every signal, valid or not, and long runs of one short pattern: what
/// compresses best and so makes the most of a small record.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let span = (bytes(17), bytes(9), ".{0,8}").prop_map(|(trace_id, span_id, name)| Span {
        trace_id,
        span_id,
        name,
        ..Default::default()
    });
    let traces = prop::collection::vec(span, 0..6).prop_map(|spans| {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    });
    let events = prop::collection::vec((".{0,8}", ".{0,8}"), 0..6).prop_map(|e| {
        PublishRequest {
            events: e
                .into_iter()
                .map(|(name, user_id)| Event {
                    name,
                    user_id,
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    });
    let lines = prop::collection::vec("[^\n]{0,20}", 0..5).prop_map(|l| l.join("\n").into_bytes());
    let runs = (bytes(6), 1usize..1 << 18).prop_map(|(pattern, n)| pattern.repeat(n));
    prop_oneof![
        2 => bytes(200),
        2 => traces,
        2 => events,
        1 => lines,
        1 => runs,
    ]
}

#[derive(Debug, Clone)]
struct Shape {
    signal: i32,
    encoding: i32,
    compression: i32,
    /// Whether the payload really is zstd, whatever `compression` says.
    compress: bool,
    /// The size field: the true one, or any.
    size: Option<u64>,
}

fn shape() -> impl Strategy<Value = Shape> {
    let edges = prop::sample::select(vec![0, 1, MAX_UNCOMPRESSED, MAX_UNCOMPRESSED + 1]);
    let size = prop_oneof![
        3 => Just(None),
        1 => any::<u64>().prop_map(Some),
        1 => edges.prop_map(Some),
        1 => (0u64..1 << 20).prop_map(Some),
    ];
    (-1i32..7, -1i32..6, -1i32..3, any::<bool>(), size).prop_map(
        |(signal, encoding, compression, compress, size)| Shape {
            signal,
            encoding,
            compression,
            compress,
            size,
        },
    )
}

fn envelope(shape: &Shape, payload: &[u8], record_id: Vec<u8>) -> Vec<u8> {
    let stored = if shape.compress {
        zstd::bulk::compress(payload, 1).unwrap()
    } else {
        payload.to_vec()
    };
    Envelope {
        signal: shape.signal,
        encoding: shape.encoding,
        compression: shape.compression,
        uncompressed_size: shape.size.unwrap_or(payload.len() as u64),
        payload: stored,
        produced_at_unix_nano: 1,
        record_id,
        item_count: 3,
        producer: "fuzz".into(),
    }
    .encode_to_vec()
}

/// The worst ratio seen of peak bytes to the bytes a record may hold once decompressed, reported
/// at the end: prost's structures outweigh their encoding, and this says by how much.
static WORST_RATIO: AtomicU64 = AtomicU64::new(0);

/// A record decodes or is refused, without panicking and without a single allocation past
/// the decompression bound; what decodes has the signal the envelope names.
#[test]
fn envelope_decode_is_bounded() {
    let edit = (any::<prop::sample::Index>(), any::<u8>());
    let record = prop_oneof![
        1 => bytes(300),
        4 => (shape(), payload(), bytes(17)).prop_map(|(s, p, id)| envelope(&s, &p, id)),
        2 => (shape(), payload(), prop::collection::vec(edit, 1..4)).prop_map(|(s, p, edits)| {
            let mut record = envelope(&s, &p, vec![1; 16]);
            for (at, x) in edits {
                let at = at.index(record.len());
                record[at] ^= x.max(1);
            }
            record
        }),
    ];
    fuzz("envelope_decode_is_bounded", record, |record| {
        let envelope = Envelope::decode(&record[..]).ok();
        let (result, largest, peak) = measured(|| decode(&record));
        let bound = MAX_UNCOMPRESSED as usize + record.len();
        prop_assert!(largest <= bound, "one allocation of {} bytes", largest);
        let Ok((batch, _unreadable)) = result else {
            return Ok(());
        };
        let envelope = envelope.expect("decoded, so the envelope decodes");
        prop_assert_eq!(batch.signal as i32, envelope.signal);
        // What the record may take once decompressed: the size field bounds zstd's buffer.
        let plain = match Compression::try_from(envelope.compression) {
            Ok(Compression::Zstd) => {
                prop_assert!(envelope.uncompressed_size <= MAX_UNCOMPRESSED);
                envelope.uncompressed_size
            }
            _ => envelope.payload.len() as u64,
        };
        let ratio = peak / (plain + record.len() as u64).max(1);
        WORST_RATIO.fetch_max(ratio, Ordering::Relaxed);
        if let SignalData::XraySegments(lines) = &batch.data {
            prop_assert!(lines.iter().all(|l| !l.is_empty() && !l.contains('\n')));
        }
        Ok(())
    });
    eprintln!(
        "envelope_decode_is_bounded: worst peak / decompressed bytes {}",
        WORST_RATIO.load(Ordering::Relaxed)
    );
}
