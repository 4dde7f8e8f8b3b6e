//! The qcow2 reader.

use std::io::{Read, Seek, SeekFrom};

use flate2::{Decompress, FlushDecompress, Status};

use super::QCOW2_MAGIC;
use crate::endian::{be32, be64};
use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

/// Offset bits of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry flag: compressed cluster.
const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (v3): the cluster reads as zeros.
const L2_ZERO: u64 = 1;
/// QEMU's own limit on the L1 table, 32 MiB.
const MAX_L1_BYTES: u64 = 32 << 20;

/// The fields of a qcow2 header this reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// Format version, 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// File offset of the L1 table.
    pub l1_table_offset: u64,
    /// The backing file name, if the image has one.
    pub backing_file: Option<String>,
}

/// Where a guest cluster's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMapping {
    /// A zero cluster (or unallocated with no backing file): reads as zeros.
    Zero,
    /// Not allocated in this image: reads from the backing file.
    Backing,
    /// Stored uncompressed at this file offset.
    Data(u64),
    /// Stored deflate-compressed: file offset and maximum compressed length.
    Compressed(u64, u64),
}

/// Reads the guest-visible contents of a qcow2 image from any `Read + Seek`.
///
/// Memory: the L1 table (8 bytes per cluster² / 8 of disk, at most 32 MiB as in
/// QEMU; 8 KiB per 64 GiB with 64 KiB clusters), one cached L2 table and one
/// cached decompressed cluster.
pub struct Qcow2Reader<R> {
    file: R,
    file_len: u64,
    header: Qcow2Header,
    cluster_size: u64,
    l2_entries: u64,
    l1: Vec<u64>,
    l2_cache: Option<(u64, Vec<u64>)>,
    /// The snapshot table: entries and offset (header bytes 60 and 64).
    snapshot_table: (u32, u64),
    compressed_cache: Option<(u64, Vec<u8>)>,
    inflater: Decompress,
    backing: Option<Box<dyn DiskImage>>,
}

impl<R> std::fmt::Debug for Qcow2Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Reader")
            .field("header", &self.header)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::Qcow2Corrupt {
        offset,
        what: what.into(),
    }
}

/// Qemu's limits on the snapshot table: entries, and extra data per entry.
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;

/// An internal snapshot of a qcow2 image (`qemu-img snapshot -c`, what
/// Proxmox VE and libvirt make on qcow2 disks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Snapshot {
    /// Its unique id (a number as text).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The virtual size of the disk when it was taken (version 3 extra
    /// data), if recorded.
    pub disk_size: Option<u64>,
    /// When it was taken, seconds since the epoch.
    pub date_sec: u32,
    l1_table_offset: u64,
    l1_size: u32,
    /// Where its entry is in the file (for messages).
    entry_at: u64,
}

/// Reads and checks an L1 table of `l1_size` entries at `l1_offset` that
/// maps `size` bytes; `fields` are the offsets of the size and offset
/// fields that named it, for messages. Only the entries the size needs
/// are read.
fn load_l1<R: Read + Seek>(
    file: &mut R,
    file_len: u64,
    cluster_size: u64,
    size: u64,
    (l1_size, l1_offset): (u32, u64),
    (size_at, offset_at): (u64, u64),
) -> Result<Vec<u64>> {
    let bytes_per_l1 = cluster_size * (cluster_size / 8);
    let needed = size.div_ceil(bytes_per_l1);
    if u64::from(l1_size) < needed {
        return Err(corrupt(
            size_at,
            format!(
                "L1 table of {l1_size} entries cannot map a {size}-byte disk ({needed} needed)"
            ),
        ));
    }
    let l1_bytes = u64::from(l1_size) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(corrupt(
            size_at,
            format!("L1 table of {l1_bytes} bytes exceeds the 32 MiB limit"),
        ));
    }
    if l1_size > 0 {
        if !l1_offset.is_multiple_of(cluster_size) {
            return Err(corrupt(
                offset_at,
                format!("L1 table offset {l1_offset:#x} is not cluster aligned"),
            ));
        }
        if l1_offset.checked_add(l1_bytes).is_none_or(|e| e > file_len) {
            return Err(corrupt(offset_at, format!("L1 table at {l1_offset:#x} ({l1_bytes} bytes) extends past the end of the {file_len}-byte file")));
        }
    }
    let mut raw = vec![0u8; (needed * 8) as usize];
    read_exact_at(file, l1_offset, &mut raw, "reading the qcow2 L1 table")?;
    Ok(raw.chunks_exact(8).map(|c| be64(c, 0)).collect())
}

