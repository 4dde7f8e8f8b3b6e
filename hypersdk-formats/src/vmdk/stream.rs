//! Reading a streamOptimized VMDK front to back, as it arrives over the
//! network (an ESXi/vCenter NFC export), without seeking.
//!
//! After the header and the descriptor area (`overHead` sectors), a
//! streamOptimized extent is a sequence of sector-aligned records: a grain
//! (12-byte marker: LBA u64 and compressed size u32, then the deflated grain)
//! or a metadata marker (512 bytes: sector count u64, size 0, type u32; then
//! that many sectors of grain table, grain directory or footer), ending with
//! the end-of-stream marker (type 0). [`StreamDecoder`] turns that into the
//! guest's bytes in order, zeros where no grain was stored, up to the
//! capacity. Grains must come in ascending LBA order, as every writer emits
//! them. In VMware's layout (grain directory at the end) a stream that stops
//! before its end-of-stream marker is an error, never a short disk; in
//! qemu-img's layout (no marker) the end of input ends the disk.
//!
//! Memory: one compressed and one decompressed grain (64 KiB each by
//! default).

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

use super::reader::parse_header;
use super::{GD_AT_END, SECTOR_SIZE};
use crate::error::{Error, Result};

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Decodes a streamOptimized VMDK from a `Read` into guest bytes (itself a
/// `Read`). Errors are `io::Error`s of kind `InvalidData` wrapping
/// [`Error::VmdkCorrupt`] with the byte offset in the stream.
pub struct StreamDecoder<R> {
    input: R,
    /// Bytes consumed from the input.
    pos: u64,
    capacity: u64,
    grain_bytes: usize,
    needs_eos: bool,
    /// Guest bytes returned so far.
    out_pos: u64,
    /// The decoded grain being returned, and where it starts in the guest.
    grain: Vec<u8>,
    grain_at: u64,
    grain_len: usize,
    compressed: Vec<u8>,
    inflater: Decompress,
    done: bool,
}

impl<R> std::fmt::Debug for StreamDecoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("pos", &self.pos)
            .field("capacity", &self.capacity)
            .field("out_pos", &self.out_pos)
            .finish_non_exhaustive()
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::VmdkCorrupt {
        offset,
        what: what.into(),
    }
}

