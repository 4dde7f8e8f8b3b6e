//! Reader of hosted sparse extents: streamOptimized (both the VMware layout
//! with the grain directory found through the footer, and qemu-img's with the
//! directory in the header) and monolithicSparse.

use std::io::{Read, Seek, SeekFrom};

use flate2::{Decompress, FlushDecompress, Status};

use super::*;
use crate::endian::{le32, le64};
use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

/// Largest grain accepted: 1 MiB (VMware uses 64 KiB).
const MAX_GRAIN_SECTORS: u64 = 2048;
/// Bytes read ahead when a grain is not in the window.
const READ_AHEAD: usize = 1 << 20;
/// Largest grain directory read into memory.
const MAX_GD_BYTES: u64 = 64 << 20;
/// Header flag: zeroed-grain GTEs (entry value 1) are used.
const FLAG_ZEROED_GTE: u32 = 1 << 2;

/// The fields of a sparse extent header this reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Version: 1, 2 or 3.
    pub version: u32,
    /// Flag bits.
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Descriptor offset and size, in sectors (0 when there is none).
    pub descriptor: (u64, u64),
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Grain directory offset in sectors (after following the footer).
    pub gd_offset: u64,
    /// Compression algorithm: 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Whether grains are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::VmdkCorrupt {
        offset,
        what: what.into(),
    }
}

pub(crate) fn parse_header(h: &[u8; 512], at: u64) -> Result<SparseHeader> {
    if le32(h, 0) != SPARSE_MAGIC {
        return Err(corrupt(at, format!("magic {:02x?} is not KDMV", &h[0..4])));
    }
    let version = le32(h, 4);
    if !(1..=3).contains(&version) {
        return Err(Error::VmdkUnsupported(format!(
            "sparse extent version {version}"
        )));
    }
    let header = SparseHeader {
        version,
        flags: le32(h, 8),
        capacity: le64(h, 12),
        grain_size: le64(h, 20),
        descriptor: (le64(h, 28), le64(h, 36)),
        gtes_per_gt: le32(h, 44),
        gd_offset: le64(h, 56),
        compress_algorithm: u16::from_le_bytes([h[77], h[78]]),
    };
    if header.grain_size == 0
        || !header.grain_size.is_power_of_two()
        || header.grain_size > MAX_GRAIN_SECTORS
    {
        return Err(corrupt(
            at + 20,
            format!(
                "grain size of {} sectors is not a power of two up to {MAX_GRAIN_SECTORS}",
                header.grain_size
            ),
        ));
    }
    if header.gtes_per_gt == 0 || header.gtes_per_gt > 65536 {
        return Err(corrupt(
            at + 44,
            format!(
                "{} grain table entries per table is outside 1..=65536",
                header.gtes_per_gt
            ),
        ));
    }
    if header.capacity == 0 || header.capacity > MAX_CAPACITY / SECTOR_SIZE {
        return Err(corrupt(
            at + 12,
            format!(
                "capacity of {} sectors is zero or above the 256 TiB supported",
                header.capacity
            ),
        ));
    }
    if header.compressed() && header.compress_algorithm != 1 {
        return Err(Error::VmdkUnsupported(format!(
            "compression algorithm {}",
            header.compress_algorithm
        )));
    }
    Ok(header)
}

/// Reads the guest contents of one hosted sparse extent from any `Read + Seek`.
///
/// Memory: the grain directory (4 bytes per grain table, at most 64 MiB),
/// one cached grain table, one decompressed grain and a 1 MiB read-ahead
/// window (compressed grains are read in file order).
pub struct SparseExtentReader<R> {
    file: R,
    file_len: u64,
    header: SparseHeader,
    grain_bytes: u64,
    gd: Vec<u32>,
    gt_cache: Option<(u32, Vec<u32>)>,
    grain_cache: Option<(u64, Vec<u8>)>,
    /// Read-ahead window over the file: grains of a stream are read in order.
    ahead: Vec<u8>,
    ahead_start: u64,
    inflater: Decompress,
}

impl<R> std::fmt::Debug for SparseExtentReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseExtentReader")
            .field("header", &self.header)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

/// Where a grain's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grain {
    Zero,
    At(u64),
}

