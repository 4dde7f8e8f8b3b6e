//! A streaming qcow2 v3 writer over a seekable output.
//!
//! Layout written, in file order (64 KiB clusters):
//!
//! ```text
//! cluster 0        header (v3, refcount_order 4, header_length 104, no extensions)
//! clusters 1..     the L1 table, reserved up front, filled in by finish()
//! then             data clusters in guest order, each 512 MiB range followed by
//!                  its L2 table; a refcount block (16-bit entries, covering 2 GiB
//!                  of file) is written whenever the file grows past the range
//!                  the current one covers
//! at the end       the last refcount block(s) and the refcount table
//! ```
//!
//! Zero clusters are not stored (their L2 entry stays 0 and reads as zeros).
//! With compression on, a cluster is stored deflate-compressed (raw deflate,
//! 4 KiB window as QEMU reads it) when that saves space, packed back to back
//! on 512-byte boundaries. Memory: one L2 table (64 KiB), one refcount block
//! (64 KiB), the L1 table (8 bytes per 512 MiB) and the refcount table
//! (8 bytes per 2 GiB of file).

use std::io::{Seek, SeekFrom, Write};

use flate2::{Compress, Compression, FlushCompress, Status};

use super::QCOW2_MAGIC;
use crate::error::{Error, Result};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
const RC_ENTRIES: u64 = CLUSTER / 2; // 16-bit refcounts
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

/// Options of [`Qcow2Writer`].
#[derive(Debug, Clone, Default)]
pub struct Qcow2WriterOptions {
    /// Store clusters deflate-compressed (slower, smaller; like `qemu-img convert -c`).
    pub compress: bool,
    /// Compression level 0–9 when compressing (default 0 means 6).
    pub level: u32,
}

/// Writes a qcow2 image of a fixed virtual size, fed in guest order.
pub struct Qcow2Writer<W: Write + Seek> {
    out: W,
    size: u64,
    received: u64,
    /// Next free byte in the file (compressed data packs at byte granularity).
    end: u64,
    cluster: Vec<u8>,
    l1: Vec<u64>,
    l1_offset: u64,
    l2: Vec<u64>,
    l2_index: u64,
    l2_dirty: bool,
    rc_table: Vec<u64>,
    rc_block: Vec<u16>,
    rc_window: u64,
    compressor: Option<Compress>,
    compressed: Vec<u8>,
    /// Where the output's position is.
    cursor: u64,
}

impl<W: Write + Seek> std::fmt::Debug for Qcow2Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("size", &self.size)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("writing qcow2 {what}"), e)
}

impl<W: Write + Seek> Qcow2Writer<W> {
    /// Starts an image of `size` bytes (a multiple of 512), reserving the header and L1 table.
    pub fn new(mut out: W, size: u64, options: &Qcow2WriterOptions) -> Result<Self> {
        if size == 0 || !size.is_multiple_of(512) || size > (1 << 50) {
            return Err(Error::InvalidInput {
                format: "qcow2",
                what: format!("virtual size {size} must be a positive multiple of 512 up to 1 PiB"),
            });
        }
        let l1_size = size.div_ceil(CLUSTER * L2_ENTRIES);
        let l1_clusters = (l1_size * 8).div_ceil(CLUSTER);
        out.seek(SeekFrom::Start(0)).map_err(io("header"))?;
        out.write_all(&vec![0u8; ((1 + l1_clusters) * CLUSTER) as usize])
            .map_err(io("header"))?;
        let compressor = options.compress.then(|| {
            let level = if options.level == 0 {
                6
            } else {
                options.level.min(9)
            };
            Compress::new_with_window_bits(Compression::new(level), false, 12)
        });
        let mut w = Qcow2Writer {
            out,
            size,
            received: 0,
            end: (1 + l1_clusters) * CLUSTER,
            cluster: Vec::with_capacity(CLUSTER as usize),
            l1: vec![0; l1_size as usize],
            l1_offset: CLUSTER,
            l2: vec![0; L2_ENTRIES as usize],
            l2_index: 0,
            l2_dirty: false,
            rc_table: Vec::new(),
            rc_block: vec![0; RC_ENTRIES as usize],
            rc_window: 0,
            compressor,
            compressed: Vec::with_capacity(CLUSTER as usize + 1024),
            cursor: (1 + l1_clusters) * CLUSTER,
        };
        for c in 0..1 + l1_clusters {
            w.add_ref(c)?;
        }
        Ok(w)
    }

