//! Persistent dirty bitmaps of qcow2 v3 images (what `qemu-img bitmap` and
//! QEMU's `block-dirty-bitmap-add` with `persistent: true` keep), read from
//! the bitmaps header extension as QEMU's docs/interop/qcow2.txt
//! ("Bitmaps extension", "Bitmap directory", "Bitmap table", "Bitmap data")
//! describes them:
//!
//! ```text
//! header extension 0x23852875 (after the header, header_length bytes in v3):
//!   0  u32 nb_bitmaps   4  u32 reserved (0)
//!   8  u64 bitmap_directory_size   16 u64 bitmap_directory_offset
//! header byte 88, autoclear features: bit 0 = the extension is consistent
//!   (a program that does not know bitmaps clears it when it writes)
//! directory entry (each padded to a multiple of 8 bytes):
//!   0 u64 bitmap_table_offset   8 u32 bitmap_table_size (entries)
//!  12 u32 flags: bit 0 in_use (not saved cleanly: inconsistent), bit 1 auto
//!  16 u8 type (1 = dirty tracking)   17 u8 granularity_bits
//!  18 u16 name_size   20 u32 extra_data_size   24 extra data, then the name
//! bitmap table entry (u64): bits 9–55 = offset of a data cluster;
//!   when 0, bit 0 says the whole cluster's bits are 1 (else 0)
//! bitmap data: bit k (byte k / 8, bit k % 8, least significant first)
//!   is set when the guest bytes [k·g, (k+1)·g) changed, g = 2^granularity_bits
//! ```
//!
//! [`dirty_ranges`] turns one bitmap into the guest byte ranges it marks.
//! Memory: one cluster of bitmap data at a time, plus the ranges.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use super::QCOW2_MAGIC;
use crate::endian::{be16, be32, be64};
use crate::error::{Error, Result};

/// The bitmaps header extension's type.
const BITMAPS_EXTENSION: u32 = 0x2385_2875;
/// Bitmap directory entry flag: in use (the bitmap was not saved cleanly).
const FLAG_IN_USE: u32 = 1;
/// Bitmap directory entry flag: enabled (QEMU tracks writes into it).
const FLAG_AUTO: u32 = 2;
/// Largest bitmap directory accepted (QEMU's own limit: 64 MiB).
const MAX_DIRECTORY: u64 = 64 << 20;
/// Most bitmaps accepted (QEMU: 65535).
const MAX_BITMAPS: u32 = 65535;

/// One persistent bitmap of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Bitmap {
    /// Its name.
    pub name: String,
    /// Bytes of guest data per bit.
    pub granularity: u64,
    /// Whether writes are being recorded into it (`--enable`).
    pub enabled: bool,
    /// Whether it was not saved cleanly (the image was not closed by QEMU):
    /// its bits cannot be trusted.
    pub in_use: bool,
    table_offset: u64,
    table_size: u32,
}

/// The image facts the bitmap functions need.
struct Image {
    cluster_size: u64,
    size: u64,
    file_len: u64,
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::Qcow2Corrupt {
        offset,
        what: what.into(),
    }
}

fn read_at<R: Read + Seek>(file: &mut R, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    crate::image::read_exact_at(file, offset, buf, what, corrupt)
}

/// Lists the persistent bitmaps of a qcow2 image (none for version 2, or
/// when the image has no bitmaps extension). An extension a program that
/// does not know bitmaps has invalidated (autoclear bit 0 clear) is reported
/// as an error: its bitmaps missed writes.
pub fn list_bitmaps<R: Read + Seek>(file: &mut R) -> Result<Vec<Qcow2Bitmap>> {
    Ok(read_directory(file)?.1)
}

