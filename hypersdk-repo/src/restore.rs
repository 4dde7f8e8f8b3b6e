//! `restore`: a snapshot's disks back to raw, qcow2 or VMDK files, or a
//! snapshot as an export source (so the Exporter writes an OVA/OVF).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use hypersdk_core::{DiskStream, Error, ExportSource, Result, VmSpec};
use hypersdk_formats::convert::{convert, ConvertOptions, ConvertStats, TargetFormat};
use hypersdk_formats::image::{DiskImage, Region};

use crate::index::{DiskIndex, ZERO};
use crate::repo::{Repository, Snapshot};

/// Chunks fetched ahead of the one being read.
const READ_AHEAD: usize = 4;

/// A disk of a snapshot as a [`DiskImage`], for the converters. Reads
/// block on the repository; use it on a blocking thread. Memory: the
/// chunk being read plus [`READ_AHEAD`] fetched ahead.
#[derive(Debug)]
pub struct SnapshotImage {
    repo: Repository,
    index: Arc<DiskIndex>,
    handle: tokio::runtime::Handle,
    cached: Option<(usize, Arc<Vec<u8>>)>,
    ahead: std::collections::VecDeque<(usize, tokio::task::JoinHandle<Result<Vec<u8>>>)>,
}

impl SnapshotImage {
    /// Disk `index` of a snapshot, reading through `handle`'s runtime.
    pub fn new(repo: Repository, index: DiskIndex, handle: tokio::runtime::Handle) -> Self {
        SnapshotImage {
            repo,
            index: Arc::new(index),
            handle,
            cached: None,
            ahead: Default::default(),
        }
    }

    fn fetch(&self, ci: usize) -> tokio::task::JoinHandle<Result<Vec<u8>>> {
        let repo = self.repo.clone();
        let digest = self.index.chunks[ci];
        self.handle.spawn(async move { repo.load_chunk(&digest).await })
    }

    fn chunk(&mut self, ci: usize) -> Result<Arc<Vec<u8>>> {
        if let Some((c, data)) = &self.cached {
            if *c == ci {
                return Ok(data.clone());
            }
        }
        while self.ahead.front().is_some_and(|(c, _)| *c < ci) {
            if let Some((_, h)) = self.ahead.pop_front() {
                h.abort();
            }
        }
        let task = match self.ahead.front() {
            Some((c, _)) if *c == ci => self.ahead.pop_front().map(|(_, h)| h),
            _ => None,
        };
        let task = match task {
            Some(t) => t,
            None => {
                for (_, h) in self.ahead.drain(..) {
                    h.abort();
                }
                self.fetch(ci)
            }
        };
        // Keep the next non-zero chunks coming.
        let mut next = self.ahead.back().map_or(ci + 1, |(c, _)| c + 1);
        while self.ahead.len() < READ_AHEAD && next < self.index.chunks.len() {
            if self.index.chunks[next] != ZERO {
                let h = self.fetch(next);
                self.ahead.push_back((next, h));
            }
            next += 1;
        }
        let data = self
            .handle
            .block_on(task)
            .map_err(|e| Error::Internal(format!("chunk read task failed: {e}")))??;
        let want = self.index.range(ci);
        if data.len() as u64 != want.end - want.start {
            return Err(Error::Integrity {
                file: crate::blob::chunk_name(&self.index.chunks[ci]),
                detail: format!("holds {} bytes where the index needs {}", data.len(), want.end - want.start),
            });
        }
        let data = Arc::new(data);
        self.cached = Some((ci, data.clone()));
        Ok(data)
    }
}

impl Drop for SnapshotImage {
    fn drop(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
    }
}

fn formats_error(e: Error) -> hypersdk_formats::Error {
    hypersdk_formats::Error::io("reading from the repository", std::io::Error::other(e.to_string()))
}

impl DiskImage for SnapshotImage {
    fn format_name(&self) -> &'static str {
        "hypersdk-repository"
    }

    fn virtual_size(&self) -> u64 {
        self.index.capacity
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> hypersdk_formats::Result<()> {
        let cs = u64::from(self.index.chunk_size);
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            if at >= self.index.capacity {
                return Err(hypersdk_formats::Error::InvalidInput {
                    format: "hypersdk-repository",
                    what: format!("read at {at} beyond the disk's {} bytes", self.index.capacity),
                });
            }
            let ci = (at / cs) as usize;
            let r = self.index.range(ci);
            let n = ((r.end - at) as usize).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            if self.index.chunks[ci] == ZERO {
                dst.fill(0);
            } else {
                let data = self.chunk(ci).map_err(formats_error)?;
                let from = (at - r.start) as usize;
                dst.copy_from_slice(&data[from..from + n]);
            }
            done += n;
        }
        Ok(())
    }

    fn region(&mut self, offset: u64) -> hypersdk_formats::Result<Region> {
        let cs = u64::from(self.index.chunk_size);
        let first = (offset / cs) as usize;
        let zero = self.index.chunks.get(first).is_some_and(|d| *d == ZERO);
        let mut end = first + 1;
        while end < self.index.chunks.len() && (self.index.chunks[end] == ZERO) == zero && end - first < 16 {
            end += 1;
        }
        let len = self.index.range(end - 1).end - offset;
        Ok(if zero { Region::Zero(len) } else { Region::Data(len) })
    }

    fn decode_is_costly(&self) -> bool {
        true
    }
}

