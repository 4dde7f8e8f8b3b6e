//! OVF packages as a whole — an `.ova` archive, or a directory with an `.ovf`
//! — inspected and verified against their manifest.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::manifest::{verify_manifest, ManifestCheck};
use crate::ova::OvaReader;
use crate::ovf::{read_summary, OvfSummary, MAX_OVF_BYTES};

/// Largest manifest read, in bytes.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What a package holds and whether it checks out.
#[derive(Debug, Clone)]
pub struct PackageReport {
    /// "ova" or "ovf".
    pub kind: &'static str,
    /// The archive, or the directory of the descriptor.
    pub path: PathBuf,
    /// Every file with its size, in archive (or name) order.
    pub files: Vec<(String, u64)>,
    /// The descriptor's file name.
    pub descriptor: String,
    /// What the descriptor says.
    pub summary: OvfSummary,
    /// The manifest's file name, if there is one.
    pub manifest: Option<String>,
    /// One result per manifest line.
    pub checks: Vec<ManifestCheck>,
    /// Files of the package the manifest does not cover (besides itself and a `.cert`).
    pub uncovered: Vec<String>,
    /// Other problems: files the descriptor references that are missing or
    /// of another size, members out of the order the OVF specification requires.
    pub problems: Vec<String>,
}

impl PackageReport {
    /// Whether there is a manifest, every line matches, it covers every file
    /// and no other problem was found.
    pub fn verified(&self) -> bool {
        self.manifest.is_some()
            && self.checks.iter().all(ManifestCheck::ok)
            && self.uncovered.is_empty()
            && self.problems.is_empty()
    }

    /// One line per problem, for error messages.
    pub fn failures(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.manifest.is_none() {
            v.push("no manifest (.mf)".to_string());
        }
        for c in &self.checks {
            match &c.actual {
                None => v.push(format!("{} is missing", c.name)),
                Some(a) if *a != c.expected => v.push(format!(
                    "{} {} digest is {a}, the manifest says {}",
                    c.name, c.algorithm, c.expected
                )),
                _ => {}
            }
        }
        for u in &self.uncovered {
            v.push(format!("{u} is not covered by the manifest"));
        }
        v.extend(self.problems.iter().cloned());
        v
    }
}

/// Whether `path` looks like an OVA archive (ustar magic at byte 257).
pub fn is_ova(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(257))?;
            f.read_exact(&mut magic)
        })
        .is_ok()
        && &magic == b"ustar"
}

fn cover_and_check(report: &mut PackageReport) {
    let covered: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    report.uncovered = report
        .files
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| {
            Some(n) != report.manifest.as_ref()
                && !n.ends_with(".cert")
                && !covered.contains(&n.as_str())
        })
        .collect();
    for f in &report.summary.files {
        match report.files.iter().find(|(n, _)| *n == f.href) {
            None => report.problems.push(format!(
                "{} is referenced by the descriptor but missing",
                f.href
            )),
            Some((_, size)) if f.size.is_some_and(|s| s != *size) => report.problems.push(format!(
                "{} is {size} bytes, the descriptor says {}",
                f.href,
                f.size.unwrap_or_default()
            )),
            _ => {}
        }
    }
}

