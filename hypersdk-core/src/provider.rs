//! Providers: one per platform. They describe VMs and open their disks as byte
//! streams; they never write files, hash or package.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::Result;
use crate::vm::{VmInfo, VmQuery, VmSpec};
use crate::vmops::VmOps;

/// The guest-visible bytes of one disk, in order, in chunks of any size.
/// The stream ends after exactly the disk's capacity (from the opening offset).
pub type DiskStream = BoxStream<'static, Result<Bytes>>;

/// A platform that holds VMs.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Short name, e.g. "local" or "vsphere".
    fn name(&self) -> &str;

    /// Every VM the provider can see.
    async fn list_vms(&self) -> Result<Vec<VmInfo>>;

    /// VMs matching `query`. The default filters [`list_vms`](Self::list_vms);
    /// providers with server-side search override it.
    async fn search_vms(&self, query: &VmQuery) -> Result<Vec<VmInfo>> {
        Ok(self
            .list_vms()
            .await?
            .into_iter()
            .filter(|vm| query.matches(vm))
            .collect())
    }

    /// The full description of one VM, by name or id.
    async fn vm_spec(&self, vm: &str) -> Result<VmSpec>;

    /// Prepares an export of one VM (a snapshot, lease or export task, as the
    /// platform needs) and returns its source.
    async fn open_export(&self, vm: &str) -> Result<Box<dyn ExportSource>>;

    /// Opens the export of `vm` an interrupted run began, from the token
    /// its source gave ([`ExportSource::resume_token`], kept in the
    /// checkpoint): the same snapshots, so that the bytes already written
    /// and the rest come from one point in time, and nothing the first run
    /// made is left behind. An error when they are gone. The default
    /// ignores the token and opens a new export: for sources whose data
    /// does not change under them (files, a powered-off VM's disks).
    async fn resume_export(&self, vm: &str, token: &str) -> Result<Box<dyn ExportSource>> {
        let _ = token;
        self.open_export(vm).await
    }

    /// Snapshots, power and CD-ROM operations, when the platform offers
    /// them (see [`VmOps`]). The default: None.
    fn vm_ops(&self) -> Option<&dyn VmOps> {
        None
    }

    /// Ends the provider's session on the platform (a vSphere logout).
    /// The default does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// One VM being exported: its description and its disks as streams.
#[async_trait]
pub trait ExportSource: Send + Sync + std::fmt::Debug {
    /// The VM's hardware, with one entry per disk in `disks`.
    fn spec(&self) -> &VmSpec;

    /// What a later run needs to open this same source again after this
    /// process dies ([`Provider::resume_export`]): the ids of the
    /// snapshots it made, say. Saved in the export's checkpoint, so never a
    /// secret (no SAS, no session). The default: None, nothing to reopen.
    fn resume_token(&self) -> Option<String> {
        None
    }

    /// Opens disk `index` (into `spec().disks`) for reading its guest
    /// bytes from byte `offset`. The default decodes what
    /// [`open_served`](Self::open_served) gives (see [`crate::served`]),
    /// from the first byte, dropping what lies before `offset`; sources
    /// that can seek in guest bytes override it.
    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let spec = self.spec();
        let disk = spec
            .disks
            .get(index)
            .ok_or_else(|| crate::Error::InvalidArgument(format!("no disk {index}")))?;
        let (Some(format), Some(served)) =
            (self.served_format(index), self.open_served(index, 0).await?)
        else {
            return Err(crate::Error::Internal(format!(
                "the source of VM '{}' serves disk '{}' neither as guest bytes nor in a format it names",
                spec.name, disk.name
            )));
        };
        let guest = crate::served::guest_bytes(
            format,
            served,
            disk.capacity,
            (&spec.name, &disk.name, &disk.location),
        );
        Ok(skip_bytes(guest, offset))
    }

    /// The encoding the platform serves disk `index` in, if it serves one
    /// ([`open_served`](Self::open_served)). The default: None, guest
    /// bytes only.
    fn served_format(&self, index: usize) -> Option<crate::served::ServedFormat> {
        let _ = index;
        None
    }

    /// Disk `index` as the platform serves it ([`served_format`](Self::served_format)),
    /// from byte `offset` of that encoding (to resume a download). The
    /// Exporter stores a streamOptimized VMDK as it arrives, checking its
    /// structure, unless asked to re-encode; other formats it decodes. The
    /// default, None, means only guest bytes are available.
    async fn open_served(&self, index: usize, offset: u64) -> Result<Option<DiskStream>> {
        let _ = (index, offset);
        Ok(None)
    }

    /// The byte ranges of disk `index` that hold data (sorted, disjoint,
    /// within the capacity; bytes outside them read as zeros), when the
    /// platform can tell (allocation maps, EBS block lists, page ranges):
    /// for sparse reads, and the first of an incremental chain. None: not
    /// known.
    async fn allocated_ranges(&self, index: usize) -> Result<Option<Vec<std::ops::Range<u64>>>> {
        let _ = index;
        Ok(None)
    }

    /// Changed-block tracking of this source's disks, when the platform
    /// offers it (see [`crate::tracking`]). The default: None, and an
    /// incremental backup reads every allocated byte and deduplicates.
    fn change_tracking(&self) -> Option<&dyn crate::tracking::ChangeTracking> {
        None
    }

    /// Releases whatever the export holds on the platform (lease, snapshot,
    /// task). Called on every path, success, failure or cancellation.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// [`close`](Self::close), told whether the export succeeded, for
    /// platforms that report the outcome (a vSphere lease is completed or
    /// aborted). The Exporter calls this one; the default calls `close`.
    async fn close_after(&self, succeeded: bool) -> Result<()> {
        let _ = succeeded;
        self.close().await
    }

    /// Called instead of [`close_after`](Self::close_after) when the export
    /// failed and its partial export, with this source's
    /// [`resume_token`](Self::resume_token), was kept for a resume
    /// (interrupted, cancelled, a lost connection): release what the
    /// platform holds for the transfer, but keep what
    /// [`Provider::resume_export`] reopens (a snapshot), so the resumed
    /// export reads the same point in time. The resumed export's close
    /// removes it. The default: `close_after(false)`.
    async fn close_kept(&self) -> Result<()> {
        self.close_after(false).await
    }
}

