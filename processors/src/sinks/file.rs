//! Writes each signal to `<dir>/<signal>.ndjson`: one line per OTLP batch (OTLP/JSON) for
//! traces, metrics and logs, one document per event, one segment document per X-Ray segment.
//! It lets a newcomer see the pipeline work with no cloud, and shows what the cloud sinks send.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

use crate::decode::{Batch, SignalData};
use crate::documents::event_document;
use crate::sink::Sink;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// fsync after each delivery, so the checkpoint never moves past data a power cut loses.
    pub fsync: bool,
}

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            enabled: true,
            dir: PathBuf::from("tidewater-data/out"),
            fsync: true,
        }
    }
}

pub struct FileSink {
    config: FileSinkConfig,
    files: Arc<Mutex<HashMap<Signal, File>>>,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            anyhow::anyhow!("cannot create file sink dir {}: {e}", config.dir.display())
        })?;
        Ok(FileSink {
            config,
            files: Arc::default(),
        })
    }
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
        _stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let mut by_signal: HashMap<Signal, String> = HashMap::new();
        for batch in batches {
            let out = by_signal.entry(batch.signal).or_default();
            for line in lines(batch, now) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        let files = self.files.clone();
        let dir = self.config.dir.clone();
        let fsync = self.config.fsync;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut files = files
                .lock()
                .map_err(|_| anyhow::anyhow!("file sink lock poisoned"))?;
            for (signal, text) in by_signal {
                let file = match files.entry(signal) {
                    std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let path = dir.join(format!("{}.ndjson", signal.label()));
                        v.insert(
                            open_for_append(&path)
                                .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?,
                        )
                    }
                };
                file.write_all(text.as_bytes())?;
                if fsync {
                    file.sync_data()?;
                }
            }
            Ok(())
        })
        .await?
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
}