impl<R: Read + Seek> Qcow2Reader<R> {
    /// The image's internal snapshots, from its snapshot table (at most
    /// 65536 entries of at most 1 KiB of extra data each, as in QEMU).
    pub fn snapshots(&mut self) -> Result<Vec<Qcow2Snapshot>> {
        let (count, mut at) = self.snapshot_table;
        if count == 0 {
            return Ok(Vec::new());
        }
        if count > MAX_SNAPSHOTS || !at.is_multiple_of(8) {
            return Err(corrupt(
                60,
                format!("snapshot table of {count} entries at {at:#x} (at most {MAX_SNAPSHOTS}, 8-byte aligned)"),
            ));
        }
        let mut out = Vec::new();
        for _ in 0..count {
            let entry_at = at;
            let mut e = [0u8; 40];
            if at.checked_add(40).is_none_or(|end| end > self.file_len) {
                return Err(corrupt(
                    64,
                    format!("snapshot entry at {at:#x} lies past the end of the file"),
                ));
            }
            read_exact_at(&mut self.file, at, &mut e, "reading a qcow2 snapshot entry")?;
            let id_len = u64::from(u16::from_be_bytes([e[12], e[13]]));
            let name_len = u64::from(u16::from_be_bytes([e[14], e[15]]));
            let extra_len = be32(&e, 36);
            if extra_len > MAX_SNAPSHOT_EXTRA {
                return Err(corrupt(
                    at + 36,
                    format!(
                        "snapshot extra data of {extra_len} bytes (at most {MAX_SNAPSHOT_EXTRA})"
                    ),
                ));
            }
            let rest = u64::from(extra_len) + id_len + name_len;
            if (at + 40)
                .checked_add(rest)
                .is_none_or(|end| end > self.file_len)
            {
                return Err(corrupt(at, "snapshot entry runs past the end of the file"));
            }
            let mut tail = vec![0u8; rest as usize];
            read_exact_at(
                &mut self.file,
                at + 40,
                &mut tail,
                "reading a qcow2 snapshot entry",
            )?;
            let (extra, strings) = tail.split_at(extra_len as usize);
            let (id, name) = strings.split_at(id_len as usize);
            out.push(Qcow2Snapshot {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
                disk_size: (extra.len() >= 16).then(|| be64(extra, 8)),
                date_sec: be32(&e, 16),
                l1_table_offset: be64(&e, 0),
                l1_size: be32(&e, 8),
                entry_at,
            });
            at = (at + 40 + rest).next_multiple_of(8);
        }
        Ok(out)
    }

    /// Reads the image as internal snapshot `name` (or id) saw it from now
    /// on: its L1 table and its disk size. Clusters a snapshot refers to
    /// are copied on write by the image's writer, so the snapshot reads
    /// consistently while a VM goes on writing the image.
    pub fn select_snapshot(&mut self, name: &str) -> Result<Qcow2Snapshot> {
        let snaps = self.snapshots()?;
        let snap = snaps
            .iter()
            .find(|s| s.name == name)
            .or_else(|| snaps.iter().find(|s| s.id == name))
            .cloned()
            .ok_or_else(|| {
                let have: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
                Error::Qcow2Unsupported(format!(
                    "no internal snapshot {} (the image has: {})",
                    crate::error::display_name(name),
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ))
            })?;
        let size = snap.disk_size.unwrap_or(self.header.size);
        self.l1 = load_l1(
            &mut self.file,
            self.file_len,
            self.cluster_size,
            size,
            (snap.l1_size, snap.l1_table_offset),
            (snap.entry_at + 8, snap.entry_at),
        )?;
        self.header.size = size;
        self.header.l1_size = snap.l1_size;
        self.header.l1_table_offset = snap.l1_table_offset;
        self.l2_cache = None;
        self.compressed_cache = None;
        Ok(snap)
    }
}

impl<R: Read + Seek> Qcow2Reader<R> {
    /// Opens an image: reads and validates the header and the L1 table.
    /// An image with a backing file is refused (use [`open_with_backing`](Self::open_with_backing)).
    pub fn open(file: R) -> Result<Self> {
        Self::open_inner(file, None)
    }

    /// Opens an image whose backing file the caller has opened: clusters this
    /// image does not hold are read from `backing` (zeros past its end).
    pub fn open_with_backing(file: R, backing: Box<dyn DiskImage>) -> Result<Self> {
        Self::open_inner(file, Some(backing))
    }

