//! Durable appends of JSON lines: dead-letter files the checkpoint may pass only once their
//! lines are on disk.

use std::io::Write;
use std::path::PathBuf;

/// Appends `text` (whole lines) to `path`, creating its directory, and syncs the data before
/// returning. Runs off the async workers.
pub async fn append_synced(path: PathBuf, text: String) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        Ok(())
    })
    .await?
}
