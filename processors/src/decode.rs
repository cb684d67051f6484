//! Bus records back into signal data.
//!
//! A record the collector wrote always decodes; one that does not (another producer, a bug,
//! a corrupted segment) must not take its good items down with its bad ones. When a payload
//! fails to decode as a whole, each of its top-level items (an event, a `ResourceSpans`, ...)
//! is decoded alone: the good ones are delivered and each bad one is handed back as
//! [`Unreadable`] for the dead letters.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewater_proto::events::v1::PublishRequest;
use tidewater_proto::{Compression, Encoding, Envelope, Signal};

/// A decompressed payload larger than this is refused as corrupt: the collector's batches are
/// a few MiB, and a bad size field must not make a processor allocate without bound.
pub const MAX_UNCOMPRESSED: u64 = 256 * 1024 * 1024;

/// How many bytes of memory a batch of `signal` takes decoded, per byte of its decompressed
/// payload: the processor's memory budget counts a round before decoding it, from the sizes
/// its envelopes declare. Protobuf is dense and prost's structures are not: every string,
/// byte field and repeated field is its own allocation behind a 24-byte header, every message
/// a struct with room for all its fields, and an event's `properties` and `context`
/// (`google.protobuf.Struct`) are B-tree maps of boxed values. Measured on the load
/// generator's realistic items (`cargo test -p tidewater-benches --test decoded_size --
/// --nocapture`), held once decoded: traces 3.4–3.6×, metrics 2.9–3.1×, logs 2.6×, events
/// 9.0–9.1×, X-Ray segments 1.1× (a `String` per document). Each factor is rounded up with
/// some margin; payloads of many tiny fields can still exceed theirs, which makes the bound
/// approximate, not unsafe. Not counted: the buffer a record is decompressed into, one per
/// core decoding, kept for the next record (at most `SCRATCH_KEPT` each).
pub fn decoded_factor(signal: Signal) -> u64 {
    match signal {
        Signal::Traces | Signal::Metrics => 4,
        Signal::Logs => 3,
        Signal::Events => 10,
        Signal::XraySegments => 2,
        // Refused by `decode` before anything is decompressed.
        Signal::Unspecified => 0,
    }
}

/// What decoding a record takes, as its envelope declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeSizes {
    /// The payload decompressed: what [`decode`] allocates to decompress it (the size of a
    /// zstd payload, the length of an uncompressed one).
    pub decompressed: u64,
    /// The decoded batch, estimated: `decompressed` times [`decoded_factor`].
    pub decoded: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SignalData {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    Events(PublishRequest),
    /// X-Ray segment documents, as the SDK sent them.
    XraySegments(Vec<String>),
}

/// A top-level item of a payload that does not decode, with prost's reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub reason: String,
    /// The item's field as encoded (key included): a payload of its own.
    pub bytes: Vec<u8>,
}

/// One bus record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub signal: Signal,
    pub record_id: Vec<u8>,
    pub produced_at_unix_nano: u64,
    pub item_count: u32,
    pub data: SignalData,
}

/// What [`decode`] will take to decode `record`, read from its envelope without decompressing
/// or copying anything; zero for what `decode` refuses before decompressing (no envelope, a
/// size over [`MAX_UNCOMPRESSED`]), and nothing decoded for a signal it cannot decode. Lets
/// the processor size a round and budget its memory before decoding it.
pub fn decode_sizes(record: &[u8]) -> DecodeSizes {
    let Some(envelope) = envelope_sizes(record) else {
        return DecodeSizes::default();
    };
    let signal = i32::try_from(envelope.signal)
        .ok()
        .and_then(|s| Signal::try_from(s).ok())
        .unwrap_or(Signal::Unspecified);
    let compression = i32::try_from(envelope.compression)
        .ok()
        .and_then(|c| Compression::try_from(c).ok());
    let decompressed = match compression {
        Some(Compression::None) => envelope.payload_len,
        Some(Compression::Zstd) if envelope.declared <= MAX_UNCOMPRESSED => envelope.declared,
        _ => 0,
    };
    DecodeSizes {
        decompressed,
        decoded: decompressed.saturating_mul(decoded_factor(signal)),
    }
}

