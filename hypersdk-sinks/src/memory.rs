//! [`MemorySink`]: a sink that keeps every object in memory.
//!
//! For tests, examples and small artifacts: it holds whole objects, so its
//! memory grows with what is exported into it. It behaves as a sink must —
//! objects appear only on commit, whole; an abort or a dropped staging area
//! leaves nothing; resumable staging areas survive [`Staging::keep`] (for
//! the life of the sink) with their checkpoint — and is the reference the
//! sink testkit is checked against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::check_name;
use hypersdk_core::sink::ObjectMeta;
use hypersdk_core::{
    Artifact, CheckpointStore, Error, Reserved, Result, Sink, Staging, Upload, UploadState,
};

/// Objects by path, in memory (cheap to clone: clones share the objects).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Published objects by path.
    published: BTreeMap<String, Arc<Vec<u8>>>,
    /// Kept resumable staging areas by artifact name.
    partial: BTreeMap<String, Partial>,
    /// Artifact names with a staging area in use.
    busy: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default, Clone)]
struct Partial {
    objects: BTreeMap<String, Vec<u8>>,
    checkpoint: Option<Vec<u8>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found(what: &str) -> Error {
    Error::sink(
        "cannot read",
        format!("memory:{what}"),
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
    )
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A published object's bytes, if there is one.
    pub fn get(&self, path: &str) -> Option<Arc<Vec<u8>>> {
        lock(&self.state).published.get(path).cloned()
    }

    /// Whether an artifact has a kept partial export.
    pub fn has_partial(&self, artifact: &str) -> bool {
        lock(&self.state).partial.contains_key(artifact)
    }

    /// Whether `path` is artifact `name` or an object in it.
    fn of_artifact(path: &str, name: &str) -> bool {
        path.strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn exists(state: &State, artifact: &Artifact) -> bool {
        state
            .published
            .keys()
            .any(|k| Self::of_artifact(k, artifact.name()))
    }

    /// Removes every published object of `artifact`.
    fn remove(state: &mut State, artifact: &Artifact) {
        state
            .published
            .retain(|k, _| !Self::of_artifact(k, artifact.name()));
    }

    fn claim(&self, artifact: &Artifact, overwrite: bool) -> Result<()> {
        check_name(artifact.name())?;
        let mut st = lock(&self.state);
        if !overwrite && Self::exists(&st, artifact) {
            return Err(Error::AlreadyExists {
                target: format!("memory:{}", artifact.name()),
            });
        }
        if !st.busy.insert(artifact.name().to_string()) {
            return Err(Error::sink(
                "cannot use staging area",
                format!("memory:{}", artifact.name()),
                std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    "another export of the same VM is writing it",
                ),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>> {
        self.claim(artifact, overwrite)?;
        Ok(Box::new(MemoryStaging {
            sink: self.clone(),
            artifact: artifact.clone(),
            overwrite,
            objects: Arc::new(Mutex::new(BTreeMap::new())),
            checkpoint: None,
            done: false,
        }))
    }

    async fn begin_resumable(
        &self,
        artifact: &Artifact,
        overwrite: bool,
        resume: bool,
    ) -> Result<Box<dyn Staging>> {
        self.claim(artifact, overwrite)?;
        let kept = {
            let mut st = lock(&self.state);
            let p = st.partial.remove(artifact.name());
            if resume {
                p
            } else {
                None
            }
        }
        .unwrap_or_default();
        Ok(Box::new(MemoryStaging {
            sink: self.clone(),
            artifact: artifact.clone(),
            overwrite,
            objects: Arc::new(Mutex::new(kept.objects)),
            checkpoint: Some(Arc::new(MemoryCheckpoints(Mutex::new(kept.checkpoint)))),
            done: false,
        }))
    }

    async fn discard_partial(&self, artifact: &Artifact) -> Result<bool> {
        let mut st = lock(&self.state);
        if st.busy.contains(artifact.name()) {
            return Err(Error::sink(
                "cannot remove partial export",
                format!("memory:{}", artifact.name()),
                std::io::Error::new(std::io::ErrorKind::ResourceBusy, "an export is using it"),
            ));
        }
        Ok(st.partial.remove(artifact.name()).is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(lock(&self.state)
            .published
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                path: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    async fn read(&self, path: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let bytes = self.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(std::io::Cursor::new(SharedBytes(bytes))))
    }

    async fn delete(&self, artifact: &Artifact) -> Result<bool> {
        let mut st = lock(&self.state);
        let existed = Self::exists(&st, artifact);
        Self::remove(&mut st, artifact);
        Ok(existed)
    }
}

/// Shared bytes readable through a `Cursor`.
#[derive(Debug)]
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug)]
struct MemoryCheckpoints(Mutex<Option<Vec<u8>>>);

impl CheckpointStore for MemoryCheckpoints {
    fn load(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    fn save(&self, bytes: &[u8]) -> Result<()> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes.to_vec());
        Ok(())
    }
    fn clear(&self) -> Result<()> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
    fn location(&self) -> String {
        "memory".into()
    }
}

type Objects = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

#[derive(Debug)]
struct MemoryStaging {
    sink: MemorySink,
    artifact: Artifact,
    overwrite: bool,
    objects: Objects,
    checkpoint: Option<Arc<MemoryCheckpoints>>,
    done: bool,
}

impl MemoryStaging {
    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&mut self) {
        self.done = true;
        lock(&self.sink.state).busy.remove(self.artifact.name());
    }
}

impl Drop for MemoryStaging {
    fn drop(&mut self) {
        if !self.done {
            self.release();
        }
    }
}

#[async_trait]
impl Staging for MemoryStaging {
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
        check_name(name)?;
        self.objects().insert(name.to_string(), Vec::new());
        Ok(Box::new(MemoryUpload::new(self.objects.clone(), name)))
    }

    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        let mut objects = self.objects();
        let v = objects.get_mut(name).ok_or_else(|| not_found(name))?;
        if keep > saved.size || keep > v.len() as u64 {
            return Err(Error::sink(
                "cannot continue",
                name,
                std::io::Error::other(format!("{keep} bytes to keep, {} there", v.len())),
            ));
        }
        v.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        drop(objects);
        Ok(Box::new(MemoryUpload::new(self.objects.clone(), name)))
    }

    fn fills_reserved(&self) -> bool {
        true
    }

    async fn open(&self, name: &str, offset: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let bytes = self
            .objects()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let mut cursor = std::io::Cursor::new(bytes);
        cursor.set_position(offset);
        Ok(Box::new(cursor))
    }

    async fn commit(mut self: Box<Self>) -> Result<String> {
        let objects = std::mem::take(&mut *self.objects());
        {
            let mut st = lock(&self.sink.state);
            if !self.overwrite && MemorySink::exists(&st, &self.artifact) {
                return Err(Error::AlreadyExists {
                    target: format!("memory:{}", self.artifact.name()),
                });
            }
            MemorySink::remove(&mut st, &self.artifact);
            let name = self.artifact.name().to_string();
            let dir = format!("{name}/");
            match &self.artifact {
                Artifact::Directory(_) => {
                    for (k, v) in objects {
                        st.published.insert(format!("{dir}{k}"), Arc::new(v));
                    }
                }
                Artifact::File(_) => {
                    let v = objects
                        .into_iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v);
                    let v = v.ok_or_else(|| not_found(&name))?;
                    st.published.insert(name.clone(), Arc::new(v));
                }
            }
        }
        self.release();
        Ok(format!("memory:{}", self.artifact.name()))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.release();
        Ok(())
    }

