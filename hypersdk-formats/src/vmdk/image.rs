//! A whole VMDK disk: one sparse file with an embedded descriptor, or a text
//! descriptor whose extents are other files (monolithicFlat,
//! twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::descriptor::{parse_descriptor, Descriptor, ExtentKind, MAX_DESCRIPTOR_BYTES};
use super::reader::SparseExtentReader;
use super::SECTOR_SIZE;
use crate::error::{Error, Result};
use crate::image::{DiskImage, Region};

#[derive(Debug)]
enum Backing {
    Flat { file: File, offset: u64 },
    Sparse(Box<SparseExtentReader<File>>),
    Zero,
}

#[derive(Debug)]
struct Part {
    start: u64,
    len: u64,
    backing: Backing,
}

/// A VMDK of one or more extents, read as one disk.
#[derive(Debug)]
pub struct VmdkImage {
    parts: Vec<Part>,
    size: u64,
}

impl VmdkImage {
    /// Opens the VMDK at `path`: a sparse extent (`KDMV`) or a text descriptor.
    /// Extent files must be plain names beside the descriptor; delta disks
    /// (with a parent) are refused.
    pub fn open(path: &Path) -> Result<Self> {
        let d = match layout(path)? {
            Layout::Sparse(file) => {
                let r = SparseExtentReader::open(file)?;
                let size = r.virtual_size();
                return Ok(VmdkImage {
                    parts: vec![Part {
                        start: 0,
                        len: size,
                        backing: Backing::Sparse(Box::new(r)),
                    }],
                    size,
                });
            }
            Layout::Descriptor(d) => d,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut parts = Vec::with_capacity(d.extents.len());
        let mut start = 0u64;
        for (i, e) in d.extents.iter().enumerate() {
            let len = e
                .sectors
                .checked_mul(SECTOR_SIZE)
                .ok_or_else(|| Error::VmdkDescriptor {
                    line: 0,
                    what: format!("extent {} size overflows", i + 1),
                })?;
            let open_extent = |name: &str| -> Result<File> {
                File::open(extent_path(dir, name)?)
                    .map_err(|err| Error::io(format!("opening extent {name}"), err))
            };
            let backing = match (&e.kind, e.file.as_deref()) {
                (ExtentKind::Zero, _) => Backing::Zero,
                (ExtentKind::Flat { offset }, Some(name)) => {
                    let f = open_extent(name)?;
                    let have = f
                        .metadata()
                        .map_err(|err| Error::io(format!("reading extent {name}"), err))?
                        .len();
                    let need = offset.saturating_mul(SECTOR_SIZE).saturating_add(len);
                    if have < need {
                        return Err(Error::VmdkCorrupt {
                            offset: 0,
                            what: format!(
                                "flat extent {name} is {have} bytes, the descriptor needs {need}"
                            ),
                        });
                    }
                    Backing::Flat {
                        file: f,
                        offset: offset * SECTOR_SIZE,
                    }
                }
                (ExtentKind::Sparse, Some(name)) => {
                    let r = SparseExtentReader::open(open_extent(name)?)?;
                    if r.virtual_size() != len {
                        return Err(Error::VmdkCorrupt {
                            offset: 12,
                            what: format!(
                                "sparse extent {name} holds {} bytes, the descriptor says {len}",
                                r.virtual_size()
                            ),
                        });
                    }
                    Backing::Sparse(Box::new(r))
                }
                _ => {
                    return Err(Error::VmdkDescriptor {
                        line: 0,
                        what: format!("extent {} has no file", i + 1),
                    })
                }
            };
            parts.push(Part {
                start,
                len,
                backing,
            });
            start = start
                .checked_add(len)
                .ok_or_else(|| Error::VmdkDescriptor {
                    line: 0,
                    what: "total size overflows".into(),
                })?;
        }
        Ok(VmdkImage { parts, size: start })
    }

    /// The files a VMDK at `path` reads besides itself: none for a sparse
    /// extent, each extent's file (beside the descriptor) for a text
    /// descriptor. The same rules as [`open`](Self::open) apply.
    pub fn extent_files(path: &Path) -> Result<Vec<PathBuf>> {
        let dir = path.parent().unwrap_or(Path::new("."));
        match layout(path)? {
            Layout::Sparse(_) => Ok(Vec::new()),
            Layout::Descriptor(d) => d
                .extents
                .iter()
                .filter_map(|e| e.file.as_deref())
                .map(|name| extent_path(dir, name))
                .collect(),
        }
    }

    fn part(&self, offset: u64) -> Option<usize> {
        self.parts
            .iter()
            .position(|p| offset >= p.start && offset < p.start + p.len)
    }
}

/// What a VMDK file is, as far as its layout goes.
enum Layout {
    /// A sparse extent with its descriptor embedded.
    Sparse(File),
    /// A text descriptor naming extent files (not a delta disk).
    Descriptor(Descriptor),
}

/// Reads the start of the VMDK at `path`: a sparse extent, or a text
/// descriptor (parsed; delta disks refused).
fn layout(path: &Path) -> Result<Layout> {
    let ctx = |e| Error::io(format!("opening {}", path.display()), e);
    let mut file = File::open(path).map_err(ctx)?;
    let len = file.metadata().map_err(ctx)?.len();
    let mut magic = [0u8; 4];
    if len >= 4 {
        file.read_exact(&mut magic).map_err(ctx)?;
    }
    if &magic == b"KDMV" {
        return Ok(Layout::Sparse(file));
    }
    if len > MAX_DESCRIPTOR_BYTES as u64 {
        return Err(Error::VmdkDescriptor {
            line: 0,
            what: format!(
                "{} is {len} bytes, too large for a descriptor",
                path.display()
            ),
        });
    }
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text))
        .map_err(|e| Error::io(format!("reading descriptor {}", path.display()), e))?;
    let d = parse_descriptor(&text)?;
    if d.has_parent() {
        return Err(Error::VmdkUnsupported(format!(
            "{} is a delta disk (parentCID {}); export the consolidated disk",
            path.display(),
            d.parent_cid.as_deref().unwrap_or("")
        )));
    }
    Ok(Layout::Descriptor(d))
}

