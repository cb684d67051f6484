//! The consumer side: one consumer per group holding every partition.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::offsets::{OffsetStore, Offsets};
use super::segment::{segment_path, FrameReader, Mode, Outcome};
use super::writer::PartitionShared;
use super::{lock, EmbeddedLog, BUS_LABEL};
use crate::{BusError, Consumer, Position, Record};

/// How often a waiting poll looks again without a notification, in case one was missed.
const RECHECK: Duration = Duration::from_millis(150);

/// Reads every partition of the log for one consumer group. Created by
/// [`EmbeddedLog::consumer`]; only one may exist per group at a time.
pub struct EmbeddedConsumer {
    log: Arc<EmbeddedLog>,
    group: String,
    cursors: Vec<Cursor>,
    committed: Offsets,
    store: Arc<OffsetStore>,
    generation: u64,
    /// Partition a read starts with; rotates so leftover room in a poll goes to each in turn.
    rr: usize,
}

/// Where a consumer is in one partition. Cheap to clone: a poll reads with a copy and only
/// keeps it once the poll returns, so a poll cancelled mid-read loses nothing.
#[derive(Clone)]
struct Cursor {
    next: u64,
    /// Segment `file` belongs to, and the byte where offset `next` starts in it.
    seg_base: Option<u64>,
    byte_pos: u64,
    file: Option<Arc<File>>,
}

impl EmbeddedConsumer {
    pub(crate) fn new(log: Arc<EmbeddedLog>, group: &str) -> Result<Self, BusError> {
        let store = Arc::new(OffsetStore::new(&log.offsets_dir(), group));
        let committed = store.load()?;
        let mut cursors = Vec::with_capacity(log.partitions.len());
        for part in &log.partitions {
            let oldest = lock(&part.segments).first().copied().unwrap_or(0);
            let end = part.end();
            let next = match committed.get(&part.index) {
                // Nothing committed yet: start at the oldest record still retained.
                None => oldest,
                Some(&c) if c > end => {
                    // The log lost records since this commit (an unsynced tail under the Never
                    // policy and a machine crash). Starting at the commit would skip the records
                    // that reuse those offsets.
                    tracing::warn!(
                        bus = BUS_LABEL,
                        group,
                        partition = part.index,
                        committed = c,
                        end,
                        "committed offset is past the end of the log; resuming at the end"
                    );
                    end
                }
                // Behind retention: the first read skips forward and says how far.
                Some(&c) => c,
            };
            cursors.push(Cursor {
                next,
                seg_base: None,
                byte_pos: 0,
                file: None,
            });
        }
        Ok(EmbeddedConsumer {
            log,
            group: group.to_string(),
            cursors,
            committed,
            store,
            generation: 0,
            rr: 0,
        })
    }