/// The envelope fields that size its decoding.
struct EnvelopeSizes {
    signal: u64,
    compression: u64,
    declared: u64,
    payload_len: u64,
}

/// An envelope's signal, compression, declared uncompressed size and payload length, reading
/// only its field keys and lengths; `None` when it does not frame as protobuf.
fn envelope_sizes(mut rest: &[u8]) -> Option<EnvelopeSizes> {
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
    let mut sizes = EnvelopeSizes {
        signal: 0,
        compression: 0,
        declared: 0,
        payload_len: 0,
    };
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        match (tag, wire_type) {
            (1, WireType::Varint) => sizes.signal = decode_varint(&mut rest).ok()?,
            (3, WireType::Varint) => sizes.compression = decode_varint(&mut rest).ok()?,
            (8, WireType::Varint) => sizes.declared = decode_varint(&mut rest).ok()?,
            (4, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                rest = rest.get(len..)?;
                sizes.payload_len = len as u64;
            }
            _ => skip_field(wire_type, tag, &mut rest, DecodeContext::default()).ok()?,
        }
    }
    Some(sizes)
}

/// `Err` when the record as a whole cannot be read (its envelope, compression or framing);
/// otherwise the batch of what could be read and the items that could not.
pub fn decode(record: &[u8]) -> Result<(Batch, Vec<Unreadable>), String> {
    let envelope =
        Envelope::decode(record).map_err(|e| format!("not a tidewater envelope: {e}"))?;
    let signal = Signal::try_from(envelope.signal)
        .map_err(|_| format!("unknown signal {}", envelope.signal))?;
    let encoding = Encoding::try_from(envelope.encoding)
        .map_err(|_| format!("unknown encoding {}", envelope.encoding))?;
    let mut unreadable = Vec::new();
    let data = match Compression::try_from(envelope.compression) {
        Ok(Compression::None) => decode_payload(
            signal,
            encoding,
            Bytes::from(envelope.payload),
            &mut unreadable,
        )?,
        Ok(Compression::Zstd) => {
            if envelope.uncompressed_size > MAX_UNCOMPRESSED {
                return Err(format!(
                    "uncompressed size {} over the {MAX_UNCOMPRESSED} byte bound",
                    envelope.uncompressed_size
                ));
            }
            let mut scratch = Scratch::take()?;
            let size = envelope.uncompressed_size as usize;
            let data = scratch.decompress(&envelope.payload, size, |payload| {
                decode_payload(signal, encoding, payload, &mut unreadable)
            });
            scratch.give_back();
            data?
        }
        Err(_) => return Err(format!("unknown compression {}", envelope.compression)),
    };
    let batch = Batch {
        signal,
        record_id: envelope.record_id,
        produced_at_unix_nano: envelope.produced_at_unix_nano,
        item_count: envelope.item_count,
        data,
    };
    Ok((batch, unreadable))
}

