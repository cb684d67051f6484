//! Committed offsets of consumer groups: `offsets/<group>.json`, a map from partition index to
//! the next offset to read.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{io_at, lock, write_atomically};
use crate::BusError;

pub(crate) type Offsets = BTreeMap<u32, u64>;

pub(crate) struct OffsetStore {
    dir: PathBuf,
    file_name: String,
    /// Generation of the last map written. A cancelled commit's blocking write can still be
    /// running when the next commit starts; the generation keeps the older map from landing last.
    written: Mutex<u64>,
}

/// Group names become file names, so they are kept to a safe alphabet.
pub(crate) fn validate_group(group: &str) -> Result<(), BusError> {
    let ok = !group.is_empty()
        && group.len() <= 200
        && !group.starts_with('.')
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BusError::Config(format!(
            "consumer group name {group:?} must be 1-200 characters of A-Z, a-z, 0-9, '-', '_', '.' and not start with '.'"
        )))
    }
}

impl OffsetStore {
    pub(crate) fn new(dir: &Path, group: &str) -> Self {
        OffsetStore {
            dir: dir.to_path_buf(),
            file_name: format!("{group}.json"),
            written: Mutex::new(0),
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    pub(crate) fn load(&self) -> Result<Offsets, BusError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Offsets::new()),
            Err(e) => return Err(io_at(&path, e)),
        };
        serde_json::from_slice(&text).map_err(|e| {
            BusError::Corrupt(format!(
                "committed offsets {} are unreadable: {e}",
                path.display()
            ))
        })
    }

    /// Durably replaces the stored map, unless a later generation is already on disk.
    pub(crate) fn store(&self, generation: u64, offsets: &Offsets) -> Result<(), BusError> {
        let mut written = lock(&self.written);
        if *written >= generation {
            return Ok(());
        }
        let json = serde_json::to_vec(offsets)
            .map_err(|e| BusError::Corrupt(format!("cannot encode committed offsets: {e}")))?;
        write_atomically(&self.dir, &self.file_name, &json)?;
        *written = generation;
        Ok(())
    }
}
