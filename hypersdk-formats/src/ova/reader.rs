//! Reading OVA archives safely.
//!
//! An OVA from elsewhere is untrusted input. [`OvaReader::open`] scans the
//! tar headers only (no data is read) and accepts an archive only if every
//! member is a regular file with a plain relative name (an optional leading
//! `./` is dropped; no `/` inside, no `..`, no NUL), no name repeats, every
//! header checksum is right, and every member's data lies inside the archive.
//! Links, devices, directories, FIFOs and extended (pax/GNU) headers are
//! refused with [`Error::OvaUnsafe`] naming the member. Extraction then writes
//! only below its target directory, creating each file fresh (`O_EXCL`, so an
//! existing file or symlink is never written through).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::writer::BLOCK_SIZE;
use crate::error::{Error, Result};

/// Most members accepted in one archive.
const MAX_MEMBERS: usize = 10_000;

/// One member of an OVA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvaEntry {
    /// File name (flat, validated).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the member's data in the archive.
    pub data_offset: u64,
}

/// An OVA whose members have been listed and validated.
#[derive(Debug)]
pub struct OvaReader<R> {
    file: R,
    entries: Vec<OvaEntry>,
}

fn unsafe_member(name: &str, what: impl Into<String>) -> Error {
    Error::OvaUnsafe {
        member: name.to_string(),
        what: what.into(),
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> Error {
    Error::OvaCorrupt {
        offset,
        what: what.into(),
    }
}

/// Parses an octal or base-256 numeric field.
pub(crate) fn number(field: &[u8], offset: u64) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        // base-256: the remaining bits, big-endian; refuse values past u64.
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| corrupt(offset, "base-256 number overflows"))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s =
        std::str::from_utf8(&text).map_err(|_| corrupt(offset, "numeric field is not ASCII"))?;
    u64::from_str_radix(s, 8)
        .map_err(|_| corrupt(offset, format!("numeric field {s:?} is not octal")))
}

/// Validates a member name and returns it without a leading `./`.
pub fn safe_member_name(raw: &str) -> Result<String> {
    let name = raw.strip_prefix("./").unwrap_or(raw);
    if name.is_empty() || name == "." || name == ".." {
        return Err(unsafe_member(raw, "empty or dot name"));
    }
    if name.starts_with('/') {
        return Err(unsafe_member(raw, "absolute path"));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(unsafe_member(raw, "path with directories (an OVA is flat)"));
    }
    if name.contains('\0') || name.chars().any(char::is_control) {
        return Err(unsafe_member(raw, "control characters in the name"));
    }
    Ok(name.to_string())
}

/// Checks one tar header block at archive offset `pos` (checksum, member
/// type, a safe name) and returns the member's name and size. The caller
/// handles the all-zero end-of-archive block.
pub fn parse_member_header(header: &[u8; BLOCK_SIZE], pos: u64) -> Result<(String, u64)> {
    check_header_checksum(header, pos)?;
    let field = |r: std::ops::Range<usize>| {
        let f = &header[r];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    let mut raw_name = field(0..100);
    if &header[257..262] == b"ustar" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            raw_name = format!("{prefix}/{raw_name}");
        }
    }
    match header[156] {
        b'0' | 0 => {}
        b'x' | b'g' => {
            return Err(unsafe_member(
                &raw_name,
                "pax extended header (not written by OVF tools)",
            ))
        }
        b'L' | b'K' => return Err(unsafe_member(&raw_name, "GNU long name or link")),
        b'1' | b'2' => return Err(unsafe_member(&raw_name, "hard or symbolic link")),
        b'3' | b'4' => return Err(unsafe_member(&raw_name, "device file")),
        b'5' => return Err(unsafe_member(&raw_name, "directory")),
        b'6' => return Err(unsafe_member(&raw_name, "FIFO")),
        other => {
            return Err(unsafe_member(
                &raw_name,
                format!("member type {:?}", other as char),
            ))
        }
    }
    let name = safe_member_name(&raw_name)?;
    let size = number(&header[124..136], pos + 124)?;
    Ok((name, size))
}

/// Checks the checksum of the tar header block at archive offset `pos`.
pub(crate) fn check_header_checksum(header: &[u8; BLOCK_SIZE], pos: u64) -> Result<()> {
    let stored = number(&header[148..156], pos + 148)?;
    let mut sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    sum -= header[148..156].iter().map(|&b| u64::from(b)).sum::<u64>();
    sum += 8 * u64::from(b' ');
    if sum != stored {
        return Err(corrupt(
            pos + 148,
            format!("header checksum {stored} does not match {sum}"),
        ));
    }
    Ok(())
}