    fn open_inner(mut file: R, backing: Option<Box<dyn DiskImage>>) -> Result<Self> {
        let file_len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the qcow2 file length", e))?;
        let mut h = [0u8; 112];
        if file_len < 72 {
            return Err(corrupt(
                0,
                format!("file of {file_len} bytes is too short for a qcow2 header (72 bytes)"),
            ));
        }
        let want = (h.len() as u64).min(file_len) as usize;
        read_exact_at(&mut file, 0, &mut h[..want], "reading the qcow2 header")?;
        if h[0..4] != QCOW2_MAGIC {
            return Err(corrupt(
                0,
                format!("magic {:02x?} is not QFI\\xfb", &h[0..4]),
            ));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(Error::Qcow2Unsupported(format!(
                "version {version} (2 and 3 are supported)"
            )));
        }
        let backing_file_offset = be64(&h, 8);
        let backing_file_size = be32(&h, 16);
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(corrupt(
                20,
                format!("cluster_bits {cluster_bits} outside 9..=21"),
            ));
        }
        let size = be64(&h, 24);
        let crypt_method = be32(&h, 32);
        let l1_size = be32(&h, 36);
        let l1_table_offset = be64(&h, 40);
        let cluster_size = 1u64 << cluster_bits;
        let l2_entries = cluster_size / 8;

