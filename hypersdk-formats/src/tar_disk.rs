//! A disk image inside a tar stream, read front to back: Compute Engine's
//! image export writes `disk.raw` into a (gzipped) GNU tar, sparse-aware, so
//! that holes take no room.
//!
//! [`TarDisk`] reads the first member of the stream, which must be a
//! regular file or an old-GNU sparse file (type `S`, as GNU tar writes with
//! `--sparse` in its default format), and gives the disk's bytes — the
//! stored regions where the sparse map puts them, zeros elsewhere — as a
//! [`Read`] of exactly the disk's size. Nothing is buffered beyond one
//! header and the sparse map (bounded); every header checksum, region and
//! length is checked, with the archive offset in the error.
//!
//! Old GNU sparse layout (GNU tar manual, "GNU tar and POSIX tar: Old GNU
//! format"): in the header, four `(offset, numbytes)` pairs of 12-byte
//! numbers at byte 386, `isextended` at 482, the real size at 483; while
//! `isextended` is set, extension blocks follow the header, each with 21
//! pairs and its own `isextended` at 504. The stored data (the header's
//! size field) is the regions' bytes back to back, padded to 512.

use std::io::Read;

use crate::ova::BLOCK_SIZE;
use crate::{Error, Result};

/// Most regions a sparse map may have (16 bytes each in memory).
const MAX_REGIONS: usize = 1 << 20;

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::TarCorrupt {
        offset,
        what: what.into(),
    }
}

/// A header's number (octal or base-256), errors in tar terms.
fn num(field: &[u8], at: u64) -> Result<u64> {
    crate::ova::number(field, at).map_err(|e| match e {
        Error::OvaCorrupt { offset, what } => corrupt(offset, what),
        e => e,
    })
}

/// The disk in a tar stream. See the module.
#[derive(Debug)]
pub struct TarDisk<R> {
    inner: R,
    name: String,
    size: u64,
    /// Stored regions: (guest offset, length), in order, disjoint.
    map: Vec<(u64, u64)>,
    /// Next guest byte.
    pos: u64,
    /// The region `pos` is in or before.
    region: usize,
    /// Archive offset of the next stored byte, for errors.
    at: u64,
}

impl<R: Read> TarDisk<R> {
    /// Reads the first member's header (and sparse map) from `inner`.
    pub fn open(mut inner: R) -> Result<TarDisk<R>> {
        let mut header = [0u8; BLOCK_SIZE];
        read_block(&mut inner, &mut header, 0)?;
        if header.iter().all(|&b| b == 0) {
            return Err(corrupt(0, "the archive is empty"));
        }
        crate::ova::check_header_checksum(&header, 0).map_err(|e| match e {
            Error::OvaCorrupt { offset, what } => corrupt(offset, what),
            e => e,
        })?;
        let end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..end]).into_owned();
        let stored = num(&header[124..136], 124)?;
        let mut at = BLOCK_SIZE as u64;
        let (size, map) = match header[156] {
            b'0' | 0 => (
                stored,
                if stored > 0 {
                    vec![(0, stored)]
                } else {
                    vec![]
                },
            ),
            b'S' => {
                let size = num(&header[483..495], 483)?;
                let mut map = Vec::new();
                pairs(&header[386..482], 4, 386, &mut map)?;
                let mut extended = header[482] != 0;
                while extended {
                    let mut ext = [0u8; BLOCK_SIZE];
                    read_block(&mut inner, &mut ext, at)?;
                    pairs(&ext[..504], 21, at, &mut map)?;
                    extended = ext[504] != 0;
                    at += BLOCK_SIZE as u64;
                    if map.len() > MAX_REGIONS {
                        return Err(corrupt(
                            at,
                            format!("more than {MAX_REGIONS} sparse regions"),
                        ));
                    }
                }
                (size, map)
            }
            other => {
                return Err(corrupt(
                    156,
                    format!(
                        "member {name:?} is of type {:?}: a disk must be a regular or sparse file",
                        other as char
                    ),
                ))
            }
        };
        // Regions in order, disjoint, within the disk, adding up to what is stored.
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &map {
            let stop = off
                .checked_add(len)
                .filter(|&s| s <= size && off >= end)
                .ok_or_else(|| {
                    corrupt(
                        386,
                        format!(
                            "sparse region {off}+{len} overlaps another or passes the size {size}"
                        ),
                    )
                })?;
            end = stop;
            total += len;
        }
        if total != stored {
            return Err(corrupt(
                124,
                format!("the sparse map holds {total} bytes, the header says {stored} are stored"),
            ));
        }
        Ok(TarDisk {
            inner,
            name,
            size,
            map: map.into_iter().filter(|&(_, len)| len > 0).collect(),
            pos: 0,
            region: 0,
            at,
        })
    }

    /// The member's name (`disk.raw`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The disk's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The stream after the disk's bytes (once they are all read): the
    /// member's padding, then whatever the archive holds next.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The stored regions as guest ranges (the rest reads as zeros).
    pub fn allocated(&self) -> Vec<std::ops::Range<u64>> {
        self.map.iter().map(|&(o, l)| o..o + l).collect()
    }
}