/// Most members an archive may have.
pub(crate) const MAX_ARCHIVE_MEMBERS: usize = MAX_MEMBERS;

impl<R: Read + Seek> OvaReader<R> {
    /// Lists and validates the members of an archive.
    pub fn open(mut file: R) -> Result<Self> {
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::io("finding the OVA size", e))?;
        let mut entries: Vec<OvaEntry> = Vec::new();
        let mut pos = 0u64;
        let mut header = [0u8; BLOCK_SIZE];
        loop {
            if pos + BLOCK_SIZE as u64 > len {
                if pos == len && !entries.is_empty() {
                    break; // no end marker: tolerated, as GNU tar does
                }
                return Err(corrupt(pos, "archive ends inside a header"));
            }
            file.seek(SeekFrom::Start(pos))
                .and_then(|_| file.read_exact(&mut header))
                .map_err(|e| Error::io(format!("reading the tar header at {pos:#x}"), e))?;
            if header.iter().all(|&b| b == 0) {
                break; // end-of-archive marker
            }
            let (name, size) = parse_member_header(&header, pos)?;
            let data_offset = pos + BLOCK_SIZE as u64;
            let end = data_offset
                .checked_add(size)
                .filter(|&e| e <= len)
                .ok_or_else(|| {
                    corrupt(
                        pos + 124,
                        format!("member {name} claims {size} bytes but the archive ends at {len}"),
                    )
                })?;
            if entries.iter().any(|e| e.name == name) {
                return Err(unsafe_member(&name, "name appears twice"));
            }
            if entries.len() >= MAX_MEMBERS {
                return Err(corrupt(pos, format!("more than {MAX_MEMBERS} members")));
            }
            entries.push(OvaEntry {
                name,
                size,
                data_offset,
            });
            pos = end.next_multiple_of(BLOCK_SIZE as u64);
        }
        if entries.is_empty() {
            return Err(corrupt(0, "archive has no members"));
        }
        Ok(OvaReader { file, entries })
    }

    /// The members, in archive order.
    pub fn entries(&self) -> &[OvaEntry] {
        &self.entries
    }

    /// The member called `name`.
    pub fn entry(&self, name: &str) -> Option<&OvaEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Reads a whole (small) member into memory, refusing members over `limit` bytes.
    pub fn read_small(&mut self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let e = self
            .entry(name)
            .cloned()
            .ok_or_else(|| unsafe_member(name, "no such member"))?;
        if e.size > limit {
            return Err(unsafe_member(
                name,
                format!("{} bytes is more than the {limit} accepted", e.size),
            ));
        }
        let mut buf = vec![0u8; e.size as usize];
        self.file
            .seek(SeekFrom::Start(e.data_offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|err| Error::io(format!("reading OVA member {name}"), err))?;
        Ok(buf)
    }

    /// Copies member `name` into `out`; returns its size.
    pub fn copy_member(&mut self, name: &str, out: &mut dyn Write) -> Result<u64> {
        let e = self
            .entry(name)
            .cloned()
            .ok_or_else(|| unsafe_member(name, "no such member"))?;
        self.file
            .seek(SeekFrom::Start(e.data_offset))
            .map_err(|err| Error::io(format!("reading OVA member {name}"), err))?;
        let copied = io::copy(&mut (&mut self.file).take(e.size), out)
            .map_err(|err| Error::io(format!("copying OVA member {name}"), err))?;
        if copied != e.size {
            return Err(corrupt(
                e.data_offset,
                format!("member {name} ended after {copied} of {} bytes", e.size),
            ));
        }
        Ok(copied)
    }

    /// A `Read + Seek` view of one member, for reading a disk in place.
    pub fn member(self, name: &str) -> Result<SubFile<R>> {
        let e = self
            .entry(name)
            .cloned()
            .ok_or_else(|| unsafe_member(name, "no such member"))?;
        Ok(SubFile {
            inner: self.file,
            start: e.data_offset,
            len: e.size,
            pos: 0,
        })
    }

    /// Extracts every member into `dir` (created if missing). Never writes
    /// outside `dir` and never replaces an existing file; on failure the
    /// files it created are removed.
    pub fn extract_to(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut created = Vec::new();
        let result = (|| {
            for e in self.entries.clone() {
                let path = dir.join(&e.name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|err| Error::io(format!("creating {}", path.display()), err))?;
                created.push(path.clone());
                self.copy_member(&e.name, &mut f)?;
                f.sync_all()
                    .map_err(|err| Error::io(format!("syncing {}", path.display()), err))?;
            }
            Ok(())
        })();
        if result.is_err() {
            for p in created {
                let _ = std::fs::remove_file(p);
            }
        }
        result
    }
}

