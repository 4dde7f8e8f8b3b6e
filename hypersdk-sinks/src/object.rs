//! Object stores as sinks: every object an export writes is a multipart
//! upload, completed only when the export is published.
//!
//! # What a reader of the bucket sees
//!
//! - While an export runs, nothing: its objects are open multipart uploads,
//!   which a store never lists or serves. [`Staging::commit`] completes them
//!   (an OVF directory's manifest last), so an object appears whole under
//!   its final key or not at all. A failed or cancelled export aborts its
//!   uploads (no parts left billing the owner) unless it is kept for resume.
//! - Stores check each part on receipt: S3 parts carry their CRC-64/NVME
//!   (`x-amz-checksum-crc64nvme`, over HTTPS) or SHA-256 (over plain HTTP,
//!   or when asked), and a part damaged on the way is refused.
//!   Since an upload cannot be read before it completes, the verify pass
//!   reads the objects back right after publication
//!   ([`Staging::reads_before_commit`] is false); the export deletes them
//!   if they do not match.
//!
//! # Memory
//!
//! An upload holds the part it is filling, 16 MiB it keeps back so that a
//! save can always cut a part of at least 5 MiB, and the parts in flight
//! (about 64 MiB): with the default 16 MiB parts, at most 4 in flight, so
//! about 96 MiB per object being written. Bytes are kept as the chunks
//! they were put in (one copy, on `put`); a part is a list of them, split
//! without copying at its ends. Parts grow (32, 64, 128,
//! 256 MiB, every 2000 parts) so that an object of up to about 1 TB fits in
//! S3's 10 000 parts; in-flight parts are then fewer.
//!
//! # Resume
//!
//! A resumable staging area keeps its state in a local directory (the
//! sink's state directory, one subdirectory per destination and artifact):
//! the export's checkpoint, and a registry of the uploads it opened (so a
//! fresh start aborts them). An upload's saved state is its upload id and
//! its finished parts; saving cuts a part exactly where the exporter's
//! resume point is (parts of at least 5 MiB; a save that would make a
//! smaller one is skipped, the next takes it), so continuing keeps whole
//! parts, sends none again and never reads back.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hypersdk_core::sink::ObjectMeta;
use hypersdk_core::{Artifact, CheckpointStore, Error, Result, Sink, Staging, Upload, UploadState};
use tokio::io::AsyncRead;

use crate::check_name;
use crate::local::{lock_staging, FileStore, Modes};

/// The default part size.
pub const DEFAULT_PART: usize = 16 << 20;

/// What the sink needs of a store. Keys are full object keys (the prefix
/// included); errors are I/O errors whose kind says what went wrong
/// (`NotFound`, `PermissionDenied`, `AlreadyExists`, or a transient kind),
/// with messages that never carry credentials.
#[async_trait]
pub(crate) trait Store: Send + Sync + 'static {
    /// Whether object `key` exists.
    async fn exists(&self, key: &str) -> io::Result<bool>;
    /// Keys and sizes of the objects whose key starts with `prefix/`
    /// (every object without one).
    async fn list(&self, prefix: Option<&str>) -> io::Result<Vec<(String, u64)>>;
    /// Object `key` from byte `offset` on; `shown` names it in errors.
    async fn read(
        &self,
        key: &str,
        offset: u64,
        shown: String,
    ) -> io::Result<Box<dyn AsyncRead + Send + Unpin>>;
    /// Deletes object `key`.
    async fn delete(&self, key: &str) -> io::Result<()>;
    /// Opens an upload of object `key`; its id.
    async fn create(&self, key: &str) -> io::Result<String>;
    /// Abandons upload `id` of `key`; nothing of it stays.
    async fn abort(&self, key: &str, id: &str) -> io::Result<()>;
    /// The writer of upload `of`, continuing what `kept` says when given.
    async fn upload(&self, of: UploadOf, kept: Option<Kept<'_>>) -> Result<Box<dyn Upload>>;
    /// Makes a finished upload the object under its key.
    async fn publish(&self, key: &str, id: &str, finished: &Finished) -> io::Result<()>;
    /// How the export's checkpoint names upload `id` (the id, unless it is a
    /// secret).
    fn public_id(&self, id: &str) -> String {
        id.to_string()
    }
}

