//! VHDX reader: fixed, dynamic and differencing disks.

use std::io::{Read, Seek, SeekFrom};

use super::{
    crc32c_update, crc32c_without, guid_text, BAT_REGION, FILE_PARAMETERS, FILE_SIGNATURE,
    LOGICAL_SECTOR_SIZE, METADATA_REGION, PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE, VHDX_PARENT_TYPE,
    VIRTUAL_DISK_ID, VIRTUAL_DISK_SIZE,
};
use crate::endian::{le32, le64};
use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
/// Header copies (§2.2.2) and region table copies (§2.2.3).
const HEADERS: [u64; 2] = [64 * KIB, 128 * KIB];
const REGION_TABLES: [u64; 2] = [192 * KIB, 256 * KIB];
/// Largest BAT read into memory (entries, 8 bytes each): 128 MiB, which maps
/// 16 TiB in 1 MiB blocks or the format's 64 TiB limit in 4 MiB blocks and up.
const MAX_BAT_ENTRIES: u64 = 1 << 24;
/// Largest log scanned for entries to replay.
const MAX_LOG: u64 = 256 * MIB;
/// The format's limit on the virtual size (§2.6.2.2).
const MAX_SIZE: u64 = 64 << 40;

/// Payload BAT entry states (§2.5.1.1) and the sector bitmap one (§2.5.1.2).
const NOT_PRESENT: u64 = 0;
const UNDEFINED: u64 = 1;
const ZERO: u64 = 2;
const UNMAPPED: u64 = 3;
/// What pre-release Hyper-V wrote for an unmapped block; QEMU reads it as
/// unmapped too.
const UNMAPPED_V095: u64 = 5;
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;
const SB_BLOCK_PRESENT: u64 = 6;
/// FileOffsetMB: bits 20–63 of an entry, in MiB, i.e. the entry with its
/// low 20 bits cleared is the byte offset.
const OFFSET_MASK: u64 = !(MIB - 1);

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::VhdxCorrupt {
        offset,
        what: what.into(),
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::VhdxUnsupported(what.into())
}

