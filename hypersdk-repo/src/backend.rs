//! Where a repository's objects live: a local directory, or any
//! [`Sink`] (object stores, SFTP, SMB, …).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use hypersdk_core::{Artifact, Error, Result, Sink};

/// Objects by flat name (`config`, `chunk-…`, `index-…`, …).
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where, for messages: "/srv/repo", "s3://bucket/repo".
    fn describe(&self) -> String;

    /// Object `name`, None if there is none; refused when larger than
    /// `max` bytes (a hostile store cannot make us allocate without bound).
    async fn get(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>>;

    /// Stores object `name` whole or not at all, replacing one there. When
    /// this returns, the object survives a crash once [`sync`](Self::sync)
    /// returns.
    async fn put(&self, name: &str, data: &[u8]) -> Result<()>;

    /// Names and sizes of the objects whose name starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;

    /// Deletes object `name`; false if there was none.
    async fn delete(&self, name: &str) -> Result<bool>;

    /// Makes every object put so far durable.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// A repository in a local directory. Chunks are fanned out by the first
/// two hex digits of their name (`chunks/ab/chunk-ab…`), everything else
/// sits at the top. Each object is written under a temporary name, synced
/// and renamed, so a crash never leaves a partial object under its name.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The repository at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(match name.strip_prefix("chunk-") {
            Some(h) if h.len() >= 2 => self.root.join("chunks").join(&h[..2]).join(name),
            _ => self.root.join(name),
        })
    }
}

/// Object names are one path component of `[a-z0-9-]`.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::InvalidArgument(format!("bad repository object name '{name}'")));
    }
    Ok(())
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> impl std::future::Future<Output = Result<T>> {
    async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("repository I/O task failed: {e}")))?
    }
}

#[async_trait]
impl Backend for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        blocking(move || {
            use std::io::Read;
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::sink("cannot open", path.display().to_string(), e)),
            };
            let mut buf = Vec::new();
            f.take(max as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Error::sink("cannot read", path.display().to_string(), e))?;
            if buf.len() > max {
                return Err(Error::Integrity {
                    file: path.display().to_string(),
                    detail: format!("larger than the {max} bytes such an object can hold"),
                });
            }
            Ok(Some(buf))
        })
        .await
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name)?;
        let data = data.to_vec();
        blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            let shown = || path.display().to_string();
            std::fs::create_dir_all(dir).map_err(|e| Error::sink("cannot create", dir.display().to_string(), e))?;
            let tmp = dir.join(format!(
                ".tmp-{}-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
                crate::blob::hex(&crate::blob::random::<6>()?)
            ));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::sink("cannot write", shown(), e)
            })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            let mut dirs = vec![root.clone()];
            if "chunk-".starts_with(&prefix) || prefix.starts_with("chunk-") {
                match std::fs::read_dir(root.join("chunks")) {
                    Ok(rd) => {
                        for e in rd {
                            let e = e.map_err(|e| Error::sink("cannot list", root.display().to_string(), e))?;
                            dirs.push(e.path());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::sink("cannot list", root.join("chunks").display().to_string(), e)),
                }
            }
            for d in dirs {
                let rd = match std::fs::read_dir(&d) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::sink("cannot list", d.display().to_string(), e)),
                };
                for e in rd {
                    let e = e.map_err(|e| Error::sink("cannot list", d.display().to_string(), e))?;
                    let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if !name.starts_with(&prefix) || name.starts_with('.') || check_name(&name).is_err() {
                        continue;
                    }
                    let meta = e.metadata().map_err(|err| Error::sink("cannot stat", e.path().display().to_string(), err))?;
                    if meta.is_file() {
                        out.push((name, meta.len()));
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let path = self.path(name)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::sink("cannot delete", path.display().to_string(), e)),
        })
        .await
    }

    async fn sync(&self) -> Result<()> {
        // Each object's data was synced before its rename; the renames
        // themselves are made durable by syncing the file system.
        let root = self.root.clone();
        blocking(move || {
            let f = std::fs::File::open(&root).map_err(|e| Error::sink("cannot open", root.display().to_string(), e))?;
            rustix::fs::syncfs(&f).map_err(|e| Error::sink("cannot sync", root.display().to_string(), e.into()))
        })
        .await
    }
}

/// A repository on any [`Sink`]: each object is one published file artifact.
#[derive(Debug, Clone)]
pub struct SinkBackend {
    sink: Arc<dyn Sink>,
}

impl SinkBackend {
    /// The repository at `sink`'s destination.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        SinkBackend { sink }
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Sink { source, .. } if source.kind() == ErrorKind::NotFound)
}

#[async_trait]
impl Backend for SinkBackend {
    fn describe(&self) -> String {
        self.sink.describe()
    }

    async fn get(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>> {
        check_name(name)?;
        let r = match self.sink.read(name).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        r.take(max as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::sink("cannot read", format!("{} in {}", name, self.sink.describe()), e))?;
        if buf.len() > max {
            return Err(Error::Integrity {
                file: name.to_owned(),
                detail: format!("larger than the {max} bytes such an object can hold"),
            });
        }
        Ok(Some(buf))
    }

    async fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        check_name(name)?;
        let artifact = Artifact::File(name.to_owned());
        let mut staging = self.sink.begin(&artifact, true).await?;
        let written = async {
            let mut up = staging.start(name).await?;
            if let Err(e) = up.put(data).await {
                let _ = up.abort().await;
                return Err(e);
            }
            up.complete().await
        }
        .await;
        match written {
            Ok(_) => staging.commit().await.map(|_| ()),
            Err(e) => {
                let _ = staging.abort().await;
                Err(e)
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .sink
            .list(prefix)
            .await?
            .into_iter()
            .filter(|m| check_name(&m.path).is_ok())
            .map(|m| (m.path, m.size))
            .collect())
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        self.sink.delete(&Artifact::File(name.to_owned())).await
    }
}
