//! A measured sketch of the collector's next step (issue #7, `report/PROFILE.md`): splitting
//! an OTLP traces request by partition on its wire bytes, without decoding it.
//!
//! Not used by the collector. It exists so that `benches/collector_hot_paths.rs` can put a
//! number on the idea next to today's decode + `split_traces`, and its test shows the output
//! is what `split_traces` produces. It reads only each span's `trace_id` and `span_id`; the
//! resource, scope and span bytes are copied as they came.

use std::collections::HashMap;
use std::ops::Range;

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
use tidewater_bus::partition_for_hash;
use xxhash_rust::xxh3::xxh3_128;

/// An `ExportTraceServiceRequest` body per partition, and how many spans were refused.
pub struct WireSplit {
    pub parts: Vec<(u32, Vec<u8>)>,
    pub rejected: u64,
}

/// One field of a message: its number, the range of the whole field (key included), and the
/// range of a length-delimited field's contents.
struct Field {
    number: u32,
    whole: Range<usize>,
    contents: Range<usize>,
}

/// The fields of the message in `buf[range]`, in order.
fn fields(buf: &[u8], range: Range<usize>) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut cursor = &buf[range.clone()];
    let base = range.start;
    let at = |c: &[u8]| base + (range.len() - c.len());
    while cursor.has_remaining() {
        let start = at(cursor);
        let (number, wire_type) = decode_key(&mut cursor).map_err(|e| e.to_string())?;
        let contents = match wire_type {
            WireType::Varint => {
                decode_varint(&mut cursor).map_err(|e| e.to_string())?;
                at(cursor)..at(cursor)
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                if cursor.remaining() < n {
                    return Err("truncated fixed-width field".into());
                }
                cursor.advance(n);
                at(cursor)..at(cursor)
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut cursor).map_err(|e| e.to_string())? as usize;
                if cursor.remaining() < len {
                    return Err("truncated length-delimited field".into());
                }
                let from = at(cursor);
                cursor.advance(len);
                from..from + len
            }
            WireType::StartGroup | WireType::EndGroup => return Err("groups are not OTLP".into()),
        };
        out.push(Field {
            number,
            whole: start..at(cursor),
            contents,
        });
    }
    Ok(out)
}

/// Appends field `number` holding `parts` (already-encoded fields) to `out`.
fn nest(out: &mut Vec<u8>, number: u32, parts: &[&[u8]]) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(parts.iter().map(|p| p.len() as u64).sum(), out);
    for p in parts {
        out.extend_from_slice(p);
    }
}

pub fn split_traces_wire(request: &[u8], partitions: u32) -> Result<WireSplit, String> {
    let mut out: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut rejected = 0;
    for rs in fields(request, 0..request.len())?
        .into_iter()
        .filter(|f| f.number == 1)
    {
        let rs_fields = fields(request, rs.contents)?;
        let keep_rs: Vec<&[u8]> = rs_fields
            .iter()
            .filter(|f| f.number != 2)
            .map(|f| &request[f.whole.clone()])
            .collect();
        // Scope spans of this resource, per partition, each as encoded field 2.
        let mut scopes: HashMap<u32, Vec<u8>> = HashMap::new();
        for ss in rs_fields.iter().filter(|f| f.number == 2) {
            let ss_fields = fields(request, ss.contents.clone())?;
            let keep_ss: Vec<&[u8]> = ss_fields
                .iter()
                .filter(|f| f.number != 2)
                .map(|f| &request[f.whole.clone()])
                .collect();
            let mut spans: HashMap<u32, Vec<&[u8]>> = HashMap::new();
            for span in ss_fields.iter().filter(|f| f.number == 2) {
                let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
                for f in fields(request, span.contents.clone())? {
                    match f.number {
                        1 => trace_id = &request[f.contents],
                        2 => span_id = &request[f.contents],
                        _ => {}
                    }
                }
                let valid = |id: &[u8], len| id.len() == len && id.iter().any(|b| *b != 0);
                if !valid(trace_id, 16) || !valid(span_id, 8) {
                    rejected += 1;
                    continue;
                }
                let p = partition_for_hash(xxh3_128(trace_id), partitions);
                spans
                    .entry(p)
                    .or_default()
                    .push(&request[span.whole.clone()]);
            }
            for (p, spans) in spans {
                let parts: Vec<&[u8]> = keep_ss.iter().copied().chain(spans).collect();
                nest(scopes.entry(p).or_default(), 2, &parts);
            }
        }
        for (p, scope_spans) in scopes {
            let parts: Vec<&[u8]> = keep_rs
                .iter()
                .copied()
                .chain([scope_spans.as_slice()])
                .collect();
            nest(out.entry(p).or_default(), 1, &parts);
        }
    }
    Ok(WireSplit {
        parts: out.into_iter().collect(),
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Generator;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use tidewater_collector::partition::{split_traces, Payload};

    #[test]
    fn the_same_parts_as_split_traces() {
        let mut g = Generator::new(5);
        let mut request = g.traces(100);
        // Two resources, and one span that must be refused.
        request.resource_spans.extend(g.traces(30).resource_spans);
        request.resource_spans[1].scope_spans[0].spans[3].trace_id = vec![0; 16];
        let bytes = request.encode_to_vec();

        let wire = split_traces_wire(&bytes, 4).unwrap();
        let (parts, rejected) = split_traces(request.resource_spans, 4);
        assert_eq!(wire.rejected, rejected.count);
        assert_eq!(wire.parts.len(), parts.len());
        for part in parts {
            let Payload::Traces(expected) = part.payload else {
                panic!("traces")
            };
            let (_, body) = wire
                .parts
                .iter()
                .find(|(p, _)| *p == part.partition)
                .expect("same partitions");
            let got = ExportTraceServiceRequest::decode(&body[..]).unwrap();
            assert_eq!(got.resource_spans, expected);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(split_traces_wire(&[0x0a, 0x05, 1, 2], 4).is_err());
        assert!(split_traces_wire(&[0x0b], 4).is_err());
        assert!(split_traces_wire(&[], 4).unwrap().parts.is_empty());
    }
}
