//! Reading OTLP protobuf where it lies, without decoding it into structs.
//!
//! The collector needs only a trace id per span (or a resource per batch) to partition a
//! request, and the bus carries the same protobuf bytes it received, so decoding into prost
//! structs and encoding them again was 70% of its CPU (`benches/report/PROFILE.md`). Here a
//! request is walked field by field over its bytes: [`Fields`] frames fields without
//! allocating, [`schema`] checks that a message is one prost would decode (so a processor
//! never meets a record it cannot read), and [`nested_len`] / [`put_nested`] write the
//! re-nested parts. prost has no borrowed, schema-checked field reader, hence this module;
//! varints and keys still go through `prost::encoding`.

pub mod schema;

use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};

/// Why bytes are not the protobuf message they should be, with the path to the field.
/// Boxed: it is rare, and a small `Result` keeps the field loop fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(Box<Problem>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    path: Vec<String>,
    problem: String,
}

impl WireError {
    #[cold]
    pub fn new(problem: impl Into<String>) -> Self {
        WireError(Box::new(Problem {
            path: Vec::new(),
            problem: problem.into(),
        }))
    }

    /// The error as seen from the enclosing message's field `name`.
    #[cold]
    pub fn within(mut self, name: impl Into<String>) -> Self {
        self.0.path.push(name.into());
        self
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Problem { path, problem } = &*self.0;
        for (i, name) in path.iter().rev().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(name)?;
        }
        if !path.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(problem)
    }
}

impl std::error::Error for WireError {}

/// A field's value as framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    I64(u64),
    I32(u32),
    /// Length-delimited: a string, bytes, a nested message or a packed repeated scalar.
    Len(&'a [u8]),
}

impl Value<'_> {
    pub fn wire_type(&self) -> &'static str {
        match self {
            Value::Varint(_) => "varint",
            Value::I64(_) => "64-bit",
            Value::I32(_) => "32-bit",
            Value::Len(_) => "length-delimited",
        }
    }
}

/// One field: its number, its value, and its whole encoding (key included), to copy as is.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub whole: &'a [u8],
}

impl<'a> Field<'a> {
    /// The contents of a length-delimited field, or an error naming it.
    pub fn len_contents(&self, name: &str) -> Result<&'a [u8], WireError> {
        match self.value {
            Value::Len(b) => Ok(b),
            other => Err(WireError::new(format!(
                "field {} ({name}) must be length-delimited, not {}",
                self.number,
                other.wire_type()
            ))),
        }
    }
}

/// The fields of one message, in order. After an error it ends.
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    #[inline]
    pub fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    // Always inlined: returned through memory, a `Field` read back at once stalls on store
    // forwarding, which cost a third of a split's time (perf annotate).
    #[inline(always)]
    fn read(&mut self) -> Result<Field<'a>, WireError> {
        let start = self.rest;
        let mut cursor = self.rest;
        // Nearly every OTLP key is one byte (fields 1-15); prost's decoder handles the rest.
        let one_byte = cursor
            .first()
            .filter(|key| **key < 0x80 && **key >> 3 != 0)
            .and_then(|key| {
                Some((
                    u32::from(key >> 3),
                    WireType::try_from(u64::from(key & 7)).ok()?,
                ))
            });
        let (number, wire_type) = match one_byte {
            Some(key) => {
                cursor = &cursor[1..];
                key
            }
            None => decode_key(&mut cursor).map_err(|e| WireError::new(e.to_string()))?,
        };
        let value = match wire_type {
            WireType::Varint => Value::Varint(
                decode_varint(&mut cursor).map_err(|e| WireError::new(e.to_string()))?,
            ),
            WireType::SixtyFourBit => {
                let (bytes, rest) = cursor.split_first_chunk::<8>().ok_or_else(|| {
                    WireError::new(format!("field {number}: truncated 64-bit value"))
                })?;
                cursor = rest;
                Value::I64(u64::from_le_bytes(*bytes))
            }
            WireType::ThirtyTwoBit => {
                let (bytes, rest) = cursor.split_first_chunk::<4>().ok_or_else(|| {
                    WireError::new(format!("field {number}: truncated 32-bit value"))
                })?;
                cursor = rest;
                Value::I32(u32::from_le_bytes(*bytes))
            }
            WireType::LengthDelimited => {
                let len = decode_varint(&mut cursor).map_err(|e| WireError::new(e.to_string()))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= cursor.len())
                    .ok_or_else(|| {
                        WireError::new(format!(
                            "field {number}: length {len} runs past the end of its message ({} bytes left)",
                            cursor.len()
                        ))
                    })?;
                let (contents, rest) = cursor.split_at(len);
                cursor = rest;
                Value::Len(contents)
            }
            // prost would skip a group in an unknown field; OTLP has none, and refusing them
            // keeps this reader small. Stricter than prost is safe: nothing it accepts here
            // fails to decode later.
            WireType::StartGroup | WireType::EndGroup => {
                return Err(WireError::new(format!(
                    "field {number}: protobuf groups are not used by OTLP"
                )))
            }
        };
        let whole = &start[..start.len() - cursor.len()];
        self.rest = cursor;
        Ok(Field {
            number,
            value,
            whole,
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.read();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

/// The encoded size of field `number` holding `len` bytes.
pub fn nested_len(number: u32, len: usize) -> usize {
    prost::encoding::key_len(number) + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Writes the key and length of field `number` holding `len` bytes; the caller writes them.
pub fn put_nested(out: &mut Vec<u8>, number: u32, len: usize) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_every_wire_type_and_keeps_whole_encodings() {
        // 1: varint 150, 2: "hi", 3: fixed64 1, 4: fixed32 2
        let bytes = [
            0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0x25, 2, 0, 0,
            0,
        ];
        let fields: Vec<Field> = Fields::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0].value, Value::Varint(150));
        assert_eq!(fields[0].whole, &bytes[..3]);
        assert_eq!(fields[1].value, Value::Len(b"hi"));
        assert_eq!(fields[2].value, Value::I64(1));
        assert_eq!(fields[3].value, Value::I32(2));
        let total: usize = fields.iter().map(|f| f.whole.len()).sum();
        assert_eq!(total, bytes.len());
    }

    #[test]
    fn truncation_and_groups_are_errors_not_panics() {
        for bad in [
            &[0x12, 0x05, b'a'][..],
            &[0x19, 1, 2],
            &[0x25, 1],
            &[0x08],
            &[0x0b],
            &[0x00, 0x01],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            let mut fields = Fields::new(bad);
            assert!(fields.next().unwrap().is_err(), "{bad:?}");
            assert!(fields.next().is_none(), "ends after an error");
        }
    }

    #[test]
    fn errors_read_from_the_outside_in() {
        let e = WireError::new("not UTF-8")
            .within("key")
            .within("attributes[2]")
            .within("spans[0]");
        assert_eq!(e.to_string(), "spans[0].attributes[2].key: not UTF-8");
    }

    #[test]
    fn nested_lengths_match_what_is_written() {
        for len in [0, 1, 127, 128, 300, 70_000] {
            let mut out = Vec::new();
            put_nested(&mut out, 2, len);
            assert_eq!(out.len() + len, nested_len(2, len));
        }
    }
}
