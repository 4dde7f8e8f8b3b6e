//! The local directory sink.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::check_name;
use hypersdk_core::sink::ObjectMeta;
use hypersdk_core::{
    Artifact, CheckpointStore, Error, FileUpload, Result, Sink, Staging, Upload, UploadState,
};

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The mode of every file a [`LocalDirSink`] creates unless told otherwise:
/// exported disks hold whatever the guests held (password hashes, keys).
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// Writes exports into a local directory (created if missing).
///
/// Files it creates (artifacts, staged files, checkpoints) get mode
/// [`DEFAULT_FILE_MODE`] (0600) or the one given to
/// [`with_file_mode`](Self::with_file_mode), set exactly (not narrowed by the
/// umask); directories get the same bits plus search where read is given
/// (0600 → 0700, 0640 → 0750). Inside its staging directories it never
/// follows a symbolic link: a link planted there makes the export fail
/// instead of writing through it.
#[derive(Debug, Clone)]
pub struct LocalDirSink {
    root: PathBuf,
    file_mode: u32,
}

impl LocalDirSink {
    /// A sink writing into `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDirSink {
            root: root.into(),
            file_mode: DEFAULT_FILE_MODE,
        }
    }

    /// Files created with permission bits `mode` (e.g. 0o640 for group
    /// read); only the permission bits (0o777) are used.
    pub fn with_file_mode(mut self, mode: u32) -> Self {
        self.file_mode = mode & 0o777;
        self
    }

    fn modes(&self) -> Modes {
        Modes::for_files(self.file_mode)
    }

    /// The directory exports land in.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The mode of directories holding files of mode `file_mode`: the same
/// bits, plus search wherever read is given, and always the owner's rwx
/// (0600 → 0700, 0640 → 0750, 0644 → 0755).
pub fn dir_mode(file_mode: u32) -> u32 {
    file_mode | ((file_mode & 0o444) >> 2) | 0o700
}

/// Permission bits of created files and directories.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Modes {
    file: u32,
    dir: u32,
}

impl Modes {
    /// Files of mode `file`, directories of [`dir_mode`]`(file)`.
    pub(crate) fn for_files(file: u32) -> Modes {
        Modes {
            file,
            dir: dir_mode(file),
        }
    }

    /// Creates directory `d` (not its parents) with the directory mode.
    pub(crate) fn create_dir(self, d: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().mode(self.dir).create(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(self.dir))
    }

    /// Creates `d` and any missing parents, new ones with the directory mode.
    pub(crate) fn create_dir_all(self, d: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(self.dir)
            .create(d)
    }

    /// Opens a file inside a staging directory without following a link:
    /// created (or truncated) with the file mode if `create`.
    fn open(self, path: &Path, write: bool, create: bool) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .create(create)
            .truncate(create)
            .mode(self.file)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        if create {
            f.set_permissions(std::fs::Permissions::from_mode(self.file))?;
        }
        Ok(f)
    }
}

