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
//! file of the package except itself and a `.cert`.

use std::fmt::Write as _;

/// A digest algorithm a manifest line can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DigestAlgorithm {
    /// SHA-256, the default and what current vSphere expects.
    Sha256,
}

impl DigestAlgorithm {
    /// The name as written in a manifest line.
    pub fn manifest_name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "SHA256",
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
    fn parses_tolerantly_and_reports_bad_line() {
        let ok = parse_manifest("SHA1 (x.vmdk) = ABCD\r\nSHA256(y.ovf)= 01\n").unwrap();
        assert_eq!(ok[0], ("SHA1".into(), "x.vmdk".into(), "abcd".into()));
        assert_eq!(ok[1].1, "y.ovf");
        assert_eq!(parse_manifest("SHA256(a)= 00\ngarbage\n"), Err(2));
        assert_eq!(parse_manifest("SHA256(a)= zz\n"), Err(1));
    }
}
