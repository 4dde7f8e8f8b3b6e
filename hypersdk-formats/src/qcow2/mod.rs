//! qcow2: QEMU copy-on-write disk images (versions 2 and 3).
//!
//! [`Qcow2Writer`] writes sparse v3 images in one pass (see its module for the
//! layout), optionally with compressed clusters.
//!
//! The reader maps guest offsets through the two-level table of the format
//! (docs/interop/qcow2.txt in QEMU):
//!
//! ```text
//! header (big-endian)  magic "QFI\xfb", version, backing file, cluster_bits,
//!                      size, crypt_method, l1_size, l1_table_offset, …,
//!                      v3: incompatible/compatible/autoclear features, header_length,
//!                      compression_type (byte 104, when header_length > 104)
//! L1 table             l1_size × u64: bits 9–55 = offset of an L2 table (0 = unallocated)
//! L2 table             one cluster of u64 entries, one per data cluster:
//!                      bit 62 = compressed; bit 0 = reads as zeros (v3);
//!                      standard: bits 9–55 = host offset of the cluster (0 = unallocated)
//!                      compressed: low x = 62 − (cluster_bits − 8) bits = host offset,
//!                      the next cluster_bits − 8 bits = additional 512-byte sectors
//! ```
//!
//! Unallocated and zero clusters read as zeros without touching the file.
//! Compressed clusters (raw deflate) are inflated. An image with a backing
//! file is refused by [`Qcow2Reader::open`] (reading it alone would show the
//! base's data as zeros); [`Qcow2Reader::open_with_backing`] takes the base,
//! opened by the caller, and reads the chain. Images with encryption, an external data file, extended L2 entries or zstd compression
//! are refused with [`Error::Qcow2Unsupported`](crate::Error::Qcow2Unsupported); structural damage (bad magic,
//! tables outside the file, misaligned offsets, undersized L1) is reported as
//! [`Error::Qcow2Corrupt`](crate::Error::Qcow2Corrupt) with the offset involved.

pub mod bitmap;
mod reader;
mod writer;

pub use bitmap::{dirty_ranges, list_bitmaps, Qcow2Bitmap};
pub use reader::{ClusterMapping, Qcow2Header, Qcow2Reader, Qcow2Snapshot};
pub use writer::{Qcow2Writer, Qcow2WriterOptions};

/// The magic at the start of a qcow2 file.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