/// Where a differencing disk's parent is, as its parent locator says
/// (§2.6.2.6.3): the parent's identity and the paths Hyper-V recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// Every key and value, as stored (UTF-16 decoded).
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key` (keys are case-sensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parent's path relative to this file (`relative_path`), else the
    /// absolute one Windows recorded (`absolute_win32_path`).
    pub fn path(&self) -> Option<&str> {
        self.get("relative_path")
            .or_else(|| self.get("absolute_win32_path"))
    }

    /// Whether `data_write_guid` (a parent header's DataWriteGuid) is one of
    /// the identities the locator accepts (`parent_linkage`,
    /// `parent_linkage2`: `{xxxxxxxx-…}`, any case).
    fn accepts(&self, data_write_guid: &[u8; 16]) -> bool {
        let want = guid_text(data_write_guid);
        ["parent_linkage", "parent_linkage2"].iter().any(|k| {
            self.get(k).is_some_and(|v| {
                v.trim_start_matches('{')
                    .trim_end_matches('}')
                    .eq_ignore_ascii_case(&want)
            })
        })
    }
}

/// The fields of a header (§2.2.2) the reader uses.
#[derive(Debug, Clone, Copy)]
struct Header {
    sequence: u64,
    data_write_guid: [u8; 16],
    log_guid: [u8; 16],
    log_version: u16,
    version: u16,
    log_length: u32,
    log_offset: u64,
}

impl Header {
    /// A header whose signature and CRC-32C are right, else None.
    fn parse(b: &[u8]) -> Option<Header> {
        if &b[0..4] != b"head" || le32(b, 4) != crc32c_without(b, 4) {
            return None;
        }
        let g = |at: usize| -> [u8; 16] { b[at..at + 16].try_into().unwrap_or([0; 16]) };
        Some(Header {
            sequence: le64(b, 8),
            data_write_guid: g(32),
            log_guid: g(48),
            log_version: u16::from_le_bytes([b[64], b[65]]),
            version: u16::from_le_bytes([b[66], b[67]]),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }
}

/// Where a payload block's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    /// Reads as zeros.
    Zero,
    /// Not in this file: the parent's.
    Parent,
    /// The whole block at this file offset.
    File(u64),
    /// At this file offset, sector by sector as the sector bitmap says;
    /// the other sectors are the parent's.
    Partial(u64),
}

/// Reads the guest contents of a VHDX file (\[MS-VHDX\]).
///
/// Memory: the BAT (8 bytes per block: 256 bytes per GiB with the usual
/// 32 MiB blocks, at most 2²⁴ entries), and for a differencing disk one
/// block's sector bitmap (block size / sector size / 8 bytes, 8 KiB for a
/// 32 MiB block) and its parent's.
pub struct VhdxReader<R> {
    file: R,
    file_len: u64,
    size: u64,
    block_size: u64,
    logical_sector: u64,
    physical_sector: u64,
    chunk_ratio: u64,
    bat_offset: u64,
    bat: Vec<u64>,
    leave_allocated: bool,
    data_write_guid: [u8; 16],
    disk_id: [u8; 16],
    locator: Option<ParentLocator>,
    parent: Option<Box<dyn DiskImage>>,
    bitmap: Option<(u64, Vec<u8>)>,
}

impl<R> std::fmt::Debug for VhdxReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxReader")
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("logical_sector", &self.logical_sector)
            .field("file_len", &self.file_len)
            .field("locator", &self.locator)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> VhdxReader<R> {
    /// Opens a VHDX: identifier, current header, region table, metadata and
    /// BAT, each checked. A differencing disk opens too, but reads only
    /// once [`set_parent`](Self::set_parent) gave it its parent; see
    /// [`parent_locator`](Self::parent_locator).
    pub fn open(mut file: R) -> Result<Self> {
        let file_len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the VHDX size", e))?;
        if file_len < MIB {
            return Err(corrupt(
                0,
                format!("file of {file_len} bytes is too short for a VHDX (1 MiB of headers)"),
            ));
        }
        let mut sig = [0u8; 8];
        read_exact_at(&mut file, 0, &mut sig, "reading the file type identifier")?;
        if &sig != FILE_SIGNATURE {
            return Err(corrupt(0, "no \"vhdxfile\" signature"));
        }
        let header = current_header(&mut file)?;
        if header.version != 1 {
            return Err(unsupported(format!(
                "format version {} (this reader knows version 1)",
                header.version
            )));
        }
        if header.log_guid != [0; 16] {
            check_log(&mut file, file_len, &header)?;
        }
        let (bat_region, meta_region) = region_table(&mut file, file_len)?;
        let meta = read_metadata(&mut file, meta_region)?;

        let block_size = u64::from(meta.block_size);
        let logical_sector = u64::from(meta.logical_sector);
        if !(MIB..=256 * MIB).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(corrupt(
                meta.at.params,
                format!("block size {block_size} is not a power of two from 1 MiB to 256 MiB"),
            ));
        }
        if !matches!(logical_sector, 512 | 4096) {
            return Err(corrupt(
                meta.at.logical,
                format!("logical sector size {logical_sector} (512 or 4096)"),
            ));
        }
        if !matches!(meta.physical_sector, 512 | 4096) {
            return Err(corrupt(
                meta.at.physical,
                format!(
                    "physical sector size {} (512 or 4096)",
                    meta.physical_sector
                ),
            ));
        }
        let size = meta.size;
        if size == 0 || size > MAX_SIZE || !size.is_multiple_of(logical_sector) {
            return Err(corrupt(
                meta.at.size,
                format!(
                    "virtual size {size} is not a positive multiple of the {logical_sector}-byte sector up to 64 TiB"
                ),
            ));
        }
        // §2.4: a sector bitmap block (1 MiB) maps 2²³ sectors; the chunk
        // ratio is the number of payload blocks in that span.
        let chunk_ratio = ((1u64 << 23) * logical_sector) / block_size;
        let blocks = size.div_ceil(block_size);
        // §2.5: payload entries interleaved with one sector bitmap entry per
        // chunk; the last payload block's entry must be there, and for a
        // differencing disk the last chunk's bitmap entry too.
        let payload_entries = blocks + (blocks - 1) / chunk_ratio;
        let wanted = if meta.locator.is_some() {
            blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
        } else {
            payload_entries
        };
        let (bat_offset, bat_len) = bat_region;
        let entries = wanted.min(u64::from(bat_len) / 8);
        if entries < payload_entries || entries > MAX_BAT_ENTRIES {
            return Err(corrupt(
                bat_offset,
                format!(
                    "a BAT of {bat_len} bytes cannot map {size} bytes in {block_size}-byte blocks ({payload_entries} entries needed, at most {MAX_BAT_ENTRIES} read)"
                ),
            ));
        }
        let mut raw = vec![0u8; (entries * 8) as usize];
        read_exact_at(&mut file, bat_offset, &mut raw, "reading the BAT")?;
        let bat = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        Ok(VhdxReader {
            file,
            file_len,
            size,
            block_size,
            logical_sector,
            physical_sector: u64::from(meta.physical_sector),
            chunk_ratio,
            bat_offset,
            bat,
            leave_allocated: meta.leave_allocated,
            data_write_guid: header.data_write_guid,
            disk_id: meta.disk_id,
            locator: meta.locator,
            parent: None,
            bitmap: None,
        })
    }

    /// Gives a differencing disk its parent (itself opened, with its own
    /// parent if it has one): checked against the parent locator's identity
    /// (`parent_linkage`, the parent's DataWriteGuid, §2.6.2.6.3) and the
    /// logical sector size, which must match (§2.6.2.4).
    pub fn set_parent<P>(&mut self, parent: VhdxReader<P>) -> Result<()>
    where
        P: Read + Seek + Send + 'static,
    {
        let Some(locator) = &self.locator else {
            return Err(unsupported(
                "this disk has no parent (it is not a differencing disk)",
            ));
        };
        if !locator.accepts(&parent.data_write_guid) {
            return Err(unsupported(format!(
                "the parent given is not this disk's parent: its DataWriteGuid {{{}}} is not the parent_linkage {}",
                guid_text(&parent.data_write_guid),
                locator.get("parent_linkage").unwrap_or("(none)")
            )));
        }
        if parent.logical_sector != self.logical_sector {
            return Err(unsupported(format!(
                "the parent's logical sector size {} differs from this disk's {}",
                parent.logical_sector, self.logical_sector
            )));
        }
        if parent.locator.is_some() && parent.parent.is_none() {
            return Err(unsupported(
                "the parent given is itself a differencing disk without its parent",
            ));
        }
        self.parent = Some(Box::new(parent));
        Ok(())
    }
}

impl<R> VhdxReader<R> {
    /// The parent locator of a differencing disk (None for fixed and
    /// dynamic disks).
    pub fn parent_locator(&self) -> Option<&ParentLocator> {
        self.locator.as_ref()
    }

    /// The payload block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The logical sector size the guest sees (512 or 4096).
    pub fn logical_sector_size(&self) -> u64 {
        self.logical_sector
    }

    /// The physical sector size the guest sees (512 or 4096).
    pub fn physical_sector_size(&self) -> u64 {
        self.physical_sector
    }

    /// Whether the file is fully provisioned (a fixed VHDX: the
    /// LeaveBlockAllocated parameter).
    pub fn is_fixed(&self) -> bool {
        self.leave_allocated && self.locator.is_none()
    }

    /// The virtual disk id (§2.6.2.3), as text.
    pub fn disk_id(&self) -> String {
        guid_text(&self.disk_id)
    }

    /// The DataWriteGuid of the current header: the identity a child's
    /// parent locator names.
    pub fn data_write_guid(&self) -> String {
        guid_text(&self.data_write_guid)
    }

    /// Where payload block `b`'s bytes are.
    fn map(&self, b: u64) -> Result<Map> {
        let index = b + b / self.chunk_ratio;
        let at = self.bat_offset + index * 8;
        let Some(&entry) = self.bat.get(index as usize) else {
            return Err(corrupt(at, format!("no BAT entry for block {b}")));
        };
        let offset = entry & OFFSET_MASK;
        let differencing = self.locator.is_some();
        match entry & 7 {
            NOT_PRESENT if differencing => Ok(Map::Parent),
            // Undefined and unmapped blocks may read as zeros (§2.5.1.1).
            NOT_PRESENT | UNDEFINED | ZERO | UNMAPPED | UNMAPPED_V095 => Ok(Map::Zero),
            FULLY_PRESENT | PARTIALLY_PRESENT if offset < MIB => Err(corrupt(
                at,
                format!("block {b} lies at {offset:#x}, inside the header section"),
            )),
            FULLY_PRESENT => Ok(Map::File(offset)),
            PARTIALLY_PRESENT if differencing => Ok(Map::Partial(offset)),
            PARTIALLY_PRESENT => Err(corrupt(
                at,
                format!("block {b} is partially present in a disk that has no parent"),
            )),
            s => Err(corrupt(at, format!("block {b} has the reserved state {s}"))),
        }
    }
}

/// The metadata items the reader needs, and where each was (for messages).
struct Metadata {
    block_size: u32,
    leave_allocated: bool,
    size: u64,
    logical_sector: u32,
    physical_sector: u32,
    disk_id: [u8; 16],
    locator: Option<ParentLocator>,
    at: MetadataAt,
}

#[derive(Default)]
struct MetadataAt {
    params: u64,
    size: u64,
    logical: u64,
    physical: u64,
}

/// The current header (§2.2.2): the valid one, or of two valid ones the one
/// with the greater sequence number.
fn current_header<R: Read + Seek>(file: &mut R) -> Result<Header> {
    let mut found = [None, None];
    let mut raw = [vec![0u8; 4096], vec![0u8; 4096]];
    for (i, &at) in HEADERS.iter().enumerate() {
        read_exact_at(file, at, &mut raw[i], "reading a header")?;
        found[i] = Header::parse(&raw[i]);
    }
    match found {
        [Some(a), Some(b)] if a.sequence == b.sequence && raw[0] != raw[1] => Err(corrupt(
            HEADERS[1],
            format!(
                "both headers are valid with the same sequence number {} but differ",
                a.sequence
            ),
        )),
        [Some(a), Some(b)] => Ok(if b.sequence > a.sequence { b } else { a }),
        [Some(h), None] | [None, Some(h)] => Ok(h),
        [None, None] => Err(corrupt(
            HEADERS[0],
            "neither header (at 0x10000 and 0x20000) has the \"head\" signature and a matching CRC-32C",
        )),
    }
}

/// Refuses a file whose log holds a valid entry (§2.3.1.1: signature,
/// the header's LogGuid, CRC-32C over the entry): it was not closed cleanly
/// and its metadata may be stale until the log is replayed (§2.3.3). A
/// LogGuid with no valid entry behind it is an empty log.
fn check_log<R: Read + Seek>(file: &mut R, file_len: u64, h: &Header) -> Result<()> {
    if h.log_version != 0 {
        return Err(unsupported(format!(
            "log version {} with a log to replay",
            h.log_version
        )));
    }
    let (start, len) = (h.log_offset, u64::from(h.log_length));
    if start < MIB
        || !start.is_multiple_of(MIB)
        || !len.is_multiple_of(MIB)
        || start.checked_add(len).is_none_or(|e| e > file_len)
        || len > MAX_LOG
    {
        return Err(corrupt(
            HEADERS[0] + 68,
            format!("log of {len} bytes at {start:#x} is not a whole number of MiB inside the file (at most {MAX_LOG})"),
        ));
    }
    let mut head = [0u8; 64];
    let mut pos = 0;
    while pos < len {
        read_exact_at(file, start + pos, &mut head, "reading the log")?;
        let entry_len = u64::from(le32(&head, 8));
        if &head[0..4] == b"loge"
            && head[32..48] == h.log_guid
            && entry_len >= 4096
            && entry_len.is_multiple_of(4096)
            && entry_len <= len
        {
            // The checksum covers the whole entry, which may wrap around
            // the end of the log (it is a ring).
            let mut crc = crc32c_update(!0, &head[..4]);
            crc = crc32c_update(crc, &[0; 4]);
            crc = crc32c_update(crc, &head[8..]);
            let mut buf = vec![0u8; (64 * KIB) as usize];
            let mut done = 64u64;
            while done < entry_len {
                let at = (pos + done) % len;
                let n = (entry_len - done).min(len - at).min(buf.len() as u64) as usize;
                read_exact_at(file, start + at, &mut buf[..n], "reading a log entry")?;
                crc = crc32c_update(crc, &buf[..n]);
                done += n as u64;
            }
            if crc ^ !0 == le32(&head, 4) {
                return Err(unsupported(format!(
                    "its log holds changes not yet written to the file (entry at {:#x}: it was not closed cleanly). \
                     Replay the log by opening the disk once read-write (Hyper-V, Mount-VHD, or `qemu-img check -r all FILE`), then read it again",
                    start + pos
                )));
            }
        }
        pos += 4096;
    }
    Ok(())
}

/// The BAT and metadata regions from the first region table copy that is
/// valid (§2.2.3): (offset, length) each.
fn region_table<R: Read + Seek>(file: &mut R, file_len: u64) -> Result<((u64, u32), (u64, u32))> {
    let mut first_error = None;
    let mut t = vec![0u8; (64 * KIB) as usize];
    for &at in &REGION_TABLES {
        read_exact_at(file, at, &mut t, "reading a region table")?;
        match parse_regions(&t, file_len) {
            Ok(r) => return Ok(r),
            Err(Error::VhdxCorrupt { offset, what }) => {
                first_error.get_or_insert(corrupt(at + offset, what));
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_error.unwrap_or_else(|| corrupt(REGION_TABLES[0], "no region table")))
}

/// Parses one region table copy; offsets in errors are within the table.
fn parse_regions(t: &[u8], file_len: u64) -> Result<((u64, u32), (u64, u32))> {
    if &t[0..4] != b"regi" {
        return Err(corrupt(0, "no \"regi\" region table signature"));
    }
    if le32(t, 4) != crc32c_without(t, 4) {
        return Err(corrupt(4, "region table CRC-32C does not match"));
    }
    let count = le32(t, 8);
    if count > 2047 {
        return Err(corrupt(8, format!("{count} region entries (at most 2047)")));
    }
    let (mut bat, mut meta) = (None, None);
    for i in 0..count as usize {
        let e = &t[16 + i * 32..16 + (i + 1) * 32];
        let offset = le64(e, 16);
        let len = le32(e, 24);
        let required = le32(e, 28) & 1 != 0;
        let slot = if e[..16] == BAT_REGION {
            &mut bat
        } else if e[..16] == METADATA_REGION {
            &mut meta
        } else if required {
            let id: [u8; 16] = e[..16].try_into().unwrap_or([0; 16]);
            return Err(unsupported(format!(
                "it requires region {{{}}}, which this reader does not know",
                guid_text(&id)
            )));
        } else {
            continue;
        };
        if offset < MIB
            || !offset.is_multiple_of(MIB)
            || len == 0
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|e| e > file_len)
        {
            return Err(corrupt(
                (16 + i * 32 + 16) as u64,
                format!("region of {len} bytes at {offset:#x} is not 1 MiB-aligned inside the {file_len}-byte file"),
            ));
        }
        if slot.replace((offset, len)).is_some() {
            return Err(corrupt((16 + i * 32) as u64, "a region listed twice"));
        }
    }
    match (bat, meta) {
        (Some(b), Some(m)) => Ok((b, m)),
        (None, _) => Err(corrupt(8, "no BAT region")),
        (_, None) => Err(corrupt(8, "no metadata region")),
    }
}

/// Reads the metadata table (§2.6.1) and the known items (§2.6.2).
fn read_metadata<R: Read + Seek>(file: &mut R, (base, len): (u64, u32)) -> Result<Metadata> {
    let len = u64::from(len);
    if len < 64 * KIB {
        return Err(corrupt(
            base,
            "metadata region smaller than its 64 KiB table",
        ));
    }
    let mut t = vec![0u8; (64 * KIB) as usize];
    read_exact_at(file, base, &mut t, "reading the metadata table")?;
    if &t[0..8] != b"metadata" {
        return Err(corrupt(base, "no \"metadata\" table signature"));
    }
    let count = u16::from_le_bytes([t[10], t[11]]) as usize;
    if count > 2047 {
        return Err(corrupt(
            base + 10,
            format!("{count} metadata entries (at most 2047)"),
        ));
    }
    // (item, is_user) → (offset, length, where the entry is)
    let known = [
        FILE_PARAMETERS,
        VIRTUAL_DISK_SIZE,
        VIRTUAL_DISK_ID,
        LOGICAL_SECTOR_SIZE,
        PHYSICAL_SECTOR_SIZE,
        PARENT_LOCATOR,
    ];
    let mut items: [Option<(u64, u64, u64)>; 6] = [None; 6];
    for i in 0..count {
        let e = &t[32 + i * 32..32 + (i + 1) * 32];
        let entry_at = base + 32 + (i * 32) as u64;
        let (offset, item_len, bits) =
            (u64::from(le32(e, 16)), u64::from(le32(e, 20)), le32(e, 24));
        let (is_user, is_required) = (bits & 1 != 0, bits & 4 != 0);
        let id: [u8; 16] = e[..16].try_into().unwrap_or([0; 16]);
        let slot = (!is_user)
            .then(|| known.iter().position(|k| *k == id))
            .flatten();
        let Some(slot) = slot else {
            if is_required {
                return Err(unsupported(format!(
                    "it requires metadata item {{{}}}, which this reader does not know",
                    guid_text(&id)
                )));
            }
            continue;
        };
        if item_len > MIB
            || (item_len == 0 && offset != 0)
            || (item_len > 0 && (offset < 64 * KIB || offset + item_len > len))
        {
            return Err(corrupt(
                entry_at + 16,
                format!("metadata item of {item_len} bytes at {offset:#x} lies outside the {len}-byte region"),
            ));
        }
        if items[slot].replace((offset, item_len, entry_at)).is_some() {
            return Err(corrupt(entry_at, "a metadata item listed twice"));
        }
    }
    const NAMES: [&str; 6] = [
        "file parameters",
        "virtual disk size",
        "virtual disk id",
        "logical sector size",
        "physical sector size",
        "parent locator",
    ];
    let mut read = |slot: usize, min: u64| -> Result<(Vec<u8>, u64)> {
        let Some((offset, item_len, entry_at)) = items[slot] else {
            return Err(corrupt(
                base,
                format!("the metadata has no {} item", NAMES[slot]),
            ));
        };
        if item_len < min {
            return Err(corrupt(
                entry_at + 20,
                format!("{} item of {item_len} bytes (at least {min})", NAMES[slot]),
            ));
        }
        let mut b = vec![0u8; item_len as usize];
        let at = base + offset;
        read_exact_at(file, at, &mut b, "reading a metadata item")?;
        Ok((b, at))
    };
    let (params, params_at) = read(0, 8)?;
    let (size, size_at) = read(1, 8)?;
    let (id, _) = read(2, 16)?;
    let (logical, logical_at) = read(3, 4)?;
    let (physical, physical_at) = read(4, 4)?;
    let has_parent = le32(&params, 4) & 2 != 0;
    let locator = if has_parent {
        let (b, at) = read(5, 20)?;
        Some(parse_locator(&b).map_err(|(off, what)| corrupt(at + off, what))?)
    } else {
        None
    };
    Ok(Metadata {
        block_size: le32(&params, 0),
        leave_allocated: le32(&params, 4) & 1 != 0,
        size: le64(&size, 0),
        logical_sector: le32(&logical, 0),
        physical_sector: le32(&physical, 0),
        disk_id: id[..16].try_into().unwrap_or([0; 16]),
        locator,
        at: MetadataAt {
            params: params_at,
            size: size_at,
            logical: logical_at,
            physical: physical_at,
        },
    })
}

/// A VHDX parent locator (§2.6.2.6): header, then key/value entries whose
/// strings are UTF-16LE inside the item. Errors carry the offset within it.
fn parse_locator(b: &[u8]) -> std::result::Result<ParentLocator, (u64, String)> {
    if b[..16] != VHDX_PARENT_TYPE {
        let t: [u8; 16] = b[..16].try_into().unwrap_or([0; 16]);
        return Err((
            0,
            format!(
                "parent locator type {{{}}} is not a VHDX parent",
                guid_text(&t)
            ),
        ));
    }
    let count = u16::from_le_bytes([b[18], b[19]]) as usize;
    if 20 + count * 12 > b.len() {
        return Err((
            18,
            format!("{count} parent locator entries overrun the item"),
        ));
    }
    let text = |off: u32, len: u16, at: usize| -> std::result::Result<String, (u64, String)> {
        let (off, len) = (off as usize, usize::from(len));
        if off == 0 || len == 0 || len % 2 != 0 || off + len > b.len() {
            return Err((
                at as u64,
                format!("string of {len} bytes at {off} outside the locator"),
            ));
        }
        let units: Vec<u16> = b[off..off + len]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).map_err(|_| (at as u64, "string is not UTF-16".to_string()))
    };
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = 20 + i * 12;
        let e = &b[at..at + 12];
        let key = text(le32(e, 0), u16::from_le_bytes([e[8], e[9]]), at)?;
        let value = text(le32(e, 4), u16::from_le_bytes([e[10], e[11]]), at + 4)?;
        entries.push((key, value));
    }
    let locator = ParentLocator { entries };
    if locator.get("parent_linkage").is_none() {
        return Err((18, "parent locator without parent_linkage".into()));
    }
    Ok(locator)
}

impl<R: Read + Seek + Send> DiskImage for VhdxReader<R> {
    fn format_name(&self) -> &'static str {
        "vhdx"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        crate::image::check_read("VHDX", offset, buf.len(), self.size)?;
        while !buf.is_empty() {
            let b = offset / self.block_size;
            let within = offset % self.block_size;
            let n = ((self.block_size - within) as usize).min(buf.len());
            let (chunk, rest) = buf.split_at_mut(n);
            match self.map(b)? {
                Map::Zero => chunk.fill(0),
                Map::Parent => self.read_parent(offset, chunk)?,
                Map::File(at) => self.read_file(at + within, chunk)?,
                Map::Partial(at) => self.read_partial(b, at, within, chunk)?,
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        let (size, block_size) = (self.size, self.block_size);
        crate::image::merge_regions(offset, size, block_size, |o| {
            Ok(self.map(o / block_size)? == Map::Zero)
        })
    }
}

impl<R: Read + Seek> VhdxReader<R> {
    fn read_file(&mut self, at: u64, buf: &mut [u8]) -> Result<()> {
        if at + buf.len() as u64 > self.file_len {
            return Err(corrupt(
                at,
                format!(
                    "block data of {} bytes runs past the end of the {}-byte file",
                    buf.len(),
                    self.file_len
                ),
            ));
        }
        read_exact_at(&mut self.file, at, buf, "reading VHDX block data")
    }

    /// The parent's bytes at `offset`; zeros past the parent's end.
    fn read_parent(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let Some(parent) = self.parent.as_mut() else {
            let path = self
                .locator
                .as_ref()
                .and_then(|l| l.path())
                .unwrap_or("(no path recorded)");
            return Err(unsupported(format!(
                "a differencing disk read without its parent {}: give the parent to read it",
                crate::error::display_name(path)
            )));
        };
        let have = parent
            .virtual_size()
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (from_parent, past) = buf.split_at_mut(have);
        if !from_parent.is_empty() {
            parent.read_at(offset, from_parent)?;
        }
        past.fill(0);
        Ok(())
    }

    /// Block `b` (data at file offset `at`), from `within` into it: runs of
    /// sectors its sector bitmap marks present come from this file, the
    /// others from the parent (§2.4).
    fn read_partial(&mut self, b: u64, at: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        self.load_bitmap(b)?;
        let sector = self.logical_sector;
        let offset = b * self.block_size + within;
        let mut i = 0u64;
        let n = buf.len() as u64;
        while i < n {
            let present = |s: u64, bm: &[u8]| bm[(s / 8) as usize] & (1 << (s % 8)) != 0;
            let bm = self
                .bitmap
                .as_ref()
                .map(|(_, v)| v.as_slice())
                .unwrap_or(&[]);
            let first = (within + i) / sector;
            let here = present(first, bm);
            let mut j = ((first + 1) * sector - within).min(n);
            while j < n && present((within + j) / sector, bm) == here {
                j = (((within + j) / sector + 1) * sector - within).min(n);
            }
            let part = &mut buf[i as usize..j as usize];
            if here {
                self.read_file(at + within + i, part)?;
            } else {
                self.read_parent(offset + i, part)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Loads block `b`'s part of its chunk's sector bitmap block.
    fn load_bitmap(&mut self, b: u64) -> Result<()> {
        if self.bitmap.as_ref().is_some_and(|(k, _)| *k == b) {
            return Ok(());
        }
        let chunk = b / self.chunk_ratio;
        let index = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
        let entry_at = self.bat_offset + index * 8;
        let entry = self.bat.get(index as usize).copied().ok_or_else(|| {
            corrupt(
                entry_at,
                format!("no BAT entry for the sector bitmap of chunk {chunk}"),
            )
        })?;
        let offset = entry & OFFSET_MASK;
        if entry & 7 != SB_BLOCK_PRESENT || offset < MIB {
            return Err(corrupt(
                entry_at,
                format!(
                    "block {b} is partially present but its chunk's sector bitmap is not (state {}, offset {offset:#x})",
                    entry & 7
                ),
            ));
        }
        let bytes = self.block_size / self.logical_sector / 8;
        let at = offset + (b % self.chunk_ratio) * bytes;
        let mut bm = vec![0u8; bytes as usize];
        self.read_file(at, &mut bm)?;
        self.bitmap = Some((b, bm));
        Ok(())
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