/// An upload as its writer knows it.
pub(crate) struct UploadOf {
    pub(crate) shared: Arc<Shared>,
    registry: Arc<Registry>,
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) id: String,
}

impl UploadOf {
    /// The object as errors name it.
    pub(crate) fn shown(&self) -> String {
        self.shared.show_key(&self.key)
    }

    /// Records that every byte of the upload is with the store: it is
    /// published at commit with `detail`.
    pub(crate) fn finish(&self, size: u64, detail: serde_json::Value) -> Result<()> {
        let detail = match detail {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        self.registry.update(|v| {
            if let Some(e) = v
                .iter_mut()
                .find(|e| e.name == self.name && e.upload_id == self.id)
            {
                e.finished = Some(Finished { size, detail });
            }
        })
    }

    /// Abandons the upload at the store (saying so if that fails) and
    /// forgets it.
    pub(crate) async fn abandon(&self) -> Result<()> {
        self.shared.abort(&self.key, &self.id).await;
        self.forget()
    }

    /// Forgets the upload (aborted).
    fn forget(&self) -> Result<()> {
        self.registry
            .update(|v| v.retain(|e| !(e.name == self.name && e.upload_id == self.id)))
    }
}

/// What an interrupted upload saved, to continue from.
pub(crate) struct Kept<'a> {
    /// The store's record ([`UploadState::sink`]).
    pub(crate) saved: &'a serde_json::Value,
    /// Bytes it covers ([`UploadState::size`]).
    #[cfg_attr(not(feature = "gcs"), allow(dead_code))]
    pub(crate) size: u64,
    /// Bytes to keep (at most `size`).
    pub(crate) keep: u64,
}

/// A store as a sink: objects under `prefix` of one bucket or container.
pub struct ObjectStoreSink {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    /// The destination as users write it, without credentials
    /// (`s3://bucket/prefix`).
    url: String,
    /// Key prefix inside the bucket, without slashes at either end.
    prefix: String,
    state_dir: PathBuf,
    pub(crate) part_size: usize,
}

impl std::fmt::Debug for ObjectStoreSink {
    // The store's own Debug may show credentials: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreSink")
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreSink {
    /// A sink writing under `prefix` of `store` (which must be the same
    /// store as `multipart`), shown as `url`, keeping resume state under
    /// `state_dir`.
    #[cfg(feature = "multipart")]
    pub fn new(
        store: Arc<dyn object_store::ObjectStore>,
        multipart: Arc<dyn object_store::multipart::MultipartStore>,
        url: impl Into<String>,
        prefix: &str,
        state_dir: impl Into<PathBuf>,
    ) -> ObjectStoreSink {
        ObjectStoreSink::on(
            Arc::new(crate::multipart::Multipart::new(store, multipart)),
            url,
            prefix,
            state_dir,
        )
    }

    pub(crate) fn on(
        store: Arc<dyn Store>,
        url: impl Into<String>,
        prefix: &str,
        state_dir: impl Into<PathBuf>,
    ) -> ObjectStoreSink {
        ObjectStoreSink {
            shared: Arc::new(Shared {
                store,
                url: url.into().trim_end_matches('/').to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                state_dir: state_dir.into(),
                part_size: DEFAULT_PART,
            }),
        }
    }

    /// A sink over `store` (one that does multipart uploads), writing
    /// under `prefix`, shown as `root` (`s3://bucket`) joined with it, with
    /// parts of `part_size` bytes if given.
    pub(crate) fn over(
        store: Arc<dyn Store>,
        root: &str,
        prefix: &str,
        state_dir: PathBuf,
        part_size: Option<usize>,
    ) -> ObjectStoreSink {
        let shown = if prefix.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{prefix}")
        };
        let sink = ObjectStoreSink::on(store, shown, prefix, state_dir);
        match part_size {
            Some(p) => sink.with_part_size(p),
            None => sink,
        }
    }

    /// Sets the part size (at least 5 MiB).
    pub fn with_part_size(mut self, bytes: usize) -> ObjectStoreSink {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.part_size = bytes.max(5 << 20);
        }
        self
    }

    /// Where resume state is kept.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.shared.state_dir
    }
}

