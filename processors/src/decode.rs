//! Bus records back into signal data.

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

/// One bus record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub signal: Signal,
    pub record_id: Vec<u8>,
    pub produced_at_unix_nano: u64,
    pub item_count: u32,
    pub data: SignalData,
}

pub fn decode(record: &[u8]) -> Result<Batch, String> {
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
    let bad = |e: prost::DecodeError| format!("{} payload: {e}", signal.label());
    let data = match (signal, encoding) {
        (Signal::Traces, Encoding::OtlpProto) => {
            SignalData::Traces(Message::decode(&payload[..]).map_err(bad)?)
        }
        (Signal::Metrics, Encoding::OtlpProto) => {
            SignalData::Metrics(Message::decode(&payload[..]).map_err(bad)?)
        }
        (Signal::Logs, Encoding::OtlpProto) => {
            SignalData::Logs(Message::decode(&payload[..]).map_err(bad)?)
        }
        (Signal::Events, Encoding::EventsProto) => {
            SignalData::Events(Message::decode(&payload[..]).map_err(bad)?)
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
    Ok(Batch {
        signal,
        record_id: envelope.record_id,
        produced_at_unix_nano: envelope.produced_at_unix_nano,
        item_count: envelope.item_count,
        data,
    })
}