fn invalid(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<R: Read> StreamDecoder<R> {
    /// Reads the header and skips the descriptor area.
    pub fn new(mut input: R) -> Result<Self> {
        let mut h = [0u8; 512];
        input
            .read_exact(&mut h)
            .map_err(|e| Error::io("reading the streamOptimized VMDK header", e))?;
        let header = parse_header(&h, 0)?;
        if !header.compressed() || header.flags & super::FLAG_MARKERS == 0 {
            return Err(Error::VmdkUnsupported(
                "a sparse VMDK that is not streamOptimized (no compressed grains with markers) cannot be read as a stream".into(),
            ));
        }
        let overhead = u64::from_le_bytes(h[64..72].try_into().map_err(|_| corrupt(64, "header"))?);
        if !(1..=(1 << 24)).contains(&overhead) {
            return Err(corrupt(64, format!("overhead of {overhead} sectors")));
        }
        let grain_bytes = (header.grain_size * SECTOR_SIZE) as usize;
        let mut d = StreamDecoder {
            input,
            pos: 512,
            capacity: header.capacity * SECTOR_SIZE,
            grain_bytes,
            needs_eos: header.gd_offset == GD_AT_END,
            out_pos: 0,
            grain: vec![0; grain_bytes],
            grain_at: 0,
            grain_len: 0,
            compressed: Vec::new(),
            inflater: Decompress::new(true),
            done: false,
        };
        d.skip((overhead - 1) * SECTOR_SIZE)?;
        Ok(d)
    }

    /// The guest capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let take = n.min(buf.len() as u64) as usize;
            self.input.read_exact(&mut buf[..take]).map_err(|e| {
                Error::io(format!("reading the VMDK stream at byte {}", self.pos), e)
            })?;
            self.pos += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads one sector; Ok(None) at a clean end of input.
    fn sector(&mut self, buf: &mut [u8; 512]) -> Result<bool> {
        let mut got = 0;
        while got < 512 {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(corrupt(
                        self.pos + got as u64,
                        "the stream ends inside a sector",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("reading the VMDK stream at byte {}", self.pos),
                        e,
                    ))
                }
            }
        }
        self.pos += 512;
        Ok(true)
    }

    /// Reads records until the next grain is decoded (true) or the stream
    /// ends (false).
    fn next_grain(&mut self) -> Result<bool> {
        let mut s = [0u8; 512];
        loop {
            let at = self.pos;
            if !self.sector(&mut s)? {
                if self.needs_eos {
                    return Err(corrupt(
                        at,
                        "the stream ends without its end-of-stream marker (truncated)",
                    ));
                }
                return Ok(false);
            }
            let value = u64::from_le_bytes(s[0..8].try_into().map_err(|_| corrupt(at, "marker"))?);
            let size = u32::from_le_bytes(s[8..12].try_into().map_err(|_| corrupt(at, "marker"))?);
            if size == 0 {
                let kind =
                    u32::from_le_bytes(s[12..16].try_into().map_err(|_| corrupt(at, "marker"))?);
                match kind {
                    MARKER_EOS => return Ok(false),
                    MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                        if value > (1 << 24) {
                            return Err(corrupt(at, format!("metadata of {value} sectors")));
                        }
                        self.skip(value * SECTOR_SIZE)?;
                        continue;
                    }
                    k => return Err(corrupt(at + 12, format!("unknown marker type {k}"))),
                }
            }
            // A grain: LBA `value`, `size` compressed bytes from offset 12.
            let lba_bytes = value
                .checked_mul(SECTOR_SIZE)
                .ok_or_else(|| corrupt(at, "grain LBA overflows"))?;
            if lba_bytes % self.grain_bytes as u64 != 0 || lba_bytes >= self.capacity {
                return Err(corrupt(
                    at,
                    format!("grain at LBA {value} is not grain-aligned inside the capacity"),
                ));
            }
            if lba_bytes < self.out_pos {
                return Err(corrupt(
                    at,
                    format!(
                        "grain at LBA {value} comes after data beyond it (grains out of order)"
                    ),
                ));
            }
            let size = size as usize;
            if size > 2 * self.grain_bytes + 1024 {
                return Err(corrupt(at + 8, format!("compressed grain of {size} bytes")));
            }
            self.compressed.clear();
            let first = size.min(500);
            self.compressed.extend_from_slice(&s[12..12 + first]);
            let total = 12 + size;
            let padded = total.div_ceil(512) * 512;
            let rest = padded - 512;
            if rest > 0 {
                let start = self.compressed.len();
                self.compressed.resize(start + rest, 0);
                self.input
                    .read_exact(&mut self.compressed[start..])
                    .map_err(|e| {
                        Error::io(
                            format!("reading the grain at byte {at} of the VMDK stream"),
                            e,
                        )
                    })?;
                self.pos += rest as u64;
                self.compressed.truncate(size);
            }
            // The last grain may hold fewer bytes than a grain, or a whole
            // zero-padded grain (writers differ): only `want` bytes count.
            let want = (self.capacity - lba_bytes).min(self.grain_bytes as u64) as usize;
            self.inflater.reset(true);
            let status = self
                .inflater
                .decompress(&self.compressed, &mut self.grain, FlushDecompress::Finish)
                .map_err(|e| {
                    corrupt(
                        at + 12,
                        format!("grain at LBA {value} does not inflate: {e}"),
                    )
                })?;
            let out = self.inflater.total_out() as usize;
            if status != Status::StreamEnd || out < want {
                return Err(corrupt(
                    at + 12,
                    format!("grain at LBA {value} inflates to {out} bytes, expected {want}"),
                ));
            }
            self.grain_at = lba_bytes;
            self.grain_len = want;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for StreamDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_pos >= self.capacity {
            // Every guest byte is out; the rest of the stream (grain tables,
            // directory, footer) must still be there and end properly.
            if !self.done {
                if self.next_grain().map_err(invalid)? {
                    return Err(invalid(corrupt(self.pos, "a grain after the last one")));
                }
                self.done = true;
            }
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // Inside the current grain: copy from it.
            if self.grain_len > 0 && self.out_pos >= self.grain_at {
                let off = (self.out_pos - self.grain_at) as usize;
                if off < self.grain_len {
                    let n = (self.grain_len - off).min(buf.len());
                    buf[..n].copy_from_slice(&self.grain[off..off + n]);
                    self.out_pos += n as u64;
                    return Ok(n);
                }
                self.grain_len = 0;
            }
            // Before the next grain (or to the end): zeros.
            if self.grain_len > 0 || self.done {
                let until = if self.done {
                    self.capacity
                } else {
                    self.grain_at
                };
                let n = ((until - self.out_pos) as usize).min(buf.len());
                buf[..n].fill(0);
                self.out_pos += n as u64;
                return Ok(n);
            }
            match self.next_grain().map_err(invalid)? {
                true => {}
                false => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::{StreamOptimizedWriter, VmdkWriterOptions};

    /// `data` as our writer's streamOptimized VMDK, and its populated bytes.
    pub(super) fn encode_with_stats(data: &[u8]) -> (Vec<u8>, u64) {
        let mut w = StreamOptimizedWriter::new(
            Vec::new(),
            data.len() as u64,
            &VmdkWriterOptions::default(),
        )
        .unwrap();
        w.write(data).unwrap();
        let (v, stats) = w.finish().unwrap();
        (v, stats.populated_bytes)
    }

    fn encode(data: &[u8]) -> Vec<u8> {
        encode_with_stats(data).0
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if (i / 65536) % 3 == 1 {
                    0
                } else {
                    (i % 251) as u8 ^ (i >> 16) as u8
                }
            })
            .collect()
    }

    #[test]
    fn decodes_our_vmware_layout_in_one_pass() {
        for len in [512usize, 65536, 3 * 65536 + 4096, 1 << 21] {
            let data = sample(len);
            let vmdk = encode(&data);
            let mut back = Vec::new();
            // A reader that returns at most 1000 bytes at a time, like a socket.
            struct Trickle<'a>(&'a [u8]);
            impl Read for Trickle<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = b.len().min(1000).min(self.0.len());
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut d = StreamDecoder::new(Trickle(&vmdk)).unwrap();
            d.read_to_end(&mut back).unwrap();
            assert_eq!(back.len(), data.len(), "len {len}");
            assert!(back == data, "len {len}");
        }
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut d = StreamDecoder::new(bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        d.read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn truncation_and_damage_are_errors() {
        let data: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 7 % 256) as u8).collect();
        let vmdk = encode(&data);
        assert_eq!(decode(&vmdk).unwrap(), data);
        // Cut before the end-of-stream marker: an error, not a short disk.
        let err = decode(&vmdk[..vmdk.len() - 512]).unwrap_err();
        assert!(err.contains("end-of-stream"), "{err}");
        // Cut anywhere else.
        for cut in [vmdk.len() / 2 + 7, vmdk.len() - 3000, 600] {
            assert!(decode(&vmdk[..cut]).is_err(), "cut at {cut}");
        }
        // A flipped byte inside the first grain's compressed data.
        let overhead = u64::from_le_bytes(vmdk[64..72].try_into().unwrap()) as usize;
        let mut bad = vmdk.clone();
        bad[overhead * 512 + 12 + 50] ^= 0xff;
        assert!(decode(&bad).is_err());
        // Not a VMDK at all.
        assert!(decode(b"# Disk DescriptorFile\n").is_err());
    }
}

