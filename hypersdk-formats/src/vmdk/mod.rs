//! VMDK: VMware virtual disks.
//!
//! [`VmdkImage`] reads a whole disk: a single sparse file, or a text
//! descriptor ([`parse_descriptor`]) whose FLAT, SPARSE and ZERO extents are
//! other files (monolithicFlat, twoGbMaxExtentSparse/Flat). Delta disks (with
//! a parent) are refused rather than read as if their parent were empty.
//!
//! [`SparseExtentReader`] reads hosted sparse extents: streamOptimized in both
//! layouts (VMware's, with the grain directory found through the footer, and
//! qemu-img's, with it in the header) and monolithicSparse.
//!
//! This module writes the *streamOptimized* sparse extent, the disk format of
//! OVF/OVA packages, in the layout VMware's own tools write (VMware Virtual
//! Disk Format 5.0, "Stream-Optimized Compressed Sparse Extents"):
//!
//! ```text
//! sector 0          SparseExtentHeader, gdOffset = GD_AT_END (0xffff_ffff_ffff_ffff)
//! sector 1..        embedded text descriptor (createType="streamOptimized")
//! sector overHead.. for each non-zero 64 KiB grain, in LBA order:
//!                     grain marker { u64 lba, u32 compressed size } + zlib data,
//!                     padded to a sector
//!                   after the grains of each 512-grain table (32 MiB of guest data):
//!                     GT marker (type 1) + the grain table (512 × u32 sector offsets)
//!                   GD marker (type 2) + the grain directory (u32 sector offset per GT)
//!                   footer marker (type 3) + a copy of the header with the real gdOffset
//!                   end-of-stream marker (type 0)
//! ```
//!
//! All integers are little-endian; a sector is 512 bytes. Grain tables whose
//! grains are all zero are not written and their directory entry is 0, so zero
//! regions cost nothing. Only the grain directory (4 bytes per 32 MiB of disk)
//! is held in memory, so memory does not grow with the data written.

mod descriptor;
mod image;
mod reader;
mod stream;
mod writer;

pub use descriptor::{parse_descriptor, Descriptor, Extent, ExtentKind, MAX_DESCRIPTOR_BYTES};
pub use image::VmdkImage;
pub use reader::{SparseExtentReader, SparseHeader};
pub use stream::{CheckerState, StreamChecker, StreamDecoder, StreamStats, WriterResume};

pub use writer::{StreamOptimizedWriter, VmdkWriterOptions, VmdkWriterStats, MAX_CAPACITY};

/// Bytes in a sector.
pub const SECTOR_SIZE: u64 = 512;
/// Grain size we write, in sectors (64 KiB).
pub const GRAIN_SECTORS: u64 = 128;
/// Grain size we write, in bytes.
pub const GRAIN_SIZE: usize = (GRAIN_SECTORS * SECTOR_SIZE) as usize;
/// Grain table entries per grain table.
pub const GTES_PER_GT: u64 = 512;
/// The `KDMV` magic of a sparse extent header, as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// The gdOffset value meaning "the grain directory is found via the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Header flag: the newline-detection characters are valid.
pub const FLAG_VALID_NEWLINE: u32 = 1 << 0;
/// Header flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: the extent uses stream markers.
pub const FLAG_MARKERS: u32 = 1 << 17;
/// The OVF disk format URI of a streamOptimized VMDK.
pub const STREAM_OPTIMIZED_FORMAT_URI: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";
