//! Where a confined provider may read disk images from: the image and, for
//! a VMDK descriptor, each of its extent files must lie under one of the
//! `disk_roots`, as written and once links are followed
//! ([`hypersdk_core::confine`]).

use std::path::{Path, PathBuf};

use hypersdk_core::confine::PathRoots;
use hypersdk_core::DiskFormat;
use hypersdk_formats::vmdk::VmdkImage;

/// The allowed roots.
#[derive(Debug, Clone)]
pub(crate) struct DiskRoots(PathRoots);

impl DiskRoots {
    pub(crate) fn new(roots: Vec<PathBuf>) -> Self {
        DiskRoots(PathRoots::new(
            &roots,
            "disk_roots",
            "this provider may read disks from",
        ))
    }

    /// Checks a disk image and, for a VMDK descriptor, its extent files (a
    /// link beside the descriptor may point anywhere); returns the resolved
    /// path to open.
    pub(crate) fn check(&self, path: &Path, format: DiskFormat) -> Result<PathBuf, String> {
        let real = self.0.check("its image", path)?;
        if format == DiskFormat::Vmdk {
            // A VMDK the reader would refuse is left to it to say why.
            for extent in VmdkImage::extent_files(&real).unwrap_or_default() {
                self.0.check("its VMDK extent file", &extent)?;
            }
        }
        Ok(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
