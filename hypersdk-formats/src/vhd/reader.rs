//! VHD reader: fixed and dynamic disks.

use std::io::{Read, Seek, SeekFrom};

use super::{checksum, Footer, DYNAMIC_COOKIE};
use crate::endian::{be32, be64};
use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

/// Largest BAT read into memory (entries): 16 M blocks.
const MAX_BAT_ENTRIES: u64 = 1 << 24;
const UNALLOCATED: u32 = u32::MAX;

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::VhdCorrupt {
        offset,
        what: what.into(),
    }
}

#[derive(Debug)]
enum Kind {
    Fixed,
    Dynamic {
        block_size: u64,
        bat: Vec<u32>,
        bitmap_bytes: u64,
    },
}

/// Reads the guest contents of a fixed or dynamic VHD.
///
/// Memory: the block allocation table (4 bytes per block, 2 KiB per GiB with
/// the default 2 MiB blocks) and one block's sector bitmap.
#[derive(Debug)]
pub struct VhdReader<R> {
    file: R,
    file_len: u64,
    size: u64,
    kind: Kind,
    bitmap: Option<(u32, Vec<u8>)>,
}

impl<R: Read + Seek> VhdReader<R> {
    /// Opens a VHD: footer, and for dynamic disks the header and BAT.
    pub fn open(mut file: R) -> Result<Self> {
        let file_len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the VHD size", e))?;
        if file_len < 512 {
            return Err(corrupt(
                0,
                format!("file of {file_len} bytes is too short for a VHD footer"),
            ));
        }
        let mut f = [0u8; 512];
        let at = file_len - 512;
        read_exact_at(&mut file, at, &mut f, "reading the VHD footer")?;
        // Some tools wrote 511-byte footers; accept only the standard form.
        let footer = Footer::parse(&f).map_err(|(off, what)| corrupt(at + off, what))?;
        let (size, disk_type) = (footer.size, footer.disk_type);
        let kind = match disk_type {
            2 => {
                if size > file_len - 512 {
                    return Err(corrupt(
                        at + 48,
                        format!("fixed disk of {size} bytes in a {file_len}-byte file"),
                    ));
                }
                Kind::Fixed
            }
            3 => {
                let hdr_at = footer.data_offset;
                let mut h = [0u8; 1024];
                if hdr_at.checked_add(1024).is_none_or(|e| e > file_len) {
                    return Err(corrupt(
                        at + 16,
                        format!("dynamic header offset {hdr_at:#x} is outside the file"),
                    ));
                }
                read_exact_at(&mut file, hdr_at, &mut h, "reading the VHD dynamic header")?;
                if &h[0..8] != DYNAMIC_COOKIE {
                    return Err(corrupt(hdr_at, "no \"cxsparse\" dynamic header"));
                }
                let stored = be32(&h, 36);
                if checksum(&h, 36) != stored {
                    return Err(corrupt(
                        hdr_at + 36,
                        "dynamic header checksum does not match",
                    ));
                }
                let bat_at = be64(&h, 16);
                let entries = u64::from(be32(&h, 28));
                let block_size = u64::from(be32(&h, 32));
                if block_size < 512 || !block_size.is_power_of_two() || block_size > (256 << 20) {
                    return Err(corrupt(
                        hdr_at + 32,
                        format!(
                            "block size {block_size} is not a power of two from 512 B to 256 MiB"
                        ),
                    ));
                }
                let needed = size.div_ceil(block_size);
                if entries < needed || entries > MAX_BAT_ENTRIES {
                    return Err(corrupt(hdr_at + 28, format!("{entries} table entries cannot map {size} bytes ({needed} needed, at most {MAX_BAT_ENTRIES})")));
                }
                if bat_at.checked_add(needed * 4).is_none_or(|e| e > file_len) {
                    return Err(corrupt(
                        hdr_at + 16,
                        format!("block table at {bat_at:#x} lies outside the file"),
                    ));
                }
                let mut raw = vec![0u8; (needed * 4) as usize];
                read_exact_at(&mut file, bat_at, &mut raw, "reading the VHD block table")?;
                let bat = raw.chunks_exact(4).map(|c| be32(c, 0)).collect();
                let bitmap_bytes = (block_size / 512).div_ceil(8).next_multiple_of(512);
                Kind::Dynamic {
                    block_size,
                    bat,
                    bitmap_bytes,
                }
            }
            4 => {
                return Err(Error::VhdUnsupported(
                    "differencing disk (needs its parent); export the merged chain".into(),
                ))
            }
            t => {
                return Err(corrupt(
                    at + 60,
                    format!("disk type {t} (2 fixed, 3 dynamic, 4 differencing)"),
                ))
            }
        };
        Ok(VhdReader {
            file,
            file_len,
            size,
            kind,
            bitmap: None,
        })
    }

