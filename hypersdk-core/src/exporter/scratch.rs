//! The exporter's scratch area: a private local directory for what an
//! export writes but never publishes — the disks of an OVA that cannot be
//! written in place (spools), copied into the archive afterwards. The sink
//! only ever receives the archive.
//!
//! It lives under [`ExportOptions::scratch_dir`](crate::ExportOptions::scratch_dir)
//! (default: where the sink suggests — a local directory sink's staging
//! directory — else the system's temporary directory), as a directory of mode 0700
//! named after the export's destination, so that a resumed export finds the
//! spools it kept. The directory may be in a place others can write to
//! (`/tmp`): one that is not a real directory, not ours, or open to others is
//! refused, and files in it are opened without following links.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::file_upload::FileUpload;
use crate::sink::{Staging, Upload, UploadState};

/// A scratch directory, removed when the export ends unless kept for a
/// resume.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
    /// Left in place when dropped (a resumable export's, until it ends).
    resumable: bool,
    done: bool,
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

impl Scratch {
    /// The scratch area of the export to `destination`, under `root`. A
    /// resumable export's is taken up again when `resume`, else emptied.
    pub(crate) async fn open(
        root: &Path,
        destination: &str,
        resumable: bool,
        resume: bool,
    ) -> Result<Scratch> {
        let key = {
            let mut h = hypersdk_formats::manifest::Hasher::new(
                hypersdk_formats::manifest::DigestAlgorithm::Sha256,
            );
            h.update(destination.as_bytes());
            h.finish_hex()
        };
        let uid = rustix::process::geteuid().as_raw();
        let dir = root.join(format!(".hypersdk-scratch-{uid}-{}", &key[..16]));
        let d = dir.clone();
        tokio::task::spawn_blocking(move || prepare(&d, uid, resumable && resume))
            .await
            .map_err(|e| Error::Internal(format!("scratch thread failed: {e}")))??;
        Ok(Scratch {
            dir,
            resumable,
            done: false,
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Internal(format!("bad scratch file name {name:?}")));
        }
        Ok(self.dir.join(name))
    }

    async fn file(&self, name: &str, create: bool) -> Result<(tokio::fs::File, PathBuf)> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(name)?;
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&p)
        })
        .await
        .map_err(|e| Error::Internal(format!("scratch thread failed: {e}")))?
        .map_err(|e| Error::sink("cannot open scratch file", show(&path), e))?;
        Ok((tokio::fs::File::from_std(file), path))
    }

    /// Removes scratch file `name` (a spool copied into the archive).
    pub(crate) async fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::sink("cannot remove scratch file", show(&path), e)),
        }
    }

    /// Removes the whole area.
    pub(crate) async fn discard(mut self) {
        self.done = true;
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(scratch = %self.dir.display(), error = %e, "could not remove the scratch area");
            }
        }
    }

    /// Leaves the area for a resume (a resumable export's), else removes it.
    pub(crate) async fn keep(mut self) {
        if self.resumable {
            self.done = true;
        } else {
            self.discard().await;
        }
    }
}

/// Makes `dir` a private directory of ours: created 0700, or an existing one
/// checked (a real directory, owned by `uid`, closed to others) and, unless
/// `take_up`, emptied.
fn prepare(dir: &Path, uid: u32, take_up: bool) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let refuse = |why: &str| {
        Error::sink(
            "cannot use scratch directory",
            show(dir),
            std::io::Error::other(why.to_string()),
        )
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.file_type().is_dir() {
                return Err(refuse("it is not a directory (a symbolic link?)"));
            }
            if m.uid() != uid {
                return Err(refuse("it belongs to another user"));
            }
            if m.mode() & 0o077 != 0 {
                return Err(refuse("others may use it (mode is not 0700)"));
            }
            if !take_up {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| Error::sink("cannot empty scratch directory", show(dir), e))?;
                return prepare(dir, uid, false);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::sink("cannot create scratch directory", show(dir), e)),
        Err(e) => Err(Error::sink(
            "cannot look at scratch directory",
            show(dir),
            e,
        )),
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.done && !self.resumable {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[async_trait]
impl Staging for Scratch {
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
        let (file, path) = self.file(name, true).await?;
        Ok(Box::new(FileUpload::new(file, path, 0).unsynced()))
    }

    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        let (file, path) = self.file(name, false).await?;
        Ok(Box::new(
            FileUpload::resume(file, path, saved, keep)
                .await?
                .unsynced(),
        ))
    }

    async fn open(&self, name: &str, offset: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let (file, path) = self.file(name, false).await?;
        Ok(Box::new(
            crate::file_upload::reading_from(file, &path, offset).await?,
        ))
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        crate::file_upload::file_size(&self.path(name)?).await
    }

    async fn commit(self: Box<Self>) -> Result<String> {
        self.discard().await;
        Ok(String::new())
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.discard().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    async fn dir_of(root: &Path) -> PathBuf {
        let s = Scratch::open(root, "dest", true, false).await.unwrap();
        let d = s.dir.clone();
        s.discard().await;
        d
    }

    /// The scratch area may sit where others can write (`/tmp`): a link,
    /// a directory open to others, or one planted in its place is refused
    /// and what it points to is left alone.
    #[tokio::test]
    async fn planted_scratch_directories_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::fs::write(victim.path().join("precious"), b"x").unwrap();
        let dir = dir_of(root.path()).await;

        std::os::unix::fs::symlink(victim.path(), &dir).unwrap();
        for resume in [false, true] {
            let err = Scratch::open(root.path(), "dest", true, resume)
                .await
                .unwrap_err();
            let msg = crate::error::chain(&err);
            assert!(msg.contains("not a directory"), "{msg}");
        }
        assert!(victim.path().join("precious").exists());
        std::fs::remove_file(&dir).unwrap();

        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Scratch::open(root.path(), "dest", true, true)
            .await
            .unwrap_err();
        let msg = crate::error::chain(&err);
        assert!(msg.contains("others may use it"), "{msg}");
    }

    /// A resumable export's area is taken up with its spools when
    /// resuming, emptied when starting afresh, and created 0700.
    #[tokio::test]
    async fn kept_for_a_resume_and_emptied_otherwise() {
        let root = tempfile::tempdir().unwrap();
        let mut s = Scratch::open(root.path(), "dest", true, false)
            .await
            .unwrap();
        let mode = std::fs::metadata(&s.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mut up = s.start("spool").await.unwrap();
        up.put(b"kept").await.unwrap();
        up.complete().await.unwrap();
        let dir = s.dir.clone();
        s.keep().await;
        assert!(dir.join("spool").exists(), "a resumable area is kept");

        let s = Scratch::open(root.path(), "dest", true, true)
            .await
            .unwrap();
        assert_eq!(s.size("spool").await.unwrap(), Some(4));
        drop(s);
        let s = Scratch::open(root.path(), "dest", true, false)
            .await
            .unwrap();
        assert_eq!(
            s.size("spool").await.unwrap(),
            None,
            "a fresh start empties it"
        );
        s.discard().await;
        assert!(!dir.exists());
    }
}
