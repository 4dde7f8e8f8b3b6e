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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hypersdk_core::sink::ObjectMeta;
use hypersdk_core::{Artifact, CheckpointStore, Error, Result, Sink, Staging, Upload, UploadState};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

use crate::check_name;
use crate::local::{lock_staging, FileStore, Modes};

/// The smallest part a store takes that is not an upload's last (S3, Azure).
pub const MIN_PART: usize = 5 << 20;
/// The default part size.
pub const DEFAULT_PART: usize = 16 << 20;
/// Bytes an upload keeps in flight.
const IN_FLIGHT_BYTES: usize = 64 << 20;
/// Parts an upload may have (S3).
const MAX_PARTS: usize = 10_000;
/// Bytes an upload keeps back beyond a full part before sending it, so
/// that a save (at a resume point at most one pipeline chunk behind the
/// end) can always cut a part of at least [`MIN_PART`].
const RESERVE: usize = 16 << 20;

/// A store as a sink: objects under `prefix` of one bucket or container.
pub struct ObjectStoreSink {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    /// The destination as users write it, without credentials
    /// (`s3://bucket/prefix`).
    url: String,
    /// Key prefix inside the bucket, without slashes at either end.
    prefix: String,
    state_dir: PathBuf,
    part_size: usize,
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
    pub fn new(
        store: Arc<dyn ObjectStore>,
        multipart: Arc<dyn MultipartStore>,
        url: impl Into<String>,
        prefix: &str,
        state_dir: impl Into<PathBuf>,
    ) -> ObjectStoreSink {
        ObjectStoreSink {
            shared: Arc::new(Shared {
                store,
                multipart,
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
    pub(crate) fn over<T: ObjectStore + MultipartStore>(
        store: Arc<T>,
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
        let sink = ObjectStoreSink::new(store.clone(), store, shown, prefix, state_dir);
        match part_size {
            Some(p) => sink.with_part_size(p),
            None => sink,
        }
    }

    /// Sets the part size (at least 5 MiB).
    pub fn with_part_size(mut self, bytes: usize) -> ObjectStoreSink {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.part_size = bytes.max(MIN_PART);
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
    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn show(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    /// The key of object `name` of `artifact`; objects of a file artifact
    /// other than its file are never published and sit under a hidden key.
    fn object_key(&self, artifact: &Artifact, name: &str) -> (Key, bool) {
        match artifact {
            Artifact::Directory(d) => (self.key(&format!("{d}/{name}")), true),
            Artifact::File(f) if f == name => (self.key(f), true),
            Artifact::File(f) => (self.key(&format!(".{f}.partial/{name}")), false),
        }
    }

    async fn exists(&self, artifact: &Artifact) -> Result<bool> {
        match artifact {
            Artifact::File(f) => match self.store.head(&self.key(f)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(store_error("cannot look for", self.show(f), e)),
            },
            Artifact::Directory(d) => Ok(!self.keys_under(d).await?.is_empty()),
        }
    }

    /// Keys of the objects in directory `d`.
    async fn keys_under(&self, d: &str) -> Result<Vec<Key>> {
        let prefix = self.key(d);
        self.store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| store_error("cannot list", self.show(d), e))
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

/// An object-store error as a sink error: not-found and permission errors
/// keep their kind; the message never carries credentials (object_store
/// signs in headers, not URLs).
fn store_error(action: &str, target: String, e: object_store::Error) -> Error {
    use std::io::ErrorKind;
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        _ => ErrorKind::Other,
    };
    Error::sink(action, target, std::io::Error::new(kind, e))
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
        let base = (!s.prefix.is_empty()).then(|| Key::from(s.prefix.as_str()));
        let strip = if s.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", s.prefix)
        };
        let mut out: Vec<ObjectMeta> = s
            .store
            .list(base.as_ref())
            .try_filter_map(|m| {
                let rel = m.location.as_ref().strip_prefix(&strip).map(str::to_string);
                let keep = rel
                    .filter(|r| r.starts_with(prefix) && !r.split('/').any(|c| c.starts_with('.')));
                futures_util::future::ready(Ok(keep.map(|path| ObjectMeta { path, size: m.size })))
            })
            .try_collect()
            .await
            .map_err(|e| store_error("cannot list", s.url.clone(), e))?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn read(&self, path: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        check_path(path)?;
        read_from(&self.shared, path, 0).await
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
                .map_err(|e| store_error("cannot delete", format!("{}/{k}", s.url), e))?;
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

/// Opens `rel` for reading from `offset` on.
async fn read_from(
    s: &Shared,
    rel: &str,
    offset: u64,
) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
    let key = s.key(rel);
    let opts = object_store::GetOptions {
        range: (offset > 0).then_some(object_store::GetRange::Offset(offset)),
        ..Default::default()
    };
    let got = s
        .store
        .get_opts(&key, opts)
        .await
        .map_err(|e| store_error("cannot read", s.show(rel), e))?;
    let url = s.show(rel);
    let stream = got
        .into_stream()
        .map_err(move |e| std::io::Error::other(format!("reading {url}: {e}")));
    Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Finished {
    parts: Vec<String>,
    size: u64,
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

    /// Aborts every upload opened (finished or not) and forgets them.
    async fn abort_all(&self) {
        for e in self.entries() {
            abort_upload(&self.shared, &e.key, &e.upload_id).await;
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

async fn abort_upload(s: &Shared, key: &str, upload_id: &str) {
    if let Err(e) = s
        .multipart
        .abort_multipart(&Key::from(key), &upload_id.to_string())
        .await
    {
        if !matches!(e, object_store::Error::NotFound { .. }) {
            tracing::warn!(key, error = %e, "cannot abort an upload: its parts stay until the bucket's lifecycle rule removes them");
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
                    abort_upload(&shared, &e.key, &e.upload_id).await;
                }
            });
        }
    }
}

/// What an upload saves into the export's checkpoint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    upload_id: String,
    parts: Vec<SavedPart>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SavedPart {
    id: String,
    size: u64,
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
            abort_upload(&self.shared, &e.key, &e.upload_id).await;
        }
        let id = self
            .shared
            .multipart
            .create_multipart(&key)
            .await
            .map_err(|e| {
                store_error("cannot start uploading", self.shared.show(key.as_ref()), e)
            })?;
        self.registry.update(|v| {
            v.retain(|e| e.name != name);
            v.push(Entry {
                name: name.to_string(),
                key: key.to_string(),
                upload_id: id.clone(),
                finished: None,
            });
        })?;
        Ok(Box::new(ObjectUpload::new(
            self.shared.clone(),
            self.registry.clone(),
            name,
            key,
            id,
            Vec::new(),
        )))
    }

    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        check_name(name)?;
        let s: Saved = serde_json::from_value(saved.sink.clone()).map_err(|e| {
            Error::InvalidArgument(format!(
                "saved state of upload {name} is not this sink's: {e}"
            ))
        })?;
        let entry = self
            .entries()
            .into_iter()
            .find(|e| e.name == name && e.upload_id == s.upload_id && e.finished.is_none())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("upload {name} is no longer open: it starts again"))
            })?;
        if keep > saved.size {
            return Err(Error::InvalidArgument(format!(
                "upload {name}: cannot keep {keep} bytes of {}",
                saved.size
            )));
        }
        let n = whole_parts(s.parts.iter().map(|p| p.size), keep).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "upload {name}: {keep} bytes is not a part boundary (the store keeps whole parts)"
            ))
        })?;
        let mut parts = s.parts;
        parts.truncate(n);
        Ok(Box::new(ObjectUpload::new(
            self.shared.clone(),
            self.registry.clone(),
            name,
            Key::from(entry.key),
            entry.upload_id,
            parts,
        )))
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
                abort_upload(&s, &e.key, &e.upload_id).await;
            }
        }
        publish.sort_by_key(|e| e.name.ends_with(".mf"));
        let mut written = HashSet::new();
        for e in publish {
            let Some(f) = &e.finished else { continue };
            let parts: Vec<PartId> = f
                .parts
                .iter()
                .map(|p| PartId {
                    content_id: p.clone(),
                })
                .collect();
            s.multipart
                .complete_multipart(&Key::from(e.key.as_str()), &e.upload_id, parts)
                .await
                .map_err(|err| store_error("cannot publish", s.show(&e.name), err))?;
            written.insert(e.key.clone());
        }
        // Replacing a directory: its objects not written again go.
        if let (true, Artifact::Directory(d)) = (self.overwrite, &self.artifact) {
            for k in s.keys_under(d).await? {
                if !written.contains(k.as_ref()) {
                    s.store
                        .delete(&k)
                        .await
                        .map_err(|e| store_error("cannot delete", format!("{}/{k}", s.url), e))?;
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

/// A part handed over: its size, and its id once the store took it.
#[derive(Debug)]
struct Part {
    size: u64,
    id: Option<String>,
}

/// How many leading parts of these sizes make exactly `end` bytes, if some do.
fn whole_parts(sizes: impl Iterator<Item = u64>, end: u64) -> Option<usize> {
    let mut total = 0;
    let mut n = 0;
    for s in sizes {
        if total >= end {
            break;
        }
        total += s;
        n += 1;
    }
    (total == end).then_some(n)
}

/// One object being uploaded in parts.
struct ObjectUpload {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    name: String,
    key: Key,
    upload_id: String,
    /// Every part handed over, in order.
    parts: Vec<Part>,
    in_flight: JoinSet<(usize, std::result::Result<PartId, object_store::Error>)>,
    /// Bytes put but not yet in a part.
    /// (as the chunks put, so that a part is exactly its bytes: no
    /// contiguous buffer to grow, split and over-allocate).
    buf: std::collections::VecDeque<Bytes>,
    /// Their length.
    buffered: usize,
    /// Bytes handed to parts.
    flushed: u64,
}

impl std::fmt::Debug for ObjectUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectUpload")
            .field("key", &self.key.as_ref())
            .field("flushed", &self.flushed)
            .finish_non_exhaustive()
    }
}

impl ObjectUpload {
    fn new(
        shared: Arc<Shared>,
        registry: Arc<Registry>,
        name: &str,
        key: Key,
        upload_id: String,
        kept: Vec<SavedPart>,
    ) -> ObjectUpload {
        let flushed = kept.iter().map(|p| p.size).sum();
        ObjectUpload {
            shared,
            registry,
            name: name.to_string(),
            key,
            upload_id,
            parts: kept
                .into_iter()
                .map(|p| Part {
                    size: p.size,
                    id: Some(p.id),
                })
                .collect(),
            in_flight: JoinSet::new(),
            buf: std::collections::VecDeque::new(),
            buffered: 0,
            flushed,
        }
    }

    /// The size of part `index` when cut by size: larger every 2000 parts.
    fn part_len(&self, index: usize) -> usize {
        self.shared.part_size << (index / 2000).min(4)
    }

    /// Parts kept in flight at `len` bytes each.
    fn max_in_flight(len: usize) -> usize {
        (IN_FLIGHT_BYTES / len.max(1)).max(1)
    }

    /// Hands the first `len` bytes of the buffer over as the next part.
    async fn send(&mut self, len: usize) -> Result<()> {
        let index = self.parts.len();
        if index >= MAX_PARTS {
            return Err(Error::sink(
                "cannot upload",
                self.shared.show(self.key.as_ref()),
                std::io::Error::other(format!("more than {MAX_PARTS} parts")),
            ));
        }
        while self.in_flight.len() >= Self::max_in_flight(len) {
            self.join_one().await?;
        }
        let data = self.take(len);
        self.parts.push(Part {
            size: len as u64,
            id: None,
        });
        self.flushed += len as u64;
        let (mp, key, id) = (
            self.shared.multipart.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        self.in_flight.spawn(async move {
            let r = mp.put_part(&key, &id, index, data).await;
            (index, r)
        });
        Ok(())
    }

    /// The first `len` buffered bytes, as a payload of the chunks (the one
    /// at the cut split without a copy).
    fn take(&mut self, len: usize) -> PutPayload {
        let mut left = len.min(self.buffered);
        self.buffered -= left;
        let mut chunks = Vec::new();
        while left > 0 {
            let Some(mut c) = self.buf.pop_front() else {
                break;
            };
            if c.len() > left {
                let rest = c.split_off(left);
                self.buf.push_front(rest);
            }
            left -= c.len();
            chunks.push(c);
        }
        chunks.into_iter().collect()
    }

    /// Waits for one part in flight.
    async fn join_one(&mut self) -> Result<()> {
        let Some(joined) = self.in_flight.join_next().await else {
            return Ok(());
        };
        let (index, r) =
            joined.map_err(|e| Error::Internal(format!("part upload task failed: {e}")))?;
        let part = r.map_err(|e| {
            store_error(
                "cannot upload a part of",
                self.shared.show(self.key.as_ref()),
                e,
            )
        })?;
        self.parts[index].id = Some(part.content_id);
        Ok(())
    }

    async fn join_all(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    /// The first `n` parts, all finished (call after [`join_all`](Self::join_all)).
    fn finished(&self, n: usize) -> Result<Vec<SavedPart>> {
        self.parts[..n]
            .iter()
            .map(|p| {
                Some(SavedPart {
                    id: p.id.clone()?,
                    size: p.size,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Internal("a part is still in flight".into()))
    }
}

#[async_trait]
impl Upload for ObjectUpload {
    async fn put(&mut self, data: &[u8]) -> Result<()> {
        if !data.is_empty() {
            self.buf.push_back(Bytes::copy_from_slice(data));
            self.buffered += data.len();
        }
        loop {
            let len = self.part_len(self.parts.len());
            if self.buffered < len + RESERVE {
                return Ok(());
            }
            self.send(len).await?;
        }
    }

    fn size(&self) -> u64 {
        self.flushed + self.buffered as u64
    }

    async fn save(&mut self) -> Result<Option<UploadState>> {
        let end = self.size();
        self.save_to(end).await
    }

    /// Cuts a part at `end` (if at least 5 MiB since the last) and waits
    /// for every part: the state then covers exactly `end` bytes. None
    /// when that cannot be (the last part would be too small, or `end` is
    /// inside a part already sent).
    async fn save_to(&mut self, end: u64) -> Result<Option<UploadState>> {
        if end > self.size() {
            return Ok(None);
        }
        if end > self.flushed {
            let cut = (end - self.flushed) as usize;
            // Too little for a part of its own: not now (the next save
            // has more; put keeps RESERVE bytes back for this).
            if cut < MIN_PART {
                return Ok(None);
            }
            self.send(cut).await?;
        }
        self.join_all().await?;
        // `end` must be a part boundary.
        let Some(n) = whole_parts(self.parts.iter().map(|p| p.size), end) else {
            return Ok(None);
        };
        let saved = Saved {
            upload_id: self.upload_id.clone(),
            parts: self.finished(n)?,
        };
        Ok(Some(UploadState {
            size: end,
            sink: json!(saved),
        }))
    }

    async fn complete(mut self: Box<Self>) -> Result<u64> {
        if self.buffered > 0 || self.parts.is_empty() {
            let len = self.buffered;
            self.send(len).await?;
        }
        self.join_all().await?;
        let size = self.flushed;
        let parts = self.finished(self.parts.len())?;
        let name = self.name.clone();
        let id = self.upload_id.clone();
        self.registry.update(|v| {
            if let Some(e) = v.iter_mut().find(|e| e.name == name && e.upload_id == id) {
                e.finished = Some(Finished {
                    parts: parts.into_iter().map(|p| p.id).collect(),
                    size,
                });
            }
        })?;
        Ok(size)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.in_flight.abort_all();
        abort_upload(&self.shared, self.key.as_ref(), &self.upload_id).await;
        let (name, id) = (self.name.clone(), self.upload_id.clone());
        self.registry
            .update(|v| v.retain(|e| !(e.name == name && e.upload_id == id)))
    }
}
