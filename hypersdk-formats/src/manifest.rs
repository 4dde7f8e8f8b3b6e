//! OVF `.mf` manifests.
//!
//! A manifest lists one digest per file of an OVF package, one line each:
//!
//! ```text
//! SHA256(vm.ovf)= 3f1c…
//! SHA256(vm-disk1.vmdk)= 9a0b…
//! ```
//!
//! We write strictly this shape — algorithm name in capitals, the file name in
//! parentheses with no surrounding spaces, `= `, lower-case hex, `\n` — because
//! ESXi rejects lines with spaces around the name. The manifest covers every
//! file of the package except itself and a `.cert`. Reading is tolerant
//! (SHA1, SHA256 and SHA512; spaces around the name and `=`; CRLF), and
//! [`verify_manifest`] checks files against it.

use std::fmt::Write as _;

/// A digest algorithm a manifest line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// SHA-256, the default and what current vSphere expects.
    Sha256,
    /// SHA-1, for older OVF tools (vSphere 5.x, VirtualBox).
    Sha1,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The name as written in a manifest line.
    pub fn manifest_name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "SHA256",
            DigestAlgorithm::Sha1 => "SHA1",
            DigestAlgorithm::Sha512 => "SHA512",
        }
    }
}

impl std::str::FromStr for DigestAlgorithm {
    type Err = String;

    /// `sha256`, `sha1` or `sha512`, any case, with or without the dash.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "").as_str() {
            "sha256" => Ok(DigestAlgorithm::Sha256),
            "sha1" => Ok(DigestAlgorithm::Sha1),
            "sha512" => Ok(DigestAlgorithm::Sha512),
            _ => Err(format!(
                "unknown digest algorithm '{s}' (expected sha256, sha512 or sha1)"
            )),
        }
    }
}

/// One line of a manifest: a file name and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The algorithm of `digest`.
    pub algorithm: DigestAlgorithm,
    /// File name relative to the package root.
    pub name: String,
    /// The raw digest bytes.
    pub digest: Vec<u8>,
}

/// Renders manifest entries in the strict `SHA256(name)= hex` form.
pub fn write_manifest(entries: &[ManifestEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{}({})= {}",
            e.algorithm.manifest_name(),
            e.name,
            to_hex(&e.digest)
        );
    }
    out
}

/// Parses manifest text tolerantly (spaces around the name and `=` are accepted,
/// `\r\n` line ends too). Returns `(algorithm name, file name, lower-case hex)`
/// per line, or the 1-based number of the first line that does not parse.
pub fn parse_manifest(text: &str) -> Result<Vec<(String, String, String)>, usize> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = (|| {
            let open = line.find('(')?;
            let close = line.rfind(')')?;
            if close < open {
                return None;
            }
            let algo = line[..open].trim();
            let name = line[open + 1..close].trim();
            let rest = line[close + 1..].trim_start();
            let hex = rest.strip_prefix('=')?.trim();
            if algo.is_empty()
                || name.is_empty()
                || hex.is_empty()
                || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return None;
            }
            Some((
                algo.to_ascii_uppercase(),
                name.to_string(),
                hex.to_ascii_lowercase(),
            ))
        })();
        match parsed {
            Some(p) => out.push(p),
            None => return Err(i + 1),
        }
    }
    Ok(out)
}

pub use crate::digest::Hasher;

/// The outcome for one manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCheck {
    /// File name.
    pub name: String,
    /// Algorithm as written.
    pub algorithm: String,
    /// Digest the manifest gives.
    pub expected: String,
    /// Digest computed, or None if the file is missing.
    pub actual: Option<String>,
}

impl ManifestCheck {
    /// Whether the file exists and matches.
    pub fn ok(&self) -> bool {
        self.actual.as_deref() == Some(self.expected.as_str())
    }
}

/// Checks every line of manifest `text`. `feed(name, hasher)` writes the
/// bytes of file `name` into the hasher and returns false if there is no such
/// file. Fails on a line that does not parse or names an unknown algorithm.
pub fn verify_manifest(
    text: &str,
    mut feed: impl FnMut(&str, &mut Hasher) -> crate::Result<bool>,
) -> crate::Result<Vec<ManifestCheck>> {
    let lines = parse_manifest(text).map_err(|line| crate::Error::ManifestInvalid {
        line,
        what: "not of the form ALGO(name)= hex".into(),
    })?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, (algorithm, name, expected)) in lines.into_iter().enumerate() {
        let mut hasher =
            Hasher::for_name(&algorithm).ok_or_else(|| crate::Error::ManifestInvalid {
                line: i + 1,
                what: format!(
                    "unknown digest algorithm {}",
                    crate::error::display_name(&algorithm)
                ),
            })?;
        let actual = if feed(&name, &mut hasher)? {
            Some(hasher.finish_hex())
        } else {
            None
        };
        out.push(ManifestCheck {
            name,
            algorithm,
            expected,
            actual,
        });
    }
    Ok(out)
}

/// Bytes from hex digits (either case); None if `s` is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_strict_lines() {
        let text = write_manifest(&[ManifestEntry {
            algorithm: DigestAlgorithm::Sha256,
            name: "a.ovf".into(),
            digest: vec![0xab, 0x01],
        }]);
        assert_eq!(text, "SHA256(a.ovf)= ab01\n");
    }

    #[test]
    fn verifies_digests() {
        let text = "SHA256(a)= ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\nSHA1(b)= a9993e364706816aba3e25717850c26c9cd0d89d\nSHA512(c)= 00\n";
        let checks = verify_manifest(text, |name, h| {
            if name == "c" {
                return Ok(false);
            }
            h.update(b"abc");
            Ok(true)
        })
        .unwrap();
        assert!(checks[0].ok() && checks[1].ok());
        assert!(!checks[2].ok() && checks[2].actual.is_none());
        assert!(verify_manifest("MD5(a)= 00\n", |_, _| Ok(true)).is_err());
    }

    #[test]
    fn parses_tolerantly_and_reports_bad_line() {
        let ok = parse_manifest("SHA1 (x.vmdk) = ABCD\r\nSHA256(y.ovf)= 01\n").unwrap();
        assert_eq!(ok[0], ("SHA1".into(), "x.vmdk".into(), "abcd".into()));
        assert_eq!(ok[1].1, "y.ovf");
        assert_eq!(parse_manifest("SHA256(a)= 00\ngarbage\n"), Err(2));
        assert_eq!(parse_manifest("SHA256(a)= zz\n"), Err(1));
    }
}