/// `stream` without its first `n` bytes: for sources that can only read a
/// disk from its start (a decoded download) and are asked for an offset.
/// The skipped bytes are still read; say so where it costs.
pub fn skip_bytes(stream: DiskStream, n: u64) -> DiskStream {
    use futures_util::StreamExt;
    if n == 0 {
        return stream;
    }
    Box::pin(
        stream
            .scan(n, |left, chunk| {
                let out = match chunk {
                    Ok(mut b) if *left > 0 => {
                        let cut = (*left).min(b.len() as u64) as usize;
                        *left -= cut as u64;
                        Ok(b.split_off(cut))
                    }
                    other => other,
                };
                std::future::ready(Some(out))
            })
            .filter(|c| std::future::ready(!matches!(c, Ok(b) if b.is_empty()))),
    )
}

/// Bytes of one chunk of [`image_stream`].
const IMAGE_CHUNK: usize = 1 << 20;
/// Chunks [`image_stream`] reads ahead of its consumer.
const IMAGE_AHEAD: usize = 4;
static IMAGE_ZEROS: [u8; IMAGE_CHUNK] = [0; IMAGE_CHUNK];

/// The guest bytes, from byte `offset`, of the disk image that `open`
/// opens on a blocking thread (a local file, a file over SFTP, …): data
/// regions read in 1 MiB chunks, zero regions handed on as shared zeros
/// without reading, at most 4 chunks ahead of the consumer. The image must
/// still be `capacity` bytes. Errors name disk `disk` of VM `vm` at
/// `location`.
pub fn image_stream<F>(
    open: F,
    capacity: u64,
    offset: u64,
    (vm, disk, location): (String, String, String),
) -> DiskStream
where
    F: FnOnce() -> std::result::Result<Box<dyn hypersdk_formats::DiskImage>, crate::BoxError>
        + Send
        + 'static,
{
    use bytes::BytesMut;
    use hypersdk_formats::Region;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(IMAGE_AHEAD);
    tokio::task::spawn_blocking(move || {
        let pump = || -> std::result::Result<(), crate::BoxError> {
            let mut image = open()?;
            if image.virtual_size() != capacity {
                return Err(format!(
                    "image changed: its size is now {}, was {capacity}",
                    image.virtual_size()
                )
                .into());
            }
            let mut pos = offset;
            while pos < capacity {
                let chunk = match image.region(pos)? {
                    Region::Zero(len) => {
                        let n = len.min(capacity - pos).min(IMAGE_CHUNK as u64) as usize;
                        Bytes::from_static(&IMAGE_ZEROS[..n])
                    }
                    Region::Data(len) => {
                        let n = len.min(capacity - pos).min(IMAGE_CHUNK as u64) as usize;
                        let mut buf = BytesMut::zeroed(n);
                        image.read_at(pos, &mut buf)?;
                        buf.freeze()
                    }
                };
                pos += chunk.len() as u64;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        };
        if let Err(source) = pump() {
            let _ = tx.blocking_send(Err(crate::Error::DiskRead {
                vm,
                disk,
                location,
                source,
            }));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn skip_bytes_drops_exactly_the_prefix() {
        for (n, want) in [
            (0, "abcdefgh"),
            (2, "cdefgh"),
            (3, "defgh"),
            (6, "gh"),
            (8, ""),
            (9, ""),
        ] {
            let chunks: Vec<Result<Bytes>> = ["abc", "defg", "h"]
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect();
            let s: DiskStream = Box::pin(futures_util::stream::iter(chunks));
            let got: Vec<u8> = skip_bytes(s, n).map(|c| c.unwrap().to_vec()).concat().await;
            assert_eq!(String::from_utf8(got).unwrap(), want, "skip {n}");
        }
    }
}
