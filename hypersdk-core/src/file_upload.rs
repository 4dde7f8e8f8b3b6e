//! Uploads into local files.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::sink::{Reserved, Upload, UploadState};

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The size of the regular file at `path`, never through a link; None if
/// there is none (or something else is there).
pub async fn file_size(path: &Path) -> Result<Option<u64>> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::sink("cannot look at", show(path), e)),
    }
}

/// `file` (opened from `path`) positioned at byte `offset`, for reading.
pub async fn reading_from(
    mut file: tokio::fs::File,
    path: &Path,
    offset: u64,
) -> Result<tokio::fs::File> {
    use tokio::io::AsyncSeekExt;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| Error::sink("cannot seek in", show(path), e))?;
    Ok(file)
}

/// Bytes written between two background `fdatasync`s of a synced upload.
const SYNC_EVERY: u64 = 64 << 20;

/// An [`Upload`] into a local file, as a local sink's staging area or the
/// exporter's scratch area writes them. Reserved regions are holes the
/// writer skips over and fills in place (`pwrite`); the upload completes
/// only once every one is filled. [`save`](Upload::save) and
/// [`complete`](Upload::complete) flush and `fdatasync`.
///
/// A synced upload also starts an `fdatasync` on a blocking thread after
/// every 64 MiB (one at a time, the writes going on beside
/// it), so the disk writes what the export produced while it produces more,
/// and the final sync only waits for the last stretch instead of the whole
/// file. An error of a background sync is returned by the next write, save
/// or completion, never lost.
#[derive(Debug)]
pub struct FileUpload {
    file: tokio::fs::File,
    path: PathBuf,
    size: u64,
    unfilled: Vec<Reserved>,
    /// `fdatasync` on save and complete (else only flushed to the OS).
    sync: bool,
    /// Bytes written since the last background sync started.
    unsynced: u64,
    /// The background sync in flight.
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl FileUpload {
    /// An upload into `file` (at `path`, for messages) whose first `size`
    /// bytes are kept; the writes go on from the file's position.
    pub fn new(file: tokio::fs::File, path: PathBuf, size: u64) -> Self {
        FileUpload {
            file,
            path,
            size,
            unfilled: Vec::new(),
            sync: true,
            unsynced: 0,
            syncing: None,
        }
    }

    /// Continues the upload of the file an interrupted export saved as
    /// `saved`: cut back to `keep` bytes (at most what was saved and what is
    /// there), writing on from there.
    pub async fn resume(
        mut file: tokio::fs::File,
        path: PathBuf,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Self> {
        use tokio::io::AsyncSeekExt;
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::sink("cannot look at", show(&path), e))?
            .len();
        if keep > saved.size || keep > len {
            return Err(Error::sink(
                "cannot continue",
                show(&path),
                std::io::Error::other(format!(
                    "{keep} bytes to keep, but {} were saved and {len} are there",
                    saved.size
                )),
            ));
        }
        file.set_len(keep)
            .await
            .map_err(|e| Error::sink("cannot cut back", show(&path), e))?;
        file.seek(std::io::SeekFrom::Start(keep))
            .await
            .map_err(|e| Error::sink("cannot seek in", show(&path), e))?;
        Ok(FileUpload::new(file, path, keep))
    }

    /// Saves and completes without `fdatasync`: what was written survives
    /// the process, not the host (scratch files the exporter checks again
    /// before it trusts them after a restart of the host).
    pub fn unsynced(mut self) -> Self {
        self.sync = false;
        self
    }

    fn err(&self, action: &str, e: std::io::Error) -> Error {
        Error::sink(action, show(&self.path), e)
    }

    /// A second (blocking) handle on the same open file, after handing
    /// the OS what tokio still holds, so that whatever the handle does
    /// (a sync, a `pwrite`) sees every byte written so far; `action` names
    /// a failure to make it.
    async fn flushed_handle(&mut self, action: &str) -> Result<std::fs::File> {
        self.file
            .flush()
            .await
            .map_err(|e| self.err("cannot write", e))?;
        Ok(self
            .file
            .try_clone()
            .await
            .map_err(|e| self.err(action, e))?
            .into_std()
            .await)
    }

    /// Waits for the background sync in flight, if any; its error is this
    /// upload's.
    async fn settle_sync(&mut self) -> Result<()> {
        if let Some(task) = self.syncing.take() {
            task.await
                .map_err(|e| Error::Internal(format!("file sync task failed: {e}")))?
                .map_err(|e| self.err("cannot sync", e))?;
        }
        Ok(())
    }

    /// After [`SYNC_EVERY`] bytes, starts a background `fdatasync` of what
    /// was written so far (once the previous one is done).
    async fn sync_in_background(&mut self) -> Result<()> {
        if !self.sync || self.unsynced < SYNC_EVERY {
            return Ok(());
        }
        if self.syncing.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        self.settle_sync().await?;
        let file = self.flushed_handle("cannot sync").await?;
        self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        self.unsynced = 0;
        Ok(())
    }
}

#[async_trait]
impl Upload for FileUpload {
    async fn put(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .await
            .map_err(|e| self.err("cannot write", e))?;
        self.size += data.len() as u64;
        self.unsynced += data.len() as u64;
        self.sync_in_background().await
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn reserve(&mut self, len: u64) -> Result<Reserved> {
        use tokio::io::AsyncSeekExt;
        let at = Reserved {
            offset: self.size,
            len,
        };
        let end = self
            .size
            .checked_add(len)
            .ok_or_else(|| self.err("cannot reserve", std::io::Error::other("size overflow")))?;
        self.file
            .seek(std::io::SeekFrom::Start(end))
            .await
            .map_err(|e| self.err("cannot seek in", e))?;
        self.size = end;
        self.unfilled.push(at);
        Ok(at)
    }

    async fn fill(&mut self, at: Reserved, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if data.len() as u64 != at.len || at.offset.saturating_add(at.len) > self.size {
            return Err(Error::Internal(format!(
                "{}: {} bytes to fill a region of {} at {} (object of {})",
                show(&self.path),
                data.len(),
                at.len,
                at.offset,
                self.size
            )));
        }
        // `pwrite` on the second handle does not move the position the
        // sequential writes go on from.
        let file = self.flushed_handle("cannot write").await?;
        let bytes = data.to_vec();
        tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at.offset))
            .await
            .map_err(|e| Error::Internal(format!("file task failed: {e}")))?
            .map_err(|e| self.err("cannot write", e))?;
        self.unfilled.retain(|r| *r != at);
        Ok(())
    }