fn read_directory<R: Read + Seek>(file: &mut R) -> Result<(Image, Vec<Qcow2Bitmap>)> {
    let file_len = file
        .seek(SeekFrom::End(0))
        .map_err(|e| Error::io("finding the qcow2 file length", e))?;
    let mut h = [0u8; 104];
    if file_len < 104 {
        return Err(corrupt(0, "file is too short for a qcow2 v3 header"));
    }
    read_at(file, 0, &mut h, "reading the qcow2 header")?;
    if h[0..4] != QCOW2_MAGIC {
        return Err(corrupt(0, "not a qcow2 image (bad magic)"));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(
            20,
            format!("cluster_bits {cluster_bits} outside 9..=21"),
        ));
    }
    let image = Image {
        cluster_size: 1 << cluster_bits,
        size: be64(&h, 24),
        file_len,
    };
    if be32(&h, 4) < 3 {
        return Ok((image, Vec::new()));
    }
    let autoclear = be64(&h, 88);
    let header_length = u64::from(be32(&h, 100));
    // Header extensions follow the header, each 8-byte aligned, up to the
    // end of the first cluster; type 0 ends them.
    let mut at = header_length.next_multiple_of(8);
    let mut found = None;
    while at + 8 <= image.cluster_size.min(file_len) {
        let mut eh = [0u8; 8];
        read_at(file, at, &mut eh, "reading a qcow2 header extension")?;
        let (kind, len) = (be32(&eh, 0), u64::from(be32(&eh, 4)));
        if kind == 0 {
            break;
        }
        if kind == BITMAPS_EXTENSION {
            if len < 24 {
                return Err(corrupt(
                    at,
                    format!("bitmaps extension of {len} bytes (24 needed)"),
                ));
            }
            let mut b = [0u8; 24];
            read_at(file, at + 8, &mut b, "reading the bitmaps extension")?;
            found = Some((at, b));
        }
        at = at + 8 + len.next_multiple_of(8);
    }
    let Some((ext_at, b)) = found else {
        return Ok((image, Vec::new()));
    };
    if autoclear & 1 == 0 {
        return Err(corrupt(
            88,
            "the image's bitmaps were invalidated (autoclear bit 0 is clear: a program that does not know bitmaps wrote to it); they cannot be trusted",
        ));
    }
    let count = be32(&b, 0);
    let (dir_size, dir_offset) = (be64(&b, 8), be64(&b, 16));
    if count > MAX_BITMAPS || dir_size > MAX_DIRECTORY {
        return Err(corrupt(
            ext_at,
            format!("bitmap directory of {count} entries, {dir_size} bytes exceeds the limits"),
        ));
    }
    if dir_offset
        .checked_add(dir_size)
        .is_none_or(|e| e > file_len)
    {
        return Err(corrupt(ext_at, "bitmap directory lies outside the file"));
    }
    let mut dir = vec![0u8; dir_size as usize];
    read_at(file, dir_offset, &mut dir, "reading the bitmap directory")?;
    let mut bitmaps = Vec::with_capacity(count as usize);
    let mut pos = 0usize;
    for _ in 0..count {
        let entry_at = dir_offset + pos as u64;
        if pos + 24 > dir.len() {
            return Err(corrupt(entry_at, "bitmap directory entry past its end"));
        }
        let e = &dir[pos..];
        let flags = be32(e, 12);
        let kind = e[16];
        let granularity_bits = u32::from(e[17]);
        let name_size = usize::from(be16(e, 18));
        let extra = be32(e, 20) as usize;
        let len = (24 + extra + name_size).next_multiple_of(8);
        if pos + 24 + extra + name_size > dir.len() {
            return Err(corrupt(
                entry_at,
                "bitmap name lies past the directory's end",
            ));
        }
        if kind != 1 {
            return Err(Error::Qcow2Unsupported(format!(
                "bitmap of type {kind} (1, dirty tracking, is known)"
            )));
        }
        if !(9..=31).contains(&granularity_bits) {
            return Err(corrupt(
                entry_at + 17,
                format!("bitmap granularity 2^{granularity_bits} outside 2^9..=2^31"),
            ));
        }
        let name = String::from_utf8_lossy(&e[24 + extra..24 + extra + name_size]).into_owned();
        bitmaps.push(Qcow2Bitmap {
            name,
            granularity: 1 << granularity_bits,
            enabled: flags & FLAG_AUTO != 0,
            in_use: flags & FLAG_IN_USE != 0,
            table_offset: be64(e, 0),
            table_size: be32(e, 8),
        });
        pos += len;
    }
    Ok((image, bitmaps))
}