/// Whether `d` is a real directory (not a symbolic link to one); Ok(false)
/// if nothing is there, an error naming the rule if something else is.
fn real_dir(d: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(d) {
        Ok(m) if m.file_type().is_dir() => Ok(true),
        Ok(m) => Err(Error::sink(
            "cannot use staging directory",
            show(d),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                if m.file_type().is_symlink() {
                    "it is a symbolic link; staging directories are never followed through links"
                } else {
                    "it is not a directory"
                },
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::sink("cannot look at staging directory", show(d), e)),
    }
}

#[async_trait]
impl Sink for LocalDirSink {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>> {
        let target = self.prepare(artifact, overwrite).await?;
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!(
            ".{}.partial-{}-{n}",
            artifact.name(),
            std::process::id()
        ));
        let modes = self.modes();
        let d = dir.clone();
        blocking(move || {
            modes
                .create_dir(&d)
                .map_err(|e| Error::sink("cannot create staging directory", show(&d), e))
        })
        .await?;
        tracing::debug!(staging = %dir.display(), "staging area created");
        Ok(LocalStaging::boxed(
            dir, target, artifact, overwrite, None, modes,
        ))
    }

    /// The staging directory is `.NAME.partial` next to the destination,
    /// locked (flock) while an export uses it, with the checkpoint in
    /// `.checkpoint.json` inside.
    async fn begin_resumable(
        &self,
        artifact: &Artifact,
        overwrite: bool,
        resume: bool,
    ) -> Result<Box<dyn Staging>> {
        let target = self.prepare(artifact, overwrite).await?;
        let dir = self.root.join(format!(".{}.partial", artifact.name()));
        let d = dir.clone();
        let modes = self.modes();
        let lock = tokio::task::spawn_blocking(move || -> Result<std::fs::File> {
            if real_dir(&d)? {
                let held = lock_staging(&d)?;
                if resume {
                    tracing::info!(staging = %d.display(), "taking up the partial export");
                    return Ok(held);
                }
                tracing::warn!(staging = %d.display(), "discarding a partial export (not resuming)");
                std::fs::remove_dir_all(&d)
                    .map_err(|e| Error::sink("cannot remove old staging directory", show(&d), e))?;
            }
            modes
                .create_dir(&d)
                .map_err(|e| Error::sink("cannot create staging directory", show(&d), e))?;
            lock_staging(&d)
        })
        .await
        .map_err(|e| Error::Internal(format!("staging thread failed: {e}")))??;
        Ok(LocalStaging::boxed(
            dir,
            target,
            artifact,
            overwrite,
            Some(lock),
            modes,
        ))
    }

    /// Walks the directory without following links; hidden entries (the
    /// staging directories `.NAME.partial*`) are skipped.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let mut out = Vec::new();
            let mut dirs = vec![(root.clone(), String::new())];
            while let Some((dir, rel)) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.is_empty() => {
                        continue
                    }
                    Err(e) => return Err(Error::sink("cannot list", show(&dir), e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| Error::sink("cannot list", show(&dir), e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let path = format!("{rel}{name}");
                    let meta = entry
                        .metadata()
                        .map_err(|e| Error::sink("cannot look at", show(&entry.path()), e))?;
                    if meta.is_dir() {
                        let sub = format!("{path}/");
                        if sub.starts_with(&prefix) || prefix.starts_with(&sub) {
                            dirs.push((entry.path(), sub));
                        }
                    } else if meta.is_file() && path.starts_with(&prefix) {
                        out.push(ObjectMeta {
                            path,
                            size: meta.len(),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }

    async fn read(&self, path: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let mut full = self.root.clone();
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            check_name(part)?;
            if part.starts_with('.') {
                return Err(Error::InvalidArgument(format!(
                    "{path}: not a published object"
                )));
            }
            full.push(part);
            if i + 1 < parts.len() && !real_dir(&full)? {
                return Err(Error::sink(
                    "cannot read",
                    show(&full),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                ));
            }
        }
        let modes = self.modes();
        let file = blocking(move || {
            modes
                .open(&full, false, false)
                .map_err(|e| Error::sink("cannot read", show(&full), e))
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn delete(&self, artifact: &Artifact) -> Result<bool> {
        check_name(artifact.name())?;
        let target = self.root.join(artifact.name());
        match tokio::fs::symlink_metadata(&target).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::sink("cannot look at", show(&target), e)),
            Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(&target).await,
            Ok(_) => tokio::fs::remove_file(&target).await,
        }
        .map_err(|e| Error::sink("cannot delete", show(&target), e))?;
        Ok(true)
    }

    async fn kept_checkpoint(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>> {
        check_name(artifact.name())?;
        let dir = self.root.join(format!(".{}.partial", artifact.name()));
        blocking(move || peek(&dir, CHECKPOINT)).await
    }

    async fn discard_partial(&self, artifact: &Artifact) -> Result<bool> {
        check_name(artifact.name())?;
        let dir = self.root.join(format!(".{}.partial", artifact.name()));
        tokio::task::spawn_blocking(move || -> Result<bool> {
            if !real_dir(&dir)? {
                return Ok(false);
            }
            let _held = lock_staging(&dir)?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::sink("cannot remove partial export", show(&dir), e))?;
            tracing::info!(staging = %dir.display(), "removed a partial export left behind a published one");
            Ok(true)
        })
        .await
        .map_err(|e| Error::Internal(format!("staging thread failed: {e}")))?
    }
}

/// Locks a staging directory for this process (released when the file is
/// closed); busy if another export holds it.
pub(crate) fn lock_staging(d: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(d)
        .map_err(|e| Error::sink("cannot open staging directory", show(d), e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::sink(
            "cannot use staging directory",
            show(d),
            std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                "another export of the same VM is writing it",
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::sink("cannot lock staging directory", show(d), e))
        }
    }
}

impl LocalDirSink {
    /// Checks the artifact name and the destination; returns its path.
    async fn prepare(&self, artifact: &Artifact, overwrite: bool) -> Result<PathBuf> {
        check_name(artifact.name())?;
        if let Ok(meta) = tokio::fs::metadata(&self.root).await {
            if !meta.is_dir() {
                return Err(Error::sink(
                    "cannot write into output directory",
                    show(&self.root),
                    std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory"),
                ));
            }
        }
        let modes = self.modes();
        let root = self.root.clone();
        blocking(move || {
            modes
                .create_dir_all(&root)
                .map_err(|e| Error::sink("cannot create output directory", show(&root), e))
        })
        .await?;
        let target = self.root.join(artifact.name());
        if !overwrite && tokio::fs::symlink_metadata(&target).await.is_ok() {
            return Err(Error::AlreadyExists {
                target: show(&target),
            });
        }
        Ok(target)
    }
}

/// The checkpoint file of a resumable staging directory.
const CHECKPOINT: &str = ".checkpoint.json";

/// Checkpoints in a staging directory: written to a temporary file, synced,
/// renamed over the old one, and the directory synced.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    file: &'static str,
    modes: Modes,
}

impl FileStore {
    /// The document `file` in directory `dir`.
    pub(crate) fn new(dir: &Path, file: &'static str, modes: Modes) -> FileStore {
        FileStore {
            dir: dir.to_path_buf(),
            file,
            modes,
        }
    }
}

/// Checkpoints larger than this are not peeked at.
const MAX_PEEK: u64 = 16 << 20;

/// Document `file` of staging directory `dir`, read without locking it: a
/// directory or file that is a symbolic link is refused, and at most
/// [`MAX_PEEK`] bytes are read.
pub(crate) fn peek(dir: &Path, file: &str) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !real_dir(dir)? {
        return Ok(None);
    }
    let path = dir.join(file);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::sink("cannot read checkpoint", show(&path), e)),
    };
    let mut out = Vec::new();
    f.take(MAX_PEEK)
        .read_to_end(&mut out)
        .map_err(|e| Error::sink("cannot read checkpoint", show(&path), e))?;
    Ok(Some(out))
}

impl CheckpointStore for FileStore {
    fn load(&self) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(self.file);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::sink("cannot read checkpoint", show(&path), e)),
        }
    }

    fn save(&self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let path = self.dir.join(self.file);
        let tmp = self.dir.join(format!("{}.tmp", self.file));
        let err = |e| Error::sink("cannot save checkpoint", show(&path), e);
        let mut f = self.modes.open(&tmp, true, true).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    fn clear(&self) -> Result<()> {
        for name in [self.file.to_string(), format!("{}.tmp", self.file)] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::sink("cannot remove checkpoint", show(&path), e)),
            }
        }
        Ok(())
    }

    fn location(&self) -> String {
        show(&self.dir.join(self.file))
    }
}