/// Checks the structure of a streamOptimized VMDK pushed in chunks of any
/// size, without inflating it: the header, the record markers and their
/// sizes, grains in ascending order inside the capacity, and — in VMware's
/// layout — the end-of-stream marker with nothing after it. For storing an
/// NFC export as it arrives while still refusing a truncated or garbled one.
/// Its state between two records can be saved and taken up again
/// ([`state`](Self::state)). Memory: one sector, the grains since the last
/// grain table (at most 512) and one entry per grain table (one per 32 MiB
/// of guest data in our layout).
#[derive(Debug, Clone)]
pub struct StreamChecker {
    sector: Vec<u8>,
    skip: u64,
    pos: u64,
    header_done: bool,
    capacity: u64,
    grain_bytes: u64,
    needs_eos: bool,
    next_lba_bytes: u64,
    populated: u64,
    done: bool,
    /// Where the last whole record (or the header) ends, before the tail
    /// (grain directory, footer, end-of-stream marker).
    boundary: u64,
    tail: bool,
    /// Grains since the last grain table: (grain number, marker sector).
    gt: Vec<(u64, u32)>,
    /// Grain tables so far: (table number, first sector of the table).
    gd: Vec<(u64, u32)>,
    grains: u64,
    /// A grain table with no grain before it (a layout other than ours).
    foreign: bool,
}

