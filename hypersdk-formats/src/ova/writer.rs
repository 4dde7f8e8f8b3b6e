//! Streaming ustar writer for OVA packages.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};

/// The tar block size.
pub const BLOCK_SIZE: usize = 512;

/// The end-of-archive marker: two zero blocks.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK_SIZE] = [0; 2 * BLOCK_SIZE];

/// The largest size that fits in the 11 octal digits of a classic header.
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

/// Builds the ustar header of a regular file member named `name` of `size`
/// bytes, modified at `mtime` (seconds since the epoch), mode 0644.
///
/// Names are limited to 100 bytes of ASCII without `/`-leading, `..` or NUL:
/// an OVA is flat, and we never write a name a safe reader would reject.
pub fn tar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK_SIZE]> {
    let bad = |what: String| Error::InvalidInput {
        format: "OVA",
        what,
    };
    if name.is_empty() || name.len() > 100 {
        return Err(bad(format!(
            "member name {name:?} must be 1 to 100 bytes long"
        )));
    }
    if !name.is_ascii()
        || name.contains('\0')
        || name.starts_with('/')
        || name.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(bad(format!(
            "member name {name:?} is not a safe relative path"
        )));
    }
    let mut h = [0u8; BLOCK_SIZE];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0); // uid
    put_octal(&mut h[116..124], 0); // gid
    if size <= MAX_OCTAL_SIZE {
        put_octal(&mut h[124..136], size);
    } else {
        // base-256: 0x80 marker then the size big-endian in the remaining 11 bytes
        let field = &mut h[124..136];
        field[0] = 0x80;
        field[4..12].copy_from_slice(&size.to_be_bytes());
    }
    put_octal(&mut h[136..148], mtime.min(MAX_OCTAL_SIZE));
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // checksum: computed with the field as eight spaces
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let digits = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(digits.as_bytes());
    Ok(h)
}

/// Number of zero bytes that follow a member of `size` bytes.
pub fn tar_padding(size: u64) -> usize {
    let rem = (size % BLOCK_SIZE as u64) as usize;
    if rem == 0 {
        0
    } else {
        BLOCK_SIZE - rem
    }
}

/// Writes `value` as zero-padded octal filling all but the last byte, NUL-terminated.
fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

/// A synchronous OVA writer over any [`Write`]: append members in order, then
/// [`finish`](OvaWriter::finish). Checks that each member delivers exactly the
/// size its header declared.
#[derive(Debug)]
pub struct OvaWriter<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> OvaWriter<W> {
    /// Starts an archive; every member gets modification time `mtime`.
    pub fn new(out: W, mtime: u64) -> Self {
        OvaWriter { out, mtime }
    }

    /// Appends a member of exactly `size` bytes read from `data`.
    pub fn append(&mut self, name: &str, size: u64, data: &mut impl Read) -> Result<()> {
        let header = tar_header(name, size, self.mtime)?;
        let ctx = |e| Error::io(format!("writing OVA member {name}"), e);
        self.out.write_all(&header).map_err(ctx)?;
        let copied = io::copy(&mut data.take(size), &mut self.out).map_err(ctx)?;
        if copied != size {
            return Err(Error::LengthMismatch {
                format: "OVA",
                expected: size,
                actual: copied,
            });
        }
        self.out
            .write_all(&[0u8; BLOCK_SIZE][..tar_padding(size)])
            .map_err(ctx)?;
        Ok(())
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.out
            .write_all(&END_OF_ARCHIVE)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io("writing OVA end-of-archive marker", e))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_and_fields() {
        let h = tar_header("vm.ovf", 1234, 0).unwrap();
        assert_eq!(&h[..6], b"vm.ovf");
        assert_eq!(&h[124..136], b"00000002322\0");
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h;
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
    }

    #[test]
    fn large_sizes_use_base256() {
        let size = 10u64 << 30;
        let h = tar_header("big.vmdk", size, 0).unwrap();
        assert_eq!(h[124], 0x80);
        assert_eq!(u64::from_be_bytes(h[128..136].try_into().unwrap()), size);
    }

    #[test]
    fn rejects_unsafe_names() {
        for n in ["", "/abs", "../x", "a/../b", &"x".repeat(101)] {
            assert!(tar_header(n, 0, 0).is_err(), "{n}");
        }
    }

    #[test]
    fn writer_pads_and_checks_length() {
        let mut w = OvaWriter::new(Vec::new(), 0);
        w.append("a.ovf", 3, &mut &b"abc"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len(), 512 + 512 + 1024);
        let mut w = OvaWriter::new(Vec::new(), 0);
        assert!(matches!(
            w.append("a.ovf", 5, &mut &b"abc"[..]),
            Err(Error::LengthMismatch { .. })
        ));
    }
}