impl<R: Read + Seek> SparseExtentReader<R> {
    /// Opens an extent: header, footer if the directory is at the end, and the directory.
    pub fn open(mut file: R) -> Result<Self> {
        let file_len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the VMDK file length", e))?;
        if file_len < 512 {
            return Err(corrupt(
                0,
                format!("file of {file_len} bytes is too short for a sparse extent header"),
            ));
        }
        let mut h = [0u8; 512];
        read_exact_at(&mut file, 0, &mut h, "reading the VMDK header")?;
        let mut header = parse_header(&h, 0)?;
        if header.gd_offset == GD_AT_END {
            // streamOptimized, VMware layout: footer marker, footer, end-of-stream marker.
            if file_len < 512 * 4 {
                return Err(corrupt(
                    file_len,
                    "grain directory is at the end, but the file is too short for a footer",
                ));
            }
            let footer_at = file_len - 1024;
            let mut m = [0u8; 512];
            read_exact_at(
                &mut file,
                footer_at - 512,
                &mut m,
                "reading the VMDK footer marker",
            )?;
            if le32(&m, 12) != 3 || le32(&m, 8) != 0 {
                return Err(corrupt(
                    footer_at - 512,
                    "no footer marker before the footer (truncated stream?)",
                ));
            }
            read_exact_at(&mut file, footer_at, &mut h, "reading the VMDK footer")?;
            let footer = parse_header(&h, footer_at)?;
            if footer.capacity != header.capacity || footer.grain_size != header.grain_size {
                return Err(corrupt(
                    footer_at,
                    "footer disagrees with the header on capacity or grain size",
                ));
            }
            header = footer;
            if header.gd_offset == GD_AT_END {
                return Err(corrupt(
                    footer_at + 56,
                    "footer does not give the grain directory offset",
                ));
            }
        }
        // A delta disk's grains fall through to its parent: refuse it rather
        // than read the parent's data as zeros.
        let (desc_at, desc_sectors) = header.descriptor;
        if desc_at > 0 && desc_sectors > 0 {
            let at = desc_at.saturating_mul(SECTOR_SIZE);
            let len = desc_sectors
                .saturating_mul(SECTOR_SIZE)
                .min(super::descriptor::MAX_DESCRIPTOR_BYTES as u64);
            if at.saturating_add(len) <= file_len {
                let mut raw = vec![0u8; len as usize];
                read_exact_at(
                    &mut file,
                    at,
                    &mut raw,
                    "reading the embedded VMDK descriptor",
                )?;
                let text = String::from_utf8_lossy(&raw);
                if let Ok(d) = super::descriptor::parse_descriptor(&text) {
                    if d.has_parent() {
                        return Err(Error::VmdkUnsupported(format!(
                            "delta disk (parentCID {}); export the consolidated disk",
                            d.parent_cid.as_deref().unwrap_or("")
                        )));
                    }
                }
            }
        }
        let grain_bytes = header.grain_size * SECTOR_SIZE;
        let gt_coverage = header.grain_size * u64::from(header.gtes_per_gt);
        let gd_entries = header.capacity.div_ceil(gt_coverage);
        let gd_bytes = gd_entries * 4;
        let gd_at = header
            .gd_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(56, "grain directory offset overflows"))?;
        if gd_bytes > MAX_GD_BYTES || gd_at.checked_add(gd_bytes).is_none_or(|e| e > file_len) {
            return Err(corrupt(56, format!("grain directory of {gd_bytes} bytes at {gd_at:#x} lies outside the {file_len}-byte file")));
        }
        let mut raw = vec![0u8; gd_bytes as usize];
        read_exact_at(
            &mut file,
            gd_at,
            &mut raw,
            "reading the VMDK grain directory",
        )?;
        let gd = raw.chunks_exact(4).map(|c| le32(c, 0)).collect();
        Ok(SparseExtentReader {
            file,
            file_len,
            header,
            grain_bytes,
            gd,
            gt_cache: None,
            grain_cache: None,
            ahead: Vec::new(),
            ahead_start: 0,
            inflater: Decompress::new(true),
        })
    }

    /// The header (with the footer's directory offset when it has one).
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    fn grain(&mut self, grain_no: u64) -> Result<Grain> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        let gd_index = (grain_no / per_gt) as usize;
        let Some(&gt_sector) = self.gd.get(gd_index) else {
            return Err(corrupt(
                self.header.gd_offset * SECTOR_SIZE,
                format!("grain {grain_no} is beyond the grain directory"),
            ));
        };
        if gt_sector == 0 {
            return Ok(Grain::Zero);
        }
        if self.gt_cache.as_ref().map(|(s, _)| *s) != Some(gt_sector) {
            let at = u64::from(gt_sector) * SECTOR_SIZE;
            let len = per_gt * 4;
            if at + len > self.file_len {
                return Err(corrupt(
                    self.header.gd_offset * SECTOR_SIZE + gd_index as u64 * 4,
                    format!(
                        "grain table at {at:#x} lies past the end of the {}-byte file",
                        self.file_len
                    ),
                ));
            }
            let mut raw = vec![0u8; len as usize];
            read_exact_at(&mut self.file, at, &mut raw, "reading a VMDK grain table")?;
            self.gt_cache = Some((gt_sector, raw.chunks_exact(4).map(|c| le32(c, 0)).collect()));
        }
        let entry = match &self.gt_cache {
            Some((_, t)) => t[(grain_no % per_gt) as usize],
            None => 0,
        };
        match entry {
            0 => Ok(Grain::Zero),
            1 if self.header.flags & FLAG_ZEROED_GTE != 0 => Ok(Grain::Zero),
            s => {
                let at = u64::from(s) * SECTOR_SIZE;
                if at >= self.file_len {
                    return Err(corrupt(
                        u64::from(gt_sector) * SECTOR_SIZE + (grain_no % per_gt) * 4,
                        format!(
                            "grain {grain_no} at {at:#x} lies past the end of the {}-byte file",
                            self.file_len
                        ),
                    ));
                }
                Ok(Grain::At(at))
            }
        }
    }

    /// Makes `[at, at + len)` of the file available in the read-ahead window.
    fn window(&mut self, at: u64, len: usize, what: &str) -> Result<()> {
        let start = self.ahead_start;
        if at >= start && at + len as u64 <= start + self.ahead.len() as u64 {
            return Ok(());
        }
        let want = (len.max(READ_AHEAD) as u64).min(self.file_len.saturating_sub(at)) as usize;
        if want < len {
            return Err(corrupt(at, format!("file ends while {what} ({len} bytes)")));
        }
        self.ahead.resize(want, 0);
        read_exact_at(&mut self.file, at, &mut self.ahead, what)?;
        self.ahead_start = at;
        Ok(())
    }

    /// Inflates the compressed grain `grain_no` stored at `at` into `out`
    /// (one grain long); a short last grain is zero-filled.
    fn inflate_into(&mut self, grain_no: u64, at: u64, out: &mut [u8]) -> Result<()> {
        self.window(at, 12, "reading a VMDK grain marker")?;
        let o = (at - self.ahead_start) as usize;
        let lba = le64(&self.ahead[o..], 0);
        let size = u64::from(le32(&self.ahead[o..], 8));
        if lba != grain_no * self.header.grain_size {
            return Err(corrupt(
                at,
                format!(
                    "grain marker says LBA {lba}, the grain table says {}",
                    grain_no * self.header.grain_size
                ),
            ));
        }
        if size == 0 || at + 12 + size > self.file_len || size > 2 * self.grain_bytes + 1024 {
            return Err(corrupt(
                at + 8,
                format!("compressed grain size {size} is impossible here"),
            ));
        }
        self.window(at + 12, size as usize, "reading a VMDK compressed grain")?;
        let o = (at + 12 - self.ahead_start) as usize;
        let input = &self.ahead[o..o + size as usize];
        self.inflater.reset(true);
        let status = self
            .inflater
            .decompress(input, out, FlushDecompress::Finish);
        let produced = self.inflater.total_out() as usize;
        match status {
            Ok(Status::StreamEnd) => out[produced..].fill(0), // a short last grain
            Ok(_) if produced == out.len() => {}
            Ok(_) => return Err(corrupt(at + 12, "compressed grain ends early")),
            Err(e) => {
                return Err(corrupt(
                    at + 12,
                    format!("compressed grain does not inflate: {e}"),
                ))
            }
        }
        Ok(())
    }

    /// The decompressed bytes of the grain stored at `at`, cached for partial reads.
    fn inflate_grain(&mut self, grain_no: u64, at: u64) -> Result<&[u8]> {
        if self.grain_cache.as_ref().map(|(a, _)| *a) != Some(at) {
            let mut out = match self.grain_cache.take() {
                Some((_, v)) => v,
                None => vec![0u8; self.grain_bytes as usize],
            };
            self.inflate_into(grain_no, at, &mut out)?;
            self.grain_cache = Some((at, out));
        }
        match &self.grain_cache {
            Some((_, g)) => Ok(g),
            None => Err(corrupt(at, "grain cache is empty")),
        }
    }
}