/// Where a [`StreamOptimizedWriter`](super::StreamOptimizedWriter) that
/// wrote a VMDK up to a record boundary stood, so that it can go on from
/// there and write the same bytes an uninterrupted run writes
/// ([`StreamChecker::writer_resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterResume {
    /// VMDK bytes kept (a record boundary).
    pub offset: u64,
    /// Guest bytes covered: where the guest data continues.
    pub received: u64,
    /// Grains since the last grain table: (grain number, marker sector).
    pub gt: Vec<(u64, u32)>,
    /// Grain tables written: (table number, first sector).
    pub gd: Vec<(u64, u32)>,
    /// Grains written.
    pub grains: u64,
}

/// A [`StreamChecker`] between two records, saved so that it can be taken
/// up again ([`StreamChecker::state`], [`StreamChecker::from_state`]): with
/// the bytes before it, the record structure is all a checker carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckerState {
    /// Bytes of the stream seen (a record boundary).
    pub pos: u64,
    /// Guest capacity in bytes.
    pub capacity: u64,
    /// Grain size in bytes.
    pub grain_bytes: u64,
    /// Whether the stream must end with an end-of-stream marker.
    pub needs_eos: bool,
    /// Where the next grain may start (guest bytes).
    pub next_lba_bytes: u64,
    /// Guest bytes in grains seen.
    pub populated: u64,
    /// Grains since the last grain table: (grain number, marker sector).
    pub gt: Vec<(u64, u32)>,
    /// Grain tables so far: (table number, first sector of the table).
    pub gd: Vec<(u64, u32)>,
    /// Grains seen.
    pub grains: u64,
    /// Whether the layout is other than ours.
    pub foreign: bool,
}

/// What [`StreamChecker::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Guest capacity in bytes.
    pub capacity: u64,
    /// Guest bytes in stored grains.
    pub populated: u64,
    /// Bytes of the VMDK stream.
    pub size: u64,
}

impl Default for StreamChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamChecker {
    /// A checker at the start of a stream.
    pub fn new() -> Self {
        StreamChecker {
            sector: Vec::with_capacity(512),
            skip: 0,
            pos: 0,
            header_done: false,
            capacity: 0,
            grain_bytes: 0,
            needs_eos: false,
            next_lba_bytes: 0,
            populated: 0,
            done: false,
            boundary: 0,
            tail: false,
            gt: Vec::new(),
            gd: Vec::new(),
            grains: 0,
            foreign: false,
        }
    }

    /// Where the last whole record seen ends (0 before the header is
    /// complete); never past the start of the stream's tail (grain
    /// directory, footer, end marker). A stream cut anywhere can be
    /// continued from here.
    pub fn boundary(&self) -> u64 {
        self.boundary
    }

