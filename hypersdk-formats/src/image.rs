//! Disk images as guest-visible byte ranges, whatever their container format.
//!
//! A [`DiskImage`] reads guest bytes at any offset and says, for any offset,
//! how far the surrounding region is known to read as zeros without reading
//! it, so conversions skip unallocated space instead of inflating it.

use crate::error::Result;

/// What a region of a disk image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// Stored data (which may still happen to be zeros): `len` bytes from the offset.
    Data(u64),
    /// Reads as zeros without touching the file: `len` bytes from the offset.
    Zero(u64),
}

/// Random-access reading of a disk image's guest-visible contents.
pub trait DiskImage: std::fmt::Debug + Send {
    /// The container format's name, e.g. "qcow2".
    fn format_name(&self) -> &'static str;

    /// Guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// Fills `buf` with guest bytes from `offset`; reading past the virtual size fails.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// The region starting at `offset` (< virtual size): its kind and length,
    /// which never crosses the virtual size and is at least 1.
    fn region(&mut self, offset: u64) -> Result<Region>;

    /// Whether reading costs real CPU (decompression), so that reading on a
    /// thread of its own pays off.
    fn decode_is_costly(&self) -> bool {
        false
    }
}

/// Checks that a read of `len` bytes at `offset` stays within a disk of
/// `size` bytes.
pub(crate) fn check_read(format: &'static str, offset: u64, len: usize, size: u64) -> Result<()> {
    if offset.checked_add(len as u64).is_none_or(|e| e > size) {
        return Err(crate::Error::InvalidInput {
            format,
            what: format!("read of {len} bytes at {offset:#x} exceeds the virtual size {size}"),
        });
    }
    Ok(())
}

/// The capacity of a disk of `size` bytes in formats that count whole
/// 512-byte sectors (VMDK, qcow2, VHD): rounded up, at least one sector.
pub fn sector_capacity(size: u64) -> u64 {
    size.next_multiple_of(512).max(512)
}

/// Longest run [`merge_regions`] reports at once.
const MAX_REGION: u64 = 64 << 20;

/// The region at `offset` of a disk of `size` bytes whose allocation unit is
/// `unit` bytes (cluster, grain, block): neighbouring units of the same kind
/// (as `is_zero(unit_offset)` says) are merged, up to 64 MiB.
pub(crate) fn merge_regions(
    offset: u64,
    size: u64,
    unit: u64,
    mut is_zero: impl FnMut(u64) -> Result<bool>,
) -> Result<Region> {
    if offset >= size {
        return Err(crate::Error::InvalidInput {
            format: "disk image",
            what: format!("offset {offset:#x} is past the virtual size {size}"),
        });
    }
    let zero = is_zero(offset)?;
    let mut end = (offset / unit + 1) * unit;
    while end < size && end - offset < MAX_REGION && is_zero(end)? == zero {
        end += unit;
    }
    let len = end.min(size) - offset;
    Ok(if zero {
        Region::Zero(len)
    } else {
        Region::Data(len)
    })
}

/// Seeks to `offset` and fills `buf`; a short file becomes the format's
/// corruption error (`corrupt(offset, what)`), other failures an I/O error.
pub(crate) fn read_exact_at<R: std::io::Read + std::io::Seek>(
    file: &mut R,
    offset: u64,
    buf: &mut [u8],
    what: &str,
    corrupt: fn(u64, String) -> crate::Error,
) -> Result<()> {
    use std::io::SeekFrom;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                corrupt(
                    offset,
                    format!("file ends while {what} ({} bytes)", buf.len()),
                )
            } else {
                crate::Error::io(format!("{what} at offset {offset:#x}"), e)
            }
        })
}

/// The container format of a disk image file, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageFormat {
    /// qcow2 (`QFI\xfb`).
    Qcow2,
    /// A hosted sparse VMDK extent (`KDMV`): streamOptimized or monolithicSparse.
    VmdkSparse,
    /// A VMDK text descriptor (`# Disk DescriptorFile`), whose data is in other files.
    VmdkDescriptor,
    /// VHD (`conectix` footer copy at the start of a dynamic disk, or the
    /// footer at the end of a fixed one).
    Vhd,
    /// VHDX (`vhdxfile` at the start).
    Vhdx,
    /// Anything else is read as raw.
    Raw,
}

/// Detects the format of `head`, the first bytes of a file (at least 21 to
/// recognise a VMDK descriptor).
pub fn detect_format(head: &[u8]) -> ImageFormat {
    if head.starts_with(b"QFI\xfb") {
        ImageFormat::Qcow2
    } else if head.starts_with(b"KDMV") {
        ImageFormat::VmdkSparse
    } else if head.starts_with(b"# Disk DescriptorFile") {
        ImageFormat::VmdkDescriptor
    } else if head.starts_with(crate::vhdx::FILE_SIGNATURE) {
        ImageFormat::Vhdx
    } else if head.starts_with(b"conectix") {
        ImageFormat::Vhd
    } else {
        ImageFormat::Raw
    }
}

/// Opens the disk image at `path`, detecting its format.
pub fn open_image(path: &std::path::Path) -> Result<Box<dyn DiskImage>> {
    use std::io::Read;
    let ctx = |e| crate::Error::io(format!("opening {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(ctx)?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]).map_err(ctx)? {
            0 => break,
            r => n += r,
        }
    }
    let mut format = detect_format(&head[..n]);
    if format == ImageFormat::Raw {
        // A fixed VHD carries its footer only at the end.
        use std::io::{Seek, SeekFrom};
        let mut tail = [0u8; 8];
        let len = file.seek(SeekFrom::End(0)).map_err(ctx)?;
        if len >= 1024
            && file
                .seek(SeekFrom::Start(len - 512))
                .and_then(|_| file.read_exact(&mut tail))
                .is_ok()
            && &tail == b"conectix"
        {
            format = ImageFormat::Vhd;
        }
    }
    Ok(match format {
        ImageFormat::Vhd => Box::new(crate::vhd::VhdReader::open(file)?),
        ImageFormat::Vhdx => {
            let r = crate::vhdx::VhdxReader::open(file)?;
            if let Some(l) = r.parent_locator() {
                return Err(crate::Error::VhdxUnsupported(format!(
                    "{} is a differencing disk; its parent is {}: export the merged chain (Hyper-V: Merge-VHD or Convert-VHD) or read it through the library with its parent",
                    path.display(),
                    crate::error::display_name(l.path().unwrap_or("not recorded"))
                )));
            }
            Box::new(r)
        }
        ImageFormat::Qcow2 => Box::new(crate::qcow2::Qcow2Reader::open(file)?),
        ImageFormat::VmdkSparse | ImageFormat::VmdkDescriptor => {
            Box::new(crate::vmdk::VmdkImage::open(path)?)
        }
        ImageFormat::Raw => Box::new(crate::raw::RawImage::open(file)?),
    })
}
