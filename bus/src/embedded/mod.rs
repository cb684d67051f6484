//! The embedded on-disk log: the bus for a single machine.
//!
//! Layout under the configured directory:
//!
//! ```text
//! LOCK                          exclusive lock held while an EmbeddedLog is open
//! meta.json                     {"version":1,"partitions":N}, fixed at creation
//! partitions/<index>/<base>.log segments, named by the offset of their first record
//!                               (20 zero-padded digits)
//! offsets/<group>.json          {"<index>": next offset to read, ...}
//! ```
//!
//! Offsets are record numbers within a partition, from 0. Frames are described in `segment.rs`.
//! Each partition has a writer thread (see `writer.rs`); consumers read the segment files with
//! positioned reads and never look past what the writer has published as durable.

mod consumer;
mod offsets;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::config::EmbeddedConfig;
use crate::{partition_for_hash, Ack, BusError, PartitionKey, Position, Producer};

pub use consumer::EmbeddedConsumer;

use writer::{partition_dir, PartitionShared, Request, Settings, Writer};

const BUS_LABEL: &str = "embedded";

/// Each partition gets a thread, so the count is kept to what one machine sensibly runs.
const MAX_PARTITIONS: u32 = 1024;

const META_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u32,
    partitions: u32,
}

/// An open embedded log. Holds the directory's lock until the last handle (the log itself, its
/// producers and consumers) is dropped.
pub struct EmbeddedLog {
    dir: PathBuf,
    partitions: Vec<Arc<PartitionShared>>,
    senders: Vec<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    /// Woken whenever records become readable in any partition.
    notify: Arc<Notify>,
    /// Groups with a live consumer: a second consumer of a group would read everything twice
    /// and race the first one's commits.
    groups: Mutex<HashSet<String>>,
    _lock: File,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("dir", &self.dir)
            .field("partitions", &self.partitions.len())
            .finish_non_exhaustive()
    }
}

impl EmbeddedLog {
    /// Opens the log at `config.dir`, creating it if needed and recovering from a crash:
    /// a torn tail of a partition's last segment is cut off. Blocks on file I/O while it scans.
    pub fn open(config: &EmbeddedConfig) -> Result<Arc<Self>, BusError> {
        let n = config.partitions;
        if n == 0 || n > MAX_PARTITIONS {
            return Err(BusError::Config(format!(
                "embedded bus partitions must be between 1 and {MAX_PARTITIONS}, not {n}"
            )));
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| io_at(&dir, e))?;

        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_at(&lock_path, e))?;
        if !lock_file
            .try_lock_exclusive()
            .map_err(|e| io_at(&lock_path, e))?
        {
            return Err(BusError::Config(format!(
                "embedded bus directory {} is already in use by another process (or another open EmbeddedLog); two writers would corrupt it",
                dir.display()
            )));
        }

        check_meta(&dir, n)?;
        let offsets_dir = dir.join("offsets");
        fs::create_dir_all(&offsets_dir).map_err(|e| io_at(&offsets_dir, e))?;

        let settings = Settings {
            fsync: config.fsync,
            fsync_interval: config.fsync_interval,
            segment_bytes: config.segment_bytes.as_u64(),
            retention_bytes: config.retention_bytes.as_u64(),
            retention_age: config.retention_age,
        };
        let notify = Arc::new(Notify::new());
        let mut writers = Vec::with_capacity(n as usize);
        let mut partitions = Vec::with_capacity(n as usize);
        for index in 0..n {
            let (writer, shared) = Writer::recover(
                index,
                partition_dir(&dir, index),
                settings.clone(),
                Arc::clone(&notify),
            )?;
            writers.push(writer);
            partitions.push(shared);
        }