    /// Feeds guest bytes.
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.check(data.len() as u64)?;
        // Whole clusters straight from the caller's buffer, without a copy.
        while self.cluster.is_empty() && data.len() >= CLUSTER as usize {
            let (whole, rest) = data.split_at(CLUSTER as usize);
            self.received += CLUSTER;
            self.store_cluster(whole)?;
            data = rest;
        }
        while !data.is_empty() {
            let take = (CLUSTER as usize - self.cluster.len()).min(data.len());
            self.cluster.extend_from_slice(&data[..take]);
            self.received += take as u64;
            data = &data[take..];
            if self.cluster.len() == CLUSTER as usize {
                self.flush_cluster()?;
            }
        }
        Ok(())
    }

    /// Feeds `len` zero bytes; whole zero clusters are skipped without work.
    pub fn write_zeroes(&mut self, mut len: u64) -> Result<()> {
        self.check(len)?;
        if !self.cluster.is_empty() {
            let n = (CLUSTER - self.cluster.len() as u64).min(len);
            self.cluster.resize(self.cluster.len() + n as usize, 0);
            self.received += n;
            len -= n;
            if self.cluster.len() == CLUSTER as usize {
                self.flush_cluster()?;
            }
        }
        let whole = len / CLUSTER * CLUSTER;
        self.received += whole;
        let rest = len - whole;
        self.cluster.resize(self.cluster.len() + rest as usize, 0);
        self.received += rest;
        Ok(())
    }

    fn check(&self, len: u64) -> Result<()> {
        if self.received + len > self.size {
            return Err(Error::LengthMismatch {
                format: "qcow2",
                expected: self.size,
                actual: self.received + len,
            });
        }
        Ok(())
    }

    /// Counts one more reference to host cluster `c`, writing out refcount
    /// blocks as the file outgrows them.
    fn add_ref(&mut self, c: u64) -> Result<()> {
        while c >= (self.rc_window + 1) * RC_ENTRIES {
            self.flush_rc_block()?;
        }
        let slot = &mut self.rc_block[(c - self.rc_window * RC_ENTRIES) as usize];
        *slot = slot.checked_add(1).ok_or_else(|| Error::InvalidInput {
            format: "qcow2",
            what: "refcount overflow".into(),
        })?;
        Ok(())
    }

    /// Writes the current refcount block at the end of the file and moves to
    /// the next window. The block counts its own cluster when that lies in
    /// the window it covers; otherwise the next window does.
    fn flush_rc_block(&mut self) -> Result<()> {
        let at = self.alloc_cluster();
        let own = at / CLUSTER;
        let window_end = (self.rc_window + 1) * RC_ENTRIES;
        if own < window_end {
            self.rc_block[(own - self.rc_window * RC_ENTRIES) as usize] += 1;
        }
        let mut raw = Vec::with_capacity(CLUSTER as usize);
        for r in &self.rc_block {
            raw.extend_from_slice(&r.to_be_bytes());
        }
        self.write_at(at, &raw, "refcount block")?;
        self.rc_block.iter_mut().for_each(|r| *r = 0);
        self.rc_table.push(at);
        self.rc_window += 1;
        if own >= window_end {
            self.add_ref(own)?;
        }
        Ok(())
    }

    /// Writes `bytes` at file offset `at`, seeking only when not already there.
    fn write_at(&mut self, at: u64, bytes: &[u8], what: &str) -> Result<()> {
        if at != self.cursor {
            self.out.seek(SeekFrom::Start(at)).map_err(io(what))?;
        }
        self.out.write_all(bytes).map_err(io(what))?;
        self.cursor = at + bytes.len() as u64;
        Ok(())
    }

    /// Reserves the next whole cluster at the end of the file (not yet counted).
    fn alloc_cluster(&mut self) -> u64 {
        let at = self.end.next_multiple_of(CLUSTER);
        self.end = at + CLUSTER;
        at
    }

    /// Stores the buffered cluster (zero-padded if short).
    fn flush_cluster(&mut self) -> Result<()> {
        if self.cluster.len() < CLUSTER as usize {
            self.cluster.resize(CLUSTER as usize, 0);
        }
        let cluster = std::mem::take(&mut self.cluster);
        let stored = self.store_cluster(&cluster);
        self.cluster = cluster;
        self.cluster.clear();
        stored
    }

    /// Stores the guest cluster that ends at `self.received` unless it is all zeros.
    fn store_cluster(&mut self, data: &[u8]) -> Result<()> {
        let guest_cluster = (self.received - 1) / CLUSTER;
        let l2_index = guest_cluster / L2_ENTRIES;
        if l2_index != self.l2_index {
            self.flush_l2()?;
            self.l2_index = l2_index;
        }
        if data
            .chunks(64)
            .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
        {
            return Ok(());
        }
        let entry = match self.compress_cluster(data)? {
            Some(entry) => entry,
            None => {
                let at = self.alloc_cluster();
                self.write_at(at, data, "data cluster")?;
                self.add_ref(at / CLUSTER)?;
                at | COPIED
            }
        };
        self.l2[(guest_cluster % L2_ENTRIES) as usize] = entry;
        self.l2_dirty = true;
        Ok(())
    }

    /// Stores the cluster compressed if that saves space; returns its L2 entry.
    fn compress_cluster(&mut self, data: &[u8]) -> Result<Option<u64>> {
        let Some(c) = self.compressor.as_mut() else {
            return Ok(None);
        };
        c.reset();
        self.compressed.clear();
        let status = c
            .compress_vec(data, &mut self.compressed, FlushCompress::Finish)
            .map_err(|e| Error::io("compressing a qcow2 cluster", std::io::Error::other(e)))?;
        if status != Status::StreamEnd || self.compressed.len() as u64 >= CLUSTER - 512 {
            return Ok(None); // incompressible: store as is
        }
        let at = self.end.next_multiple_of(512);
        let len = self.compressed.len() as u64;
        let compressed = std::mem::take(&mut self.compressed);
        let written = self.write_at(at, &compressed, "compressed cluster");
        self.compressed = compressed;
        written?;
        self.end = at + len;
        for host in at / CLUSTER..=(at + len - 1) / CLUSTER {
            self.add_ref(host)?;
        }
        // nb_csectors: additional 512-byte sectors after the first.
        let sectors = (len + (at & 511)).div_ceil(512) - 1;
        let x = 62 - (CLUSTER_BITS - 8);
        Ok(Some(COMPRESSED | (sectors << x) | at))
    }

    fn flush_l2(&mut self) -> Result<()> {
        if !self.l2_dirty {
            return Ok(());
        }
        let at = self.alloc_cluster();
        let mut raw = Vec::with_capacity(CLUSTER as usize);
        for e in &self.l2 {
            raw.extend_from_slice(&e.to_be_bytes());
        }
        self.write_at(at, &raw, "L2 table")?;
        self.add_ref(at / CLUSTER)?;
        self.l1[self.l2_index as usize] = at | COPIED;
        self.l2.iter_mut().for_each(|e| *e = 0);
        self.l2_dirty = false;
        Ok(())
    }

    /// Writes the remaining tables and the header; fails unless exactly the
    /// virtual size was fed. Returns the output and the file size.
    pub fn finish(mut self) -> Result<(W, u64)> {
        if self.received != self.size {
            return Err(Error::LengthMismatch {
                format: "qcow2",
                expected: self.size,
                actual: self.received,
            });
        }
        if !self.cluster.is_empty() {
            self.flush_cluster()?;
        }
        self.flush_l2()?;
        // The refcount table goes at the end, followed by the refcount blocks
        // still to write. Find the table size that lists every block,
        // including the blocks that count the table and themselves.
        let t0 = self.end.div_ceil(CLUSTER);
        let mut table_len = 1;
        let total_windows = loop {
            let mut blocks = 0;
            loop {
                let windows = (t0 + table_len + blocks).div_ceil(RC_ENTRIES);
                let need = windows.max(self.rc_window + 1) - self.rc_window;
                if need == blocks {
                    break;
                }
                blocks = need;
            }
            let windows = self.rc_window + blocks;
            if windows * 8 <= table_len * CLUSTER {
                break windows;
            }
            table_len += 1;
        };
        let table_at = t0 * CLUSTER;
        self.end = table_at + table_len * CLUSTER;
        for c in t0..t0 + table_len {
            self.add_ref(c)?;
        }
        while (self.rc_table.len() as u64) < total_windows {
            self.flush_rc_block()?;
        }
        if self.rc_block.iter().any(|&r| r != 0) || self.rc_table.len() as u64 != total_windows {
            return Err(Error::InvalidInput {
                format: "qcow2",
                what: "refcount layout did not converge (a bug)".into(),
            });
        }
        let mut raw = vec![0u8; (table_len * CLUSTER) as usize];
        if self.rc_table.len() as u64 * 8 > raw.len() as u64 {
            return Err(Error::InvalidInput {
                format: "qcow2",
                what: "refcount table reservation was too small".into(),
            });
        }
        for (i, off) in self.rc_table.iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&off.to_be_bytes());
        }
        self.write_at(table_at, &raw, "refcount table")?;
        // L1 table
        let mut l1 = Vec::with_capacity(self.l1.len() * 8);
        for e in &self.l1 {
            l1.extend_from_slice(&e.to_be_bytes());
        }
        self.write_at(self.l1_offset, &l1, "L1 table")?;
        // header
        let mut h = vec![0u8; 112];
        h[0..4].copy_from_slice(&QCOW2_MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
        h[24..32].copy_from_slice(&self.size.to_be_bytes());
        h[36..40].copy_from_slice(&(self.l1.len() as u32).to_be_bytes());
        h[40..48].copy_from_slice(&self.l1_offset.to_be_bytes());
        h[48..56].copy_from_slice(&table_at.to_be_bytes());
        h[56..60].copy_from_slice(&(table_len as u32).to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order: 16-bit
        h[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
        self.write_at(0, &h, "header")?;
        let file_size = self.end;
        self.out.flush().map_err(io("image"))?;
        Ok((self.out, file_size))
    }
}