    async fn keep(mut self: Box<Self>) -> Result<String> {
        let Some(cp) = &self.checkpoint else {
            self.release();
            return Ok(String::new());
        };
        let partial = Partial {
            objects: std::mem::take(&mut *self.objects()),
            checkpoint: cp.load()?,
        };
        lock(&self.sink.state)
            .partial
            .insert(self.artifact.name().to_string(), partial);
        self.release();
        Ok(format!("memory:.{}.partial", self.artifact.name()))
    }

    fn destination(&self) -> String {
        format!("memory:{}", self.artifact.name())
    }

    fn checkpoints(&self) -> Option<Arc<dyn CheckpointStore>> {
        self.checkpoint
            .clone()
            .map(|c| c as Arc<dyn CheckpointStore>)
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.objects().get(name).map(|v| v.len() as u64))
    }
}

#[derive(Debug)]
struct MemoryUpload {
    objects: Objects,
    name: String,
    size: u64,
    unfilled: Vec<Reserved>,
}

impl MemoryUpload {
    fn new(objects: Objects, name: &str) -> Self {
        let size = objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |v| v.len() as u64);
        MemoryUpload {
            objects,
            name: name.to_string(),
            size,
            unfilled: Vec::new(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> Result<T> {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let v = objects
            .get_mut(&self.name)
            .ok_or_else(|| not_found(&self.name))?;
        Ok(f(v))
    }
}

#[async_trait]
impl Upload for MemoryUpload {
    async fn put(&mut self, data: &[u8]) -> Result<()> {
        self.with(|v| v.extend_from_slice(data))?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn reserve(&mut self, len: u64) -> Result<Reserved> {
        let at = Reserved {
            offset: self.size,
            len,
        };
        let n = usize::try_from(len).map_err(|_| Error::Internal("region too large".into()))?;
        self.with(|v| v.resize(v.len() + n, 0))?;
        self.size += len;
        self.unfilled.push(at);
        Ok(at)
    }

    async fn fill(&mut self, at: Reserved, data: &[u8]) -> Result<()> {
        let start = usize::try_from(at.offset).unwrap_or(usize::MAX);
        self.with(
            |v| match v.get_mut(start..start.saturating_add(data.len())) {
                Some(region) if data.len() as u64 == at.len => {
                    region.copy_from_slice(data);
                    Ok(())
                }
                _ => Err(Error::Internal(format!(
                    "{} bytes to fill a region of {} at {}",
                    data.len(),
                    at.len,
                    at.offset
                ))),
            },
        )??;
        self.unfilled.retain(|r| *r != at);
        Ok(())
    }

    async fn save(&mut self) -> Result<Option<UploadState>> {
        Ok(Some(UploadState {
            size: self.size,
            sink: serde_json::Value::Null,
        }))
    }

    async fn complete(self: Box<Self>) -> Result<u64> {
        if let Some(r) = self.unfilled.first() {
            return Err(Error::Internal(format!(
                "{}: the region of {} bytes at {} was reserved and never filled",
                self.name, r.len, r.offset
            )));
        }
        self.with(|v| v.len() as u64)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
        Ok(())
    }
}