        // Built before the threads start so that, if starting one fails, dropping the
        // half-built log stops the others.
        let mut log = EmbeddedLog {
            dir,
            partitions,
            senders: Vec::with_capacity(n as usize),
            threads: Vec::with_capacity(n as usize),
            notify,
            groups: Mutex::new(HashSet::new()),
            _lock: lock_file,
        };
        for (index, writer) in writers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("tidewater-bus-p{index}"))
                .stack_size(256 * 1024)
                .spawn(move || writer.run(rx))
                .map_err(|e| {
                    BusError::Unavailable(format!(
                        "cannot start the writer thread of partition {index}: {e}"
                    ))
                })?;
            log.senders.push(tx);
            log.threads.push(thread);
        }
        tracing::info!(bus = BUS_LABEL, dir = %log.dir.display(), partitions = n, "embedded log open");
        Ok(Arc::new(log))
    }

    pub fn producer(self: &Arc<Self>) -> EmbeddedProducer {
        EmbeddedProducer {
            log: Arc::clone(self),
        }
    }

    /// The consumer of `group`, starting at the group's committed offsets. Only one consumer
    /// per group may be alive at a time.
    pub fn consumer(self: &Arc<Self>, group: &str) -> Result<EmbeddedConsumer, BusError> {
        offsets::validate_group(group)?;
        if !lock(&self.groups).insert(group.to_string()) {
            return Err(BusError::Config(format!(
                "consumer group {group:?} already has a consumer on the embedded log {}; it holds every partition, so there can be only one",
                self.dir.display()
            )));
        }
        // On failure the consumer was never built, so its Drop will not free the group.
        EmbeddedConsumer::new(Arc::clone(self), group).inspect_err(|_| {
            lock(&self.groups).remove(group);
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Records not yet committed by `group`, over every partition.
    pub fn backlog(&self, group: &str) -> Result<u64, BusError> {
        offsets::validate_group(group)?;
        let committed = offsets::OffsetStore::new(&self.offsets_dir(), group).load()?;
        Ok(self
            .partitions
            .iter()
            .map(|part| {
                let oldest = lock(&part.segments).first().copied().unwrap_or(0);
                let from = committed
                    .get(&part.index)
                    .copied()
                    .unwrap_or(oldest)
                    .max(oldest);
                part.end().saturating_sub(from)
            })
            .sum())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn offsets_dir(&self) -> PathBuf {
        self.dir.join("offsets")
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the channels ends the writer threads; waiting for them means the files are
        // closed and fsynced before the lock is released and the log can be opened again.
        self.senders.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!(bus = BUS_LABEL, dir = %self.dir.display(), "an embedded log writer thread panicked");
            }
        }
    }
}

/// Appends to the embedded log. Cheap to clone; every clone shares the log.
#[derive(Clone, Debug)]
pub struct EmbeddedProducer {
    log: Arc<EmbeddedLog>,
}

#[async_trait]
impl Producer for EmbeddedProducer {
    fn partitions(&self) -> u32 {
        self.log.partitions()
    }

    async fn publish(&self, key: &PartitionKey, records: Vec<Bytes>) -> Result<Ack, BusError> {
        if let Some(big) = records.iter().find(|r| r.len() > u32::MAX as usize) {
            return Err(BusError::Config(format!(
                "a record of {} bytes exceeds the embedded log's 4 GiB frame limit",
                big.len()
            )));
        }
        let index = partition_for_hash(key.hash, self.log.partitions());
        let sender = self
            .log
            .senders
            .get(index as usize)
            .ok_or(BusError::Closed)?;
        let (reply, ack) = oneshot::channel();
        sender
            .send(Request { records, reply })
            .map_err(|_| BusError::Closed)?;
        let first = ack.await.map_err(|_| BusError::Closed)??;
        Ok(Ack {
            partition: index.to_string(),
            first: Position::Offset(first),
        })
    }
}

fn check_meta(dir: &Path, partitions: u32) -> Result<(), BusError> {
    let path = dir.join("meta.json");
    match fs::read(&path) {
        Ok(text) => {
            let meta: Meta = serde_json::from_slice(&text)
                .map_err(|e| BusError::Corrupt(format!("{} is unreadable: {e}", path.display())))?;
            if meta.version != META_VERSION {
                return Err(BusError::Config(format!(
                    "embedded bus directory {} has format version {}; this build reads version {META_VERSION}",
                    dir.display(),
                    meta.version
                )));
            }
            if meta.partitions != partitions {
                return Err(BusError::Config(format!(
                    "embedded bus directory {} was created with {} partitions but the configuration asks for {partitions}; \
                     the count cannot change once a log exists (set partitions = {} or use a new directory)",
                    dir.display(),
                    meta.partitions,
                    meta.partitions
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let meta = Meta {
                version: META_VERSION,
                partitions,
            };
            let json = serde_json::to_vec(&meta)
                .map_err(|e| BusError::Corrupt(format!("cannot encode {}: {e}", path.display())))?;
            write_atomically(dir, "meta.json", &json)
        }
        Err(e) => Err(io_at(&path, e)),
    }
}

/// Replaces `dir/name` so that a crash leaves either the old or the new content, never a mix.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BusError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(|e| io_at(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_at(&tmp, e))?;
    f.sync_all().map_err(|e| io_at(&tmp, e))?;
    metrics::counter!("tidewater_bus_fsyncs_total", "bus" => BUS_LABEL).increment(1);
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| io_at(&path, e))?;
    sync_dir(dir)
}

/// Makes created, renamed and deleted entries of `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), BusError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_at(dir, e))?;
        metrics::counter!("tidewater_bus_fsyncs_total", "bus" => BUS_LABEL).increment(1);
    }
    // Windows cannot open a directory as a file; NTFS journals the metadata itself.
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An I/O error that names the file it happened on.
fn io_at(path: &Path, e: io::Error) -> BusError {
    BusError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// is a single push, remove or read).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