impl<R: Read + Seek + Send + std::fmt::Debug> DiskImage for SparseExtentReader<R> {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.header.capacity * SECTOR_SIZE
    }

    fn decode_is_costly(&self) -> bool {
        self.header.compressed()
    }

    fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        let size = self.virtual_size();
        crate::image::check_read("VMDK", offset, buf.len(), size)?;
        while !buf.is_empty() {
            let grain_no = offset / self.grain_bytes;
            let within = offset % self.grain_bytes;
            let n = ((self.grain_bytes - within) as usize).min(buf.len());
            let (chunk, rest) = buf.split_at_mut(n);
            match self.grain(grain_no)? {
                Grain::Zero => chunk.fill(0),
                Grain::At(at) if self.header.compressed() && n as u64 == self.grain_bytes => {
                    self.inflate_into(grain_no, at, chunk)?;
                }
                Grain::At(at) if self.header.compressed() => {
                    let g = self.inflate_grain(grain_no, at)?;
                    chunk.copy_from_slice(&g[within as usize..within as usize + n]);
                }
                Grain::At(at) => {
                    let pos = at + within;
                    let avail = self.file_len.saturating_sub(pos).min(n as u64) as usize;
                    read_exact_at(
                        &mut self.file,
                        pos,
                        &mut chunk[..avail],
                        "reading a VMDK grain",
                    )?;
                    chunk[avail..].fill(0);
                }
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        let (size, unit) = (self.virtual_size(), self.grain_bytes);
        crate::image::merge_regions(offset, size, unit, |o| {
            Ok(self.grain(o / unit)? == Grain::Zero)
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
    use std::io::Cursor;

    fn written(cap: u64, data: &[u8]) -> Vec<u8> {
        let mut w =
            StreamOptimizedWriter::new(Vec::new(), cap, &VmdkWriterOptions::default()).unwrap();
        w.write(data).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn reads_back_our_own_stream() {
        let cap = 40u64 << 20;
        let mut data = vec![0u8; cap as usize];
        data[1000..5000].fill(3);
        data[(33 << 20)..(33 << 20) + 70000].fill(9);
        let mut r = SparseExtentReader::open(Cursor::new(written(cap, &data))).unwrap();
        assert_eq!(r.virtual_size(), cap);
        let mut got = vec![1u8; cap as usize];
        r.read_at(0, &mut got).unwrap();
        assert!(got == data);
        assert_eq!(r.region(0).unwrap(), Region::Data(65536));
        assert_eq!(r.region(65536).unwrap(), Region::Zero((33 << 20) - 65536));
    }

    #[test]
    fn damaged_streams_are_reported() {
        let cap = 1u64 << 20;
        let mut data = vec![0u8; cap as usize];
        data[..4096].fill(1);
        let good = written(cap, &data);
        // truncated: the footer is gone
        let err =
            SparseExtentReader::open(Cursor::new(good[..good.len() - 512].to_vec())).unwrap_err();
        assert!(err.to_string().contains("footer"), "{err}");
        // grain marker LBA altered
        let mut bad = good.clone();
        let g = 128 * 512;
        bad[g] = 0x55;
        let mut r = SparseExtentReader::open(Cursor::new(bad)).unwrap();
        let err = r.read_at(0, &mut [0u8; 512]).unwrap_err();
        assert!(err.to_string().contains("LBA"), "{err}");
        // compressed data damaged
        let mut bad = good.clone();
        bad[g + 14..g + 40].fill(0xff);
        let mut r = SparseExtentReader::open(Cursor::new(bad)).unwrap();
        assert!(r.read_at(0, &mut [0u8; 512]).is_err());
        // bad magic
        let mut bad = good;
        bad[0] = b'X';
        assert!(SparseExtentReader::open(Cursor::new(bad)).is_err());
    }
}
