//! Fixed VHD writer.

use std::io::{Seek, SeekFrom, Write};

use super::{checksum, geometry, FOOTER_COOKIE};
use crate::error::{Error, Result};

/// Writes a fixed VHD: the guest bytes as they are, then the footer. Zero runs
/// passed to [`write_zeroes`](Self::write_zeroes) become holes, so the file is
/// sparse where the file system allows.
#[derive(Debug)]
pub struct VhdFixedWriter<W> {
    out: W,
    size: u64,
    pos: u64,
    cursor: u64,
    unique_id: [u8; 16],
}

impl<W: Write + Seek> VhdFixedWriter<W> {
    /// A fixed VHD of `size` guest bytes (a multiple of 512; Azure also wants
    /// a multiple of 1 MiB). `unique_id` identifies the disk.
    pub fn new(out: W, size: u64, unique_id: [u8; 16]) -> Result<Self> {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(Error::InvalidInput {
                format: "VHD",
                what: format!("size {size} is not a positive multiple of 512"),
            });
        }
        if size > 2040 << 30 {
            return Err(Error::InvalidInput {
                format: "VHD",
                what: format!("size {size} exceeds the VHD limit of 2040 GiB"),
            });
        }
        Ok(VhdFixedWriter {
            out,
            size,
            pos: 0,
            cursor: 0,
            unique_id,
        })
    }

    fn check(&self, len: u64) -> Result<()> {
        if self.pos + len > self.size {
            return Err(Error::LengthMismatch {
                format: "VHD",
                expected: self.size,
                actual: self.pos + len,
            });
        }
        Ok(())
    }

    /// Appends guest bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check(data.len() as u64)?;
        if self.cursor != self.pos {
            self.out
                .seek(SeekFrom::Start(self.pos))
                .map_err(|e| Error::io("seeking in the VHD", e))?;
        }
        self.out
            .write_all(data)
            .map_err(|e| Error::io(format!("writing VHD data at {:#x}", self.pos), e))?;
        self.pos += data.len() as u64;
        self.cursor = self.pos;
        Ok(())
    }

    /// Appends `len` zero bytes as a hole (the output must start empty).
    pub fn write_zeroes(&mut self, len: u64) -> Result<()> {
        self.check(len)?;
        self.pos += len;
        Ok(())
    }

    /// Writes the footer; fails unless exactly `size` bytes were fed.
    pub fn finish(mut self) -> Result<W> {
        if self.pos != self.size {
            return Err(Error::LengthMismatch {
                format: "VHD",
                expected: self.size,
                actual: self.pos,
            });
        }
        let footer = footer(self.size, self.unique_id);
        if self.cursor != self.pos {
            self.out
                .seek(SeekFrom::Start(self.pos))
                .map_err(|e| Error::io("seeking in the VHD", e))?;
        }
        self.out
            .write_all(&footer)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io("writing the VHD footer", e))?;
        Ok(self.out)
    }
}

/// The footer of a fixed disk of `size` bytes.
pub(crate) fn footer(size: u64, unique_id: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(FOOTER_COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // fixed: no dynamic header
    let since_2000 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().saturating_sub(946_684_800))
        .unwrap_or(0) as u32;
    f[24..28].copy_from_slice(&since_2000.to_be_bytes());
    // Creator application: readers use it to choose between the CHS geometry
    // and the current-size field for the disk size. "win " (Hyper-V) makes
    // QEMU, Hyper-V and Azure all take the exact current size; any other
    // value makes QEMU round the size down to the geometry.
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed
    f[68..84].copy_from_slice(&unique_id);
    let sum = checksum(&f, 64);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}