/// The file of the extent `name` of a descriptor in `dir`: only a plain
/// name beside the descriptor.
fn extent_path(dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name.split(['/', '\\']).any(|c| c == "..") {
        return Err(Error::VmdkUnsupported(format!(
            "extent file {name:?} is not a plain name beside the descriptor"
        )));
    }
    Ok(dir.join(name))
}

impl DiskImage for VmdkImage {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<()> {
        crate::image::check_read("VMDK", offset, buf.len(), self.size)?;
        while !buf.is_empty() {
            let i = self.part(offset).ok_or_else(|| Error::InvalidInput {
                format: "VMDK",
                what: format!("offset {offset:#x} is in no extent"),
            })?;
            let p = &mut self.parts[i];
            let within = offset - p.start;
            let n = ((p.len - within) as usize).min(buf.len());
            let (chunk, rest) = buf.split_at_mut(n);
            match &mut p.backing {
                Backing::Zero => chunk.fill(0),
                Backing::Flat { file, offset: base } => file
                    .seek(SeekFrom::Start(*base + within))
                    .and_then(|_| file.read_exact(chunk))
                    .map_err(|e| {
                        Error::io(format!("reading a flat extent at {:#x}", *base + within), e)
                    })?,
                Backing::Sparse(r) => r.read_at(within, chunk)?,
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    fn region(&mut self, offset: u64) -> Result<Region> {
        let i = self.part(offset).ok_or_else(|| Error::InvalidInput {
            format: "VMDK",
            what: format!("offset {offset:#x} is in no extent"),
        })?;
        let p = &mut self.parts[i];
        let within = offset - p.start;
        let left = p.len - within;
        Ok(match &mut p.backing {
            Backing::Zero => Region::Zero(left),
            Backing::Flat { .. } => Region::Data(left),
            Backing::Sparse(r) => match r.region(within)? {
                Region::Data(n) => Region::Data(n.min(left)),
                Region::Zero(n) => Region::Zero(n.min(left)),
            },
        })
    }

    fn decode_is_costly(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(&p.backing, Backing::Sparse(r) if r.header().compressed()))
    }
}
