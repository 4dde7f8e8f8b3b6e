//! The VMDK text descriptor, embedded in a sparse extent or standing alone
//! (`monolithicFlat`, `twoGbMaxExtentSparse`, `twoGbMaxExtentFlat`, …):
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=fffffffe
//! parentCID=ffffffff
//! createType="monolithicFlat"
//!
//! # Extent description
//! RW 2097152 FLAT "disk-flat.vmdk" 0
//! RW 4192256 SPARSE "disk-s001.vmdk"
//! RW 1024 ZERO
//!
//! # The Disk Data Base
//! ddb.adapterType = "lsilogic"
//! ```
//!
//! An extent line is: access (RW, RDONLY, NOACCESS), size in sectors, type
//! (FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, …), the file name in quotes, and
//! for flat extents the starting sector in that file.

use crate::error::{Error, Result};

/// Longest descriptor accepted.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;

/// What kind of data an extent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw sectors in a file, from a sector offset (FLAT, VMFS).
    Flat {
        /// Sector offset in the file.
        offset: u64,
    },
    /// A hosted sparse extent file (SPARSE).
    Sparse,
    /// Reads as zeros, no file.
    Zero,
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Access: RW, RDONLY or NOACCESS.
    pub access: String,
    /// Size in sectors.
    pub sectors: u64,
    /// Its kind.
    pub kind: ExtentKind,
    /// File name, relative to the descriptor (None for ZERO).
    pub file: Option<String>,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// `CID`.
    pub cid: Option<String>,
    /// `parentCID`; `ffffffff` means no parent.
    pub parent_cid: Option<String>,
    /// `createType`.
    pub create_type: String,
    /// Extents in order.
    pub extents: Vec<Extent>,
    /// `ddb.*` and other key/value lines.
    pub ddb: Vec<(String, String)>,
}

impl Descriptor {
    /// Whether the disk is a delta of a parent (a snapshot), which cannot be
    /// read alone.
    pub fn has_parent(&self) -> bool {
        self.parent_cid
            .as_deref()
            .is_some_and(|p| !p.eq_ignore_ascii_case("ffffffff"))
    }

    /// Capacity in bytes: the sum of the extents.
    pub fn capacity(&self) -> u64 {
        self.extents
            .iter()
            .map(|e| e.sectors.saturating_mul(512))
            .fold(0, u64::saturating_add)
    }
}

fn bad(line: usize, what: impl Into<String>) -> Error {
    Error::VmdkDescriptor {
        line,
        what: what.into(),
    }
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches('"')
}

/// Parses descriptor text (NUL padding after the text is ignored).
pub fn parse_descriptor(text: &str) -> Result<Descriptor> {
    if text.len() > MAX_DESCRIPTOR_BYTES {
        return Err(bad(
            0,
            format!("descriptor longer than {MAX_DESCRIPTOR_BYTES} bytes"),
        ));
    }
    let text = text.trim_end_matches('\0');
    let mut d = Descriptor::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim().trim_end_matches('\0');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            d.extents.push(parse_extent(line, i + 1)?);
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(
                i + 1,
                format!("neither an extent nor key=value: {line:?}"),
            ));
        };
        let (k, v) = (k.trim(), unquote(v).to_string());
        match k {
            "CID" => d.cid = Some(v),
            "parentCID" => d.parent_cid = Some(v),
            "createType" => d.create_type = v,
            _ => d.ddb.push((k.to_string(), v)),
        }
    }
    if d.extents.is_empty() {
        return Err(bad(0, "no extent lines"));
    }
    Ok(d)
}

fn parse_extent(line: &str, n: usize) -> Result<Extent> {
    // access sectors type ["file" [offset]]
    let mut parts = line.splitn(3, char::is_whitespace).map(str::trim);
    let access = parts.next().unwrap_or_default().to_string();
    let sectors: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(n, "extent size is not a number"))?;
    let rest = parts.next().unwrap_or("").trim_start();
    let (kind_word, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let rest = rest.trim();
    let (file, tail) = if let Some(r) = rest.strip_prefix('"') {
        let end = r
            .find('"')
            .ok_or_else(|| bad(n, "unterminated file name"))?;
        (Some(r[..end].to_string()), r[end + 1..].trim())
    } else {
        (None, rest)
    };
    let kind = match kind_word {
        "FLAT" | "VMFS" | "VMFSRAW" | "VMFSRDM" => ExtentKind::Flat {
            offset: if tail.is_empty() {
                0
            } else {
                tail.parse()
                    .map_err(|_| bad(n, format!("flat extent offset {tail:?} is not a number")))?
            },
        },
        "SPARSE" => ExtentKind::Sparse,
        "ZERO" => ExtentKind::Zero,
        other => {
            return Err(Error::VmdkUnsupported(format!(
                "extent type {other} (line {n})"
            )))
        }
    };
    if kind != ExtentKind::Zero && file.is_none() {
        return Err(bad(n, "extent without a file name"));
    }
    Ok(Extent {
        access,
        sectors,
        kind,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_and_flat_descriptors() {
        let d = parse_descriptor(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n\n\
             RW 4192256 SPARSE \"d-s001.vmdk\"\nRW 1000 FLAT \"my disk-flat.vmdk\" 8\nRW 24 ZERO\n\nddb.adapterType = \"lsilogic\"\n\0\0",
        )
        .unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentSparse");
        assert!(!d.has_parent());
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[1].kind, ExtentKind::Flat { offset: 8 });
        assert_eq!(d.extents[1].file.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[2].kind, ExtentKind::Zero);
        assert_eq!(d.capacity(), (4192256 + 1000 + 24) * 512);
        assert!(d
            .ddb
            .contains(&("ddb.adapterType".into(), "lsilogic".into())));
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse_descriptor("RW abc FLAT \"x\" 0").is_err());
        assert!(parse_descriptor("RW 10 FLAT \"x").is_err());
        assert!(parse_descriptor("RW 10 SESPARSE \"x\"").is_err());
        assert!(parse_descriptor("createType=\"x\"").is_err());
        assert!(parse_descriptor("garbage").is_err());
        let d = parse_descriptor("parentCID=1234abcd\nRW 8 SPARSE \"delta.vmdk\"").unwrap();
        assert!(d.has_parent());
    }
}
