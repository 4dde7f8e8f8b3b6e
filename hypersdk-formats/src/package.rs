//! OVF packages as a whole — an `.ova` archive, or a directory with an `.ovf`
//! — inspected and verified against their manifest.

use std::path::{Path, PathBuf};

use crate::error::{display_name, Error, Result};
use crate::manifest::{verify_manifest, ManifestCheck};
use crate::ova::OvaReader;
use crate::ovf::{Envelope, MAX_OVF_BYTES};

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
    /// The descriptor ([`Envelope::read`]; its views say what it holds).
    pub envelope: Envelope,
    /// The manifest's file name, if there is one.
    pub manifest: Option<String>,
    /// The manifest's text (for checking a signature over it).
    pub manifest_text: Option<String>,
    /// The signature file (`NAME.cert`, as ovftool's `--privateKey`
    /// writes it) and its text, if the package has one. This crate does
    /// not check it: `hypersdk_core::signing` does.
    pub certificate: Option<(String, String)>,
    /// Who signed the manifest, once the certificate was checked (by the
    /// caller: e.g. `SHA256 signature, certificate SHA-256 ab12…`).
    pub signed_by: Option<String>,
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
                None => v.push(format!("{} is missing", display_name(&c.name))),
                Some(a) if *a != c.expected => v.push(format!(
                    "{} {} digest is {a}, the manifest says {}",
                    display_name(&c.name),
                    display_name(&c.algorithm),
                    display_name(&c.expected)
                )),
                _ => {}
            }
        }
        for u in &self.uncovered {
            v.push(format!(
                "{} is not covered by the manifest",
                display_name(u)
            ));
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
    for f in &report.envelope.files {
        match report.files.iter().find(|(n, _)| *n == f.href) {
            None => report.problems.push(format!(
                "{} is referenced by the descriptor but missing",
                display_name(&f.href)
            )),
            Some((_, size)) if f.size_bytes().is_some_and(|s| s != *size) => {
                report.problems.push(format!(
                    "{} is {size} bytes, the descriptor says {}",
                    display_name(&f.href),
                    f.size_bytes().unwrap_or_default()
                ))
            }
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
    let envelope = Envelope::read(&read_limited(&descriptor, MAX_OVF_BYTES)?)?;
    let manifest = find_manifest(&descriptor, files.iter().map(|(n, _)| n.as_str()));
    let manifest_text = match &manifest {
        Some(mf) => Some(read_limited(mf, MAX_MANIFEST_BYTES)?),
        None => None,
    };
    let certificate = match find_certificate(&manifest, files.iter().map(|(n, _)| n.as_str())) {
        Some(c) => Some((c.clone(), read_limited(&c, MAX_MANIFEST_BYTES)?)),
        None => None,
    };
    let checks = match &manifest_text {
        Some(text) => verify_manifest(text, |name, hasher| {
            if crate::ova::safe_member_name(name).is_err() {
                return Ok(false); // never follow a manifest out of the package
            }
            match std::fs::File::open(dir.join(name)) {
                Ok(mut f) => {
                    std::io::copy(&mut f, hasher)
                        .map_err(|e| Error::io(format!("reading {}", display_name(name)), e))?;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(format!("reading {}", display_name(name)), e)),
            }
        })?,
        None => Vec::new(),
    };
    let mut report = PackageReport {
        kind: "ovf",
        path: dir,
        files,
        descriptor,
        envelope,
        manifest,
        manifest_text,
        certificate,
        signed_by: None,
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
    let envelope = Envelope::read(&xml)?;
    let manifest = find_manifest(&descriptor, files.iter().map(|(n, _)| n.as_str()));
    if let Some(mf) = &manifest {
        let at = files.iter().position(|(n, _)| n == mf).unwrap_or(0);
        if at != 1 && at != files.len() - 1 {
            problems.push(format!(
                "{mf} is neither right after the descriptor nor the last member"
            ));
        }
    }
    let certificate = match find_certificate(&manifest, files.iter().map(|(n, _)| n.as_str())) {
        Some(c) => {
            let text =
                String::from_utf8(ova.read_small(&c, MAX_MANIFEST_BYTES)?).map_err(|_| {
                    Error::InvalidInput {
                        format: "OVA",
                        what: format!("{} is not UTF-8", display_name(&c)),
                    }
                })?;
            Some((c, text))
        }
        None => None,
    };
    let mut manifest_text = None;
    let checks = match &manifest {
        Some(mf) => {
            let text =
                String::from_utf8(ova.read_small(mf, MAX_MANIFEST_BYTES)?).map_err(|_| {
                    Error::ManifestInvalid {
                        line: 0,
                        what: "manifest is not UTF-8".into(),
                    }
                })?;
            manifest_text = Some(text.clone());
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
        envelope,
        manifest,
        manifest_text,
        certificate,
        signed_by: None,
        checks,
        uncovered: Vec::new(),
        problems,
    };
    cover_and_check(&mut report);
    Ok(report)
}

/// Inspects and verifies an OVA read front to back from any `Read`, without
/// seeking — one being decrypted and decompressed as it is read, say.
/// `label` names it in the report. Every member is checked as it passes:
/// members before the manifest are digested with SHA-1, SHA-256 and SHA-512
/// (normally only the small descriptor), those after it with the
/// manifest's algorithms. Memory: the descriptor, the manifest and a 1 MiB
/// buffer.
pub fn inspect_ova_stream<R: std::io::Read>(mut input: R, label: &Path) -> Result<PackageReport> {
    use std::collections::HashMap;

    use crate::manifest::{parse_manifest, Hasher};
    use crate::ova::{parse_member_header, tar_padding, BLOCK_SIZE, MAX_ARCHIVE_MEMBERS};

    let io =
        |pos: u64, e: std::io::Error| Error::io(format!("reading the OVA stream at byte {pos}"), e);
    let mut pos = 0u64;
    let mut files: Vec<(String, u64)> = Vec::new();
    let mut descriptor: Option<(String, String)> = None;
    // (file name, lines as (algorithm, member, hex digest))
    type Manifest = (String, Vec<(String, String, String)>);
    let mut manifest: Option<Manifest> = None;
    let mut manifest_text: Option<String> = None;
    let mut certificate: Option<(String, String)> = None;
    // (member, algorithm as the manifest names it) → hex digest
    let mut digests: HashMap<(String, String), String> = HashMap::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut header = [0u8; BLOCK_SIZE];
    loop {
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !files.is_empty() => break,
            Err(e) => return Err(io(pos, e)),
        }
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let (name, size) = parse_member_header(&header, pos)?;
        pos += BLOCK_SIZE as u64;
        if files.iter().any(|(n, _)| *n == name) {
            return Err(Error::OvaUnsafe {
                member: name,
                what: "name appears twice".into(),
            });
        }
        if files.len() >= MAX_ARCHIVE_MEMBERS {
            return Err(Error::InvalidInput {
                format: "OVA",
                what: format!("more than {MAX_ARCHIVE_MEMBERS} members"),
            });
        }
        files.push((name.clone(), size));
        let small = (name.ends_with(".ovf") && descriptor.is_none())
            || (name.ends_with(".mf") && manifest.is_none())
            || (name.ends_with(".cert") && certificate.is_none());
        let limit = if name.ends_with(".ovf") {
            MAX_OVF_BYTES
        } else {
            MAX_MANIFEST_BYTES
        };
        if small && size > limit {
            return Err(Error::InvalidInput {
                format: "OVA",
                what: format!(
                    "{} is {size} bytes, more than the {limit} accepted",
                    display_name(&name)
                ),
            });
        }
        let algorithms: Vec<String> = match &manifest {
            Some((_, lines)) => {
                let mut a: Vec<String> = lines
                    .iter()
                    .filter(|(_, n, _)| *n == name)
                    .map(|(a, _, _)| a.clone())
                    .collect();
                a.dedup();
                a
            }
            None => vec!["SHA1".into(), "SHA256".into(), "SHA512".into()],
        };
        let mut hashers: Vec<(String, Hasher)> = algorithms
            .into_iter()
            .filter_map(|a| Hasher::for_name(&a).map(|h| (a, h)))
            .collect();
        let mut kept = Vec::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n]).map_err(|e| io(pos, e))?;
            for (_, h) in hashers.iter_mut() {
                h.update(&buf[..n]);
            }
            if small {
                kept.extend_from_slice(&buf[..n]);
            }
            pos += n as u64;
            left -= n as u64;
        }
        let pad = tar_padding(size);
        input.read_exact(&mut buf[..pad]).map_err(|e| io(pos, e))?;
        pos += pad as u64;
        for (a, h) in hashers {
            digests.insert((name.clone(), a.to_ascii_uppercase()), h.finish_hex());
        }
        if small {
            let text = String::from_utf8(kept).map_err(|_| Error::InvalidInput {
                format: "OVA",
                what: format!("{} is not UTF-8", display_name(&name)),
            })?;
            if name.ends_with(".ovf") {
                descriptor = Some((name, text));
            } else if name.ends_with(".cert") {
                certificate = Some((name, text));
            } else {
                manifest_text = Some(text.clone());
                let lines = parse_manifest(&text).map_err(|line| Error::ManifestInvalid {
                    line,
                    what: "not of the form ALGO(name)= hex".into(),
                })?;
                let lines = lines
                    .into_iter()
                    .map(|(a, n, h)| (a.to_ascii_uppercase(), n, h))
                    .collect();
                manifest = Some((name, lines));
            }
        }
    }
    let Some((descriptor, xml)) = descriptor else {
        return Err(Error::InvalidInput {
            format: "OVA",
            what: format!("{} has no .ovf member", label.display()),
        });
    };
    let mut problems = Vec::new();
    if files.first().map(|(n, _)| n) != Some(&descriptor) {
        problems.push("the first member is not the .ovf descriptor".to_string());
    }
    let envelope = Envelope::read(&xml)?;
    let (manifest_name, checks) = match manifest {
        Some((mf, lines)) => {
            let at = files.iter().position(|(n, _)| *n == mf).unwrap_or(0);
            if at != 1 && at != files.len() - 1 {
                problems.push(format!(
                    "{mf} is neither right after the descriptor nor the last member"
                ));
            }
            let checks = lines
                .into_iter()
                .map(|(algorithm, name, expected)| ManifestCheck {
                    actual: digests.get(&(name.clone(), algorithm.clone())).cloned(),
                    name,
                    algorithm,
                    expected: expected.to_ascii_lowercase(),
                })
                .collect();
            (Some(mf), checks)
        }
        None => (None, Vec::new()),
    };
    let mut report = PackageReport {
        kind: "ova",
        path: label.to_path_buf(),
        files,
        descriptor,
        envelope,
        certificate: certificate.filter(|(c, _)| {
            manifest_name.as_deref().and_then(|m| m.strip_suffix(".mf")) == c.strip_suffix(".cert")
        }),
        manifest: manifest_name,
        manifest_text,
        signed_by: None,
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

/// The signature file of manifest `NAME.mf`: `NAME.cert`, if present.
fn find_certificate<'a>(
    manifest: &Option<String>,
    mut names: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let wanted = format!("{}.cert", manifest.as_deref()?.strip_suffix(".mf")?);
    names.any(|n| n == wanted).then_some(wanted)
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