/// A window `[start, start + len)` of a seekable file, itself `Read + Seek`.
#[derive(Debug)]
pub struct SubFile<R> {
    inner: R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> Read for SubFile<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let r = self.inner.read(&mut buf[..n])?;
        self.pos += r as u64;
        Ok(r)
    }
}

impl<R: Read + Seek> Seek for SubFile<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the member",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ova::{tar_header, OvaWriter};
    use std::io::Cursor;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = OvaWriter::new(Vec::new(), 0);
        for (n, d) in members {
            w.append(n, d.len() as u64, &mut &d[..]).unwrap();
        }
        w.finish().unwrap()
    }

    /// A header with arbitrary name and type, checksum fixed up.
    fn raw_header(name: &str, kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar_header("placeholder", size, 0).unwrap();
        h[..100].fill(0);
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[156] = kind;
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut v = h.to_vec();
        v.resize(512 + (size as usize).next_multiple_of(512), 0);
        v.extend_from_slice(&[0; 1024]);
        v
    }

    #[test]
    fn lists_and_reads_members() {
        let a = archive(&[("vm.ovf", b"<Envelope/>"), ("vm.mf", b"x")]);
        let mut r = OvaReader::open(Cursor::new(a)).unwrap();
        assert_eq!(r.entries().len(), 2);
        assert_eq!(r.read_small("vm.ovf", 100).unwrap(), b"<Envelope/>");
        assert!(r.read_small("vm.ovf", 3).is_err());
        let mut sub = r.member("vm.ovf").unwrap();
        let mut s = String::new();
        sub.seek(SeekFrom::Start(1)).unwrap();
        sub.read_to_string(&mut s).unwrap();
        assert_eq!(s, "Envelope/>");
    }

    #[test]
    fn refuses_hostile_archives() {
        for (name, kind) in [
            ("../evil", b'0'),
            ("/etc/passwd", b'0'),
            ("a/b", b'0'),
            ("link", b'2'),
            ("dev", b'3'),
            ("d", b'5'),
            ("h", b'1'),
        ] {
            let err = OvaReader::open(Cursor::new(raw_header(name, kind, 0))).unwrap_err();
            assert!(matches!(err, Error::OvaUnsafe { .. }), "{name}: {err}");
        }
        // duplicate names
        let err = OvaReader::open(Cursor::new(archive(&[("a", b"1"), ("a", b"2")]))).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        // a size that lies
        let mut a = raw_header("big", b'0', 0);
        let h = tar_header("big", 1 << 40, 0).unwrap();
        a[..512].copy_from_slice(&h);
        let err = OvaReader::open(Cursor::new(a)).unwrap_err();
        assert!(err.to_string().contains("claims"), "{err}");
        // broken checksum
        let mut a = archive(&[("a", b"1")]);
        a[0] = b'b';
        assert!(matches!(
            OvaReader::open(Cursor::new(a)),
            Err(Error::OvaCorrupt { .. })
        ));
        // not a tar at all
        assert!(OvaReader::open(Cursor::new(vec![7u8; 100])).is_err());
    }

    #[test]
    fn extraction_stays_inside_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(&[("vm.ovf", b"x"), ("d.vmdk", b"yy")]);
        OvaReader::open(Cursor::new(a.clone()))
            .unwrap()
            .extract_to(dir.path())
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("d.vmdk")).unwrap(), b"yy");
        // a second extraction meets existing files: refused, nothing changed, nothing left behind
        std::fs::remove_file(dir.path().join("vm.ovf")).unwrap();
        let err = OvaReader::open(Cursor::new(a))
            .unwrap()
            .extract_to(dir.path())
            .unwrap_err();
        assert!(err.to_string().contains("d.vmdk"), "{err}");
        assert!(!dir.path().join("vm.ovf").exists());
        assert_eq!(std::fs::read(dir.path().join("d.vmdk")).unwrap(), b"yy");
    }
}
