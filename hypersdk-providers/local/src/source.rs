//! Streaming the disks of a local VM.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use hypersdk_core::{BoxError, DiskFormat, DiskStream, Error, ExportSource, Result, VmSpec};
use hypersdk_formats::qcow2::Qcow2Reader;

/// Chunk size of disk streams.
const CHUNK: usize = 1 << 20;
/// Chunks buffered ahead of the consumer per disk.
const AHEAD: usize = 4;

/// An export of a local VM: its spec and the image file of each disk.
#[derive(Debug, Clone)]
pub struct LocalSource {
    spec: VmSpec,
    paths: Vec<PathBuf>,
}

impl LocalSource {
    /// A source for `spec` whose disk `i` is stored in `paths[i]`.
    pub fn new(spec: VmSpec, paths: Vec<PathBuf>) -> Self {
        LocalSource { spec, paths }
    }
}

#[async_trait]
impl ExportSource for LocalSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let (Some(disk), Some(path)) = (self.spec.disks.get(index), self.paths.get(index)) else {
            return Err(Error::InvalidArgument(format!(
                "VM '{}' has no disk {index}",
                self.spec.name
            )));
        };
        if offset > disk.capacity {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of disk '{}' ({} bytes)",
                disk.name, disk.capacity
            )));
        }
        let (tx, rx) = mpsc::channel::<Result<Bytes>>(AHEAD);
        let vm = self.spec.name.clone();
        let disk_name = disk.name.clone();
        let path = path.clone();
        let format = disk.format;
        let capacity = disk.capacity;
        tokio::task::spawn_blocking(move || {
            let to_err = |source: BoxError| Error::DiskRead {
                vm: vm.clone(),
                disk: disk_name.clone(),
                location: path.display().to_string(),
                source,
            };
            if let Err(e) = pump(&path, format, capacity, offset, &tx) {
                let _ = tx.blocking_send(Err(to_err(e)));
            }
        });
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        )))
    }
}

/// Reads `[offset, capacity)` of the image in chunks into `tx`. Returns early,
/// without error, if the receiver goes away.
fn pump(
    path: &PathBuf,
    format: DiskFormat,
    capacity: u64,
    offset: u64,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> std::result::Result<(), BoxError> {
    let mut file = std::fs::File::open(path)?;
    let mut pos = offset;
    match format {
        DiskFormat::Qcow2 => {
            let mut reader = Qcow2Reader::open(file)?;
            if reader.virtual_size() != capacity {
                return Err(format!(
                    "image changed: virtual size is now {}, was {capacity}",
                    reader.virtual_size()
                )
                .into());
            }
            while pos < capacity {
                let n = (capacity - pos).min(CHUNK as u64) as usize;
                let mut buf = BytesMut::zeroed(n);
                reader.read_at(pos, &mut buf)?;
                pos += n as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return Ok(());
                }
            }
        }
        _ => {
            file.seek(SeekFrom::Start(offset))?;
            while pos < capacity {
                let n = (capacity - pos).min(CHUNK as u64) as usize;
                let mut buf = BytesMut::zeroed(n);
                let mut filled = 0;
                while filled < n {
                    let r = file.read(&mut buf[filled..])?;
                    if r == 0 {
                        return Err(format!(
                            "file ended at byte {}, expected {capacity}",
                            pos + filled as u64
                        )
                        .into());
                    }
                    filled += r;
                }
                pos += n as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
