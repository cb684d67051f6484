//! Writes each signal to `<dir>/<signal>.ndjson`: one line per OTLP batch (OTLP/JSON) for
//! traces, metrics and logs, one document per event, one segment document per X-Ray segment.
//! It lets a newcomer see the pipeline work with no cloud, and shows what the cloud sinks send.
//!
//! Its "service" is the local disk, delivered through the same engine as every other sink: a
//! write that fails (a full disk) is retried with backoff until it succeeds or the processor
//! stops, and the file is reopened first so a torn line is cut rather than written after.
//!
//! Rendering JSON is most of this sink's CPU, so a round is rendered batch by batch into a
//! reused buffer and each batch appended at once: rounds of several partitions render on all
//! cores while the files are held only to write, a partition's lines stay in bus order, and
//! what rendering holds is one batch's lines per core rather than whole rounds. Traces, the
//! bulk of it, are written by [`json`], byte for byte what serde writes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidewater_proto::Signal;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::decode::{Batch, SignalData};
use crate::delivery::{Answer, DeliveryConfig, Engine, Service};
use crate::documents::event_document;
use crate::sink::Sink;

mod json;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// fsync after each delivery, so the checkpoint never moves past data a power cut loses.
    pub fsync: bool,
    /// Retries of a failed write (a full disk), as for every sink; `concurrency` is always 1.
    pub delivery: DeliveryConfig,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            enabled: true,
            dir: PathBuf::from("tidewater-data/out"),
            fsync: true,
            delivery: DeliveryConfig::default(),
        }
    }
}

pub struct FileSink {
    engine: Engine<Files>,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            anyhow::anyhow!("cannot create file sink dir {}: {e}", config.dir.display())
        })?;
        let delivery = DeliveryConfig {
            // One call per round, in order: a partition's lines stay in bus order.
            concurrency: 1,
            ..config.delivery.clone()
        };
        let files = Files {
            dir: config.dir.clone(),
            fsync: config.fsync,
            open: Arc::default(),
            renders: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()) + 1,
            )),
            buffers: Arc::default(),
        };
        Ok(FileSink {
            engine: Engine::new(files, delivery),
        })
    }
}

/// A batch of a round, and whether its lines are in its file: a retry after a failed write
/// writes only what the failed attempt did not.
pub struct Piece {
    batch: Arc<Batch>,
    written: AtomicBool,
}

/// The files, as the engine's service: one call renders a round's batches and appends their
/// lines, then syncs the files it wrote.
struct Files {
    dir: PathBuf,
    fsync: bool,
    open: Arc<Mutex<HashMap<Signal, File>>>,
    /// One permit per core, and one more: rounds render at once up to the cores there are to
    /// render them, each in one buffer of one batch's lines, so what rendering holds is
    /// bounded by the cores, not by how many partitions have a round on its way. The one more
    /// is for the round waiting for the files while another writes: without it, on two cores
    /// rendering stalled for a quarter of the drain.
    renders: Arc<Semaphore>,
    /// Render buffers not in use (at most one per permit), so each batch does not allocate
    /// (and the kernel fault in) megabytes afresh.
    buffers: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The most a render buffer keeps between batches: a batch's lines are a few MiB (2.6 bytes
/// of OTLP/JSON per byte of protobuf); a larger one is freed once written.
const BUFFER_KEPT: usize = 16 * 1024 * 1024;

#[async_trait]
impl Service for Files {
    type Item = Arc<Piece>;

    fn name(&self) -> &'static str {
        "file"
    }

    fn calls(&self, items: Vec<Arc<Piece>>) -> Vec<Vec<Arc<Piece>>> {
        vec![items]
    }

