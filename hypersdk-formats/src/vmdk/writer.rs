//! The streamOptimized VMDK writer.

use std::io::Write;

use libdeflater::{CompressionLvl, Compressor};

use super::*;
use crate::error::{Error, Result};

/// Marker types of a stream-optimized extent.
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Sectors reserved before the first grain (header + descriptor), as VMware writes.
const OVERHEAD_SECTORS: u64 = 128;
/// Largest capacity we write: 256 TiB (VMware's own limit is 62 TiB), which
/// bounds the in-memory grain directory to 32 MiB.
pub const MAX_CAPACITY: u64 = 256 << 40;
/// Grains each compression thread gets per batch (32 × 64 KiB = 2 MiB).
const GRAINS_PER_THREAD: usize = 32;
/// Sectors reserved for the embedded descriptor.
const DESCRIPTOR_SECTORS: u64 = 20;

/// Options of [`StreamOptimizedWriter`].
#[derive(Debug, Clone)]
pub struct VmdkWriterOptions {
    /// `ddb.adapterType`: "lsilogic", "ide", "buslogic" or "legacyESX".
    pub adapter_type: String,
    /// zlib level 0–9 for grain compression (1 is fast and what we default to).
    pub compression_level: u32,
    /// The descriptor's content ID; any 32-bit value.
    pub cid: u32,
    /// File name recorded in the descriptor's extent line: the VMDK's own name.
    pub extent_name: String,
    /// Threads compressing grains; 0 means one per core.
    pub threads: usize,
}

impl Default for VmdkWriterOptions {
    fn default() -> Self {
        VmdkWriterOptions {
            adapter_type: "lsilogic".into(),
            compression_level: 1,
            cid: 0xfffffffe,
            extent_name: "disk.vmdk".into(),
            threads: 0,
        }
    }
}

/// What a finished writer produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmdkWriterStats {
    /// Bytes of the VMDK file.
    pub file_size: u64,
    /// Guest bytes in grains that were written (non-zero grains × grain size).
    pub populated_bytes: u64,
}

/// Writes a streamOptimized VMDK of a fixed capacity to any [`Write`], fed with
/// the guest-visible disk contents in order through [`write`](Self::write).
///
/// Non-zero grains are compressed in batches of 32 grains per thread on
/// `threads` scoped threads, then written in order.
///
/// Memory: a batch of grains and their compressed copies (2 MiB per thread
/// each), one 2 KiB grain table and the grain directory (4 bytes per 32 MiB of
/// capacity).
pub struct StreamOptimizedWriter<W: Write> {
    out: W,
    /// Bytes written to `out` so far; always a multiple of 512 between calls.
    pos: u64,
    capacity: u64,
    /// Guest bytes received so far.
    received: u64,
    grain: Vec<u8>,
    /// Non-zero grains waiting for compression, in LBA order.
    pending: Vec<(u64, Vec<u8>)>,
    /// Grain buffers to reuse.
    spare: Vec<Vec<u8>>,
    /// Framed-grain buffers to reuse (kept at their full length, so that
    /// reusing one costs no zeroing).
    spare_out: Vec<Vec<u8>>,
    /// Grains per compression batch.
    batch: usize,
    threads: usize,
    level: i32,
    gt: Vec<u32>,
    gt_index: u64,
    gt_dirty: bool,
    gd: Vec<u32>,
    header: [u8; 512],
    populated: u64,
}

