//! Streaming the disks of a local VM.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use async_trait::async_trait;

use hypersdk_core::{BoxError, DiskFormat, DiskStream, Error, ExportSource, Result, VmSpec};
use hypersdk_formats::ova::OvaReader;
use hypersdk_formats::qcow2::Qcow2Reader;
use hypersdk_formats::raw::RawImage;
use hypersdk_formats::vmdk::{SparseExtentReader, VmdkImage};

use crate::package::DiskAt;
use hypersdk_formats::{DiskImage, Region};

/// An export of a local VM: its spec and the image file of each disk.
#[derive(Debug, Clone)]
pub struct LocalSource {
    spec: VmSpec,
    disks: Vec<DiskAt>,
}

impl LocalSource {
    /// A source for `spec` whose disk `i` is stored in `paths[i]`.
    pub fn new(spec: VmSpec, paths: Vec<PathBuf>) -> Self {
        LocalSource {
            spec,
            disks: paths.into_iter().map(DiskAt::File).collect(),
        }
    }

    /// A source for `spec` whose disk `i` lies at `disks[i]` (a file, or a
    /// member of an archive).
    pub fn at(spec: VmSpec, disks: Vec<DiskAt>) -> Self {
        LocalSource { spec, disks }
    }
}

#[async_trait]
impl ExportSource for LocalSource {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, index: usize, offset: u64) -> Result<DiskStream> {
        let (Some(disk), Some(path)) = (self.spec.disks.get(index), self.disks.get(index)) else {
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
        let (at, format) = (path.clone(), disk.format);
        Ok(hypersdk_core::provider::image_stream(
            move || open_disk_image(&at, format),
            disk.capacity,
            offset,
            (self.spec.name.clone(), disk.name.clone(), path.to_string()),
        ))
    }

    /// The image's data regions (qcow2 and VMDK allocation, holes of a
    /// sparse raw file), adjacent ones merged.
    async fn allocated_ranges(&self, index: usize) -> Result<Option<Vec<std::ops::Range<u64>>>> {
        let (Some(disk), Some(path)) = (self.spec.disks.get(index), self.disks.get(index)) else {
            return Err(Error::InvalidArgument(format!(
                "VM '{}' has no disk {index}",
                self.spec.name
            )));
        };
        let (path, format, capacity) = (path.clone(), disk.format, disk.capacity);
        let (vm, name) = (self.spec.name.clone(), disk.name.clone());
        tokio::task::spawn_blocking(move || {
            allocation(&path, format, capacity)
                .map(Some)
                .map_err(|source| Error::DiskRead {
                    vm,
                    disk: name,
                    location: path.to_string(),
                    source,
                })
        })
        .await
        .map_err(|e| Error::Internal(format!("allocation map thread failed: {e}")))?
    }

    fn change_tracking(&self) -> Option<&dyn hypersdk_core::ChangeTracking> {
        Some(self)
    }
}

impl LocalSource {
    /// Disk `index`'s spec and where it lies.
    pub(crate) fn disk(&self, index: usize) -> Result<(&hypersdk_core::DiskSpec, &DiskAt)> {
        match (self.spec.disks.get(index), self.disks.get(index)) {
            (Some(d), Some(at)) => Ok((d, at)),
            _ => Err(Error::InvalidArgument(format!(
                "VM '{}' has no disk {index}",
                self.spec.name
            ))),
        }
    }
}

/// The data regions of the image at `path` (adjacent ones merged).
pub(crate) fn allocation(
    path: &DiskAt,
    format: DiskFormat,
    capacity: u64,
) -> std::result::Result<Vec<std::ops::Range<u64>>, BoxError> {
    let mut image = open_disk_image(path, format)?;
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    let mut pos = 0;
    while pos < capacity {
        let (data, len) = match image.region(pos)? {
            Region::Data(len) => (true, len),
            Region::Zero(len) => (false, len),
        };
        let end = (pos + len).min(capacity);
        if data {
            match ranges.last_mut() {
                Some(last) if last.end == pos => last.end = end,
                _ => ranges.push(pos..end),
            }
        }
        pos = end;
    }
    Ok(ranges)
}

/// Opens the image of a disk in its declared format.
pub(crate) fn open_disk_image(
    at: &DiskAt,
    format: DiskFormat,
) -> std::result::Result<Box<dyn DiskImage>, BoxError> {
    let path = match at {
        DiskAt::File(p) => p.as_path(),
        DiskAt::Member { archive, member } => {
            // A VMDK inside an archive: read in place, within its bounds.
            let file = std::fs::File::open(archive)?;
            let member = OvaReader::open(file)?.member(member)?;
            return Ok(Box::new(SparseExtentReader::open(member)?));
        }
    };
    let file = std::fs::File::open(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err("not a regular file or block device".into());
    }
    Ok(match format {
        DiskFormat::Qcow2 => Box::new(Qcow2Reader::open(file)?),
        DiskFormat::Vmdk => Box::new(VmdkImage::open(path)?),
        _ => Box::new(RawImage::open(file)?),
    })
}

impl std::fmt::Display for DiskAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskAt::File(p) => write!(f, "{}", p.display()),
            DiskAt::Member { archive, member } => write!(f, "{}#{member}", archive.display()),
        }
    }
}