        if crypt_method != 0 {
            return Err(Error::Qcow2Unsupported(format!(
                "encrypted image (crypt_method {crypt_method})"
            )));
        }
        if version == 3 {
            if file_len < 104 {
                return Err(corrupt(72, "version 3 header is truncated"));
            }
            let incompatible = be64(&h, 72);
            let header_length = be32(&h, 100);
            if incompatible & 2 != 0 {
                return Err(corrupt(
                    72,
                    "image is marked corrupt by its writer (incompatible feature bit 1)",
                ));
            }
            if incompatible & 4 != 0 {
                return Err(Error::Qcow2Unsupported("external data file".into()));
            }
            if incompatible & 16 != 0 {
                return Err(Error::Qcow2Unsupported(
                    "extended L2 entries (subclusters)".into(),
                ));
            }
            if incompatible & 8 != 0 && header_length > 104 && file_len > 104 && h[104] != 0 {
                return Err(Error::Qcow2Unsupported(format!(
                    "compression type {} (only deflate is supported)",
                    h[104]
                )));
            }
            let unknown = incompatible & !0x1f;
            if unknown != 0 {
                return Err(Error::Qcow2Unsupported(format!(
                    "unknown incompatible features {unknown:#x}"
                )));
            }
        }
        let backing_file = if backing_file_offset != 0 && backing_file_size != 0 {
            let end = backing_file_offset.checked_add(u64::from(backing_file_size));
            if backing_file_size > 1023 || end.is_none_or(|e| e > file_len) {
                return Err(corrupt(8, "backing file name lies outside the file"));
            }
            let mut name = vec![0u8; backing_file_size as usize];
            read_exact_at(
                &mut file,
                backing_file_offset,
                &mut name,
                "reading the backing file name",
            )?;
            Some(String::from_utf8_lossy(&name).into_owned())
        } else {
            None
        };
        if backing.is_some() && backing_file.is_none() {
            return Err(Error::InvalidInput {
                format: "qcow2",
                what: "a backing image was given but the image has no backing file".into(),
            });
        }
        if let (Some(b), None) = (&backing_file, &backing) {
            return Err(Error::Qcow2Unsupported(format!(
                "image has backing file {b:?}; export the flattened chain (qemu-img convert) or the base image"
            )));
        }
        let l1 = load_l1(
            &mut file,
            file_len,
            cluster_size,
            size,
            (l1_size, l1_table_offset),
            (36, 40),
        )?;
        Ok(Qcow2Reader {
            file,
            file_len,
            header: Qcow2Header {
                version,
                cluster_bits,
                size,
                l1_size,
                l1_table_offset,
                backing_file,
            },
            cluster_size,
            l2_entries,
            l1,
            l2_cache: None,
            snapshot_table: (be32(&h, 60), be64(&h, 64)),
            compressed_cache: None,
            inflater: Decompress::new(false),
            backing,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Qcow2Header {
        &self.header
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn unallocated(&self) -> ClusterMapping {
        if self.backing.is_some() {
            ClusterMapping::Backing
        } else {
            ClusterMapping::Zero
        }
    }

    /// Where the cluster holding guest offset `offset` lives.
    pub fn mapping(&mut self, offset: u64) -> Result<ClusterMapping> {
        let cluster = offset / self.cluster_size;
        let l1_index = (cluster / self.l2_entries) as usize;
        let l2_index = (cluster % self.l2_entries) as usize;
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Err(corrupt(
                self.header.l1_table_offset,
                format!("guest offset {offset:#x} is beyond the L1 table"),
            ));
        };
        let l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(self.unallocated());
        }
        let entry_pos = self.header.l1_table_offset + l1_index as u64 * 8;
        if !l2_offset.is_multiple_of(self.cluster_size) {
            return Err(corrupt(
                entry_pos,
                format!("L1 entry {l1_index} points to unaligned L2 table {l2_offset:#x}"),
            ));
        }
        if l2_offset.saturating_add(self.cluster_size) > self.file_len {
            return Err(corrupt(entry_pos, format!("L1 entry {l1_index} points to L2 table {l2_offset:#x} past the end of the {}-byte file", self.file_len)));
        }
        if self.l2_cache.as_ref().map(|(o, _)| *o) != Some(l2_offset) {
            let mut raw = vec![0u8; self.cluster_size as usize];
            read_exact_at(
                &mut self.file,
                l2_offset,
                &mut raw,
                "reading a qcow2 L2 table",
            )?;
            let table = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
            self.l2_cache = Some((l2_offset, table));
        }
        let entry = match &self.l2_cache {
            Some((_, t)) => t[l2_index],
            None => 0,
        };
        let entry_pos = l2_offset + l2_index as u64 * 8;
        if entry & L2_COMPRESSED != 0 {
            let x = 62 - (self.header.cluster_bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = ((entry >> x) & ((1u64 << (self.header.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host >= self.file_len {
                return Err(corrupt(
                    entry_pos,
                    format!(
                        "compressed cluster at {host:#x} lies past the end of the {}-byte file",
                        self.file_len
                    ),
                ));
            }
            return Ok(ClusterMapping::Compressed(host, len));
        }
        if self.header.version >= 3 && entry & L2_ZERO != 0 {
            return Ok(ClusterMapping::Zero);
        }
        let host = entry & OFFSET_MASK;
        if host == 0 {
            return Ok(self.unallocated());
        }
        if !host.is_multiple_of(self.cluster_size) {
            return Err(corrupt(
                entry_pos,
                format!("L2 entry points to unaligned data cluster {host:#x}"),
            ));
        }
        if host >= self.file_len {
            return Err(corrupt(
                entry_pos,
                format!(
                    "data cluster at {host:#x} lies past the end of the {}-byte file",
                    self.file_len
                ),
            ));
        }
        Ok(ClusterMapping::Data(host))
    }

    /// Fills `buf` with guest data from `offset`. Reading past the virtual size
    /// is an error.
    pub fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        crate::image::check_read("qcow2", offset, buf.len(), self.header.size)?;
        while !buf.is_empty() {
            let in_cluster = offset % self.cluster_size;
            let mut n = ((self.cluster_size - in_cluster) as usize).min(buf.len());
            let mapping = self.mapping(offset)?;
            if let ClusterMapping::Data(host) = mapping {
                // Coalesce clusters stored back to back into one read.
                while n < buf.len()
                    && self.mapping(offset + n as u64)?
                        == ClusterMapping::Data(host + in_cluster + n as u64)
                {
                    n += (self.cluster_size as usize).min(buf.len() - n);
                }
            }
            let (chunk, rest) = buf.split_at_mut(n);
            match mapping {
                ClusterMapping::Zero => chunk.fill(0),
                ClusterMapping::Backing => {
                    // The backing image may be smaller than this one: zeros past its end.
                    let bsize = self.backing.as_ref().map_or(0, |b| b.virtual_size());
                    let avail = bsize.saturating_sub(offset).min(n as u64) as usize;
                    if let (Some(b), true) = (self.backing.as_mut(), avail > 0) {
                        b.read_at(offset, &mut chunk[..avail])?;
                    }
                    chunk[avail..].fill(0);
                }
                ClusterMapping::Data(host) => {
                    let pos = host + in_cluster;
                    // Data past the end of the file reads as zeros, as in QEMU.
                    let avail = self.file_len.saturating_sub(pos).min(n as u64) as usize;
                    read_exact_at(
                        &mut self.file,
                        pos,
                        &mut chunk[..avail],
                        "reading a qcow2 data cluster",
                    )?;
                    chunk[avail..].fill(0);
                }
                ClusterMapping::Compressed(host, len) => {
                    let data = self.inflate_cluster(host, len)?;
                    chunk.copy_from_slice(&data[in_cluster as usize..in_cluster as usize + n]);
                }
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    fn inflate_cluster(&mut self, host: u64, len: u64) -> Result<&[u8]> {
        if self.compressed_cache.as_ref().map(|(o, _)| *o) != Some(host) {
            let len = len.min(self.file_len - host) as usize;
            let mut input = vec![0u8; len];
            read_exact_at(
                &mut self.file,
                host,
                &mut input,
                "reading a compressed qcow2 cluster",
            )?;
            let mut out = vec![0u8; self.cluster_size as usize];
            self.inflater.reset(false);
            let status = self
                .inflater
                .decompress(&input, &mut out, FlushDecompress::Finish);
            let produced = self.inflater.total_out();
            match status {
                Ok(Status::StreamEnd | Status::Ok | Status::BufError)
                    if produced == self.cluster_size => {}
                Ok(_) => {
                    return Err(corrupt(
                        host,
                        format!(
                            "compressed cluster inflates to {produced} bytes, expected {}",
                            self.cluster_size
                        ),
                    ))
                }
                Err(e) => {
                    return Err(corrupt(
                        host,
                        format!("compressed cluster does not inflate: {e}"),
                    ))
                }
            }
            self.compressed_cache = Some((host, out));
        }
        match &self.compressed_cache {
            Some((_, data)) => Ok(data),
            None => Err(corrupt(host, "compressed cluster cache is empty")),
        }
    }
}

impl<R: Read + Seek + Send + std::fmt::Debug> DiskImage for Qcow2Reader<R> {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Qcow2Reader::read_at(self, offset, buf)
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        let (size, unit) = (self.header.size, self.cluster_size);
        crate::image::merge_regions(offset, size, unit, |o| {
            Ok(self.mapping(o)? == ClusterMapping::Zero)
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

    /// Builds a minimal v3 image by hand: 64 KiB clusters, 1 MiB disk,
    /// cluster 1 allocated with 0xab.
    fn tiny_image() -> Vec<u8> {
        let c = 65536usize;
        let mut img = vec![0u8; 4 * c];
        img[0..4].copy_from_slice(&QCOW2_MAGIC);
        img[4..8].copy_from_slice(&3u32.to_be_bytes());
        img[20..24].copy_from_slice(&16u32.to_be_bytes());
        img[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        img[36..40].copy_from_slice(&1u32.to_be_bytes());
        img[40..48].copy_from_slice(&(c as u64).to_be_bytes()); // L1 at cluster 1
        img[100..104].copy_from_slice(&104u32.to_be_bytes());
        // L1[0] -> L2 at cluster 2
        img[c..c + 8].copy_from_slice(&((2 * c) as u64 | 1 << 63).to_be_bytes());
        // L2[1] -> data at cluster 3
        img[2 * c + 8..2 * c + 16].copy_from_slice(&((3 * c) as u64 | 1 << 63).to_be_bytes());
        img[3 * c..4 * c].fill(0xab);
        img
    }

    #[test]
    fn reads_allocated_and_unallocated() {
        let mut r = Qcow2Reader::open(Cursor::new(tiny_image())).unwrap();
        let mut buf = vec![1u8; 3 * 65536];
        r.read_at(0, &mut buf).unwrap();
        assert!(buf[..65536].iter().all(|&b| b == 0));
        assert!(buf[65536..131072].iter().all(|&b| b == 0xab));
        assert!(buf[131072..].iter().all(|&b| b == 0));
        assert!(r.read_at((1 << 20) - 1, &mut [0; 2]).is_err());
    }

    #[test]
    fn reports_corruption_with_offsets() {
        let mut img = tiny_image();
        img[0] = b'X';
        assert!(matches!(
            Qcow2Reader::open(Cursor::new(img)),
            Err(Error::Qcow2Corrupt { offset: 0, .. })
        ));

        let mut img = tiny_image();
        img[65536..65544].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let mut r = Qcow2Reader::open(Cursor::new(img)).unwrap();
        let err = r.read_at(0, &mut [0; 512]).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");

        let img = tiny_image()[..65536 + 4].to_vec();
        assert!(Qcow2Reader::open(Cursor::new(img)).is_err());

        let mut img = tiny_image();
        img[36..40].copy_from_slice(&0u32.to_be_bytes());
        assert!(Qcow2Reader::open(Cursor::new(img)).is_err());
    }
}