    /// Whether the disk is fixed (else dynamic).
    pub fn is_fixed(&self) -> bool {
        matches!(self.kind, Kind::Fixed)
    }

    /// The file offset of block `b`'s sector bitmap, or None if unallocated.
    fn block(&self, b: u64) -> Result<Option<u64>> {
        let Kind::Dynamic {
            bat,
            block_size,
            bitmap_bytes,
        } = &self.kind
        else {
            return Ok(None);
        };
        let entry = bat.get(b as usize).copied().unwrap_or(UNALLOCATED);
        if entry == UNALLOCATED {
            return Ok(None);
        }
        let at = u64::from(entry) * 512;
        if at + bitmap_bytes + block_size > self.file_len - 512 {
            return Err(corrupt(
                at,
                format!(
                    "block {b} at {at:#x} runs past the data area of the {}-byte file",
                    self.file_len
                ),
            ));
        }
        Ok(Some(at))
    }
}

impl<R: Read + Seek + Send + std::fmt::Debug> DiskImage for VhdReader<R> {
    fn format_name(&self) -> &'static str {
        "vhd"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        crate::image::check_read("VHD", offset, buf.len(), self.size)?;
        let (block_size, bitmap_bytes) = match &self.kind {
            Kind::Fixed => return read_exact_at(&mut self.file, offset, buf, "reading VHD data"),
            Kind::Dynamic {
                block_size,
                bitmap_bytes,
                ..
            } => (*block_size, *bitmap_bytes),
        };
        while !buf.is_empty() {
            let b = offset / block_size;
            let within = offset % block_size;
            let n = ((block_size - within) as usize).min(buf.len());
            let (chunk, rest) = buf.split_at_mut(n);
            match self.block(b)? {
                None => chunk.fill(0),
                Some(at) => {
                    if self.bitmap.as_ref().map(|(k, _)| u64::from(*k)) != Some(b) {
                        let mut bm = vec![0u8; bitmap_bytes as usize];
                        read_exact_at(&mut self.file, at, &mut bm, "reading a VHD sector bitmap")?;
                        self.bitmap = Some((b as u32, bm));
                    }
                    // Runs of sectors present (bit set) are read; the rest are zeros.
                    let mut i = 0usize;
                    while i < n {
                        let sector = (within as usize + i) / 512;
                        let present = self
                            .bitmap
                            .as_ref()
                            .is_some_and(|(_, bm)| bm[sector / 8] & (0x80 >> (sector % 8)) != 0);
                        let sector_end = ((sector + 1) * 512 - within as usize).min(n);
                        let mut j = sector_end;
                        while j < n {
                            let s = (within as usize + j) / 512;
                            let p = self
                                .bitmap
                                .as_ref()
                                .is_some_and(|(_, bm)| bm[s / 8] & (0x80 >> (s % 8)) != 0);
                            if p != present {
                                break;
                            }
                            j = ((s + 1) * 512 - within as usize).min(n);
                        }
                        if present {
                            read_exact_at(
                                &mut self.file,
                                at + bitmap_bytes + within + i as u64,
                                &mut chunk[i..j],
                                "reading VHD block data",
                            )?;
                        } else {
                            chunk[i..j].fill(0);
                        }
                        i = j;
                    }
                }
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        let block_size = match &self.kind {
            Kind::Fixed => return Ok(Region::Data(self.size.saturating_sub(offset).max(1))),
            Kind::Dynamic { block_size, .. } => *block_size,
        };
        let size = self.size;
        crate::image::merge_regions(offset, size, block_size, |o| {
            Ok(self.block(o / block_size)?.is_none())
        })
    }
}

fn read_exact_at<R: Read + Seek>(
    file: &mut R,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<()> {
    crate::image::read_exact_at(file, offset, buf, what, corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhd::VhdFixedWriter;
    use std::io::Cursor;

    #[test]
    fn fixed_round_trip_and_damage() {
        let mut data = vec![0u8; 3 << 20];
        data[12345] = 7;
        let mut w =
            VhdFixedWriter::new(Cursor::new(Vec::new()), data.len() as u64, [1; 16]).unwrap();
        w.write(&data[..1 << 20]).unwrap();
        w.write_zeroes(1 << 20).unwrap();
        w.write(&data[2 << 20..]).unwrap();
        let out = w.finish().unwrap().into_inner();
        assert_eq!(out.len(), (3 << 20) + 512);
        let mut r = VhdReader::open(Cursor::new(out.clone())).unwrap();
        assert!(r.is_fixed());
        let mut got = vec![1u8; 3 << 20];
        r.read_at(0, &mut got).unwrap();
        assert!(got == data);
        let mut bad = out.clone();
        let n = bad.len();
        bad[n - 300] ^= 1;
        assert!(VhdReader::open(Cursor::new(bad))
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(VhdReader::open(Cursor::new(out[..1000].to_vec())).is_err());
    }
}
