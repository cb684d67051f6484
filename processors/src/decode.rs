//! Bus records back into signal data.
//!
//! A record the collector wrote always decodes; one that does not (another producer, a bug,
//! a corrupted segment) must not take its good items down with its bad ones. When a payload
//! fails to decode as a whole, each of its top-level items (an event, a `ResourceSpans`, ...)
//! is decoded alone: the good ones are delivered and each bad one is handed back as
//! [`Unreadable`] for the dead letters.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewater_proto::events::v1::PublishRequest;
use tidewater_proto::{Compression, Encoding, Envelope, Signal};

/// A decompressed payload larger than this is refused as corrupt: the collector's batches are
/// a few MiB, and a bad size field must not make a processor allocate without bound.
pub const MAX_UNCOMPRESSED: u64 = 256 * 1024 * 1024;

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

/// `Err` when the record as a whole cannot be read (its envelope, compression or framing);
/// otherwise the batch of what could be read and the items that could not.
pub fn decode(record: &[u8]) -> Result<(Batch, Vec<Unreadable>), String> {
    let envelope =
        Envelope::decode(record).map_err(|e| format!("not a tidewater envelope: {e}"))?;
    let signal = Signal::try_from(envelope.signal)
        .map_err(|_| format!("unknown signal {}", envelope.signal))?;
    let encoding = Encoding::try_from(envelope.encoding)
        .map_err(|_| format!("unknown encoding {}", envelope.encoding))?;
    let payload = match Compression::try_from(envelope.compression) {
        Ok(Compression::None) => envelope.payload,
        Ok(Compression::Zstd) => {
            if envelope.uncompressed_size > MAX_UNCOMPRESSED {
                return Err(format!(
                    "uncompressed size {} over the {MAX_UNCOMPRESSED} byte bound",
                    envelope.uncompressed_size
                ));
            }
            zstd::bulk::decompress(&envelope.payload, envelope.uncompressed_size as usize)
                .map_err(|e| format!("zstd: {e}"))?
        }
        Err(_) => return Err(format!("unknown compression {}", envelope.compression)),
    };
    let bad = |e: String| format!("{} payload: {e}", signal.label());
    let mut unreadable = Vec::new();
    let data = match (signal, encoding) {
        (Signal::Traces, Encoding::OtlpProto) => {
            SignalData::Traces(salvage(&payload, &mut unreadable).map_err(bad)?)
        }
        (Signal::Metrics, Encoding::OtlpProto) => {
            SignalData::Metrics(salvage(&payload, &mut unreadable).map_err(bad)?)
        }
        (Signal::Logs, Encoding::OtlpProto) => {
            SignalData::Logs(salvage(&payload, &mut unreadable).map_err(bad)?)
        }
        (Signal::Events, Encoding::EventsProto) => {
            SignalData::Events(salvage(&payload, &mut unreadable).map_err(bad)?)
        }
        (Signal::XraySegments, Encoding::XrayJson) => {
            let text = String::from_utf8(payload).map_err(|e| format!("xray payload: {e}"))?;
            SignalData::XraySegments(
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        }
        (s, e) => return Err(format!("signal {s:?} cannot be encoded as {e:?}")),
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

/// Decodes `payload` as `M`; when that fails, decodes each top-level field alone and keeps
/// those that decode (protobuf concatenation is merging, so the good fields together are the
/// message without the bad ones). `Err` only when the fields cannot even be framed.
fn salvage<M: Message + Default>(
    payload: &[u8],
    unreadable: &mut Vec<Unreadable>,
) -> Result<M, String> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let whole = match M::decode(payload) {
        Ok(message) => return Ok(message),
        Err(e) => e,
    };
    let mut message = M::default();
    let mut rest = payload;
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
