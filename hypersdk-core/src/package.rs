//! From a [`VmSpec`] to the pieces of an OVF package: file names and the
//! OVF hardware description.
//!
//! Mapping decisions, for importers that know only VMware's device set:
//! virtio-blk, SCSI and NVMe disks go on an LSI Logic SCSI controller
//! (`lsilogicsas` for Windows guests); IDE and SATA keep their bus. virtio NICs
//! become `VmxNet3`, `e1000e` stays `E1000e`, everything else is `E1000`.

use hypersdk_formats::ovf::{OvfController, OvfControllerKind, OvfDisk, OvfNic, OvfOs, OvfSystem};
use hypersdk_formats::vmdk::STREAM_OPTIMIZED_FORMAT_URI;

use crate::vm::{ControllerKind, Firmware, GuestOs, OsFamily, VmSpec};

/// A file-system- and tar-safe version of a VM name: ASCII letters, digits,
/// `.`, `_` and `-`; anything else becomes `_`; at most 64 characters.
pub fn safe_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.trim_matches('.').is_empty() {
        s = "vm".into();
    }
    s
}

/// File name of disk `index` (0-based) of artifact `base`.
pub fn disk_file_name(base: &str, index: usize) -> String {
    format!("{base}-disk{}.vmdk", index + 1)
}

/// The written disk files, for [`ovf_system`].
#[derive(Debug, Clone)]
pub struct WrittenDisk {
    /// File name in the package.
    pub file: String,
    /// Its size in bytes.
    pub file_size: u64,
    /// Guest bytes stored.
    pub populated: u64,
}

/// The OVF description of `spec` whose disks were written as `disks`.
pub fn ovf_system(spec: &VmSpec, disks: &[WrittenDisk]) -> OvfSystem {
    let windows = spec.guest_os.family == OsFamily::Windows;
    let mut controllers: Vec<OvfController> = Vec::new();
    let mut ovf_disks = Vec::new();
    // Unit numbers per controller, assigned in disk order.
    let mut next_unit: Vec<u32> = Vec::new();
    for (d, w) in spec.disks.iter().zip(disks) {
        let kind = match d.controller {
            ControllerKind::Ide => OvfControllerKind::Ide,
            ControllerKind::Sata => OvfControllerKind::Sata,
            _ => OvfControllerKind::Scsi(if windows { "lsilogicsas" } else { "lsilogic" }.into()),
        };
        let ci = match controllers.iter().position(|c| c.kind == kind) {
            Some(i) => i,
            None => {
                controllers.push(OvfController { kind, bus: 0 });
                next_unit.push(0);
                controllers.len() - 1
            }
        };
        let mut unit = next_unit[ci];
        // SCSI unit 7 is the controller itself.
        if matches!(controllers[ci].kind, OvfControllerKind::Scsi(_)) && unit == 7 {
            unit += 1;
        }
        next_unit[ci] = unit + 1;
        ovf_disks.push(OvfDisk {
            file_href: w.file.clone(),
            file_size: w.file_size,
            capacity: d.capacity,
            populated_size: Some(w.populated),
            format_uri: STREAM_OPTIMIZED_FORMAT_URI.into(),
            controller: ci,
            address_on_parent: unit,
        });
    }
    let nics = spec
        .nics
        .iter()
        .map(|n| OvfNic {
            network: n.network.clone(),
            mac: n.mac.clone(),
            adapter: match n.model.to_ascii_lowercase().as_str() {
                "virtio" | "vmxnet3" => "VmxNet3",
                "e1000e" => "E1000e",
                _ => "E1000",
            }
            .into(),
        })
        .collect();
    OvfSystem {
        name: spec.name.clone(),
        annotation: spec.annotation.clone(),
        os: ovf_os(&spec.guest_os),
        cpus: spec.cpus.max(1),
        memory_mib: spec.memory_mib.max(1),
        efi: spec.firmware == Firmware::Uefi,
        system_type: "vmx-14".into(),
        controllers,
        disks: ovf_disks,
        nics,
    }
}

/// CIM OS id and VMware guest id for a guest OS. Known libosinfo and vSphere
/// ids map to their specific entries; the rest to the family's generic one.
pub fn ovf_os(os: &GuestOs) -> OvfOs {
    let id = os.id.to_ascii_lowercase();
    let (cim_id, vmw) = if id.contains("ubuntu") {
        (94, "ubuntu64Guest")
    } else if id.contains("debian") {
        (96, "debian10_64Guest")
    } else if id.contains("rhel") || id.contains("redhat") {
        (80, "rhel8_64Guest")
    } else if id.contains("centos") || id.contains("rocky") || id.contains("alma") {
        (107, "centos8_64Guest")
    } else if id.contains("sles") || id.contains("suse") {
        (85, "sles15_64Guest")
    } else {
        match os.family {
            OsFamily::Linux => (101, "otherLinux64Guest"),
            OsFamily::Windows => (113, "windows9Server64Guest"),
            OsFamily::Other => (102, "otherGuest64"),
        }
    };
    OvfOs {
        cim_id,
        vmw_os_type: vmw.into(),
        description: os.description.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names() {
        assert_eq!(safe_name("web 01/prod"), "web_01_prod");
        assert_eq!(safe_name(".."), "vm");
        assert_eq!(safe_name("ok-name_1.2"), "ok-name_1.2");
        assert_eq!(safe_name(&"x".repeat(100)).len(), 64);
    }
}