/// Inspects and verifies the package at `path`: an `.ova`, an `.ovf` file, or
/// a directory holding one `.ovf`. Digests are computed by reading every file
/// once (in place inside an OVA).
pub fn inspect_package(path: &Path) -> Result<PackageReport> {
    if path.is_file() && is_ova(path) {
        return inspect_ova(path);
    }
    let (dir, descriptor) = if path.is_dir() {
        let mut ovfs: Vec<String> = list_dir(path)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.ends_with(".ovf"))
            .collect();
        match ovfs.len() {
            1 => (path.to_path_buf(), ovfs.remove(0)),
            0 => {
                return Err(Error::InvalidInput {
                    format: "OVF package",
                    what: format!("{} holds no .ovf descriptor", path.display()),
                })
            }
            n => {
                return Err(Error::InvalidInput {
                    format: "OVF package",
                    what: format!("{} holds {n} .ovf descriptors", path.display()),
                })
            }
        }
    } else {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::InvalidInput {
                format: "OVF package",
                what: format!("{} is not a file", path.display()),
            })?;
        (dir, name)
    };
    let files = list_dir(&dir)?;
    let read_limited = |name: &str, limit: u64| -> Result<String> {
        let p = dir.join(name);
        let len = std::fs::metadata(&p)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
            .len();
        if len > limit {
            return Err(Error::InvalidInput {
                format: "OVF package",
                what: format!(
                    "{} is {len} bytes, more than the {limit} accepted",
                    p.display()
                ),
            });
        }
        std::fs::read_to_string(&p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
    };
    let summary = read_summary(&read_limited(&descriptor, MAX_OVF_BYTES)?)?;
    let manifest = find_manifest(&descriptor, files.iter().map(|(n, _)| n.as_str()));
    let checks = match &manifest {
        Some(mf) => verify_manifest(&read_limited(mf, MAX_MANIFEST_BYTES)?, |name, hasher| {
            if crate::ova::safe_member_name(name).is_err() {
                return Ok(false); // never follow a manifest out of the package
            }
            match std::fs::File::open(dir.join(name)) {
                Ok(mut f) => {
                    std::io::copy(&mut f, hasher)
                        .map_err(|e| Error::io(format!("reading {name}"), e))?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(format!("reading {name}"), e)),
            }
        })?,
        None => Vec::new(),
    };
    let mut report = PackageReport {
        kind: "ovf",
        path: dir,
        files,
        descriptor,
        summary,
        manifest,
        checks,
        uncovered: Vec::new(),
        problems: Vec::new(),
    };
    cover_and_check(&mut report);
    Ok(report)
}

fn inspect_ova(path: &Path) -> Result<PackageReport> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut ova = OvaReader::open(file)?;
    let files: Vec<(String, u64)> = ova
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.size))
        .collect();
    let mut problems = Vec::new();
    let descriptor = match files.first() {
        Some((n, _)) if n.ends_with(".ovf") => n.clone(),
        _ => {
            problems.push("the first member is not the .ovf descriptor".to_string());
            files
                .iter()
                .find(|(n, _)| n.ends_with(".ovf"))
                .map(|(n, _)| n.clone())
                .ok_or_else(|| Error::InvalidInput {
                    format: "OVA",
                    what: format!("{} has no .ovf member", path.display()),
                })?
        }
    };
    let xml = String::from_utf8(ova.read_small(&descriptor, MAX_OVF_BYTES)?).map_err(|_| {
        Error::OvfInvalid {
            offset: 0,
            what: "descriptor is not UTF-8".into(),
        }
    })?;
    let summary = read_summary(&xml)?;
    let manifest = find_manifest(&descriptor, files.iter().map(|(n, _)| n.as_str()));
    if let Some(mf) = &manifest {
        let at = files.iter().position(|(n, _)| n == mf).unwrap_or(0);
        if at != 1 && at != files.len() - 1 {
            problems.push(format!(
                "{mf} is neither right after the descriptor nor the last member"
            ));
        }
    }
    let checks = match &manifest {
        Some(mf) => {
            let text =
                String::from_utf8(ova.read_small(mf, MAX_MANIFEST_BYTES)?).map_err(|_| {
                    Error::ManifestInvalid {
                        line: 0,
                        what: "manifest is not UTF-8".into(),
                    }
                })?;
            verify_manifest(&text, |name, hasher| {
                if ova.entry(name).is_none() {
                    return Ok(false);
                }
                ova.copy_member(name, hasher)?;
                Ok(true)
            })?
        }
        None => Vec::new(),
    };
    let mut report = PackageReport {
        kind: "ova",
        path: path.to_path_buf(),
        files,
        descriptor,
        summary,
        manifest,
        checks,
        uncovered: Vec::new(),
        problems,
    };
    cover_and_check(&mut report);
    Ok(report)
}

/// `<stem>.mf` next to the descriptor, else the only `.mf`.
fn find_manifest<'a>(
    descriptor: &str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    let stem = descriptor.strip_suffix(".ovf").unwrap_or(descriptor);
    let wanted = format!("{stem}.mf");
    if names.clone().any(|n| n == wanted) {
        return Some(wanted);
    }
    let mfs: Vec<&str> = names.filter(|n| n.ends_with(".mf")).collect();
    (mfs.len() == 1).then(|| mfs[0].to_string())
}

fn list_dir(dir: &Path) -> Result<Vec<(String, u64)>> {
    let ctx = |e| Error::io(format!("listing {}", dir.display()), e);
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(ctx)? {
        let entry = entry.map_err(ctx)?;
        let meta = entry.metadata().map_err(ctx)?;
        if meta.is_file() {
            v.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
        }
    }
    v.sort();
    Ok(v)
}