    async fn save(&mut self) -> Result<Option<UploadState>> {
        self.settle_sync().await?;
        self.file
            .flush()
            .await
            .map_err(|e| self.err("cannot write", e))?;
        if self.sync {
            self.file
                .sync_data()
                .await
                .map_err(|e| self.err("cannot sync", e))?;
            self.unsynced = 0;
        }
        Ok(Some(UploadState {
            size: self.size,
            sink: serde_json::Value::Null,
        }))
    }

    async fn complete(mut self: Box<Self>) -> Result<u64> {
        if let Some(r) = self.unfilled.first() {
            return Err(Error::Internal(format!(
                "{}: the region of {} bytes at {} was reserved and never filled",
                show(&self.path),
                r.len,
                r.offset
            )));
        }
        // A reserved region at the very end is a hole past the last write.
        let len = self
            .file
            .metadata()
            .await
            .map_err(|e| self.err("cannot look at", e))?
            .len();
        if len < self.size {
            self.file
                .set_len(self.size)
                .await
                .map_err(|e| self.err("cannot write", e))?;
        }
        self.save().await?;
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        let path = self.path.clone();
        drop(self.file);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::sink("cannot remove", show(&path), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn syncs_in_the_background_while_writing_and_keeps_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = tokio::fs::File::create(&path).await.unwrap();
        let mut up = FileUpload::new(file, path.clone(), 0);
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut started = 0;
        for _ in 0..((2 * SYNC_EVERY) >> 20) + 3 {
            let before = up.syncing.is_some() && up.unsynced == 0;
            up.put(&chunk).await.unwrap();
            if up.syncing.is_some() && up.unsynced == 0 && !before {
                started += 1;
            }
        }
        assert!(started >= 1, "no background sync started");
        let size = Box::new(up).complete().await.unwrap();
        assert_eq!(size, 2 * SYNC_EVERY + (3 << 20));
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len() as u64, size);
        assert!(got.chunks(1 << 20).all(|c| c == chunk.as_slice()));

        // An unsynced upload (scratch files) never syncs in the background.
        let file = tokio::fs::File::create(dir.path().join("g")).await.unwrap();
        let mut up = FileUpload::new(file, dir.path().join("g"), 0).unsynced();
        for _ in 0..(SYNC_EVERY >> 20) + 1 {
            up.put(&chunk).await.unwrap();
        }
        assert!(up.syncing.is_none());
    }
}