    /// The state of a writer in our layout that wrote exactly the bytes
    /// pushed so far — None unless they end at [`boundary`](Self::boundary)
    /// and follow the layout [`StreamOptimizedWriter`](super::StreamOptimizedWriter)
    /// writes (a grain table after its grains, 64 KiB grains).
    pub fn writer_resume(&self) -> Option<WriterResume> {
        if !self.header_done
            || self.pos != self.boundary
            || self.foreign
            || self.tail
            || self.grain_bytes != super::GRAIN_SIZE as u64
        {
            return None;
        }
        let grain = self.grain_bytes;
        let received = match (self.gt.last(), self.gd.last()) {
            (Some(&(g, _)), _) => (g + 1) * grain,
            (None, Some(&(t, _))) => (t + 1) * super::GTES_PER_GT * grain,
            (None, None) => 0,
        };
        Some(WriterResume {
            offset: self.pos,
            received: received.min(self.capacity),
            gt: self.gt.clone(),
            gd: self.gd.clone(),
            grains: self.grains,
        })
    }

    /// The checker's state, if it stands between two records (at
    /// [`boundary`](Self::boundary), before the stream's tail).
    pub fn state(&self) -> Option<CheckerState> {
        if !self.header_done || self.pos != self.boundary || self.tail || self.skip > 0 {
            return None;
        }
        Some(CheckerState {
            pos: self.pos,
            capacity: self.capacity,
            grain_bytes: self.grain_bytes,
            needs_eos: self.needs_eos,
            next_lba_bytes: self.next_lba_bytes,
            populated: self.populated,
            gt: self.gt.clone(),
            gd: self.gd.clone(),
            grains: self.grains,
            foreign: self.foreign,
        })
    }

    /// A checker taken up from a saved [`state`](Self::state): it goes on
    /// as the one that saved it would have.
    pub fn from_state(s: CheckerState) -> Result<Self> {
        if s.grain_bytes == 0
            || !s.grain_bytes.is_multiple_of(SECTOR_SIZE)
            || !s.pos.is_multiple_of(SECTOR_SIZE)
        {
            return Err(corrupt(s.pos, "a saved checker state that no stream gives"));
        }
        Ok(StreamChecker {
            sector: Vec::with_capacity(512),
            skip: 0,
            pos: s.pos,
            header_done: true,
            capacity: s.capacity,
            grain_bytes: s.grain_bytes,
            needs_eos: s.needs_eos,
            next_lba_bytes: s.next_lba_bytes,
            populated: s.populated,
            done: false,
            boundary: s.pos,
            tail: false,
            gt: s.gt,
            gd: s.gd,
            grains: s.grains,
            foreign: s.foreign,
        })
    }

    /// How many more bytes at most end the record being read (or the
    /// header): pushing exactly that many reaches the next boundary, if
    /// there is one. At least 1.
    pub fn to_boundary(&self) -> usize {
        if self.done {
            usize::MAX
        } else if self.skip > 0 {
            usize::try_from(self.skip).unwrap_or(usize::MAX)
        } else {
            512 - self.sector.len()
        }
    }

    /// Bytes of the stream pushed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Guest capacity, once the header has been seen (else 0).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// How far into the guest the grains seen so far reach.
    pub fn guest_position(&self) -> u64 {
        self.next_lba_bytes.min(self.capacity)
    }