impl Repository {
    /// Writes disk `disk` of `snap` to file `out` in format `to`, under a
    /// temporary name renamed when complete and synced.
    pub async fn restore_disk(&self, snap: &Snapshot, disk: usize, to: TargetFormat, out: &Path, overwrite: bool) -> Result<ConvertStats> {
        let d = snap.disks.get(disk).ok_or_else(|| Error::InvalidArgument(format!("snapshot {} has no disk {disk}", snap.id)))?;
        let index = self.load_index(&d.index).await?;
        if out.exists() && !overwrite {
            return Err(Error::AlreadyExists {
                target: out.display().to_string(),
            });
        }
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let tmp: PathBuf = dir.join(format!(
            ".{}.partial-{}",
            out.file_name().and_then(|n| n.to_str()).unwrap_or("disk"),
            crate::blob::hex(&crate::blob::random::<4>()?)
        ));
        let mut image = SnapshotImage::new(self.clone(), index, tokio::runtime::Handle::current());
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::create(&tmp).map_err(|e| Error::sink("cannot create", tmp.display().to_string(), e))?;
            let r = convert(&mut image, to, file, &ConvertOptions::default(), &mut |_, _| {}).map_err(|source| Error::Format {
                what: format!("cannot write {}", out.display()),
                source,
            });
            let stats = match r {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, &out).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::sink("cannot rename into", out.display().to_string(), e)
            })?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(stats)
        })
        .await
        .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?
    }

    /// Snapshot `snap` as an [`ExportSource`]: give it to
    /// [`Exporter::export_source`](hypersdk_core::Exporter::export_source)
    /// to write an OVA or OVF package of it.
    pub async fn snapshot_source(&self, snap: &Snapshot) -> Result<SnapshotSource> {
        let mut indexes = Vec::new();
        for d in &snap.disks {
            indexes.push(Arc::new(self.load_index(&d.index).await?));
        }
        Ok(SnapshotSource {
            repo: self.clone(),
            spec: snap.spec.clone(),
            indexes,
        })
    }
}

/// A snapshot read as a VM's export ([`Repository::snapshot_source`]).
#[derive(Debug)]
pub struct SnapshotSource {
    repo: Repository,
    spec: VmSpec,
    indexes: Vec<Arc<DiskIndex>>,
}

#[async_trait]
impl ExportSource for SnapshotSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let ix = self
            .indexes
            .get(index)
            .ok_or_else(|| Error::InvalidArgument(format!("no disk {index}")))?
            .clone();
        let cs = u64::from(ix.chunk_size);
        let first = (offset / cs) as usize;
        let repo = self.repo.clone();
        let chunks = (first..ix.chunks.len()).map(move |ci| {
            let (repo, ix) = (repo.clone(), ix.clone());
            async move {
                let r = ix.range(ci);
                let skip = offset.saturating_sub(r.start) as usize;
                let len = (r.end - r.start) as usize;
                let data = if ix.chunks[ci] == ZERO {
                    Bytes::from(vec![0u8; len - skip])
                } else {
                    let data = repo.load_chunk(&ix.chunks[ci]).await?;
                    if data.len() != len {
                        return Err(Error::Integrity {
                            file: crate::blob::chunk_name(&ix.chunks[ci]),
                            detail: format!("holds {} bytes where the index needs {len}", data.len()),
                        });
                    }
                    Bytes::from(data).slice(skip..)
                };
                Ok(data)
            }
        });
        Ok(futures_util::stream::iter(chunks).buffered(READ_AHEAD).boxed())
    }

    async fn allocated_ranges(&self, index: usize) -> Result<Option<Vec<std::ops::Range<u64>>>> {
        let Some(ix) = self.indexes.get(index) else {
            return Ok(None);
        };
        let mut out: Vec<std::ops::Range<u64>> = Vec::new();
        for (ci, d) in ix.chunks.iter().enumerate() {
            if *d == ZERO {
                continue;
            }
            let r = ix.range(ci);
            match out.last_mut() {
                Some(l) if l.end == r.start => l.end = r.end,
                _ => out.push(r),
            }
        }
        Ok(Some(out))
    }
}