    async fn call(&self, items: &[Arc<Piece>]) -> Answer {
        let Ok(permit) = Arc::clone(&self.renders).acquire_owned().await else {
            return Answer::retry("Io", "the file sink is closed");
        };
        let pieces = items.to_vec();
        let (open, buffers, dir, fsync) = (
            self.open.clone(),
            self.buffers.clone(),
            self.dir.clone(),
            self.fsync,
        );
        // Rendering is the CPU work of this sink, and writing is a copy: both off the async
        // workers, and rounds of different partitions render at the same time.
        let written = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut buffer = buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_default();
            let result = append(&open, &dir, fsync, &pieces, &mut buffer);
            if buffer.capacity() <= BUFFER_KEPT {
                buffer.clear();
                buffers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(buffer);
            }
            result
        })
        .await;
        match written {
            Ok(Ok(())) => Answer::Stored,
            Ok(Err(e)) => Answer::retry("Io", e.to_string()),
            Err(e) => Answer::retry("Io", format!("writer task: {e}")),
        }
    }

    fn describe(&self, piece: &Arc<Piece>) -> serde_json::Value {
        serde_json::json!({
            "signal": piece.batch.signal.label(),
            "items": piece.batch.item_count,
        })
    }
}

/// Renders each piece not yet written into `buffer` and appends it to its signal's file,
/// holding the files only to write: rounds of other partitions render meanwhile, and their
/// lines go between this round's batches, never inside a line. A file whose write failed is
/// closed, so the retry reopens it and cuts the torn line the failure may have left.
fn append(
    open: &Mutex<HashMap<Signal, File>>,
    dir: &Path,
    fsync: bool,
    pieces: &[Arc<Piece>],
    buffer: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let mut touched: Vec<Signal> = Vec::new();
    for piece in pieces {
        if piece.written.load(Ordering::Acquire) {
            continue;
        }
        let signal = piece.batch.signal;
        buffer.clear();
        render(&piece.batch, now, buffer);
        // Nothing panics while holding it; a poisoned map still holds valid files.
        let mut files = open.lock().unwrap_or_else(|p| p.into_inner());
        let file = file(&mut files, dir, signal)?;
        if let Err(e) = file.write_all(buffer) {
            files.remove(&signal);
            anyhow::bail!("write {}: {e}", path(dir, signal).display());
        }
        piece.written.store(true, Ordering::Release);
        if !touched.contains(&signal) {
            touched.push(signal);
        }
    }
    if fsync {
        for signal in touched {
            let mut files = open.lock().unwrap_or_else(|p| p.into_inner());
            let synced = file(&mut files, dir, signal)?.sync_data();
            if let Err(e) = synced {
                files.remove(&signal);
                // Not known to be on disk: written again, after the reopen cut any torn line.
                for piece in pieces.iter().filter(|p| p.batch.signal == signal) {
                    piece.written.store(false, Ordering::Release);
                }
                anyhow::bail!("sync {}: {e}", path(dir, signal).display());
            }
        }
    }
    Ok(())
}

fn path(dir: &Path, signal: Signal) -> PathBuf {
    dir.join(format!("{}.ndjson", signal.label()))
}

/// `signal`'s file, opened (and a torn last line cut) if it is not open.
fn file<'a>(
    files: &'a mut HashMap<Signal, File>,
    dir: &Path,
    signal: Signal,
) -> anyhow::Result<&'a mut File> {
    Ok(match files.entry(signal) {
        std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let path = path(dir, signal);
            v.insert(
                open_for_append(&path)
                    .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?,
            )
        }
    })
}

/// Appends the lines `batch` becomes to `out`, each with its newline; returns how many.
/// Written straight into `out` by serde, so a batch of thousands of spans is one pass and no
/// intermediate strings.
pub fn render(
    batch: &Batch,
    processed_at: chrono::DateTime<chrono::Utc>,
    out: &mut Vec<u8>,
) -> usize {
    match &batch.data {
        SignalData::Traces(r) => {
            let start = out.len();
            match json::traces(out, r) {
                Ok(()) => {
                    out.push(b'\n');
                    1
                }
                Err(e) => {
                    out.truncate(start);
                    unrendered(&e);
                    0
                }
            }
        }
        SignalData::Metrics(r) => line(out, r),
        SignalData::Logs(r) => line(out, r),
        SignalData::Events(r) => r
            .events
            .iter()
            .map(|e| line(out, &event_document(e, processed_at)))
            .sum(),
        SignalData::XraySegments(docs) => {
            for doc in docs {
                out.extend_from_slice(doc.as_bytes());
                out.push(b'\n');
            }
            docs.len()
        }
    }
}