    /// Feeds the next bytes of the stream.
    pub fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.done {
                if data.iter().any(|&b| b != 0) {
                    return Err(corrupt(self.pos, "data after the end-of-stream marker"));
                }
                self.pos += data.len() as u64;
                return Ok(());
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64) as usize;
                self.skip -= n as u64;
                self.pos += n as u64;
                data = &data[n..];
                self.mark_boundary();
                continue;
            }
            let n = (512 - self.sector.len()).min(data.len());
            self.sector.extend_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.sector.len() == 512 {
                let s = std::mem::take(&mut self.sector);
                self.record(&s)?;
                self.sector = s;
                self.sector.clear();
            }
            self.mark_boundary();
        }
        Ok(())
    }

    fn mark_boundary(&mut self) {
        if self.header_done && self.skip == 0 && self.sector.is_empty() && !self.tail {
            self.boundary = self.pos;
        }
    }

    fn record(&mut self, s: &[u8]) -> Result<()> {
        let at = self.pos - 512;
        let le64 = |i: usize| {
            u64::from_le_bytes([
                s[i],
                s[i + 1],
                s[i + 2],
                s[i + 3],
                s[i + 4],
                s[i + 5],
                s[i + 6],
                s[i + 7],
            ])
        };
        let le32 = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        if !self.header_done {
            let mut h = [0u8; 512];
            h.copy_from_slice(s);
            let header = parse_header(&h, 0)?;
            if !header.compressed() || header.flags & super::FLAG_MARKERS == 0 {
                return Err(Error::VmdkUnsupported(
                    "not a streamOptimized VMDK (no compressed grains with markers)".into(),
                ));
            }
            let overhead = le64(64);
            if !(1..=(1 << 24)).contains(&overhead) {
                return Err(corrupt(64, format!("overhead of {overhead} sectors")));
            }
            self.capacity = header.capacity * SECTOR_SIZE;
            self.grain_bytes = header.grain_size * SECTOR_SIZE;
            self.needs_eos = header.gd_offset == GD_AT_END;
            self.skip = (overhead - 1) * SECTOR_SIZE;
            self.header_done = true;
            return Ok(());
        }
        let value = le64(0);
        let size = le32(8) as u64;
        if size == 0 {
            let kind = le32(12);
            if kind != MARKER_GT {
                self.tail = true;
            }
            match kind {
                MARKER_EOS => self.done = true,
                MARKER_GT if value <= (1 << 24) => {
                    match self.gt.last() {
                        Some(&(g, _)) => {
                            let table = g / super::GTES_PER_GT;
                            self.gd.push((table, (self.pos / SECTOR_SIZE) as u32));
                        }
                        None => self.foreign = true,
                    }
                    self.gt.clear();
                    self.skip = value * SECTOR_SIZE
                }
                MARKER_GD | MARKER_FOOTER if value <= (1 << 24) => self.skip = value * SECTOR_SIZE,
                MARKER_GT | MARKER_GD | MARKER_FOOTER => {
                    return Err(corrupt(at, format!("metadata of {value} sectors")))
                }
                k => return Err(corrupt(at + 12, format!("unknown marker type {k}"))),
            }
            return Ok(());
        }
        let lba_bytes = value
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(at, "grain LBA overflows"))?;
        if lba_bytes % self.grain_bytes != 0 || lba_bytes >= self.capacity {
            return Err(corrupt(
                at,
                format!("grain at LBA {value} is not grain-aligned inside the capacity"),
            ));
        }
        if lba_bytes < self.next_lba_bytes {
            return Err(corrupt(at, format!("grain at LBA {value} is out of order")));
        }
        if size > 2 * self.grain_bytes + 1024 {
            return Err(corrupt(at + 8, format!("compressed grain of {size} bytes")));
        }
        self.next_lba_bytes = lba_bytes + self.grain_bytes;
        self.populated += self.grain_bytes.min(self.capacity - lba_bytes);
        self.grains += 1;
        match u32::try_from(at / SECTOR_SIZE) {
            Ok(sector) if !self.foreign => {
                self.gt.push((lba_bytes / self.grain_bytes, sector));
            }
            _ => self.foreign = true,
        }
        self.skip = (12 + size).div_ceil(512) * 512 - 512;
        Ok(())
    }

    /// Ends the stream: it must not stop inside a record, and in VMware's
    /// layout it must have reached its end-of-stream marker.
    pub fn finish(self) -> Result<StreamStats> {
        if !self.header_done {
            return Err(corrupt(self.pos, "the stream ends inside the VMDK header"));
        }
        if self.skip > 0 || !self.sector.is_empty() {
            return Err(corrupt(
                self.pos,
                "the stream ends inside a record (truncated)",
            ));
        }
        if self.needs_eos && !self.done {
            return Err(corrupt(
                self.pos,
                "the stream ends without its end-of-stream marker (truncated)",
            ));
        }
        Ok(StreamStats {
            capacity: self.capacity,
            populated: self.populated,
            size: self.pos,
        })
    }
}