impl Shared {
    /// The key of `rel` (`/`-separated, below the prefix).
    fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    /// Object `key` (the prefix included) as errors name it.
    fn show_key(&self, key: &str) -> String {
        match key.strip_prefix(&format!("{}/", self.prefix)) {
            Some(rel) if !self.prefix.is_empty() => self.show(rel),
            _ => self.show(key),
        }
    }

    pub(crate) fn show(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    /// The key of object `name` of `artifact`; objects of a file artifact
    /// other than its file are never published and sit under a hidden key.
    fn object_key(&self, artifact: &Artifact, name: &str) -> (String, bool) {
        match artifact {
            Artifact::Directory(d) => (self.key(&format!("{d}/{name}")), true),
            Artifact::File(f) if f == name => (self.key(f), true),
            Artifact::File(f) => (self.key(&format!(".{f}.partial/{name}")), false),
        }
    }

    async fn exists(&self, artifact: &Artifact) -> Result<bool> {
        match artifact {
            Artifact::File(f) => self
                .store
                .exists(&self.key(f))
                .await
                .map_err(|e| Error::sink("cannot look for", self.show(f), e)),
            Artifact::Directory(d) => Ok(!self.keys_under(d).await?.is_empty()),
        }
    }

    /// Keys of the objects in directory `d`.
    async fn keys_under(&self, d: &str) -> Result<Vec<String>> {
        let prefix = self.key(d);
        Ok(self
            .store
            .list(Some(&prefix))
            .await
            .map_err(|e| Error::sink("cannot list", self.show(d), e))?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Abandons upload `id` of `key`, saying so if that fails.
    async fn abort(&self, key: &str, id: &str) {
        if let Err(e) = self.store.abort(key, id).await {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(key, error = %e, "cannot abort an upload: what it holds stays until the store expires it (S3 and Azure: the bucket's lifecycle rule; a Cloud Storage session: a week)");
            }
        }
    }

    /// The state directory of `artifact`'s resumable staging area.
    fn state_of(&self, artifact: &Artifact) -> PathBuf {
        use sha2::Digest;
        let id = sha2::Sha256::digest(format!("{}\n{}", self.url, artifact.name()).as_bytes());
        let hex: String = id[..12].iter().map(|b| format!("{b:02x}")).collect();
        let readable: String = artifact
            .name()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .take(40)
            .collect();
        self.state_dir.join(format!("{readable}-{hex}"))
    }
}

/// The prefix of object-store URL `url`, without slashes at its ends:
/// refused unless its components are plain and the URL has no query or
/// fragment.
pub(crate) fn plain_prefix(url: &str, prefix: &str) -> Result<String> {
    if url.contains(['?', '#']) || prefix.split('/').any(|c| c == ".." || c == ".") {
        return Err(Error::InvalidArgument(format!(
            "{url}: the prefix must be plain path components"
        )));
    }
    Ok(prefix.trim_matches('/').to_string())
}

/// Whether endpoint `e` of a `store` ("S3", "Azure") is plain HTTP;
/// refused unless it is an http:// or https:// URL.
pub(crate) fn endpoint_is_http(store: &str, e: &str) -> Result<bool> {
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(Error::InvalidArgument(format!(
            "{store} endpoint {e:?} is not an http:// or https:// URL"
        )));
    }
    Ok(e.starts_with("http://"))
}

/// A secret as the settings' Debug shows it.
pub(crate) fn hidden(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<hidden>")
}

/// A published path's components must be plain and not hidden.
fn check_path(path: &str) -> Result<()> {
    for part in path.split('/') {
        check_name(part)?;
        if part.starts_with('.') {
            return Err(Error::InvalidArgument(format!(
                "{path}: not a published object"
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Sink for ObjectStoreSink {
    fn describe(&self) -> String {
        self.shared.url.clone()
    }

    /// Objects whose path (below the prefix) starts with `prefix`; hidden
    /// ones (a file artifact's unpublished objects) are skipped.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let s = &self.shared;
        let base = (!s.prefix.is_empty()).then_some(s.prefix.as_str());
        let strip = if s.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", s.prefix)
        };
        let mut out: Vec<ObjectMeta> = s
            .store
            .list(base)
            .await
            .map_err(|e| Error::sink("cannot list", s.url.clone(), e))?
            .into_iter()
            .filter_map(|(key, size)| {
                let rel = key.strip_prefix(&strip)?;
                (rel.starts_with(prefix) && !rel.split('/').any(|c| c.starts_with('.'))).then(
                    || ObjectMeta {
                        path: rel.to_string(),
                        size,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn read(&self, path: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        check_path(path)?;
        let s = &self.shared;
        s.store
            .read(&s.key(path), 0, s.show(path))
            .await
            .map_err(|e| Error::sink("cannot read", s.show(path), e))
    }

    async fn delete(&self, artifact: &Artifact) -> Result<bool> {
        check_name(artifact.name())?;
        let s = &self.shared;
        let keys = match artifact {
            Artifact::Directory(d) => s.keys_under(d).await?,
            Artifact::File(f) => {
                if s.exists(artifact).await? {
                    vec![s.key(f)]
                } else {
                    Vec::new()
                }
            }
        };
        for k in &keys {
            s.store
                .delete(k)
                .await
                .map_err(|e| Error::sink("cannot delete", format!("{}/{k}", s.url), e))?;
        }
        Ok(!keys.is_empty())
    }

    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>> {
        check_name(artifact.name())?;
        if !overwrite && self.shared.exists(artifact).await? {
            return Err(Error::AlreadyExists {
                target: self.shared.show(artifact.name()),
            });
        }
        Ok(Box::new(ObjectStaging::new(
            self.shared.clone(),
            artifact.clone(),
            overwrite,
            None,
            Vec::new(),
        )))
    }

    async fn begin_resumable(
        &self,
        artifact: &Artifact,
        overwrite: bool,
        resume: bool,
    ) -> Result<Box<dyn Staging>> {
        check_name(artifact.name())?;
        let s = &self.shared;
        if !overwrite && s.exists(artifact).await? {
            return Err(Error::AlreadyExists {
                target: s.show(artifact.name()),
            });
        }
        let dir = s.state_of(artifact);
        let modes = Modes::for_files(0o600);
        let (state, entries) = {
            let dir = dir.clone();
            let root = s.state_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(State, Vec<Entry>)> {
                let show = |p: &std::path::Path| p.display().to_string();
                modes
                    .create_dir_all(&root)
                    .map_err(|e| Error::sink("cannot create state directory", show(&root), e))?;
                match modes.create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Error::sink("cannot create state directory", show(&dir), e))
                    }
                }
                let lock = lock_staging(&dir)?;
                let registry = FileStore::new(&dir, REGISTRY, modes);
                let entries: Vec<Entry> = match registry.load()? {
                    Some(b) => serde_json::from_slice(&b)
                        .map_err(|e| Error::Internal(format!("{}: {e}", registry.location())))?,
                    None => Vec::new(),
                };
                Ok((
                    State {
                        dir: dir.clone(),
                        _lock: lock,
                        checkpoints: Arc::new(FileStore::new(&dir, CHECKPOINT, modes)),
                        registry,
                    },
                    entries,
                ))
            })
            .await
            .map_err(|e| Error::Internal(format!("state thread failed: {e}")))??
        };
        let staging =
            ObjectStaging::new(s.clone(), artifact.clone(), overwrite, Some(state), entries);
        if resume {
            return Ok(Box::new(staging));
        }
        let had = !staging.entries().is_empty()
            || staging
                .checkpoints()
                .is_some_and(|c| matches!(c.load(), Ok(Some(_))));
        if had {
            tracing::warn!(destination = %s.show(artifact.name()), "discarding a partial export (not resuming)");
        }
        staging.abort_all().await;
        if let Some(c) = staging.checkpoints() {
            c.clear()?;
        }
        Ok(Box::new(staging))
    }

    async fn kept_checkpoint(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>> {
        check_name(artifact.name())?;
        let dir = self.shared.state_of(artifact);
        tokio::task::spawn_blocking(move || crate::local::peek(&dir, CHECKPOINT))
            .await
            .map_err(|e| Error::Internal(format!("checkpoint thread failed: {e}")))?
    }

    async fn discard_partial(&self, artifact: &Artifact) -> Result<bool> {
        check_name(artifact.name())?;
        let dir = self.shared.state_of(artifact);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok(false);
        }
        let staging = self.begin_resumable(artifact, true, true).await?;
        staging.abort().await?;
        Ok(true)
    }
}

/// The registry of a resumable staging area's uploads.
const REGISTRY: &str = "uploads.json";
/// Its checkpoint.
const CHECKPOINT: &str = "checkpoint.json";

/// One upload a staging area opened.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Entry {
    name: String,
    key: String,
    upload_id: String,
    /// Set once every part is uploaded: the parts to complete it with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished: Option<Finished>,
}

/// A finished upload: its size, and what its store publishes it with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Finished {
    pub(crate) size: u64,
    #[serde(flatten)]
    pub(crate) detail: serde_json::Map<String, serde_json::Value>,
}

/// A resumable staging area's local state.
#[derive(Debug)]
struct State {
    dir: PathBuf,
    _lock: std::fs::File,
    checkpoints: Arc<FileStore>,
    registry: FileStore,
}

/// The entries, shared by a staging area and its uploads.
#[derive(Debug)]
struct Registry {
    entries: Mutex<Vec<Entry>>,
    /// Where they are kept (resumable staging areas).
    file: Option<FileStore>,
}

impl Registry {
    fn update(&self, f: impl FnOnce(&mut Vec<Entry>)) -> Result<()> {
        let mut g = self
            .entries
            .lock()
            .map_err(|_| Error::Internal("upload registry poisoned".into()))?;
        f(&mut g);
        if let Some(file) = &self.file {
            let bytes = serde_json::to_vec(&*g)
                .map_err(|e| Error::Internal(format!("upload registry: {e}")))?;
            file.save(&bytes)?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.entries.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// The uploads of one artifact.
struct ObjectStaging {
    shared: Arc<Shared>,
    artifact: Artifact,
    overwrite: bool,
    registry: Arc<Registry>,
    state: Option<(PathBuf, std::fs::File, Arc<FileStore>)>,
    /// Committed, aborted or kept: nothing for Drop to clean up.
    settled: bool,
}

impl std::fmt::Debug for ObjectStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStaging")
            .field("destination", &self.shared.show(self.artifact.name()))
            .finish_non_exhaustive()
    }
}

impl ObjectStaging {
    fn new(
        shared: Arc<Shared>,
        artifact: Artifact,
        overwrite: bool,
        state: Option<State>,
        entries: Vec<Entry>,
    ) -> ObjectStaging {
        let (file, state) = match state {
            Some(s) => (Some(s.registry), Some((s.dir, s._lock, s.checkpoints))),
            None => (None, None),
        };
        ObjectStaging {
            shared,
            artifact,
            overwrite,
            registry: Arc::new(Registry {
                entries: Mutex::new(entries),
                file,
            }),
            state,
            settled: false,
        }
    }

    fn entries(&self) -> Vec<Entry> {
        self.registry.snapshot()
    }

    fn upload_of(&self, name: &str, key: String, id: String) -> UploadOf {
        UploadOf {
            shared: self.shared.clone(),
            registry: self.registry.clone(),
            name: name.to_string(),
            key,
            id,
        }
    }

    /// Aborts every upload opened (finished or not) and forgets them.
    async fn abort_all(&self) {
        for e in self.entries() {
            self.shared.abort(&e.key, &e.upload_id).await;
        }
        if let Err(e) = self.registry.update(Vec::clear) {
            tracing::warn!(error = %e, "cannot clear the upload registry");
        }
    }

    async fn remove_state(&mut self) {
        if let Some((dir, _, _)) = self.state.take() {
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the export's state directory");
            }
        }
    }
}

impl Drop for ObjectStaging {
    /// A staging area dropped unsettled (a cancelled export) aborts its
    /// uploads in the background, unless it is resumable: then it stays
    /// for a resume, as after a crash.
    fn drop(&mut self) {
        if self.settled || self.state.is_some() {
            return;
        }
        let entries = self.entries();
        if entries.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                for e in entries {
                    shared.abort(&e.key, &e.upload_id).await;
                }
            });
        }
    }
}

#[async_trait]
impl Staging for ObjectStaging {
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
        check_name(name)?;
        let (key, _) = self.shared.object_key(&self.artifact, name);
        // An upload of the same name started before is replaced.
        let old: Vec<Entry> = self
            .entries()
            .into_iter()
            .filter(|e| e.name == name)
            .collect();
        for e in &old {
            self.shared.abort(&e.key, &e.upload_id).await;
        }
        let id =
            self.shared.store.create(&key).await.map_err(|e| {
                Error::sink("cannot start uploading", self.shared.show_key(&key), e)
            })?;
        self.registry.update(|v| {
            v.retain(|e| e.name != name);
            v.push(Entry {
                name: name.to_string(),
                key: key.clone(),
                upload_id: id.clone(),
                finished: None,
            });
        })?;
        let of = self.upload_of(name, key, id);
        self.shared.store.upload(of, None).await
    }

    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        check_name(name)?;
        let id = saved.sink.get("upload_id").and_then(|v| v.as_str());
        let entry = self
            .entries()
            .into_iter()
            .find(|e| {
                e.name == name
                    && Some(self.shared.store.public_id(&e.upload_id).as_str()) == id
                    && e.finished.is_none()
            })
            .ok_or_else(|| {
                Error::InvalidArgument(format!("upload {name} is no longer open: it starts again"))
            })?;
        if keep > saved.size {
            return Err(Error::InvalidArgument(format!(
                "upload {name}: cannot keep {keep} bytes of {}",
                saved.size
            )));
        }
        let of = self.upload_of(name, entry.key, entry.upload_id);
        let kept = Kept {
            saved: &saved.sink,
            size: saved.size,
            keep,
        };
        self.shared.store.upload(of, Some(kept)).await
    }

    fn reads_before_commit(&self) -> bool {
        false
    }

    async fn open(&self, name: &str, offset: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let _ = offset;
        Err(Error::InvalidArgument(format!(
            "{}: an object store serves {name} only once the export is published",
            self.shared.url
        )))
    }

    async fn commit(mut self: Box<Self>) -> Result<String> {
        let s = self.shared.clone();
        let entries = self.entries();
        // Published objects: finished uploads of the artifact's keys, an
        // OVF directory's manifest last. The rest is aborted.
        let mut publish: Vec<&Entry> = Vec::new();
        for e in &entries {
            let public = s.object_key(&self.artifact, &e.name).1;
            if public && e.finished.is_some() {
                publish.push(e);
            } else {
                s.abort(&e.key, &e.upload_id).await;
            }
        }
        publish.sort_by_key(|e| e.name.ends_with(".mf"));
        let mut written = HashSet::new();
        for e in publish {
            let Some(f) = &e.finished else { continue };
            s.store
                .publish(&e.key, &e.upload_id, f)
                .await
                .map_err(|err| Error::sink("cannot publish", s.show(&e.name), err))?;
            written.insert(e.key.clone());
        }
        // Replacing a directory: its objects not written again go.
        if let (true, Artifact::Directory(d)) = (self.overwrite, &self.artifact) {
            for k in s.keys_under(d).await? {
                if !written.contains(&k) {
                    s.store
                        .delete(&k)
                        .await
                        .map_err(|e| Error::sink("cannot delete", format!("{}/{k}", s.url), e))?;
                }
            }
        }
        self.settled = true;
        self.remove_state().await;
        Ok(self.destination())
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_all().await;
        self.settled = true;
        self.remove_state().await;
        Ok(())
    }

    async fn keep(mut self: Box<Self>) -> Result<String> {
        if self.state.is_none() {
            self.abort_all().await;
            self.settled = true;
            return Ok(String::new());
        }
        self.settled = true;
        Ok(self.destination())
    }

    fn destination(&self) -> String {
        match &self.artifact {
            Artifact::Directory(d) => format!("{}/{d}/", self.shared.url),
            Artifact::File(f) => format!("{}/{f}", self.shared.url),
        }
    }

    /// A resumable export's state directory: an OVA's spools (the
    /// exporter's scratch area) then sit beside its checkpoint, on a disk
    /// that survives a restart, not in a temporary directory.
    fn scratch_hint(&self) -> Option<PathBuf> {
        self.state.as_ref().map(|_| self.shared.state_dir.clone())
    }

    fn checkpoints(&self) -> Option<Arc<dyn CheckpointStore>> {
        self.state
            .as_ref()
            .map(|(_, _, c)| c.clone() as Arc<dyn CheckpointStore>)
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self
            .entries()
            .into_iter()
            .find(|e| e.name == name)
            .and_then(|e| e.finished.map(|f| f.size)))
    }
}