/// `n` (offset, numbytes) pairs of 12-byte numbers; a zero pair ends them.
fn pairs(b: &[u8], n: usize, at: u64, map: &mut Vec<(u64, u64)>) -> Result<()> {
    for i in 0..n {
        let f = &b[i * 24..i * 24 + 24];
        if f.iter().all(|&c| c == 0) {
            break;
        }
        let off = num(&f[..12], at + (i * 24) as u64)?;
        let len = num(&f[12..], at + (i * 24 + 12) as u64)?;
        map.push((off, len));
    }
    Ok(())
}

fn read_block(r: &mut impl Read, block: &mut [u8; BLOCK_SIZE], at: u64) -> Result<()> {
    r.read_exact(block).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(at, "the archive ends inside a header")
        } else {
            Error::Io {
                context: format!("reading the tar header at byte {at}"),
                source: e,
            }
        }
    })
}

impl<R: Read> Read for TarDisk<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let room = buf.len() as u64;
        match self.map.get(self.region).copied() {
            // Before the next region (or past the last): zeros.
            next if next.is_none_or(|(off, _)| self.pos < off) => {
                let until = next.map_or(self.size, |(off, _)| off);
                let n = (until - self.pos).min(room) as usize;
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
            Some((off, len)) => {
                let left = off + len - self.pos;
                let want = left.min(room) as usize;
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "the tar stream of {} ends at archive byte {} in the middle of its data",
                            self.name, self.at
                        ),
                    ));
                }
                self.pos += n as u64;
                self.at += n as u64;
                if self.pos == off + len {
                    self.region += 1;
                }
                Ok(n)
            }
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::process::Command;

    /// A file with holes and data, archived by GNU tar with and without
    /// --sparse; both read back as the file.
    fn sample(dir: &std::path::Path) -> Vec<u8> {
        let mut disk = vec![0u8; 10 << 20];
        disk[1 << 20..(1 << 20) + 5].copy_from_slice(b"hello");
        let mut x: u32 = 7;
        for b in &mut disk[5_000_000..5_070_000] {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *b = (x >> 16) as u8;
        }
        disk[(10 << 20) - 1] = 0xff;
        // Written with holes (seek past the zeros), as a real disk file is.
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(dir.join("disk.raw")).unwrap();
        for (i, chunk) in disk.chunks(4096).enumerate() {
            if chunk.iter().any(|&b| b != 0) {
                f.seek(SeekFrom::Start((i * 4096) as u64)).unwrap();
                f.write_all(chunk).unwrap();
            }
        }
        f.set_len(disk.len() as u64).unwrap();
        disk
    }

    fn tar(dir: &std::path::Path, args: &[&str], out: &str) -> std::path::PathBuf {
        let st = Command::new("tar")
            .args(args)
            .arg(out)
            .arg("disk.raw")
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(st.success());
        dir.join(out)
    }

    #[test]
    fn gnu_sparse_plain_and_gzipped_archives_read_back_as_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = sample(dir.path());
        for (args, name) in [
            (vec!["-Scf"], "s.tar"),
            (vec!["-cf"], "p.tar"),
            (vec!["-Sczf"], "s.tar.gz"),
        ] {
            let path = tar(dir.path(), &args, name);
            let file = std::fs::File::open(&path).unwrap();
            let reader: Box<dyn Read> = if name.ends_with(".gz") {
                Box::new(flate2::read::MultiGzDecoder::new(file))
            } else {
                Box::new(file)
            };
            let mut d = TarDisk::open(reader).unwrap();
            assert_eq!(d.name(), "disk.raw");
            assert_eq!(d.size(), disk.len() as u64, "{name}");
            if args[0].contains('S') {
                let stored: u64 = d.allocated().iter().map(|r| r.end - r.start).sum();
                assert!(stored < 200_000, "{name}: holes are not stored ({stored})");
            }
            let mut got = Vec::new();
            d.read_to_end(&mut got).unwrap();
            assert!(got == disk, "{name}: the bytes differ");
        }
    }

    #[test]
    fn broken_archives_are_refused_with_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let bytes = std::fs::read(tar(dir.path(), &["-Scf"], "s.tar")).unwrap();
        // A flipped byte in the header: the checksum.
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        let e = TarDisk::open(&bad[..]).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // The stream cut in the data: an error naming where.
        let mut d = TarDisk::open(&bytes[..2000]).unwrap();
        let e = d.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("ends at archive byte"), "{e}");
        // A region past the real size (and the checksum fixed up).
        let mut bad = bytes.clone();
        bad[483..495].copy_from_slice(b"00000001000\0");
        let sum: u32 = bad[..512]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        bad[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let e = TarDisk::open(&bad[..]).unwrap_err().to_string();
        assert!(e.contains("passes the size"), "{e}");
        // Not a file.
        let e = TarDisk::open(&[0u8; 1024][..]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn a_disk_past_8_gib_has_its_size_in_base_256() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("disk.raw")).unwrap();
        f.set_len(9 << 30).unwrap();
        drop(f);
        let path = tar(dir.path(), &["-Scf"], "big.tar");
        let mut d = TarDisk::open(std::fs::File::open(path).unwrap()).unwrap();
        assert_eq!(d.size(), 9 << 30);
        let mut first = vec![1u8; 1 << 20];
        d.read_exact(&mut first).unwrap();
        assert!(first.iter().all(|&b| b == 0));
    }
}
