//! From a [`VmSpec`] to the pieces of an OVF package: file names and the
//! OVF hardware description.
//!
//! Mapping decisions, for importers that know only VMware's device set:
//! virtio-blk, SCSI and NVMe disks go on an LSI Logic SCSI controller
//! (`lsilogicsas` for Windows guests); IDE and SATA keep their bus. virtio NICs
//! become `VmxNet3`, `e1000e` stays `E1000e`, everything else is `E1000`.

use hypersdk_formats::ovf::{ControllerType, Envelope, OvfVersion};
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

/// The written disk files, for [`ovf_envelope`].
#[derive(Debug, Clone)]
pub struct WrittenDisk {
    /// File name in the package.
    pub file: String,
    /// Its size in bytes.
    pub file_size: u64,
    /// Guest bytes stored.
    pub populated: u64,
}

/// The OVF descriptor of `spec` whose disks were written as `disks`.
pub fn ovf_descriptor(spec: &VmSpec, disks: &[WrittenDisk]) -> String {
    ovf_envelope(spec, disks).to_xml(OvfVersion::V1_0)
}

/// The OVF envelope of `spec` whose disks were written as `disks`.
pub fn ovf_envelope(spec: &VmSpec, disks: &[WrittenDisk]) -> Envelope {
    let windows = spec.guest_os.family == OsFamily::Windows;
    let mut env = Envelope::for_vm(&spec.name, "vmx-14");
    let disk_ids: Vec<String> = spec
        .disks
        .iter()
        .zip(disks)
        .map(|(d, w)| {
            env.add_disk_file(
                &w.file,
                w.file_size,
                d.capacity,
                Some(w.populated),
                STREAM_OPTIMIZED_FORMAT_URI,
            )
        })
        .collect();
    for n in &spec.nics {
        env.add_network(&n.network);
    }
    let sys = &mut env.systems[0];
    sys.annotation = spec.annotation.clone();
    let (cim_id, vmw_os_type) = ovf_os(&spec.guest_os);
    sys.set_os(cim_id, vmw_os_type, &spec.guest_os.description);
    let hw = &mut sys.hardware[0];
    hw.add_cpus(spec.cpus.max(1));
    hw.add_memory_mib(spec.memory_mib.max(1));
    // Controllers in order of first use, then the disks with their unit
    // numbers assigned in disk order.
    let mut controllers: Vec<(ControllerType, u32, u32)> = Vec::new(); // kind, InstanceID, next unit
    let mut placed = Vec::new();
    for d in &spec.disks {
        let kind = match d.controller {
            ControllerKind::Ide => ControllerType::Ide,
            ControllerKind::Sata => ControllerType::Sata,
            _ => ControllerType::Scsi(if windows { "lsilogicsas" } else { "lsilogic" }.into()),
        };
        let ci = match controllers.iter().position(|c| c.0 == kind) {
            Some(i) => i,
            None => {
                let id = hw.add_controller(&kind, 0);
                controllers.push((kind, id, 0));
                controllers.len() - 1
            }
        };
        let c = &mut controllers[ci];
        let mut unit = c.2;
        // SCSI unit 7 is the controller itself.
        if matches!(c.0, ControllerType::Scsi(_)) && unit == 7 {
            unit += 1;
        }
        c.2 = unit + 1;
        placed.push((c.1, unit));
    }
    for (i, (id, (parent, unit))) in disk_ids.iter().zip(placed).enumerate() {
        hw.add_disk(i + 1, id, parent, unit);
    }
    for (i, n) in spec.nics.iter().enumerate() {
        let adapter = match n.model.to_ascii_lowercase().as_str() {
            "virtio" | "vmxnet3" => "VmxNet3",
            "e1000e" => "E1000e",
            _ => "E1000",
        };
        hw.add_nic(i + 1, &n.network, adapter, n.mac.as_deref());
    }
    let firmware = if spec.firmware == Firmware::Uefi {
        "efi"
    } else {
        "bios"
    };
    hw.set_config("firmware", firmware);
    env
}

/// CIM OS id and VMware guest id for a guest OS. Known libosinfo and vSphere
/// ids map to their specific entries; the rest to the family's generic one.
pub fn ovf_os(os: &GuestOs) -> (u16, &'static str) {
    let id = os.id.to_ascii_lowercase();
    if id.contains("ubuntu") {
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