/// Appends `value` as one JSON line; 1, or 0 (and nothing appended) if it cannot be
/// serialized, which none of these types can fail.
fn line(out: &mut Vec<u8>, value: &impl serde::Serialize) -> usize {
    let start = out.len();
    match serde_json::to_writer(&mut *out, value) {
        Ok(()) => {
            out.push(b'\n');
            1
        }
        Err(e) => {
            out.truncate(start);
            unrendered(&e);
            0
        }
    }
}

fn unrendered(e: &dyn std::fmt::Display) {
    tracing::error!(error = %e, "file sink: a batch could not be rendered as JSON; skipped");
}

/// Opens `path` for appending after cutting any torn last line: a crash mid-write leaves one,
/// and its batch was never acknowledged, so the bus delivers it again in full.
fn open_for_append(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let tail_start = len.saturating_sub(64 * 1024);
        file.seek(SeekFrom::Start(tail_start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        if tail.last() != Some(&b'\n') {
            let keep = match tail.iter().rposition(|b| *b == b'\n') {
                Some(i) => tail_start + i as u64 + 1,
                // A torn line longer than the tail read: scan the whole file for the last newline.
                None => last_newline_end(path)?,
            };
            tracing::warn!(path = %path.display(), cut = len - keep, "file sink: removed a torn last line left by a crash");
            file.set_len(keep)?;
            file.sync_data()?;
        }
    }
    Ok(file)
}

fn last_newline_end(path: &Path) -> std::io::Result<u64> {
    let data = std::fs::read(path)?;
    Ok(data
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i as u64 + 1)
        .unwrap_or(0))
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn accepts(&self, _signal: Signal) -> bool {
        true
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let pieces = batches
            .iter()
            .map(|batch| {
                Arc::new(Piece {
                    batch: Arc::clone(batch),
                    written: AtomicBool::new(false),
                })
            })
            .collect();
        self.engine.deliver(pieces, stop).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traces.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut f = open_for_append(&path).unwrap();
        f.write_all(b"{\"c\":3}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );

        std::fs::write(&path, "no newline at all").unwrap();
        drop(open_for_append(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    fn piece(signal: Signal, data: SignalData) -> Arc<Piece> {
        Arc::new(Piece {
            batch: Arc::new(Batch {
                signal,
                record_id: Vec::new(),
                produced_at_unix_nano: 0,
                item_count: 1,
                data,
            }),
            written: AtomicBool::new(false),
        })
    }

    /// A round whose second batch fails to write: the retry writes that batch and not the
    /// first again.
    #[test]
    fn a_retry_writes_only_the_batches_not_yet_written() {
        let dir = tempfile::tempdir().unwrap();
        let segments = piece(
            Signal::XraySegments,
            SignalData::XraySegments(vec!["{\"id\":\"a\"}".into(), "{\"id\":\"b\"}".into()]),
        );
        let traces = piece(Signal::Traces, SignalData::Traces(Default::default()));
        let pieces = [segments, traces];
        let open = Mutex::new(HashMap::new());
        // A traces file that cannot be written, as a full disk would have it.
        let traces_path = path(dir.path(), Signal::Traces);
        std::fs::write(&traces_path, "").unwrap();
        open.lock()
            .unwrap()
            .insert(Signal::Traces, File::open(&traces_path).unwrap());
        let mut buffer = Vec::new();
        assert!(append(&open, dir.path(), true, &pieces, &mut buffer).is_err());
        append(&open, dir.path(), true, &pieces, &mut buffer).unwrap();
        let segments = std::fs::read_to_string(path(dir.path(), Signal::XraySegments)).unwrap();
        assert_eq!(segments, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        assert_eq!(
            std::fs::read_to_string(&traces_path).unwrap(),
            "{\"resourceSpans\":[]}\n"
        );
    }
}