/// The guest byte ranges bitmap `name` marks as changed (sorted, disjoint,
/// adjacent runs merged, within the virtual size). Fails when there is no
/// such bitmap, or when it is in use (its image was not closed cleanly, so
/// writes may be missing from it).
pub fn dirty_ranges<R: Read + Seek>(file: &mut R, name: &str) -> Result<Vec<Range<u64>>> {
    let (image, bitmaps) = read_directory(file)?;
    let Some(bm) = bitmaps.into_iter().find(|b| b.name == name) else {
        return Err(Error::InvalidInput {
            format: "qcow2",
            what: format!("the image has no bitmap named {name:?}"),
        });
    };
    if bm.in_use {
        return Err(Error::InvalidInput {
            format: "qcow2",
            what: format!("bitmap {name:?} is marked in use: the image was not closed cleanly, so the bitmap may miss writes"),
        });
    }
    let bits = image.size.div_ceil(bm.granularity);
    let bits_per_cluster = image.cluster_size * 8;
    let needed = bits.div_ceil(bits_per_cluster);
    if u64::from(bm.table_size) < needed {
        return Err(corrupt(
            bm.table_offset,
            format!(
                "bitmap {name:?} has {} table entries, {needed} needed",
                bm.table_size
            ),
        ));
    }
    let table_bytes = needed * 8;
    if bm
        .table_offset
        .checked_add(table_bytes)
        .is_none_or(|e| e > image.file_len)
    {
        return Err(corrupt(
            bm.table_offset,
            format!("table of bitmap {name:?} lies outside the file"),
        ));
    }
    let mut table = vec![0u8; table_bytes as usize];
    read_at(file, bm.table_offset, &mut table, "reading a bitmap table")?;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut push = |start_bit: u64, end_bit: u64| {
        let (s, e) = (
            start_bit * bm.granularity,
            (end_bit * bm.granularity).min(image.size),
        );
        if s >= e {
            return;
        }
        match ranges.last_mut() {
            Some(last) if last.end == s => last.end = e,
            _ => ranges.push(s..e),
        }
    };
    let mut data = vec![0u8; image.cluster_size as usize];
    for (i, raw) in table.chunks_exact(8).enumerate() {
        let entry = be64(raw, 0);
        let first = i as u64 * bits_per_cluster;
        let last = (first + bits_per_cluster).min(bits);
        let offset = entry & 0x00ff_ffff_ffff_fe00;
        if offset == 0 {
            if entry & 1 != 0 {
                push(first, last);
            }
            continue;
        }
        if !offset.is_multiple_of(image.cluster_size)
            || offset + image.cluster_size > image.file_len
        {
            return Err(corrupt(
                bm.table_offset + i as u64 * 8,
                format!("bitmap data cluster at {offset:#x} is misaligned or outside the file"),
            ));
        }
        read_at(file, offset, &mut data, "reading bitmap data")?;
        let mut k = first;
        while k < last {
            let rel = k - first;
            let byte = data[(rel / 8) as usize];
            if byte == 0 && rel.is_multiple_of(8) {
                k += 8;
                continue;
            }
            if byte >> (rel % 8) & 1 != 0 {
                let start = k;
                while k < last && {
                    let r = k - first;
                    data[(r / 8) as usize] >> (r % 8) & 1 != 0
                } {
                    k += 1;
                }
                push(start, k);
            } else {
                k += 1;
            }
        }
    }
    Ok(ranges)
}
