//! One partition's writer: recovery on open, then a dedicated thread that owns the active
//! segment, appends, fsyncs, rolls and enforces retention.
//!
//! Every write to a partition goes through its thread, so there is no locking around the file,
//! and group commit falls out of the queue: whatever publishes arrive while one fsync runs are
//! written together and covered by the next single fsync.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::segment::{
    encode_frame, parse_segment_file_name, scan_segment, segment_path, HEADER_LEN,
};
use super::{io_at, lock, sync_dir, BUS_LABEL};
use crate::config::FsyncPolicy;
use crate::BusError;

/// A publish handed to the partition's thread; the reply carries the first record's offset.
pub(crate) struct Request {
    pub records: Vec<Bytes>,
    pub reply: oneshot::Sender<Result<u64, BusError>>,
}

/// What readers share with the writer of a partition.
pub(crate) struct PartitionShared {
    pub index: u32,
    pub dir: PathBuf,
    /// Base offsets of the retained segments, oldest first. Readers use it to find the file that
    /// holds an offset and to notice that retention has overtaken them.
    pub segments: Mutex<Vec<u64>>,
    /// Records below this offset are whole on disk and as durable as the fsync policy promises.
    /// Readers stop here so they never see a frame being written, nor one a machine crash could
    /// take back (a consumer could otherwise commit an offset that later gets reused).
    pub end: AtomicU64,
    /// Data fsyncs so far; lets tests see that concurrent publishes share them.
    pub syncs: AtomicU64,
}

impl PartitionShared {
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub segment_bytes: u64,
    pub retention_bytes: u64,
    pub retention_age: Duration,
}

struct SegMeta {
    base: u64,
    bytes: u64,
    /// When the segment's newest record passes `retention_age`, on the monotonic clock: a
    /// wall clock stepped forward (NTP after a suspend, a wrong clock corrected) would make
    /// seconds-old segments look expired and delete records no one had read yet. Only a
    /// segment recovered at start-up is aged by the wall clock, once. `None`: empty.
    expires: Option<Instant>,
}

pub(crate) struct Writer {
    shared: Arc<PartitionShared>,
    notify: Arc<Notify>,
    settings: Settings,
    label: String,
    /// Retained segments, oldest first; the last is the active one.
    segs: VecDeque<SegMeta>,
    active: File,
    /// Offset the next record will get.
    next: u64,
    /// Offset after the last record handed to the OS; `next` runs ahead while frames sit in `buf`.
    written_next: u64,
    total_bytes: u64,
    buf: Vec<u8>,
    /// Written but not yet fsynced.
    dirty: bool,
    /// Interval policy: acknowledgements held until the fsync that covers them.
    waiting: Vec<(oneshot::Sender<Result<u64, BusError>>, u64)>,
    /// Set once an fsync or rollback fails: the page cache can no longer be trusted to match the
    /// disk, so the partition refuses writes until the process restarts and recovers from disk.
    failed: Option<String>,
}

pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Writer {
    /// Scans the partition's segments, truncating a torn tail of the last one, and leaves the
    /// last segment open for appending.
    pub(crate) fn recover(
        index: u32,
        dir: PathBuf,
        settings: Settings,
        notify: Arc<Notify>,
    ) -> Result<(Writer, Arc<PartitionShared>), BusError> {
        fs::create_dir_all(&dir).map_err(|e| io_at(&dir, e))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_at(&dir, e))? {
            let entry = entry.map_err(|e| io_at(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_segment_file_name(&name) {
                Some(base) => bases.push(base),
                None => tracing::warn!(
                    bus = BUS_LABEL,
                    partition = index,
                    file = %entry.path().display(),
                    "ignoring a file that is not a segment in a partition directory"
                ),
            }
        }
        bases.sort_unstable();

        let mut segs = VecDeque::new();
        if bases.is_empty() {
            let path = segment_path(&dir, 0);
            File::create_new(&path).map_err(|e| io_at(&path, e))?;
            sync_dir(&dir)?;
            segs.push_back(SegMeta {
                base: 0,
                bytes: 0,
                expires: None,
            });
        }
        let count = bases.len();
        let mut expected_base: Option<u64> = None;
        for (k, &base) in bases.iter().enumerate() {
            let path = segment_path(&dir, base);
            if let Some(expected) = expected_base {
                if base != expected {
                    return Err(BusError::Corrupt(format!(
                        "partition {index}: segment {} starts at offset {base} but the segment before it ends at offset {expected}",
                        path.display()
                    )));
                }
            }
            let scan = scan_segment(&path).map_err(|e| io_at(&path, e))?;
            if let Some(problem) = scan.problem {
                if k + 1 < count {
                    return Err(BusError::Corrupt(format!(
                        "partition {index}: segment {} is damaged at byte {} ({problem}) and is not the last segment, so the records after it cannot be trusted",
                        path.display(),
                        scan.good_len
                    )));
                }
                tracing::warn!(
                    bus = BUS_LABEL,
                    partition = index,
                    segment = %path.display(),
                    problem,
                    kept_records = scan.records,
                    kept_bytes = scan.good_len,
                    dropped_bytes = scan.file_len - scan.good_len,
                    "truncating a torn tail left by an interrupted write"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_at(&path, e))?;
                f.set_len(scan.good_len).map_err(|e| io_at(&path, e))?;
                f.sync_all().map_err(|e| io_at(&path, e))?;
            }
            expected_base = Some(base + scan.records);
            let wall_age = Duration::from_millis(unix_millis().saturating_sub(scan.newest_ms));
            segs.push_back(SegMeta {
                base,
                bytes: scan.good_len,
                expires: (scan.records > 0).then(|| {
                    later(
                        Instant::now(),
                        settings.retention_age.saturating_sub(wall_age),
                    )
                }),
            });
        }

        let active_base = segs.back().map_or(0, |s| s.base);
        let next = expected_base.unwrap_or(active_base);
        let active_path = segment_path(&dir, active_base);
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(|e| io_at(&active_path, e))?;
        let total_bytes = segs.iter().map(|s| s.bytes).sum();
        let shared = Arc::new(PartitionShared {
            index,
            dir,
            segments: Mutex::new(segs.iter().map(|s| s.base).collect()),
            end: AtomicU64::new(next),
            syncs: AtomicU64::new(0),
        });
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            notify,
            settings,
            label: index.to_string(),
            segs,
            active,
            next,
            written_next: next,
            total_bytes,
            buf: Vec::new(),
            dirty: false,
            waiting: Vec::new(),
            failed: None,
        };
        writer.enforce_retention();
        writer.report_size();
        Ok((writer, shared))
    }

    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let housekeeping = (self.settings.retention_age / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(10));
        let mut next_housekeeping = later(Instant::now(), housekeeping);
        let mut next_sync = later(Instant::now(), self.settings.fsync_interval);
        loop {
            let now = Instant::now();
            let mut deadline = next_housekeeping;
            if self.settings.fsync == FsyncPolicy::Interval
                && (self.dirty || !self.waiting.is_empty())
            {
                deadline = deadline.min(next_sync);
            }
            match rx.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(first) => {
                    let mut batch = vec![first];
                    // Bounded so a flood of publishers cannot postpone everyone's fsync forever.
                    while batch.len() < 1024 {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.handle_batch(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if self.settings.fsync == FsyncPolicy::Interval && now >= next_sync {
                if self.dirty || !self.waiting.is_empty() {
                    self.sync_and_release_waiting();
                }
                next_sync = later(now, self.settings.fsync_interval);
            }
            if now >= next_housekeeping {
                self.enforce_retention();
                next_housekeeping = later(now, housekeeping);
            }
        }
        // Clean shutdown: fsync what was written so it also outlives a machine crash. Nobody
        // waits on these replies any more (publishers hold the log alive while they wait).
        if self.dirty && self.settings.fsync != FsyncPolicy::Never && self.failed.is_none() {
            self.sync_and_release_waiting();
        }
    }

    fn handle_batch(&mut self, batch: Vec<Request>) {
        let now_ms = unix_millis();
        let mut done = Vec::with_capacity(batch.len());
        for req in batch {
            if let Some(msg) = &self.failed {
                let _ = req.reply.send(Err(BusError::Unavailable(msg.clone())));
                continue;
            }
            match self.append(&req.records, now_ms) {
                Ok(first) => done.push((req.reply, first)),
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if let Some(msg) = &self.failed {
            // Never fsync again after a failure: a retried fsync can succeed without the lost
            // writes having reached the disk.
            for (reply, _) in done {
                let _ = reply.send(Err(BusError::Unavailable(msg.clone())));
            }
            return;
        }
        // Checked on every batch, not just on roll, so the size budget holds as the active
        // segment grows; it costs a comparison unless something is due for deletion.
        self.enforce_retention();
        match self.settings.fsync {
            FsyncPolicy::Always => {
                if self.dirty {
                    if let Err(e) = self.sync() {
                        let _ = self.fail(e, done);
                        return;
                    }
                }
                self.publish_end();
                release(done);
            }
            FsyncPolicy::Never => {
                self.publish_end();
                release(done);
            }
            FsyncPolicy::Interval => self.waiting.extend(done),
        }
    }

    fn sync_and_release_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        if let Some(msg) = &self.failed {
            for (reply, _) in waiting {
                let _ = reply.send(Err(BusError::Unavailable(msg.clone())));
            }
            return;
        }
        if self.dirty {
            if let Err(e) = self.sync() {
                let _ = self.fail(e, waiting);
                return;
            }
        }
        self.publish_end();
        release(waiting);
    }

    /// Appends the records, rolling segments as needed, and returns the first one's offset.
    fn append(&mut self, records: &[Bytes], now_ms: u64) -> Result<u64, BusError> {
        let first = self.next;
        let result = (|| {
            for record in records {
                let frame_len = (HEADER_LEN + record.len()) as u64;
                let active_len = self.active_bytes() + self.buf.len() as u64;
                if active_len > 0 && active_len + frame_len > self.settings.segment_bytes {
                    self.flush()?;
                    self.roll()?;
                }
                encode_frame(&mut self.buf, now_ms, record);
                self.next += 1;
            }
            self.flush()
        })();
        match result {
            Ok(()) => Ok(first),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn active_bytes(&self) -> u64 {
        self.segs.back().map_or(0, |s| s.bytes)
    }

    fn flush(&mut self) -> Result<(), BusError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let base = self.segs.back().map_or(0, |s| s.base);
        self.active
            .write_all(&self.buf)
            .map_err(|e| io_at(&segment_path(&self.shared.dir, base), e))?;
        let len = self.buf.len() as u64;
        if let Some(seg) = self.segs.back_mut() {
            seg.bytes += len;
            seg.expires = Some(later(Instant::now(), self.settings.retention_age));
        }
        self.total_bytes += len;
        metrics::counter!("tidewater_bus_appended_records_total", "bus" => BUS_LABEL)
            .increment(self.next - self.written_next);
        metrics::counter!("tidewater_bus_appended_bytes_total", "bus" => BUS_LABEL).increment(len);
        self.written_next = self.next;
        self.dirty = true;
        self.buf.clear();
        Ok(())
    }

    /// Undoes a failed append: forgets buffered frames and cuts off whatever part of a write
    /// reached the file, so the next frame starts on a frame boundary.
    fn rollback(&mut self) {
        self.buf.clear();
        self.next = self.written_next;
        let good = self.active_bytes();
        let truncated = self.active.metadata().and_then(|m| {
            if m.len() != good {
                self.active.set_len(good)
            } else {
                Ok(())
            }
        });
        if let Err(e) = truncated {
            let _ = self.fail(e, Vec::new());
        }
    }

    fn roll(&mut self) -> Result<(), BusError> {
        let durable = self.settings.fsync != FsyncPolicy::Never;
        if durable && self.dirty {
            // Acknowledgements still to come may cover records in this segment, and only the
            // active file is fsynced from here on.
            if let Err(e) = self.sync() {
                return Err(BusError::Unavailable(self.fail(e, Vec::new())));
            }
        }
        let path = segment_path(&self.shared.dir, self.next);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_at(&path, e))?;
        if durable {
            // The new file's directory entry must survive a crash along with the data written to it.
            sync_dir(&self.shared.dir)?;
        }
        self.active = file;
        self.segs.push_back(SegMeta {
            base: self.next,
            bytes: 0,
            expires: None,
        });
        lock(&self.shared.segments).push(self.next);
        self.enforce_retention();
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidewater_bus_fsyncs_total", "bus" => BUS_LABEL).increment(1);
        self.dirty = false;
        Ok(())
    }

    fn publish_end(&mut self) {
        self.shared.end.store(self.written_next, Ordering::Release);
        self.notify.notify_waiters();
        self.report_size();
    }

    fn report_size(&self) {
        metrics::gauge!("tidewater_bus_partition_bytes", "bus" => BUS_LABEL, "partition" => self.label.clone())
            .set(self.total_bytes as f64);
    }

    fn fail(
        &mut self,
        e: io::Error,
        pending: Vec<(oneshot::Sender<Result<u64, BusError>>, u64)>,
    ) -> String {
        let msg = format!(
            "partition {} of the embedded log failed to write or fsync ({e}); it accepts no more writes until the process restarts",
            self.shared.index
        );
        tracing::error!(bus = BUS_LABEL, partition = self.shared.index, error = %e, "embedded log partition failed");
        for (reply, _) in pending {
            let _ = reply.send(Err(BusError::Unavailable(msg.clone())));
        }
        for (reply, _) in self.waiting.drain(..) {
            let _ = reply.send(Err(BusError::Unavailable(msg.clone())));
        }
        self.failed = Some(msg.clone());
        msg
    }

    /// Deletes whole segments from the old end, never the active one, while the partition is
    /// over its size budget or the oldest segment's newest record is past the age limit.
    fn enforce_retention(&mut self) {
        let now = Instant::now();
        let mut deleted = 0u64;
        while self.segs.len() > 1 {
            let Some(oldest) = self.segs.front() else {
                break;
            };
            let over_size = self.total_bytes > self.settings.retention_bytes;
            let expired = oldest.expires.is_none_or(|at| at <= now);
            if !over_size && !expired {
                break;
            }
            let base = oldest.base;
            let bytes = oldest.bytes;
            // Out of the shared list first, so a reader never opens a file about to go.
            {
                let mut shared = lock(&self.shared.segments);
                if shared.first() == Some(&base) {
                    shared.remove(0);
                }
            }
            let path = segment_path(&self.shared.dir, base);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(bus = BUS_LABEL, segment = %path.display(), error = %e, "could not delete a segment past retention");
                }
            }
            tracing::debug!(
                bus = BUS_LABEL,
                partition = self.shared.index,
                segment = %path.display(),
                over_size,
                expired,
                "deleted segment past retention"
            );
            self.segs.pop_front();
            self.total_bytes -= bytes;
            deleted += 1;
        }
        if deleted > 0 {
            metrics::counter!("tidewater_bus_retention_deleted_segments_total", "bus" => BUS_LABEL)
                .increment(deleted);
            self.report_size();
        }
    }
}

/// `now + d`, saturating: a configured interval can be absurdly long without panicking.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

fn release(done: Vec<(oneshot::Sender<Result<u64, BusError>>, u64)>) {
    for (reply, first) in done {
        // The publisher may have given up waiting; its records are in the log regardless.
        let _ = reply.send(Ok(first));
    }
}

pub(crate) fn partition_dir(root: &Path, index: u32) -> PathBuf {
    root.join("partitions").join(index.to_string())
}
