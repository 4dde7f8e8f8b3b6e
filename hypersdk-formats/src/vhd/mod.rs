//! VHD: Microsoft Virtual Hard Disk (the Azure and Hyper-V generation 1 format).
//!
//! Layout (all integers big-endian), from the VHD specification:
//!
//! ```text
//! fixed:    guest data (current size bytes) | footer (512 bytes)
//! dynamic:  footer copy | dynamic header (1024 bytes) | BAT | blocks… | footer
//!
//! footer:   "conectix", features, version 0x00010000, data offset (dynamic
//!           header, or all ones for fixed), timestamp (s since 2000-01-01),
//!           creator app/version/host, original size, current size,
//!           geometry (C u16, H u8, S u8), disk type (2 fixed, 3 dynamic,
//!           4 differencing), checksum (one's complement of the byte sum with
//!           the checksum field zero), unique id, saved state
//! dynamic header: "cxsparse", table offset (BAT), version, max table entries,
//!           block size (2 MiB by default), checksum, parent fields
//! BAT:      one u32 per block: sector offset of the block, or 0xFFFFFFFF
//! block:    sector bitmap (1 bit per sector, padded to 512 bytes) + data
//! ```
//!
//! [`VhdReader`] reads fixed and dynamic disks (differencing disks need their
//! parent and are refused); [`VhdFixedWriter`] writes fixed disks.

mod reader;
mod writer;

pub use reader::VhdReader;
pub use writer::VhdFixedWriter;

/// The footer cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The dynamic header cookie.
pub const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";

/// What a footer says that every reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// The guest size in bytes (current size).
    pub size: u64,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// The dynamic header's offset (all ones for a fixed disk).
    pub data_offset: u64,
}

impl Footer {
    /// Checks a 512-byte footer (cookie, checksum, a positive size that is
    /// a multiple of 512); the error says which check failed and at which
    /// byte of the footer.
    pub fn parse(f: &[u8; 512]) -> std::result::Result<Footer, (u64, String)> {
        use crate::endian::{be32, be64};
        let be32 = |at: usize| be32(f, at);
        let be64 = |at: usize| be64(f, at);
        if &f[0..8] != FOOTER_COOKIE {
            return Err((0, "no \"conectix\" footer at the end of the file".into()));
        }
        let stored = be32(64);
        if checksum(f, 64) != stored {
            return Err((
                64,
                format!(
                    "footer checksum {stored:#x} does not match {:#x}",
                    checksum(f, 64)
                ),
            ));
        }
        let size = be64(48);
        if size == 0 || !size.is_multiple_of(512) {
            return Err((
                48,
                format!("current size {size} is not a positive multiple of 512"),
            ));
        }
        Ok(Footer {
            size,
            disk_type: be32(60),
            data_offset: be64(16),
        })
    }
}

/// The footer checksum: one's complement of the sum of all bytes, the
/// checksum field (bytes `at..at + 4`) counted as zero.
pub fn checksum(bytes: &[u8], at: usize) -> u32 {
    let sum: u32 = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(at..at + 4).contains(i))
        .map(|(_, &b)| u32::from(b))
        .fold(0u32, u32::wrapping_add);
    !sum
}

/// CHS geometry for `size` bytes, as the VHD specification computes it:
/// (cylinders, heads, sectors per track).
pub fn geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads).min(65535) as u16, heads as u8, spt as u8)
}