/// A payload, decompressed, as `signal`'s data. From `Bytes` rather than a slice: prost then
/// copies a bytes field (ids) once into its `Vec` instead of through a `Bytes` of its own.
/// Every field is copied, so the payload's buffer can be used again.
fn decode_payload(
    signal: Signal,
    encoding: Encoding,
    payload: Bytes,
    unreadable: &mut Vec<Unreadable>,
) -> Result<SignalData, String> {
    let bad = |e: String| format!("{} payload: {e}", signal.label());
    Ok(match (signal, encoding) {
        (Signal::Traces, Encoding::OtlpProto) => {
            SignalData::Traces(salvage(payload, unreadable).map_err(bad)?)
        }
        (Signal::Metrics, Encoding::OtlpProto) => {
            SignalData::Metrics(salvage(payload, unreadable).map_err(bad)?)
        }
        (Signal::Logs, Encoding::OtlpProto) => {
            SignalData::Logs(salvage(payload, unreadable).map_err(bad)?)
        }
        (Signal::Events, Encoding::EventsProto) => {
            SignalData::Events(salvage(payload, unreadable).map_err(bad)?)
        }
        (Signal::XraySegments, Encoding::XrayJson) => {
            let text = std::str::from_utf8(&payload).map_err(|e| format!("xray payload: {e}"))?;
            SignalData::XraySegments(
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        }
        (s, e) => return Err(format!("signal {s:?} cannot be encoded as {e:?}")),
    })
}

/// A zstd context and a buffer to decompress into, used again record after record: a fresh
/// buffer per record (about a MiB) was a fresh mapping, and the kernel zeroing its pages cost
/// more than zstd itself; a fresh context is a few hundred KiB allocated and set up again.
struct Scratch {
    zstd: zstd::bulk::Decompressor<'static>,
    buffer: Vec<u8>,
}

/// Contexts not in use. Decoding runs on at most one thread per core (the runtime's permits),
/// so this holds about that many.
static SCRATCH: std::sync::Mutex<Vec<Scratch>> = std::sync::Mutex::new(Vec::new());

/// The most kept of scratch buffers: a larger one (a record of many MiB, rare) is freed once
/// used rather than held for the life of the process.
const SCRATCH_KEPT: usize = 8 * 1024 * 1024;

/// The most scratch contexts kept: beyond the cores that decode at once, extras are freed.
const SCRATCH_CONTEXTS: usize = 16;

impl Scratch {
    fn take() -> Result<Scratch, String> {
        let pooled = SCRATCH.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(scratch) => Ok(scratch),
            None => Ok(Scratch {
                zstd: zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?,
                buffer: Vec::new(),
            }),
        }
    }

    /// Decompresses `compressed`, of `size` bytes decompressed at most, into the buffer, and
    /// hands it to `then`; the buffer comes back for the next record once `then` let go of it.
    fn decompress<T>(
        &mut self,
        compressed: &[u8],
        size: usize,
        then: impl FnOnce(Bytes) -> Result<T, String>,
    ) -> Result<T, String> {
        self.buffer.clear();
        self.buffer.reserve(size);
        self.zstd
            .decompress_to_buffer(compressed, &mut self.buffer)
            .map_err(|e| format!("zstd: {e}"))?;
        // The buffer may be larger than this record asked for: what its envelope declared
        // is what was budgeted, and stays the bound.
        if self.buffer.len() > size {
            return Err(format!("zstd: more than the declared {size} bytes"));
        }
        let payload = Bytes::from(std::mem::take(&mut self.buffer));
        let result = then(payload.clone());
        // Unique again unless something kept a slice of it, which prost's `Vec` fields do not.
        self.buffer = payload.try_into_mut().map(Vec::from).unwrap_or_default();
        result
    }

    fn give_back(mut self) {
        if self.buffer.capacity() > SCRATCH_KEPT {
            self.buffer = Vec::new();
        }
        let mut pool = SCRATCH.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < SCRATCH_CONTEXTS {
            pool.push(self);
        }
    }
}