    /// One non-waiting read of whatever is available.
    async fn read_available(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, BusError> {
        let any = self
            .cursors
            .iter()
            .zip(&self.log.partitions)
            .any(|(c, p)| c.next < p.end());
        if !any {
            return Ok(Vec::new());
        }
        let log = Arc::clone(&self.log);
        let mut cursors = self.cursors.clone();
        let rr = self.rr;
        let group = self.group.clone();
        let (records, cursors) = tokio::task::spawn_blocking(move || {
            let limits = Limits {
                records: max,
                bytes: max_bytes,
            };
            read_batch(&log.partitions, &mut cursors, limits, rr, &group).map(|r| (r, cursors))
        })
        .await
        .map_err(|e| BusError::Unavailable(format!("embedded log read task failed: {e}")))??;
        self.cursors = cursors;
        self.rr = (self.rr + 1) % self.cursors.len().max(1);
        Ok(records)
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        lock(&self.log.groups).remove(&self.group);
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(
        &mut self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // A caller may pass Duration::MAX to mean "until something arrives".
        let deadline = Instant::now()
            .checked_add(wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let notify = Arc::clone(&self.log.notify);
        loop {
            // Registered before looking, so a publish between the look and the wait still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let records = self.read_available(max, max_bytes).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(records);
            }
            let nap = (deadline - now).min(RECHECK);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn commit(&mut self, partition: &str, position: &Position) -> Result<(), BusError> {
        let index = partition
            .parse::<u32>()
            .ok()
            .filter(|&i| (i as usize) < self.log.partitions.len())
            .ok_or_else(|| {
                BusError::Config(format!(
                    "commit for unknown partition {partition:?}: the embedded log has partitions 0..{}",
                    self.log.partitions.len()
                ))
            })?;
        let offset = match position {
            Position::Offset(o) => *o,
            Position::Sequence { .. } => {
                return Err(BusError::Config(format!(
                    "commit of {position} on partition {partition}: the embedded log takes offsets, not sequence numbers"
                )))
            }
        };
        let end = self.log.partitions[index as usize].end();
        let next = offset.saturating_add(1);
        if next > end {
            return Err(BusError::Config(format!(
                "commit of offset {offset} on partition {partition}: past the last record ({})",
                end.saturating_sub(1)
            )));
        }
        self.committed.insert(index, next);
        self.generation += 1;
        let generation = self.generation;
        let offsets = self.committed.clone();
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.store(generation, &offsets))
            .await
            .map_err(|e| BusError::Unavailable(format!("embedded log commit task failed: {e}")))?
    }
}

/// What one poll may return.
#[derive(Clone, Copy)]
struct Limits {
    records: usize,
    /// Payload bytes; the poll's first record is returned whatever its size.
    bytes: usize,
}

/// What a poll has gathered so far.
struct Gathered {
    records: Vec<Record>,
    bytes: usize,
}

impl Gathered {
    /// Whether a payload of `len` bytes still fits: always the poll's first record, so one
    /// larger than the whole room still goes through and its partition does not stall.
    fn fits(&self, len: usize, limits: Limits) -> bool {
        self.records.is_empty() || self.bytes.saturating_add(len) <= limits.bytes
    }
}

/// Why a partition's read stopped.
#[derive(PartialEq, Eq)]
enum Stopped {
    /// Its share of the poll (records or bytes) is used up; it may have more.
    Share,
    /// Nothing more is written yet, or its next record does not fit what is left of the poll.
    Done,
}

/// Reads up to `limits` records and payload bytes, sharing both fairly between the
/// partitions that have data: each gets an equal part of what is left, pass after pass.
fn read_batch(
    parts: &[Arc<PartitionShared>],
    cursors: &mut [Cursor],
    limits: Limits,
    rr: usize,
    group: &str,
) -> Result<Vec<Record>, BusError> {
    let n = parts.len();
    let mut out = Gathered {
        records: Vec::new(),
        bytes: 0,
    };
    let mut active: Vec<usize> = (0..n)
        .map(|i| (rr + i) % n)
        .filter(|&i| cursors[i].next < parts[i].end())
        .collect();
    while out.records.len() < limits.records && out.bytes < limits.bytes && !active.is_empty() {
        let share = ((limits.records - out.records.len()) / active.len()).max(1);
        let byte_share = ((limits.bytes - out.bytes) / active.len()).max(1);
        let mut still = Vec::with_capacity(active.len());
        for &i in &active {
            let room = limits.records - out.records.len();
            if room == 0 {
                break;
            }
            let want = share.min(room);
            let (got, stopped) = read_partition(
                &parts[i],
                &mut cursors[i],
                (want, byte_share),
                limits,
                group,
                &mut out,
            )?;
            // A partition that read nothing this pass has nothing that fits: leave it be, so
            // the passes end.
            if got > 0 && stopped == Stopped::Share && cursors[i].next < parts[i].end() {
                still.push(i);
            }
        }
        active = still;
    }
    Ok(out.records)
}

/// Reads up to `share` (records, payload bytes) of one partition into `out`, at least one
/// record if it fits what is left of the poll; returns how many, and why it stopped.
fn read_partition(
    part: &PartitionShared,
    cursor: &mut Cursor,
    share: (usize, usize),
    limits: Limits,
    group: &str,
    out: &mut Gathered,
) -> Result<(usize, Stopped), BusError> {
    let (want, byte_share) = share;
    let label = part.index.to_string();
    let mut got = 0usize;
    let mut got_bytes = 0usize;
    while got < want {
        let end = part.end();
        if cursor.next >= end {
            break;
        }
        let located = {
            let segs = lock(&part.segments);
            match segs.first() {
                None => None,
                Some(&oldest) if cursor.next < oldest => Some((oldest, oldest, None)),
                Some(&oldest) => {
                    let idx = segs.partition_point(|&b| b <= cursor.next) - 1;
                    Some((oldest, segs[idx], segs.get(idx + 1).copied()))
                }
            }
        };
        let Some((oldest, seg_base, seg_limit)) = located else {
            break;
        };
        if cursor.next < oldest {
            tracing::warn!(
                bus = BUS_LABEL,
                group,
                partition = part.index,
                from = cursor.next,
                to = oldest,
                skipped_records = oldest - cursor.next,
                "records were deleted by retention before this group read them; skipping to the oldest retained record"
            );
            *cursor = Cursor {
                next: oldest,
                seg_base: None,
                byte_pos: 0,
                file: None,
            };
            continue;
        }
        let file = match (&cursor.file, cursor.seg_base) {
            (Some(f), Some(b)) if b == seg_base => Arc::clone(f),
            _ => {
                let path = segment_path(&part.dir, seg_base);
                let file = match File::open(&path) {
                    Ok(f) => Arc::new(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if lock(&part.segments).contains(&seg_base) {
                            return Err(BusError::Corrupt(format!(
                                "partition {}: segment {} is missing",
                                part.index,
                                path.display()
                            )));
                        }
                        // Retention removed it between the lookup and the open; look again.
                        continue;
                    }
                    Err(e) => return Err(super::io_at(&path, e)),
                };
                let byte_pos = if seg_base == cursor.next {
                    0
                } else {
                    skip_to(&file, part, seg_base, cursor.next - seg_base)?
                };
                cursor.file = Some(Arc::clone(&file));
                cursor.seg_base = Some(seg_base);
                cursor.byte_pos = byte_pos;
                file
            }
        };
        let limit = (want - got) as u64;
        let limit = limit
            .min(end - cursor.next)
            .min(seg_limit.map_or(u64::MAX, |l| l.saturating_sub(cursor.next)));
        let mut reader = FrameReader::new(file, cursor.byte_pos);
        let mut n = 0u64;
        while n < limit {
            match reader
                .next(Mode::Read)
                .map_err(|e| segment_io(part, seg_base, e))?
            {
                Outcome::Frame {
                    payload: Some(payload),
                    ..
                } => {
                    let len = payload.len();
                    let first_here = got == 0 && n == 0;
                    if !out.fits(len, limits) || (!first_here && got_bytes + len > byte_share) {
                        // Left where it is (the cursor stays before it): the next poll reads
                        // it again.
                        return Ok((got + n as usize, Stopped::Share));
                    }
                    out.records.push(Record {
                        partition: label.clone(),
                        position: Position::Offset(cursor.next),
                        payload,
                    });
                    out.bytes += len;
                    got_bytes += len;
                    cursor.next += 1;
                    cursor.byte_pos = reader.pos();
                    n += 1;
                }
                Outcome::BadCrc => {
                    return Err(BusError::Corrupt(format!(
                        "partition {}: record {} in segment {} fails its CRC check",
                        part.index,
                        cursor.next,
                        segment_path(&part.dir, seg_base).display()
                    )))
                }
                // Not written yet as far as this file shows; a partial frame is never returned.
                Outcome::Frame { payload: None, .. } | Outcome::End | Outcome::Short => break,
            }
        }
        got += n as usize;
        if n < limit {
            break;
        }
    }
    let stopped = if got == want {
        Stopped::Share
    } else {
        Stopped::Done
    };
    Ok((got, stopped))
}

/// Byte position of the `records`-th frame of a segment, for a cursor starting mid-segment.
fn skip_to(
    file: &Arc<File>,
    part: &PartitionShared,
    seg_base: u64,
    records: u64,
) -> Result<u64, BusError> {
    let mut reader = FrameReader::new(Arc::clone(file), 0);
    for k in 0..records {
        match reader.next(Mode::Skip).map_err(|e| segment_io(part, seg_base, e))? {
            Outcome::Frame { .. } => {}
            _ => {
                return Err(BusError::Corrupt(format!(
                    "partition {}: segment {} holds {k} whole records where at least {records} were expected",
                    part.index,
                    segment_path(&part.dir, seg_base).display()
                )))
            }
        }
    }
    Ok(reader.pos())
}

fn segment_io(part: &PartitionShared, seg_base: u64, e: io::Error) -> BusError {
    super::io_at(&segment_path(&part.dir, seg_base), e)
}
