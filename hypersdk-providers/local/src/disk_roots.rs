//! Where a confined provider may read disk images from.
//!
//! A disk's image path is first checked as written (made absolute, `.` and
//! `..` resolved by name): outside every root, it is refused before the
//! file system is asked anything, so the answer says nothing about whether
//! the path exists. Inside a root, it is resolved with every symbolic link
//! followed and checked again, so a link inside a root that points out of it
//! is refused too. The resolved path is what gets opened. The extent files
//! of a VMDK descriptor are checked the same way.

use std::path::{Component, Path, PathBuf};

use hypersdk_core::DiskFormat;
use hypersdk_formats::vmdk::parse_descriptor;

/// The allowed roots, as configured and as resolved.
#[derive(Debug, Clone)]
pub(crate) struct DiskRoots {
    /// (as configured, absolute and normalised; resolved if it exists)
    roots: Vec<(PathBuf, Option<PathBuf>)>,
}

/// `path` made absolute with `.` and `..` resolved by name, without asking
/// the file system.
fn lexical(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl DiskRoots {
    pub(crate) fn new(roots: Vec<PathBuf>) -> Self {
        DiskRoots {
            roots: roots
                .iter()
                .map(|r| {
                    let l = lexical(r);
                    let resolved = std::fs::canonicalize(&l).ok();
                    (l, resolved)
                })
                .collect(),
        }
    }

    fn rule(&self, shown: &Path) -> String {
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|(l, _)| l.display().to_string())
            .collect();
        format!(
            "its image {} is not under a directory this provider may read disks from (disk_roots: {})",
            hypersdk_formats::error::display_name(&shown.display().to_string()),
            roots.join(", ")
        )
    }

    /// The resolved path of `path` if it lies under a root, as written and
    /// once resolved; otherwise a message naming the rule.
    fn check_path(&self, path: &Path) -> Result<PathBuf, String> {
        let l = lexical(path);
        if !self.roots.iter().any(|(root, _)| l.starts_with(root)) {
            return Err(self.rule(path));
        }
        let real = std::fs::canonicalize(&l).map_err(|e| {
            format!(
                "cannot open its image {}: {e}",
                hypersdk_formats::error::display_name(&path.display().to_string())
            )
        })?;
        if !self
            .roots
            .iter()
            .any(|(_, r)| r.as_ref().is_some_and(|r| real.starts_with(r)))
        {
            return Err(self.rule(path));
        }
        Ok(real)
    }

    /// Checks a disk image (and, for a VMDK descriptor, its extent files);
    /// returns the resolved path to open.
    pub(crate) fn check(&self, path: &Path, format: DiskFormat) -> Result<PathBuf, String> {
        let real = self.check_path(path)?;
        if format == DiskFormat::Vmdk {
            self.check_extents(&real)?;
        }
        Ok(real)
    }

    /// A text VMDK descriptor names extent files beside it: each must lie
    /// under a root too (a link beside the descriptor may point anywhere).
    fn check_extents(&self, descriptor: &Path) -> Result<(), String> {
        use std::io::Read;
        let mut head = Vec::new();
        let mut f =
            std::fs::File::open(descriptor).map_err(|e| format!("cannot open its image: {e}"))?;
        (&mut f)
            .take(hypersdk_formats::vmdk::MAX_DESCRIPTOR_BYTES as u64 + 1)
            .read_to_end(&mut head)
            .map_err(|e| format!("cannot read its image: {e}"))?;
        if head.starts_with(b"KDMV") || head.len() > hypersdk_formats::vmdk::MAX_DESCRIPTOR_BYTES {
            return Ok(()); // one sparse file, or not a descriptor (the reader says why)
        }
        let Ok(text) = std::str::from_utf8(&head) else {
            return Ok(());
        };
        let Ok(d) = parse_descriptor(text) else {
            return Ok(());
        };
        let dir = descriptor.parent().unwrap_or(Path::new("/"));
        for e in &d.extents {
            if let Some(name) = e.file.as_deref() {
                self.check_path(&dir.join(name)).map_err(|what| {
                    format!("VMDK extent {}", what.replacen("its image", "file", 1))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolves_dots() {
        assert_eq!(lexical(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(lexical(Path::new("/../../etc")), Path::new("/etc"));
    }

    #[test]
    fn outside_refused_without_asking_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let roots = DiskRoots::new(vec![dir.path().to_path_buf()]);
        let a = roots.check_path(Path::new("/etc/shadow")).unwrap_err();
        let b = roots
            .check_path(Path::new("/etc/no-such-file-here"))
            .unwrap_err();
        assert_eq!(
            a.replace("shadow", "X"),
            b.replace("no-such-file-here", "X")
        );
        let dotted = dir.path().join("../../etc/passwd");
        assert!(roots
            .check_path(&dotted)
            .unwrap_err()
            .contains("disk_roots"));
    }

    #[test]
    fn links_out_of_a_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.raw")).unwrap();
        let roots = DiskRoots::new(vec![dir.path().to_path_buf()]);
        assert!(roots.check_path(&dir.path().join("ok.raw")).is_ok());
        let e = roots.check_path(&dir.path().join("link.raw")).unwrap_err();
        assert!(e.contains("disk_roots"), "{e}");
    }
}