/// A staging directory next to the destination.
#[derive(Debug)]
struct LocalStaging {
    dir: PathBuf,
    target: PathBuf,
    artifact: Artifact,
    overwrite: bool,
    done: bool,
    /// Held while a resumable staging directory is in use (None: not
    /// resumable).
    lock: Option<std::fs::File>,
    modes: Modes,
}

impl LocalStaging {
    fn boxed(
        dir: PathBuf,
        target: PathBuf,
        artifact: &Artifact,
        overwrite: bool,
        lock: Option<std::fs::File>,
        modes: Modes,
    ) -> Box<dyn Staging> {
        Box::new(LocalStaging {
            dir,
            target,
            artifact: artifact.clone(),
            overwrite,
            done: false,
            lock,
            modes,
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Opens a file of the staging directory off the async threads, never
    /// through a link ([`Modes::open`]); `action` names it in an error.
    async fn open_file(
        &self,
        path: &Path,
        write: bool,
        create: bool,
        action: &'static str,
    ) -> Result<tokio::fs::File> {
        let (p, modes) = (path.to_path_buf(), self.modes);
        let file = blocking(move || {
            modes
                .open(&p, write, create)
                .map_err(|e| Error::sink(action, show(&p), e))
        })
        .await?;
        Ok(tokio::fs::File::from_std(file))
    }
}

#[async_trait]
impl Staging for LocalStaging {
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
        let path = self.path(name)?;
        let file = self.open_file(&path, true, true, "cannot create").await?;
        Ok(Box::new(FileUpload::new(file, path, 0)))
    }

    /// Cuts the file back to `keep` bytes and goes on from there; the
    /// saved state of a local file is its size alone.
    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        let path = self.path(name)?;
        let file = self.open_file(&path, true, false, "cannot open").await?;
        Ok(Box::new(FileUpload::resume(file, path, saved, keep).await?))
    }

    fn fills_reserved(&self) -> bool {
        true
    }

    async fn open(&self, name: &str, offset: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let path = self.path(name)?;
        let file = self.open_file(&path, false, false, "cannot open").await?;
        Ok(Box::new(
            hypersdk_core::reading_from(file, &path, offset).await?,
        ))
    }

    async fn commit(mut self: Box<Self>) -> Result<String> {
        if self.lock.is_some() {
            FileStore::new(&self.dir, CHECKPOINT, self.modes).clear()?;
        }
        let exists = tokio::fs::symlink_metadata(&self.target).await.is_ok();
        if exists && !self.overwrite {
            return Err(Error::AlreadyExists {
                target: show(&self.target),
            });
        }
        let source = match &self.artifact {
            Artifact::Directory(_) => self.dir.clone(),
            Artifact::File(name) => self.dir.join(name),
        };
        if exists {
            // Move the old artifact aside first so the new one appears in one rename.
            let old = self.dir.with_extension("replaced");
            tokio::fs::rename(&self.target, &old)
                .await
                .map_err(|e| Error::sink("cannot move aside existing", show(&self.target), e))?;
            remove_any(&old).await;
        }
        tokio::fs::rename(&source, &self.target)
            .await
            .map_err(|e| Error::sink("cannot publish", show(&self.target), e))?;
        if matches!(self.artifact, Artifact::File(_)) {
            remove_any(&self.dir).await;
        }
        // Make the rename durable.
        if let Ok(d) = tokio::fs::File::open(self.target.parent().unwrap_or(Path::new("."))).await {
            let _ = d.sync_all().await;
        }
        self.done = true;
        Ok(show(&self.target))
    }

    async fn keep(mut self: Box<Self>) -> Result<String> {
        if self.lock.is_none() {
            self.abort().await?;
            return Ok(String::new());
        }
        self.done = true;
        Ok(show(&self.dir))
    }

    fn destination(&self) -> String {
        show(&self.target)
    }

    /// The staging directory itself: spools stay on the destination's
    /// file system, are kept with a partial export for its resume, and go
    /// wherever the partial export goes (published, aborted, swept).
    fn scratch_hint(&self) -> Option<PathBuf> {
        Some(self.dir.clone())
    }

    fn checkpoints(&self) -> Option<std::sync::Arc<dyn CheckpointStore>> {
        self.lock.as_ref()?;
        Some(std::sync::Arc::new(FileStore::new(
            &self.dir, CHECKPOINT, self.modes,
        )))
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        hypersdk_core::file_size(&self.path(name)?).await
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        match tokio::fs::remove_dir_all(&self.dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::sink(
                "cannot remove staging directory",
                show(&self.dir),
                e,
            )),
        }
    }
}