#[cfg(test)]
mod checker_tests {
    use super::tests::encode_with_stats as encode;
    use super::*;

    fn check(bytes: &[u8], chunk: usize) -> Result<StreamStats> {
        let mut c = StreamChecker::new();
        for part in bytes.chunks(chunk) {
            c.push(part)?;
        }
        c.finish()
    }

    #[test]
    fn accepts_whole_streams_in_any_chunking_and_refuses_cut_ones() {
        let data: Vec<u8> = (0..(3usize << 20))
            .map(|i| {
                if (i >> 16) % 4 == 2 {
                    0
                } else {
                    (i * 13 % 251) as u8
                }
            })
            .collect();
        let (vmdk, populated) = encode(&data);
        for chunk in [1, 511, 512, 4096, 100_000, vmdk.len()] {
            let s = check(&vmdk, chunk).unwrap();
            assert_eq!(s.capacity, data.len() as u64);
            assert_eq!(s.populated, populated);
            assert_eq!(s.size, vmdk.len() as u64);
        }
        for cut in [100, 600, vmdk.len() / 2, vmdk.len() - 512, vmdk.len() - 1] {
            assert!(check(&vmdk[..cut], 4096).is_err(), "cut at {cut}");
        }
        let mut extra = vmdk.clone();
        extra.extend_from_slice(b"garbage");
        assert!(check(&extra, 4096).is_err());
        assert!(check(b"# Disk DescriptorFile\nversion=1\n", 64).is_err());
    }

    #[test]
    fn a_saved_state_goes_on_like_the_checker_that_saved_it() {
        let data: Vec<u8> = (0..(40usize << 20))
            .map(|i| {
                if (i >> 16) % 5 == 3 {
                    0
                } else {
                    (i * 31 % 253) as u8
                }
            })
            .collect();
        let (vmdk, populated) = encode(&data);
        // Push record by record, save at every boundary, take the state up
        // again and finish the stream from there.
        let mut c = StreamChecker::new();
        let mut at = 0usize;
        let mut saved = Vec::new();
        while at < vmdk.len() {
            let n = c.to_boundary().min(vmdk.len() - at);
            assert!(n >= 1);
            c.push(&vmdk[at..at + n]).unwrap();
            at += n;
            if let Some(s) = c.state() {
                assert_eq!(s.pos, at as u64);
                assert_eq!(c.boundary(), at as u64);
                saved.push(s);
            }
        }
        assert!(saved.len() > 500, "{} boundaries", saved.len());
        let whole = c.finish().unwrap();
        for s in saved.iter().step_by(97).chain(saved.last()) {
            let from = s.pos as usize;
            let resume = StreamChecker::from_state(s.clone()).unwrap();
            let mut c = StreamChecker::from_state(s.clone()).unwrap();
            // The writer state agrees with the one a read-back gives.
            let mut fresh = StreamChecker::new();
            fresh.push(&vmdk[..from]).unwrap();
            assert_eq!(resume.writer_resume(), fresh.writer_resume(), "at {from}");
            for part in vmdk[from..].chunks(100_000) {
                c.push(part).unwrap();
            }
            assert_eq!(c.finish().unwrap(), whole);
        }
        assert_eq!(whole.populated, populated);
        // A state from a cut record is refused where it goes wrong.
        let mut c = StreamChecker::from_state(saved[5].clone()).unwrap();
        let from = saved[5].pos as usize;
        assert!(c.push(&vmdk[from + 512..]).is_err());
    }
}
