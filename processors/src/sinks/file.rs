//! Writes each signal to `<dir>/<signal>.ndjson`: one line per OTLP batch (OTLP/JSON) for
//! traces, metrics and logs, one document per event, one segment document per X-Ray segment.
//! It lets a newcomer see the pipeline work with no cloud, and shows what the cloud sinks send.
//!
//! Its "service" is the local disk, delivered through the same engine as every other sink: a
//! write that fails (a full disk) is retried with backoff until it succeeds or the processor
//! stops, and the file is reopened first so a torn line is cut rather than written after.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::decode::{Batch, SignalData};
use crate::delivery::{Answer, DeliveryConfig, Engine, Service};
use crate::documents::event_document;
use crate::sink::Sink;

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
            // One writer per file keeps each file's lines in delivery order.
            concurrency: 1,
            ..config.delivery.clone()
        };
        let files = Files {
            dir: config.dir.clone(),
            fsync: config.fsync,
            open: Arc::default(),
        };
        Ok(FileSink {
            engine: Engine::new(files, delivery),
        })
    }
}

/// One signal's lines of a round, ready to append.
pub struct Chunk {
    signal: Signal,
    text: Bytes,
    lines: usize,
}

/// The files, as the engine's service: one call appends a round's chunks and syncs them.
struct Files {
    dir: PathBuf,
    fsync: bool,
    open: Arc<Mutex<HashMap<Signal, File>>>,
}

#[async_trait]
impl Service for Files {
    type Item = Chunk;

    fn name(&self) -> &'static str {
        "file"
    }

    fn calls(&self, items: Vec<Chunk>) -> Vec<Vec<Chunk>> {
        vec![items]
    }

    async fn call(&self, items: &[Chunk]) -> Answer {
        let chunks: Vec<(Signal, Bytes)> =
            items.iter().map(|c| (c.signal, c.text.clone())).collect();
        let (open, dir, fsync) = (self.open.clone(), self.dir.clone(), self.fsync);
        let written =
            tokio::task::spawn_blocking(move || append(&open, &dir, fsync, &chunks)).await;
        match written {
            Ok(Ok(())) => Answer::Stored,
            Ok(Err(e)) => Answer::retry("Io", e.to_string()),
            Err(e) => Answer::retry("Io", format!("writer task: {e}")),
        }
    }

    fn describe(&self, chunk: &Chunk) -> serde_json::Value {
        serde_json::json!({ "signal": chunk.signal.label(), "lines": chunk.lines })
    }
}

/// Appends each chunk to its signal's file. A file whose write failed is closed, so the retry
/// reopens it and cuts the torn line the failure may have left.
fn append(
    open: &Mutex<HashMap<Signal, File>>,
    dir: &Path,
    fsync: bool,
    chunks: &[(Signal, Bytes)],
) -> anyhow::Result<()> {
    // Nothing panics while holding it; a poisoned map still holds valid files.
    let mut files = open.lock().unwrap_or_else(|p| p.into_inner());
    for (signal, text) in chunks {
        let path = dir.join(format!("{}.ndjson", signal.label()));
        let file = match files.entry(*signal) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                open_for_append(&path)
                    .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?,
            ),
        };
        let result = file
            .write_all(text)
            .and_then(|()| if fsync { file.sync_data() } else { Ok(()) });
        if let Err(e) = result {
            files.remove(signal);
            anyhow::bail!("write {}: {e}", path.display());
        }
    }
    Ok(())
}

/// The lines a batch becomes.
pub fn lines(batch: &Batch, processed_at: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let json = |v: &dyn erased::Json| v.to_line();
    match &batch.data {
        SignalData::Traces(r) => vec![json(r)],
        SignalData::Metrics(r) => vec![json(r)],
        SignalData::Logs(r) => vec![json(r)],
        SignalData::Events(r) => r
            .events
            .iter()
            .map(|e| event_document(e, processed_at).to_string())
            .collect(),
        SignalData::XraySegments(docs) => docs.clone(),
    }
}

mod erased {
    pub trait Json {
        fn to_line(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_line(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
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
        let owned = batches.to_vec();
        // Rendering JSON is the CPU work of this sink: off the async workers, so rounds of
        // several partitions render on all cores.
        let chunks =
            tokio::task::spawn_blocking(move || chunks(&owned, chrono::Utc::now())).await?;
        self.engine.deliver(chunks, stop).await?;
        Ok(())
    }
}

/// A round's lines, one chunk per signal, in bus order.
fn chunks(batches: &[Arc<Batch>], now: chrono::DateTime<chrono::Utc>) -> Vec<Chunk> {
    let mut by_signal: Vec<(Signal, String, usize)> = Vec::new();
    for batch in batches {
        let i = match by_signal.iter().position(|(s, _, _)| *s == batch.signal) {
            Some(i) => i,
            None => {
                by_signal.push((batch.signal, String::new(), 0));
                by_signal.len() - 1
            }
        };
        let (_, out, count) = &mut by_signal[i];
        for line in lines(batch, now) {
            out.push_str(&line);
            out.push('\n');
            *count += 1;
        }
    }
    by_signal
        .into_iter()
        .map(|(signal, text, lines)| Chunk {
            signal,
            text: Bytes::from(text),
            lines,
        })
        .collect()
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
}