impl Drop for LocalStaging {
    fn drop(&mut self) {
        // A staging area dropped without commit or abort (a cancelled future):
        // remove it so nothing half-written remains — unless it is resumable.
        if !self.done && self.lock.is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("file task failed: {e}")))?
}

async fn remove_any(path: &Path) {
    let result = match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_dir() => tokio::fs::remove_dir_all(path).await,
        Ok(_) => tokio::fs::remove_file(path).await,
        Err(_) => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not remove");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn directory_artifact_appears_whole_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path().join("out"));
        let mut st = sink
            .begin(&Artifact::Directory("vm".into()), false)
            .await
            .unwrap();
        for name in ["vm.ovf", "vm.mf"] {
            let mut w = st.start(name).await.unwrap();
            w.put(name.as_bytes()).await.unwrap();
            w.complete().await.unwrap();
        }
        assert_eq!(entries(&dir.path().join("out")).len(), 1);
        assert!(entries(&dir.path().join("out"))[0].starts_with(".vm.partial-"));
        let loc = st.commit().await.unwrap();
        assert_eq!(entries(Path::new(&loc)), vec!["vm.mf", "vm.ovf"]);
        assert_eq!(entries(&dir.path().join("out")), vec!["vm"]);
    }

    #[tokio::test]
    async fn abort_and_drop_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path());
        let mut st = sink
            .begin(&Artifact::File("a.ova".into()), false)
            .await
            .unwrap();
        st.start("a.ova").await.unwrap().put(b"x").await.unwrap();
        st.abort().await.unwrap();
        assert!(entries(dir.path()).is_empty());
        let st = sink
            .begin(&Artifact::File("a.ova".into()), false)
            .await
            .unwrap();
        drop(st);
        assert!(entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn refuses_existing_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ova"), b"old").unwrap();
        let sink = LocalDirSink::new(dir.path());
        let err = sink
            .begin(&Artifact::File("a.ova".into()), false)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        let mut st = sink
            .begin(&Artifact::File("a.ova".into()), true)
            .await
            .unwrap();
        let mut w = st.start("a.ova").await.unwrap();
        w.put(b"new").await.unwrap();
        w.complete().await.unwrap();
        st.commit().await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.ova")).unwrap(), b"new");
        assert_eq!(entries(dir.path()), vec!["a.ova"]);
    }

    #[tokio::test]
    async fn unwritable_destination_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"").unwrap();
        let sink = LocalDirSink::new(&file);
        let err = sink
            .begin(&Artifact::File("a.ova".into()), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("plain-file"), "{err}");
        assert!(matches!(check_name("../x"), Err(Error::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn a_partial_left_behind_a_published_artifact_is_discarded_unless_busy() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LocalDirSink::new(dir.path());
        let artifact = Artifact::File("a.ova".into());
        assert!(!sink.discard_partial(&artifact).await.unwrap());
        let mut st = sink.begin_resumable(&artifact, false, false).await.unwrap();
        st.start("a.ova").await.unwrap().put(b"x").await.unwrap();
        // Held by a running export: left alone, with a clear error.
        let err = sink.discard_partial(&artifact).await.unwrap_err();
        assert!(
            err.to_string().contains("cannot use staging directory"),
            "{err}"
        );
        st.keep().await.unwrap();
        std::fs::write(dir.path().join("a.ova"), b"whole").unwrap();
        assert!(sink.discard_partial(&artifact).await.unwrap());
        assert_eq!(entries(dir.path()), vec!["a.ova"]);
        assert!(!sink.discard_partial(&artifact).await.unwrap());
    }

    #[test]
    fn directories_get_search_where_files_get_read() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn private_by_default_and_modes_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        for (sink, file, d) in [
            (LocalDirSink::new(dir.path().join("a")), 0o600, 0o700),
            (
                LocalDirSink::new(dir.path().join("b")).with_file_mode(0o640),
                0o640,
                0o750,
            ),
        ] {
            let artifact = Artifact::Directory("vm".into());
            let mut st = sink.begin_resumable(&artifact, false, false).await.unwrap();
            let cp = st.checkpoints().unwrap();
            cp.save(b"{}").unwrap();
            assert_eq!(
                mode(&sink.root().join(".vm.partial/.checkpoint.json")),
                file
            );
            assert_eq!(mode(&sink.root().join(".vm.partial")), d);
            let mut w = st.start("vm.ovf").await.unwrap();
            w.put(b"x").await.unwrap();
            w.complete().await.unwrap();
            let loc = st.commit().await.unwrap();
            assert_eq!(mode(Path::new(&loc)), d);
            assert_eq!(mode(&Path::new(&loc).join("vm.ovf")), file);
            assert_eq!(mode(sink.root()), d);
            let st = sink
                .begin(&Artifact::File("x.ova".into()), false)
                .await
                .unwrap();
            let staged = entries(sink.root())
                .into_iter()
                .find(|n| n.starts_with(".x.ova.partial-"))
                .unwrap();
            assert_eq!(mode(&sink.root().join(staged)), d);
            st.abort().await.unwrap();
        }
    }

    #[tokio::test]
    async fn links_in_staging_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let sink = LocalDirSink::new(dir.path());
        let artifact = Artifact::File("a.ova".into());
        // A link in place of the staging directory.
        std::os::unix::fs::symlink(outside.path(), dir.path().join(".a.ova.partial")).unwrap();
        for resume in [true, false] {
            let err = sink
                .begin_resumable(&artifact, false, resume)
                .await
                .unwrap_err();
            let msg = hypersdk_core::error::chain(&err);
            assert!(msg.contains("symbolic link"), "{msg}");
        }
        assert!(sink.discard_partial(&artifact).await.is_err());
        std::fs::remove_file(dir.path().join(".a.ova.partial")).unwrap();
        // A link planted inside the staging directory.
        let st = sink.begin_resumable(&artifact, false, false).await.unwrap();
        st.keep().await.unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".a.ova.partial/a.ova")).unwrap();
        let mut st = sink.begin_resumable(&artifact, false, true).await.unwrap();
        assert!(st.start("a.ova").await.is_err());
        assert!(st
            .resume("a.ova", &UploadState::default(), 0)
            .await
            .is_err());
        assert!(st.open("a.ova", 0).await.is_err());
        assert_eq!(st.size("a.ova").await.unwrap(), None);
        st.abort().await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