impl<W: Write> std::fmt::Debug for StreamOptimizedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamOptimizedWriter")
            .field("capacity", &self.capacity)
            .field("received", &self.received)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<W: Write> StreamOptimizedWriter<W> {
    /// Starts a VMDK for a disk of `capacity` bytes (a multiple of 512), writing
    /// the header and descriptor at once.
    pub fn new(out: W, capacity: u64, options: &VmdkWriterOptions) -> Result<Self> {
        let (mut w, head) = Self::build(out, capacity, options)?;
        w.emit(&head)?;
        Ok(w)
    }

    /// A writer at the start, and the header + descriptor it begins with.
    fn build(out: W, capacity: u64, options: &VmdkWriterOptions) -> Result<(Self, Vec<u8>)> {
        if capacity == 0 || !capacity.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::InvalidInput {
                format: "VMDK",
                what: format!("capacity {capacity} is not a positive multiple of 512"),
            });
        }
        if capacity > MAX_CAPACITY {
            return Err(Error::InvalidInput {
                format: "VMDK",
                what: format!("capacity {capacity} exceeds the {MAX_CAPACITY}-byte maximum"),
            });
        }
        let capacity_sectors = capacity / SECTOR_SIZE;
        let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
        let gt_count = grains.div_ceil(GTES_PER_GT);
        let gd_len = usize::try_from(gt_count).map_err(|_| Error::InvalidInput {
            format: "VMDK",
            what: format!("capacity {capacity} is too large"),
        })?;
        let header = sparse_header(capacity_sectors, GD_AT_END);
        let threads = if options.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            options.threads
        };
        let descriptor = descriptor_text(capacity_sectors, options);
        if descriptor.len() as u64 > DESCRIPTOR_SECTORS * SECTOR_SIZE {
            return Err(Error::InvalidInput {
                format: "VMDK",
                what: "descriptor does not fit its reserved sectors".into(),
            });
        }
        let w = StreamOptimizedWriter {
            out,
            pos: 0,
            capacity,
            received: 0,
            grain: Vec::with_capacity(GRAIN_SIZE),
            pending: Vec::new(),
            spare: Vec::new(),
            spare_out: Vec::new(),
            batch: threads * GRAINS_PER_THREAD,
            threads,
            level: options.compression_level.min(9) as i32,
            gt: vec![0; GTES_PER_GT as usize],
            gt_index: 0,
            gt_dirty: false,
            gd: vec![0; gd_len],
            header,
            populated: 0,
        };
        let mut head = vec![0u8; (OVERHEAD_SECTORS * SECTOR_SIZE) as usize];
        head[..512].copy_from_slice(&header);
        head[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
        Ok((w, head))
    }

    /// Continues a VMDK this writer (same capacity and options) wrote up to
    /// a record boundary, as [`StreamChecker::writer_resume`](super::StreamChecker::writer_resume)
    /// read it back: `out` receives the bytes after `state.offset`, and the
    /// guest data goes on from `state.received`. The whole file is then the
    /// same, byte for byte, as one written in a single run.
    pub fn resume(
        out: W,
        capacity: u64,
        options: &VmdkWriterOptions,
        state: &super::WriterResume,
    ) -> Result<Self> {
        let (mut w, _) = Self::build(out, capacity, options)?;
        let bad = |what: String| Error::InvalidInput {
            format: "VMDK",
            what: format!("cannot continue the VMDK: {what}"),
        };
        if state.received > capacity
            || !state.received.is_multiple_of(GRAIN_SIZE as u64) && state.received != capacity
        {
            return Err(bad(format!("it stops at guest byte {}", state.received)));
        }
        w.pos = state.offset;
        w.received = state.received;
        w.populated = state.grains * GRAIN_SIZE as u64;
        for &(table, sector) in &state.gd {
            let e =
                w.gd.get_mut(table as usize)
                    .ok_or_else(|| bad(format!("grain table {table} is past the capacity")))?;
            *e = sector;
            w.gt_index = table;
        }
        for &(grain, sector) in &state.gt {
            w.gt_index = grain / GTES_PER_GT;
            w.gt[(grain % GTES_PER_GT) as usize] = sector;
            w.gt_dirty = true;
        }
        Ok(w)
    }

    /// Feeds the next guest bytes. Fails if more than the capacity is fed.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if self.received + data.len() as u64 > self.capacity {
            return Err(Error::LengthMismatch {
                format: "VMDK",
                expected: self.capacity,
                actual: self.received + data.len() as u64,
            });
        }
        while !data.is_empty() {
            let take = (GRAIN_SIZE - self.grain.len()).min(data.len());
            self.grain.extend_from_slice(&data[..take]);
            self.received += take as u64;
            data = &data[take..];
            if self.grain.len() == GRAIN_SIZE {
                self.flush_grain()?;
            }
        }
        Ok(())
    }

    /// Feeds `len` zero bytes without touching them: whole zero grains are
    /// skipped outright, so sparse regions cost nothing.
    pub fn write_zeroes(&mut self, mut len: u64) -> Result<()> {
        if self.received + len > self.capacity {
            return Err(Error::LengthMismatch {
                format: "VMDK",
                expected: self.capacity,
                actual: self.received + len,
            });
        }
        if !self.grain.is_empty() {
            let n = ((GRAIN_SIZE - self.grain.len()) as u64).min(len);
            self.grain.resize(self.grain.len() + n as usize, 0);
            self.received += n;
            len -= n;
            if self.grain.len() == GRAIN_SIZE {
                self.flush_grain()?;
            }
        }
        // The grain buffer is empty here unless `len` is already used up.
        let whole = len / GRAIN_SIZE as u64 * GRAIN_SIZE as u64;
        self.received += whole;
        let rest = (len - whole) as usize;
        self.grain.resize(self.grain.len() + rest, 0);
        self.received += rest as u64;
        Ok(())
    }

    /// Guest bytes fed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Writes the last grain, tables, directory, footer and end-of-stream marker.
    /// Fails unless exactly the capacity was fed.
    pub fn finish(mut self) -> Result<(W, VmdkWriterStats)> {
        if self.received != self.capacity {
            return Err(Error::LengthMismatch {
                format: "VMDK",
                expected: self.capacity,
                actual: self.received,
            });
        }
        if !self.grain.is_empty() {
            // A partial last grain is zero-padded: readers inflate whole grains.
            self.grain.resize(GRAIN_SIZE, 0);
            self.flush_grain()?;
        }
        self.flush_batch()?;
        self.flush_gt()?;
        // grain directory
        let gd_bytes = self.gd.len() as u64 * 4;
        let gd_sectors = gd_bytes.div_ceil(SECTOR_SIZE);
        self.emit(&marker(gd_sectors, MARKER_GD))?;
        let gd_offset = self.pos / SECTOR_SIZE;
        let mut buf = Vec::with_capacity((gd_sectors * SECTOR_SIZE) as usize);
        for e in &self.gd {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        buf.resize((gd_sectors * SECTOR_SIZE) as usize, 0);
        self.emit(&buf)?;
        // footer: header copy with the real gdOffset
        self.emit(&marker(1, MARKER_FOOTER))?;
        let mut footer = self.header;
        footer[56..64].copy_from_slice(&gd_offset.to_le_bytes());
        self.emit(&footer)?;
        self.emit(&marker(0, MARKER_EOS))?;
        self.out
            .flush()
            .map_err(|e| Error::io("flushing VMDK output", e))?;
        let stats = VmdkWriterStats {
            file_size: self.pos,
            populated_bytes: self.populated,
        };
        Ok((self.out, stats))
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        let pos = self.pos;
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(format!("writing VMDK at offset {pos:#x}"), e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Queues the full grain buffer for compression unless it is all zeros.
    fn flush_grain(&mut self) -> Result<()> {
        let grain_no = (self.received - 1) / GRAIN_SIZE as u64;
        if is_zero(&self.grain) {
            self.grain.clear();
            return Ok(());
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(GRAIN_SIZE));
        let full = std::mem::replace(&mut self.grain, next);
        self.pending.push((grain_no, full));
        if self.pending.len() >= self.batch {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Compresses the queued grains on up to `threads` threads, then writes
    /// them in LBA order with their grain tables.
    fn flush_batch(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut outs: Vec<Vec<u8>> = (0..pending.len())
            .map(|_| self.spare_out.pop().unwrap_or_default())
            .collect();
        let level = self.level;
        let workers = self.threads.min(pending.len()).max(1);
        let framed: Vec<Result<usize>> = if workers == 1 {
            match GrainCompressor::new(level) {
                Ok(mut c) => pending
                    .iter()
                    .zip(outs.iter_mut())
                    .map(|((n, g), out)| c.grain(*n, g, out))
                    .collect(),
                Err(e) => vec![Err(e)],
            }
        } else {
            let per = pending.len().div_ceil(workers);
            std::thread::scope(|scope| {
                let handles: Vec<_> = pending
                    .chunks(per)
                    .zip(outs.chunks_mut(per))
                    .map(|(part, out)| {
                        scope.spawn(move || match GrainCompressor::new(level) {
                            Ok(mut c) => part
                                .iter()
                                .zip(out.iter_mut())
                                .map(|((n, g), out)| c.grain(*n, g, out))
                                .collect::<Vec<_>>(),
                            Err(e) => vec![Err(e)],
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| match h.join() {
                        Ok(v) => v,
                        Err(_) => vec![Err(Error::InvalidInput {
                            format: "VMDK",
                            what: "a grain compression thread panicked".into(),
                        })],
                    })
                    .collect()
            })
        };
        for (((grain_no, mut buf), len), out) in pending.into_iter().zip(framed).zip(outs) {
            let len = len?;
            let gt_index = grain_no / GTES_PER_GT;
            if gt_index != self.gt_index {
                self.flush_gt()?;
                self.gt_index = gt_index;
            }
            let sector = self.pos / SECTOR_SIZE;
            self.gt[(grain_no % GTES_PER_GT) as usize] =
                u32::try_from(sector).map_err(|_| Error::InvalidInput {
                    format: "VMDK",
                    what: "output exceeds the 2 TiB a 32-bit grain table entry can address".into(),
                })?;
            self.gt_dirty = true;
            self.populated += GRAIN_SIZE as u64;
            self.emit(&out[..len])?;
            buf.clear();
            self.spare.push(buf);
            self.spare_out.push(out);
        }
        Ok(())
    }

    fn flush_gt(&mut self) -> Result<()> {
        if !self.gt_dirty {
            return Ok(());
        }
        let gt_sectors = GTES_PER_GT * 4 / SECTOR_SIZE;
        self.emit(&marker(gt_sectors, MARKER_GT))?;
        let offset = u32::try_from(self.pos / SECTOR_SIZE).map_err(|_| Error::InvalidInput {
            format: "VMDK",
            what: "output exceeds the 2 TiB a 32-bit grain directory entry can address".into(),
        })?;
        self.gd[self.gt_index as usize] = offset;
        let mut buf = Vec::with_capacity(GTES_PER_GT as usize * 4);
        for e in &self.gt {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        self.emit(&buf)?;
        self.gt.iter_mut().for_each(|e| *e = 0);
        self.gt_dirty = false;
        Ok(())
    }
}

/// Deflates grains at the writer's level, except grains whose bytes look
/// random (already compressed or encrypted data): deflating those costs
/// the most CPU and saves nothing, so they are stored (zlib level 0: the
/// grain copied into stored blocks, still a valid zlib stream that every
/// reader inflates).
struct GrainCompressor {
    deflate: Compressor,
    store: Compressor,
}

/// Grains whose order-0 entropy is at least this many bits per byte are
/// stored. Random grains measure 7.99 (16 KiB sampled); deflate at any level gains
/// at most about 1% on a grain above 7.9 unless it repeats whole runs of
/// random bytes within 32 KiB, which disks rarely do.
const STORE_ENTROPY_BITS: f64 = 7.9;

impl GrainCompressor {
    fn new(level: i32) -> Result<Self> {
        Ok(Self {
            deflate: compressor(level)?,
            store: compressor(0)?,
        })
    }

    /// One grain framed for the stream into `out`: marker {lba, size} +
    /// zlib data, padded to a whole sector; returns the framed length.
    /// `out` keeps its (full) length for reuse.
    fn grain(&mut self, grain_no: u64, data: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let c = if entropy_bits(data) >= STORE_ENTROPY_BITS {
            &mut self.store
        } else {
            &mut self.deflate
        };
        let bound = c.zlib_compress_bound(data.len());
        // Room for the sector padding too.
        let room = (12 + bound).next_multiple_of(SECTOR_SIZE as usize);
        if out.len() < room {
            out.resize(room, 0);
        }
        out[..8].copy_from_slice(&(grain_no * GRAIN_SECTORS).to_le_bytes());
        let n = c.zlib_compress(data, &mut out[12..]).map_err(|e| {
            Error::io(
                "compressing a VMDK grain",
                std::io::Error::other(format!("{e:?}")),
            )
        })?;
        out[8..12].copy_from_slice(&(n as u32).to_le_bytes());
        let len = (12 + n).next_multiple_of(SECTOR_SIZE as usize);
        out[12 + n..len].fill(0);
        Ok(len)
    }
}

/// Shannon entropy of the byte distribution of `data`, in bits per byte
/// (0 to 8), estimated from its first KiB of every 4 (the histogram costs
/// as much as copying the grain; a quarter, spread over the whole grain,
/// tells random from compressible bytes just as well). Four histograms
/// break the store-to-load dependency of runs of equal bytes.
fn entropy_bits(data: &[u8]) -> f64 {
    let mut h = [[0u32; 256]; 4];
    let mut n = 0usize;
    for window in data.chunks(4096) {
        let sample = &window[..window.len().min(1024)];
        n += sample.len();
        let mut quads = sample.chunks_exact(4);
        for q in &mut quads {
            h[0][q[0] as usize] += 1;
            h[1][q[1] as usize] += 1;
            h[2][q[2] as usize] += 1;
            h[3][q[3] as usize] += 1;
        }
        for &b in quads.remainder() {
            h[0][b as usize] += 1;
        }
    }
    if n == 0 {
        return 0.0;
    }
    let n = n as f64;
    let mut bits = 0.0;
    let [h0, h1, h2, h3] = &h;
    for (((a, b), c), d) in h0.iter().zip(h1).zip(h2).zip(h3) {
        let count = a + b + c + d;
        if count > 0 {
            let p = f64::from(count) / n;
            bits -= p * p.log2();
        }
    }
    bits
}

/// A zlib compressor at `level` (0–12 for libdeflate; we pass 0–9).
fn compressor(level: i32) -> Result<Compressor> {
    CompressionLvl::new(level)
        .map(Compressor::new)
        .map_err(|e| Error::InvalidInput {
            format: "VMDK",
            what: format!("compression level {level}: {e:?}"),
        })
}

/// Whether a buffer is all zero bytes (the inner fold vectorises).
fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

fn marker(val: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[..8].copy_from_slice(&val.to_le_bytes());
    // size (bytes 8..12) is 0 for metadata markers
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn sparse_header(capacity_sectors: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    let flags = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS;
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes()); // descriptorOffset
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes()); // rgdOffset
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h[72] = 0; // uncleanShutdown
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

fn descriptor_text(capacity_sectors: u64, options: &VmdkWriterOptions) -> String {
    // BIOS geometry as VMware computes it for SCSI disks: 255 heads, 63 sectors.
    let cylinders = (capacity_sectors / (255 * 63)).clamp(1, 65535);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity_sectors} SPARSE \"{extent}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.adapterType = \"{adapter}\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.virtualHWVersion = \"4\"\n",
        cid = options.cid,
        adapter = options.adapter_type,
        extent = options.extent_name.replace('"', "_"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_small_disk() {
        let cap = 3 * GRAIN_SIZE as u64 + 1024; // partial last grain
        let mut w = StreamOptimizedWriter::new(Vec::new(), cap, &Default::default()).unwrap();
        let mut data = vec![0u8; cap as usize];
        data[GRAIN_SIZE + 5] = 7; // grain 1 non-zero
        data[cap as usize - 1] = 9; // last partial grain non-zero
        w.write(&data).unwrap();
        let (out, stats) = w.finish().unwrap();
        assert_eq!(out.len() as u64, stats.file_size);
        assert_eq!(stats.populated_bytes, 2 * GRAIN_SIZE as u64);
        assert_eq!(&out[0..4], b"KDMV");
        // footer: last 1536 bytes are footer marker, footer, EOS
        let n = out.len();
        assert_eq!(
            u32::from_le_bytes(out[n - 1536 + 12..n - 1536 + 16].try_into().unwrap()),
            MARKER_FOOTER
        );
        assert_eq!(&out[n - 1024..n - 1020], b"KDMV");
        assert!(out[n - 512..].iter().all(|&b| b == 0));
        let gd = u64::from_le_bytes(out[n - 1024 + 56..n - 1024 + 64].try_into().unwrap());
        assert_ne!(gd, GD_AT_END);
        // first grain marker right after the overhead carries LBA 128
        let g = (OVERHEAD_SECTORS * SECTOR_SIZE) as usize;
        assert_eq!(
            u64::from_le_bytes(out[g..g + 8].try_into().unwrap()),
            GRAIN_SECTORS
        );
    }

    #[test]
    fn zero_runs_match_written_zeros() {
        let cap = 70u64 << 20;
        let mut data = vec![0u8; cap as usize];
        data[100] = 1;
        data[(50 << 20) + 7] = 2;
        let mut a = StreamOptimizedWriter::new(Vec::new(), cap, &Default::default()).unwrap();
        a.write(&data).unwrap();
        let mut b = StreamOptimizedWriter::new(Vec::new(), cap, &Default::default()).unwrap();
        b.write(&data[..1000]).unwrap();
        b.write_zeroes((50 << 20) - 1000).unwrap();
        b.write(&data[50 << 20..(50 << 20) + 4096]).unwrap();
        b.write_zeroes(cap - (50 << 20) - 4096).unwrap();
        assert_eq!(a.finish().unwrap().0, b.finish().unwrap().0);
    }

    #[test]
    fn resumes_at_every_record_boundary_to_the_same_bytes() {
        use super::super::StreamChecker;
        // Two grain tables' worth and a partial third: grains with data,
        // zero stretches, a whole empty table range.
        let cap = (2 * GTES_PER_GT + 40) * GRAIN_SIZE as u64 + 512;
        let mut data = vec![0u8; cap as usize];
        let mut x = 7u32;
        for (i, b) in data.iter_mut().enumerate() {
            let grain = i / GRAIN_SIZE;
            if grain % 3 != 1
                && !(GTES_PER_GT as usize..GTES_PER_GT as usize + 600).contains(&grain)
            {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (x >> 24) as u8 & 0x0f;
            }
        }
        let opts = VmdkWriterOptions {
            threads: 1,
            ..Default::default()
        };
        let mut w = StreamOptimizedWriter::new(Vec::new(), cap, &opts).unwrap();
        w.write(&data).unwrap();
        let (whole, _) = w.finish().unwrap();
        // Every boundary a cut can fall back to, a sample of cut points.
        let mut cuts: Vec<usize> = (0..whole.len()).step_by(whole.len() / 23).collect();
        cuts.push(whole.len() - 1);
        let mut seen = std::collections::BTreeSet::new();
        for cut in cuts {
            let mut c = StreamChecker::new();
            c.push(&whole[..cut]).unwrap();
            let at = c.boundary() as usize;
            if at == 0 || !seen.insert(at) {
                continue;
            }
            let mut c = StreamChecker::new();
            c.push(&whole[..at]).unwrap();
            let state = c.writer_resume().expect("our layout resumes");
            let mut out = whole[..at].to_vec();
            let mut w = StreamOptimizedWriter::resume(&mut out, cap, &opts, &state).unwrap();
            w.write(&data[state.received as usize..]).unwrap();
            let (_, stats) = w.finish().unwrap();
            assert_eq!(stats.file_size, whole.len() as u64);
            assert!(
                out == whole,
                "resumed at byte {at} (guest {})",
                state.received
            );
        }
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn random_grains_are_stored_and_text_grains_deflated() {
        use std::io::Read;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..GRAIN_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog, 0123456789\n"
            .iter()
            .copied()
            .cycle()
            .take(GRAIN_SIZE)
            .collect();
        assert!(entropy_bits(&random) > 7.98, "{}", entropy_bits(&random));
        assert!(entropy_bits(&text) < 5.0);
        assert_eq!(entropy_bits(&[0u8; 4096]), 0.0);
        let mut c = GrainCompressor::new(1).unwrap();
        for (data, stored) in [(&random, true), (&text, false)] {
            let mut framed = Vec::new();
            let len = c.grain(3, data, &mut framed).unwrap();
            assert_eq!(len % 512, 0);
            assert_eq!(
                u64::from_le_bytes(framed[..8].try_into().unwrap()),
                3 * GRAIN_SECTORS
            );
            let n = u32::from_le_bytes(framed[8..12].try_into().unwrap()) as usize;
            // zlib stored blocks: 2-byte header, 5 bytes per block, adler32.
            assert_eq!(n == 2 + 2 * 5 + GRAIN_SIZE + 4, stored, "{n}");
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&framed[12..12 + n])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == *data);
        }
    }

    #[test]
    fn length_is_enforced() {
        let mut w = StreamOptimizedWriter::new(Vec::new(), 1024, &Default::default()).unwrap();
        assert!(w.write(&[0; 2048]).is_err());
        w.write(&[0; 512]).unwrap();
        assert!(matches!(w.finish(), Err(Error::LengthMismatch { .. })));
        assert!(StreamOptimizedWriter::new(Vec::new(), 1000, &Default::default()).is_err());
        assert!(
            StreamOptimizedWriter::new(Vec::new(), MAX_CAPACITY + 512, &Default::default())
                .is_err()
        );
    }
}