/// Decodes `payload` as `M`; when that fails, decodes each top-level field alone and keeps
/// those that decode (protobuf concatenation is merging, so the good fields together are the
/// message without the bad ones). `Err` only when the fields cannot even be framed.
fn salvage<M: Message + Default>(
    payload: Bytes,
    unreadable: &mut Vec<Unreadable>,
) -> Result<M, String> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let whole = match M::decode(payload.clone()) {
        Ok(message) => return Ok(message),
        Err(e) => e,
    };
    let mut message = M::default();
    let mut rest = &payload[..];
    while !rest.is_empty() {
        let start = rest;
        decode_key(&mut rest)
            .and_then(|(tag, wire_type)| {
                skip_field(wire_type, tag, &mut rest, DecodeContext::default())
            })
            .map_err(|_| whole.to_string())?;
        let field = &start[..start.len() - rest.len()];
        // Decoded alone first: a failed merge may leave part of the bad item behind.
        match M::decode(field) {
            Ok(_) => message.merge(field).map_err(|e| e.to_string())?,
            Err(e) => unreadable.push(Unreadable {
                reason: e.to_string(),
                bytes: field.to_vec(),
            }),
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::encoding::{encode_key, encode_varint, WireType};
    use tidewater_proto::events::v1::Event;

    fn record(signal: Signal, encoding: Encoding, payload: Vec<u8>) -> Vec<u8> {
        Envelope {
            signal: signal as i32,
            encoding: encoding as i32,
            uncompressed_size: payload.len() as u64,
            payload,
            item_count: 3,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn event(name: &str) -> Event {
        Event {
            name: name.into(),
            user_id: "u".into(),
            ..Default::default()
        }
    }

    /// An event nested past prost's limit between two good ones: the good ones are delivered,
    /// the bad one alone is unreadable.
    #[test]
    fn a_bad_item_does_not_take_its_neighbours_down() {
        let mut deep = prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(1.0)),
        };
        for _ in 0..60 {
            deep = prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(
                    prost_types::ListValue { values: vec![deep] },
                )),
            };
        }
        let mut bad = event("deep");
        bad.properties = Some(prost_types::Struct {
            fields: [("k".to_string(), deep)].into(),
        });
        let payload = PublishRequest {
            events: vec![event("a"), bad, event("b")],
        }
        .encode_to_vec();
        assert!(PublishRequest::decode(&payload[..]).is_err());
        let (batch, unreadable) =
            decode(&record(Signal::Events, Encoding::EventsProto, payload)).unwrap();
        let SignalData::Events(events) = batch.data else {
            panic!("not events")
        };
        let names: Vec<_> = events.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(unreadable.len(), 1);
        assert!(
            unreadable[0].reason.contains("recursion"),
            "{}",
            unreadable[0].reason
        );
    }

    #[test]
    fn decode_sizes_are_read_from_the_envelope() {
        let payload = PublishRequest {
            events: vec![event("a"), event("b")],
        }
        .encode_to_vec();
        let len = payload.len() as u64;
        let plain = record(Signal::Events, Encoding::EventsProto, payload.clone());
        assert_eq!(
            decode_sizes(&plain),
            DecodeSizes {
                decompressed: len,
                decoded: len * decoded_factor(Signal::Events)
            }
        );

        let compressed = zstd::bulk::compress(&payload, 3).unwrap();
        let zstd_record = Envelope {
            signal: Signal::Traces as i32,
            encoding: Encoding::OtlpProto as i32,
            compression: Compression::Zstd as i32,
            uncompressed_size: len,
            payload: compressed,
            ..Default::default()
        };
        assert_eq!(
            decode_sizes(&zstd_record.encode_to_vec()),
            DecodeSizes {
                decompressed: len,
                decoded: len * decoded_factor(Signal::Traces)
            }
        );
        let too_large = Envelope {
            uncompressed_size: MAX_UNCOMPRESSED + 1,
            ..zstd_record.clone()
        };
        assert_eq!(
            decode_sizes(&too_large.encode_to_vec()),
            DecodeSizes::default()
        );
        let unknown_signal = Envelope {
            signal: 99,
            ..zstd_record
        };
        assert_eq!(
            decode_sizes(&unknown_signal.encode_to_vec()),
            DecodeSizes {
                decompressed: len,
                decoded: 0
            }
        );
        assert_eq!(decode_sizes(b"\xff\xff\xff"), DecodeSizes::default());
    }

    #[test]
    fn broken_framing_is_the_whole_record() {
        let mut payload = PublishRequest {
            events: vec![event("a")],
        }
        .encode_to_vec();
        encode_key(1, WireType::LengthDelimited, &mut payload);
        encode_varint(1000, &mut payload);
        assert!(decode(&record(Signal::Events, Encoding::EventsProto, payload)).is_err());
    }
}
