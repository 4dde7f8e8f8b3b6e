//! Changed-block tracking of local qcow2 disks with persistent dirty
//! bitmaps (QEMU's docs/interop/bitmaps.rst, "persistent" bitmaps).
//!
//! A token is the name of a bitmap in the image. Starting (or continuing)
//! adds a new enabled bitmap `hypersdk-<ms since the epoch>` with
//! `qemu-img bitmap --add --enable` *before* the disk is read, so every
//! later write lands in it; the changed ranges since an earlier token are
//! that earlier bitmap's set bits, read by hypersdk-formats from the
//! image's bitmap extension; [`release`](ChangeTracking::release) removes
//! the earlier bitmap (`qemu-img bitmap --remove`) once the backup that used
//! the new one is stored. qemu-img takes the image's write lock, so this
//! works on disks of VMs that are shut off: for a running VM, QEMU itself
//! owns the bitmaps (QMP `block-dirty-bitmap-add` in a transaction with a
//! snapshot), which this provider does not drive. Disks that are not qcow2
//! files have no tracking.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use hypersdk_core::{ChangeTracking, Changes, DiskFormat, Error, Result};
use hypersdk_formats::qcow2::dirty_ranges;

use crate::package::DiskAt;
use crate::source::{allocation, LocalSource};

/// Prefix of the bitmaps hypersdk adds.
pub const BITMAP_PREFIX: &str = "hypersdk-";

impl LocalSource {
    /// The qcow2 file of disk `index`, or why it has no tracking.
    fn qcow2_file(&self, index: usize) -> Result<(PathBuf, u64, String)> {
        let (disk, at) = self.disk(index)?;
        match (at, disk.format) {
            (DiskAt::File(p), DiskFormat::Qcow2) => Ok((p.clone(), disk.capacity, disk.name.clone())),
            _ => Err(Error::InvalidArgument(format!(
                "disk '{}' of VM '{}' is not a qcow2 file: local change tracking uses qcow2 persistent dirty bitmaps",
                disk.name,
                self.spec().name
            ))),
        }
    }
}

use hypersdk_core::ExportSource as _;

/// Runs `qemu-img bitmap OP -f qcow2 IMAGE BITMAP`.
fn qemu_img_bitmap(op: &[&str], image: &Path, bitmap: &str, vm: &str, disk: &str) -> Result<()> {
    let out = std::process::Command::new("qemu-img")
        .arg("bitmap")
        .args(op)
        .args(["-f", "qcow2"])
        .arg(image)
        .arg(bitmap)
        .output()
        .map_err(|e| Error::Provider {
            provider: "local".into(),
            message: format!("cannot run qemu-img (Debian qemu-utils) for the change tracking of disk '{disk}' of VM '{vm}': {e}"),
            retryable: false,
            source: None,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if said.contains("lock") {
        " (is the VM running? qemu-img needs the image's write lock; shut the VM off)"
    } else {
        ""
    };
    Err(Error::Provider {
        provider: "local".into(),
        message: format!(
            "qemu-img bitmap {} {} {bitmap} failed for disk '{disk}' of VM '{vm}': {said}{hint}",
            op.join(" "),
            image.display()
        ),
        retryable: false,
        source: None,
    })
}

#[async_trait]
impl ChangeTracking for LocalSource {
    fn tracks(&self, index: usize) -> bool {
        self.qcow2_file(index).is_ok()
    }

    async fn changes_since(&self, index: usize, since: Option<&str>) -> Result<Changes> {
        let (path, capacity, disk) = self.qcow2_file(index)?;
        let vm = self.spec().name.clone();
        let since = since.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let lost = |why: String| Error::TrackingLost {
                vm: vm.clone(),
                disk: disk.clone(),
                why,
            };
            if let Some(prev) = &since {
                if !prev.starts_with(BITMAP_PREFIX) {
                    return Err(lost(format!("{prev:?} is not a bitmap hypersdk made")));
                }
                // Checked before a new bitmap is added: a lost one adds nothing.
                let mut f = std::fs::File::open(&path)
                    .map_err(|e| lost(format!("{}: {e}", path.display())))?;
                dirty_ranges(&mut f, prev).map_err(|e| lost(e.to_string()))?;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let token = format!("{BITMAP_PREFIX}{now}");
            qemu_img_bitmap(&["--add", "--enable"], &path, &token, &vm, &disk)?;
            let ranges = match &since {
                Some(prev) => {
                    let mut f = std::fs::File::open(&path)
                        .map_err(|e| lost(format!("{}: {e}", path.display())))?;
                    dirty_ranges(&mut f, prev).map_err(|e| lost(e.to_string()))?
                }
                None => allocation(&DiskAt::File(path.clone()), DiskFormat::Qcow2, capacity)
                    .map_err(|source| Error::DiskRead {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        location: path.display().to_string(),
                        source,
                    })?,
            };
            Ok(Changes { ranges, token })
        })
        .await
        .map_err(|e| Error::Internal(format!("change tracking thread failed: {e}")))?
    }

    async fn release(&self, index: usize, previous: &str) -> Result<()> {
        let (path, _, disk) = self.qcow2_file(index)?;
        if !previous.starts_with(BITMAP_PREFIX) {
            return Ok(());
        }
        let (vm, previous) = (self.spec().name.clone(), previous.to_owned());
        tokio::task::spawn_blocking(move || {
            qemu_img_bitmap(&["--remove"], &path, &previous, &vm, &disk)
        })
        .await
        .map_err(|e| Error::Internal(format!("change tracking thread failed: {e}")))?
    }
}
