//! Raw disk images: the guest bytes as they are.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

/// A raw image over any `Read + Seek`; the virtual size is the file size.
#[derive(Debug)]
pub struct RawImage<R> {
    file: R,
    size: u64,
}

impl<R: Read + Seek> RawImage<R> {
    /// Opens a raw image.
    pub fn open(mut file: R) -> Result<Self> {
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the raw image size", e))?;
        Ok(RawImage { file, size })
    }
}

impl<R: Read + Seek + Send + std::fmt::Debug> DiskImage for RawImage<R> {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        crate::image::check_read("raw", offset, buf.len(), self.size)?;
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(|e| Error::io(format!("reading raw image at offset {offset:#x}"), e))
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        Ok(Region::Data(self.size.saturating_sub(offset).max(1)))
    }
}

/// Writes a raw image into an empty output, leaving zero runs as holes (the
/// file is extended by seeking, so a sparse-capable file system stores nothing
/// for them). The caller sets the final length (`File::set_len`) so a
/// trailing hole counts.
#[derive(Debug)]
pub struct RawWriter<W> {
    out: W,
    /// Guest bytes accounted for.
    pos: u64,
    /// Where the output's position is.
    cursor: u64,
    capacity: u64,
}

/// Granularity of hole detection.
const SPARSE_BLOCK: usize = 4096;

fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

impl<W: Write + Seek> RawWriter<W> {
    /// A writer of a `capacity`-byte raw image.
    pub fn new(out: W, capacity: u64) -> Self {
        RawWriter {
            out,
            pos: 0,
            cursor: 0,
            capacity,
        }
    }

    /// Appends guest bytes. Aligned 4 KiB blocks of zeros become holes, as
    /// `qemu-img convert` does by default.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check(data.len() as u64)?;
        let mut rest = data;
        while !rest.is_empty() {
            // Up to the next 4 KiB boundary, then whole blocks.
            let first = (SPARSE_BLOCK - (self.pos % SPARSE_BLOCK as u64) as usize).min(rest.len());
            let zero = is_zero(&rest[..first]) && first == SPARSE_BLOCK;
            let mut n = first;
            while n < rest.len() {
                let m = SPARSE_BLOCK.min(rest.len() - n);
                if (m == SPARSE_BLOCK && is_zero(&rest[n..n + m])) != zero {
                    break;
                }
                n += m;
            }
            if zero {
                self.write_zeroes(n as u64)?;
            } else {
                if self.pos != self.cursor {
                    self.out.seek(SeekFrom::Start(self.pos)).map_err(|e| {
                        Error::io(format!("seeking raw image to {:#x}", self.pos), e)
                    })?;
                }
                self.out.write_all(&rest[..n]).map_err(|e| {
                    Error::io(format!("writing raw image at offset {:#x}", self.pos), e)
                })?;
                self.pos += n as u64;
                self.cursor = self.pos;
            }
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Appends `len` zero bytes as a hole (the output must start empty).
    pub fn write_zeroes(&mut self, len: u64) -> Result<()> {
        self.check(len)?;
        self.pos += len;
        Ok(())
    }

    fn check(&self, len: u64) -> Result<()> {
        if self.pos + len > self.capacity {
            return Err(Error::LengthMismatch {
                format: "raw",
                expected: self.capacity,
                actual: self.pos + len,
            });
        }
        Ok(())
    }

    /// Checks the length and returns the output; the caller sets the final file
    /// length (a trailing hole needs `File::set_len`).
    pub fn finish(mut self) -> Result<W> {
        if self.pos != self.capacity {
            return Err(Error::LengthMismatch {
                format: "raw",
                expected: self.capacity,
                actual: self.pos,
            });
        }
        self.out
            .flush()
            .map_err(|e| Error::io("flushing raw image", e))?;
        Ok(self.out)
    }
}
