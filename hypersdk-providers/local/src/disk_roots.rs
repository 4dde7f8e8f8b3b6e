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
use hypersdk_formats::vmdk::VmdkImage;

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

    /// The refusal of `what` (e.g. "its image") at `shown`, naming the rule.
    fn rule(&self, what: &str, shown: &Path) -> String {
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|(l, _)| l.display().to_string())
            .collect();
        format!(
            "{what} {} is not under a directory this provider may read disks from (disk_roots: {})",
            hypersdk_formats::error::display_name(&shown.display().to_string()),
            roots.join(", ")
        )
    }

    /// The resolved path of `path` (`what` it is, for messages) if it lies
    /// under a root, as written and once resolved; otherwise a message
    /// naming the rule.
    fn check_path(&self, what: &str, path: &Path) -> Result<PathBuf, String> {
        let l = lexical(path);
        if !self.roots.iter().any(|(root, _)| l.starts_with(root)) {
            return Err(self.rule(what, path));
        }
        let real = std::fs::canonicalize(&l).map_err(|e| {
            format!(
                "cannot open {what} {}: {e}",
                hypersdk_formats::error::display_name(&path.display().to_string())
            )
        })?;
        if !self
            .roots
            .iter()
            .any(|(_, r)| r.as_ref().is_some_and(|r| real.starts_with(r)))
        {
            return Err(self.rule(what, path));
        }
        Ok(real)
    }

    /// Checks a disk image and, for a VMDK descriptor, its extent files (a
    /// link beside the descriptor may point anywhere); returns the resolved
    /// path to open.
    pub(crate) fn check(&self, path: &Path, format: DiskFormat) -> Result<PathBuf, String> {
        let real = self.check_path("its image", path)?;
        if format == DiskFormat::Vmdk {
            // A VMDK the reader would refuse is left to it to say why.
            for extent in VmdkImage::extent_files(&real).unwrap_or_default() {
                self.check_path("its VMDK extent file", &extent)?;
            }
        }
        Ok(real)
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
        let a = roots
            .check_path("its image", Path::new("/etc/shadow"))
            .unwrap_err();
        let b = roots
            .check_path("its image", Path::new("/etc/no-such-file-here"))
            .unwrap_err();
        assert_eq!(
            a.replace("shadow", "X"),
            b.replace("no-such-file-here", "X")
        );
        let dotted = dir.path().join("../../etc/passwd");
        assert!(roots
            .check_path("its image", &dotted)
            .unwrap_err()
            .contains("disk_roots"));
    }

    #[test]
    fn links_out_of_a_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.raw")).unwrap();
        let roots = DiskRoots::new(vec![dir.path().to_path_buf()]);
        assert!(roots
            .check_path("its image", &dir.path().join("ok.raw"))
            .is_ok());
        let e = roots
            .check_path("its image", &dir.path().join("link.raw"))
            .unwrap_err();
        assert!(e.contains("disk_roots"), "{e}");
    }

    #[test]
    fn a_vmdk_extent_linked_out_of_a_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret-flat.vmdk"), vec![0u8; 512]).unwrap();
        let descriptor = |extent: &str| {
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW 1 FLAT \"{extent}\" 0\n"
            )
        };
        std::fs::write(dir.path().join("ok-flat.vmdk"), vec![0u8; 512]).unwrap();
        std::fs::write(dir.path().join("ok.vmdk"), descriptor("ok-flat.vmdk")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret-flat.vmdk"),
            dir.path().join("link-flat.vmdk"),
        )
        .unwrap();
        std::fs::write(dir.path().join("link.vmdk"), descriptor("link-flat.vmdk")).unwrap();
        let roots = DiskRoots::new(vec![dir.path().to_path_buf()]);
        assert!(roots
            .check(&dir.path().join("ok.vmdk"), DiskFormat::Vmdk)
            .is_ok());
        let e = roots
            .check(&dir.path().join("link.vmdk"), DiskFormat::Vmdk)
            .unwrap_err();
        assert!(
            e.contains("its VMDK extent file") && e.contains("disk_roots"),
            "{e}"
        );
    }
}
