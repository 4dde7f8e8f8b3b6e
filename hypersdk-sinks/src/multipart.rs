//! Multipart uploads through `object_store` (S3, Azure Blob): the
//! [`Store`] behind [`crate::s3`] and [`crate::azure`].
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
//! An upload's saved state is its upload id and its finished parts; saving
//! cuts a part exactly where the exporter's resume point is (parts of at
//! least 5 MiB; a save that would make a smaller one is skipped, the next
//! takes it), so continuing keeps whole parts, sends none again and never
//! reads back.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use hypersdk_core::{Error, Result, Upload, UploadState};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

use crate::object::{Finished, Kept, Store, UploadOf};

/// The smallest part a store takes that is not an upload's last (S3, Azure).
pub const MIN_PART: usize = 5 << 20;
/// Bytes an upload keeps in flight.
const IN_FLIGHT_BYTES: usize = 64 << 20;
/// Parts an upload may have (S3).
const MAX_PARTS: usize = 10_000;
/// Bytes an upload keeps back beyond a full part before sending it, so
/// that a save (at a resume point at most one pipeline chunk behind the
/// end) can always cut a part of at least [`MIN_PART`].
const RESERVE: usize = 16 << 20;

/// An `object_store` store that does multipart uploads.
pub(crate) struct Multipart {
    store: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
}

impl Multipart {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, multipart: Arc<dyn MultipartStore>) -> Self {
        Multipart { store, multipart }
    }

    /// A store that is both.
    pub(crate) fn of<T: ObjectStore + MultipartStore>(store: Arc<T>) -> Arc<dyn Store> {
        Arc::new(Multipart::new(store.clone(), store))
    }
}

/// An `object_store` error as an I/O error of the same kind (its message
/// never carries credentials: object_store signs in headers, not URLs).
fn io_error(e: object_store::Error) -> io::Error {
    use io::ErrorKind;
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
        object_store::Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        _ => ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[async_trait]
impl Store for Multipart {
    async fn exists(&self, key: &str) -> io::Result<bool> {
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn list(&self, prefix: Option<&str>) -> io::Result<Vec<(String, u64)>> {
        let prefix = prefix.map(Key::from);
        self.store
            .list(prefix.as_ref())
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(io_error)
    }

    async fn read(
        &self,
        key: &str,
        offset: u64,
        shown: String,
    ) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let opts = object_store::GetOptions {
            range: (offset > 0).then_some(object_store::GetRange::Offset(offset)),
            ..Default::default()
        };
        let got = self
            .store
            .get_opts(&Key::from(key), opts)
            .await
            .map_err(io_error)?;
        let stream = got
            .into_stream()
            .map_err(move |e| io::Error::other(format!("reading {shown}: {e}")));
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        self.store.delete(&Key::from(key)).await.map_err(io_error)
    }

    async fn create(&self, key: &str) -> io::Result<String> {
        self.multipart
            .create_multipart(&Key::from(key))
            .await
            .map_err(io_error)
    }

    async fn abort(&self, key: &str, id: &str) -> io::Result<()> {
        self.multipart
            .abort_multipart(&Key::from(key), &id.to_string())
            .await
            .map_err(io_error)
    }

    async fn upload(&self, of: UploadOf, kept: Option<Kept<'_>>) -> Result<Box<dyn Upload>> {
        let parts = match kept {
            None => Vec::new(),
            Some(k) => {
                let s: Saved = serde_json::from_value(k.saved.clone()).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "saved state of upload {} is not this sink's: {e}",
                        of.name
                    ))
                })?;
                let n = whole_parts(s.parts.iter().map(|p| p.size), k.keep).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "upload {}: {} bytes is not a part boundary (the store keeps whole parts)",
                        of.name, k.keep
                    ))
                })?;
                let mut parts = s.parts;
                parts.truncate(n);
                parts
            }
        };
        Ok(Box::new(ObjectUpload::new(
            self.multipart.clone(),
            of,
            parts,
        )))
    }

    async fn publish(&self, key: &str, id: &str, finished: &Finished) -> io::Result<()> {
        let parts: Vec<PartId> = finished
            .detail
            .get("parts")
            .and_then(|p| p.as_array())
            .ok_or_else(|| io::Error::other("the upload's parts are not recorded"))?
            .iter()
            .map(|p| PartId {
                content_id: p.as_str().unwrap_or_default().to_string(),
            })
            .collect();
        self.multipart
            .complete_multipart(&Key::from(key), &id.to_string(), parts)
            .await
            .map_err(io_error)?;
        Ok(())
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
    multipart: Arc<dyn MultipartStore>,
    of: UploadOf,
    key: Key,
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
            .field("key", &self.of.key)
            .field("flushed", &self.flushed)
            .finish_non_exhaustive()
    }
}

impl ObjectUpload {
    fn new(multipart: Arc<dyn MultipartStore>, of: UploadOf, kept: Vec<SavedPart>) -> ObjectUpload {
        let flushed = kept.iter().map(|p| p.size).sum();
        ObjectUpload {
            multipart,
            key: Key::from(of.key.as_str()),
            of,
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
        self.of.shared.part_size << (index / 2000).min(4)
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
                self.of.shown(),
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
        let (mp, key, id) = (self.multipart.clone(), self.key.clone(), self.of.id.clone());
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
        let part =
            r.map_err(|e| Error::sink("cannot upload a part of", self.of.shown(), io_error(e)))?;
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
            upload_id: self.of.id.clone(),
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
        let parts: Vec<String> = self
            .finished(self.parts.len())?
            .into_iter()
            .map(|p| p.id)
            .collect();
        self.of.finish(size, json!({ "parts": parts }))?;
        Ok(size)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.in_flight.abort_all();
        self.of.abandon().await
    }
}
