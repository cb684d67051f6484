//! Segment files and the frames inside them.
//!
//! A frame is `len: u32 LE | crc: u32 LE | produced_at_ms: u64 LE | payload[len]`. The CRC
//! (CRC32, crc32fast) covers the length and timestamp fields as well as the payload: a crash can
//! leave a zero-filled tail, and a CRC over the payload alone would accept sixteen zero bytes as
//! a valid empty record.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

pub(crate) const HEADER_LEN: usize = 16;

/// How much a reader fetches per system call; big enough to amortise the call over many small
/// records, small enough that a poll for one record does not drag in megabytes.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub(crate) fn segment_path(partition_dir: &Path, base: u64) -> PathBuf {
    partition_dir.join(segment_file_name(base))
}

pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn frame_crc(len: u32, produced_at_ms: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&produced_at_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Appends one frame to `buf`. The caller has checked that the payload fits in a `u32` length.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, produced_at_ms: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(len, produced_at_ms, payload).to_le_bytes());
    buf.extend_from_slice(&produced_at_ms.to_le_bytes());
    buf.extend_from_slice(payload);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Step over the frame without checking it: used to find where an offset starts in a
    /// segment whose frames were verified when the log was opened or when they were written.
    Skip,
    /// Check the CRC but do not keep the payload.
    Verify,
    /// Check the CRC and return the payload.
    Read,
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Frame {
        produced_at_ms: u64,
        payload: Option<Bytes>,
    },
    /// No bytes at all after the last frame.
    End,
    /// Some bytes, but not a whole frame: a tail being written, or torn by a crash.
    Short,
    BadCrc,
}

/// Reads frames sequentially from a position in a segment with positioned reads, so several
/// readers can share one open file and a writer may append to it meanwhile.
pub(crate) struct FrameReader {
    file: Arc<File>,
    pos: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
    /// File length as last seen; refreshed only when a frame seems to run past it, so a corrupt
    /// length field is caught without allocating what it claims.
    known_len: u64,
}

impl FrameReader {
    pub(crate) fn new(file: Arc<File>, pos: u64) -> Self {
        FrameReader {
            file,
            pos,
            buf: Vec::new(),
            buf_start: pos,
            known_len: 0,
        }
    }

    /// Position just after the last frame returned.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn next(&mut self, mode: Mode) -> io::Result<Outcome> {
        let have = self.fill(HEADER_LEN)?;
        if have == 0 {
            return Ok(Outcome::End);
        }
        if have < HEADER_LEN {
            return Ok(Outcome::Short);
        }
        let off = (self.pos - self.buf_start) as usize;
        let h = &self.buf[off..off + HEADER_LEN];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let produced_at_ms =
            u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let frame_len = HEADER_LEN as u64 + u64::from(len);
        if self.pos + frame_len > self.known_len {
            self.known_len = self.file.metadata()?.len();
            if self.pos + frame_len > self.known_len {
                return Ok(Outcome::Short);
            }
        }
        if mode == Mode::Skip {
            self.pos += frame_len;
            return Ok(Outcome::Frame {
                produced_at_ms,
                payload: None,
            });
        }
        let have = self.fill(frame_len as usize)?;
        if (have as u64) < frame_len {
            return Ok(Outcome::Short);
        }
        let off = (self.pos - self.buf_start) as usize;
        let payload = &self.buf[off + HEADER_LEN..off + frame_len as usize];
        if frame_crc(len, produced_at_ms, payload) != crc {
            return Ok(Outcome::BadCrc);
        }
        let payload = (mode == Mode::Read).then(|| Bytes::copy_from_slice(payload));
        self.pos += frame_len;
        Ok(Outcome::Frame {
            produced_at_ms,
            payload,
        })
    }

    /// Makes up to `n` bytes from `pos` available in `buf`; returns how many are (fewer only at
    /// the end of the file).
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        if self.pos < self.buf_start || self.pos > self.buf_start + self.buf.len() as u64 {
            self.buf.clear();
            self.buf_start = self.pos;
        }
        let off = (self.pos - self.buf_start) as usize;
        let have = self.buf.len() - off;
        if have >= n {
            return Ok(n);
        }
        self.buf.drain(..off);
        self.buf_start = self.pos;
        let target = n.max(READ_CHUNK);
        let mut filled = self.buf.len();
        self.buf.resize(target, 0);
        while filled < target {
            let read = read_at(
                &self.file,
                &mut self.buf[filled..],
                self.buf_start + filled as u64,
            );
            match read {
                Ok(0) => break,
                Ok(r) => filled += r,
                Err(e) => {
                    self.buf.truncate(filled);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(filled);
        Ok(filled.min(n))
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::windows::fs::FileExt;
    loop {
        match file.seek_read(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// What a full scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: u64,
    /// Bytes up to the end of the last good frame.
    pub good_len: u64,
    pub file_len: u64,
    /// Latest produced-at time of any record (0 when empty).
    pub newest_ms: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub problem: Option<&'static str>,
}

pub(crate) fn scan_segment(path: &Path) -> io::Result<Scan> {
    let file = Arc::new(File::open(path)?);
    let file_len = file.metadata()?.len();
    let mut reader = FrameReader::new(file, 0);
    let mut records = 0;
    let mut newest_ms = 0;
    let problem = loop {
        match reader.next(Mode::Verify)? {
            Outcome::Frame { produced_at_ms, .. } => {
                records += 1;
                newest_ms = newest_ms.max(produced_at_ms);
            }
            Outcome::End => break None,
            Outcome::Short => break Some("incomplete frame"),
            Outcome::BadCrc => break Some("CRC mismatch"),
        }
    };
    Ok(Scan {
        records,
        good_len: reader.pos(),
        file_len,
        newest_ms,
        problem,
    })
}
