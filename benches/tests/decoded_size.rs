//! How much memory a decoded bus record takes per byte of its decompressed payload: the
//! processor budgets a round's memory before decoding it, from the envelope's declared size
//! times `tidewater_processors::decode::decoded_factor(signal)`, and this is where those
//! factors come from. Its own test binary because it counts every allocation with a global
//! allocator.
//!
//! `cargo test -p tidewater-benches --test decoded_size -- --nocapture` prints the ratios.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tidewater_benches::workload::Generator;
use tidewater_processors::decode::{decode, decoded_factor};
use tidewater_proto::{Compression, Encoding, Envelope, Signal};

/// Counts the bytes live and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn record(signal: Signal, encoding: Encoding, payload: Vec<u8>) -> Vec<u8> {
    Envelope {
        signal: signal as i32,
        encoding: encoding as i32,
        compression: Compression::Zstd as i32,
        uncompressed_size: payload.len() as u64,
        payload: zstd::bulk::compress(&payload, 3).unwrap(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// (held once decoded, most held while decoding), per decompressed byte. Decoded once before
/// measuring: the buffer and zstd context a record is decompressed into are kept for the next
/// record (one per core decoding, not one per batch), so they are not the batch's.
fn measure(record: &[u8], decompressed: usize) -> (f64, f64) {
    drop(decode(record).unwrap());
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let decoded = decode(record).unwrap();
    let held = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    drop(decoded);
    (
        held as f64 / decompressed as f64,
        peak as f64 / decompressed as f64,
    )
}

/// The test is one function: the counters are process-wide and tests run in parallel.
#[test]
fn decoded_batches_fit_the_budgeted_factor() {
    let mut g = Generator::new(7);
    // Batches as the collector cuts them: up to 8192 items and 1 MiB.
    let segments: String = (0..500)
        .map(|i| format!("{{\"name\":\"checkout\",\"id\":\"{i:016x}\",\"trace_id\":\"1-5759e988-bd862e3fe1be46a994272793\",\"start_time\":1.478293361271E9,\"end_time\":1.478293361449E9,\"http\":{{\"request\":{{\"method\":\"POST\",\"url\":\"https://shop.example.com/cart/checkout\"}},\"response\":{{\"status\":200}}}},\"annotations\":{{\"order_id\":\"o-{i}\"}}}}\n"))
        .collect();
    let cases: Vec<(&str, Signal, Encoding, Vec<u8>)> = vec![
        (
            "traces (100 spans)",
            Signal::Traces,
            Encoding::OtlpProto,
            g.traces(100).encode_to_vec(),
        ),
        (
            "events (50)",
            Signal::Events,
            Encoding::EventsProto,
            g.events(50).encode_to_vec(),
        ),
        (
            "metrics (100 points)",
            Signal::Metrics,
            Encoding::OtlpProto,
            g.metrics(100).encode_to_vec(),
        ),
        (
            "xray segments",
            Signal::XraySegments,
            Encoding::XrayJson,
            segments.into_bytes(),
        ),
        (
            "traces",
            Signal::Traces,
            Encoding::OtlpProto,
            g.traces(2000).encode_to_vec(),
        ),
        (
            "logs",
            Signal::Logs,
            Encoding::OtlpProto,
            g.logs(2000).encode_to_vec(),
        ),
        (
            "metrics",
            Signal::Metrics,
            Encoding::OtlpProto,
            g.metrics(2000).encode_to_vec(),
        ),
        (
            "events",
            Signal::Events,
            Encoding::EventsProto,
            g.events(1000).encode_to_vec(),
        ),
    ];
    let mut over = Vec::new();
    for (name, signal, encoding, payload) in cases {
        let decompressed = payload.len();
        let record = record(signal, encoding, payload);
        let (held, peak) = measure(&record, decompressed);
        eprintln!(
            "{name}: {decompressed} bytes decompressed ({} compressed): {held:.2}x held once decoded, {peak:.2}x at most while decoding",
            record.len()
        );
        let budgeted = decoded_factor(signal);
        if held > budgeted as f64 {
            over.push(format!("{name}: {held:.2}x, budgeted {budgeted}x"));
        }
    }
    assert!(
        over.is_empty(),
        "decoded batches over their budgeted multiple of their decompressed size: {over:?}"
    );
}
