//! An OVF package as a local VM: an `.ova`, or an `.ovf` descriptor with its
//! files beside it. Its descriptor (read with the one OVF model, every
//! number checked) gives the [`VmSpec`] — hardware as the descriptor says
//! it, the inverse of what an export writes — and each disk's VMDK is read
//! where it lies: a file next to the descriptor, or a member inside the
//! archive (never extracted). For repackaging an export (another digest,
//! compression, signature, hardware version) and for checking that an
//! export and a re-export agree.

use std::path::{Path, PathBuf};

use hypersdk_core::{
    BootDevice, ControllerKind, ControllerSpec, DiskFormat, DiskSpec, DriveKind, DriveSpec, Error,
    Firmware, GuestOs, Hardware, NicSpec, OsFamily, PowerState, Result, VideoSpec, VmSpec,
};
use hypersdk_formats::ova::{safe_member_name, OvaReader};
use hypersdk_formats::ovf::model::{HwItem, VirtualSystem};
use hypersdk_formats::ovf::{config_value, Envelope, BOOT_TYPES, MAX_OVF_BYTES};

/// Where a disk's image lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskAt {
    /// A file of its own.
    File(PathBuf),
    /// Member `member` of OVA `archive`.
    Member {
        /// The archive.
        archive: PathBuf,
        /// The member's name.
        member: String,
    },
}

/// Whether `path` names an OVF package rather than a domain XML.
pub fn is_package(path: &str) -> bool {
    let p = path.to_ascii_lowercase();
    p.ends_with(".ova") || p.ends_with(".ovf")
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("package {}: {what}", path.display()))
}

/// Reads the package at `path`: its VM and where each disk lies.
pub fn read_package(path: &Path) -> Result<(VmSpec, Vec<DiskAt>)> {
    let is_ova = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ova"));
    let (xml, members) = if is_ova {
        let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let mut ova = OvaReader::open(file).map_err(|e| bad(path, e))?;
        let descriptor = ova
            .entries()
            .iter()
            .find(|e| e.name.ends_with(".ovf"))
            .map(|e| e.name.clone())
            .ok_or_else(|| bad(path, "no .ovf member"))?;
        let xml = String::from_utf8(
            ova.read_small(&descriptor, MAX_OVF_BYTES)
                .map_err(|e| bad(path, e))?,
        )
        .map_err(|_| bad(path, "the descriptor is not UTF-8"))?;
        (xml, Some(ova.entries().to_vec()))
    } else {
        use std::io::Read;
        let mut xml = String::new();
        std::fs::File::open(path)
            .map_err(|e| bad(path, e))?
            .take(MAX_OVF_BYTES + 1)
            .read_to_string(&mut xml)
            .map_err(|e| bad(path, e))?;
        if xml.len() as u64 > MAX_OVF_BYTES {
            return Err(bad(
                path,
                format!("descriptor larger than {MAX_OVF_BYTES} bytes"),
            ));
        }
        (xml, None)
    };
    let env = Envelope::read(&xml).map_err(|e| bad(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A disk's file: a member of the archive, or a file beside the
    // descriptor — a plain name only, never a path out of the package.
    let locate = |href: &str| -> Result<DiskAt> {
        safe_member_name(href).map_err(|e| bad(path, e))?;
        match &members {
            Some(entries) => entries
                .iter()
                .find(|e| e.name == href)
                .map(|e| DiskAt::Member {
                    archive: path.to_path_buf(),
                    member: e.name.clone(),
                })
                .ok_or_else(|| bad(path, format!("no member {href}"))),
            None => Ok(DiskAt::File(dir.join(href))),
        }
    };
    let system = match env.systems.as_slice() {
        [one] => one,
        [] => return Err(bad(path, "no virtual system")),
        _ => {
            return Err(bad(
                path,
                "a collection of several virtual systems (export them one by one)",
            ))
        }
    };
    let mut spec = vm_spec(system);
    let mut at = Vec::new();
    for id in system.disk_ids() {
        let d = env
            .disks
            .iter()
            .find(|d| d.disk_id() == id)
            .ok_or_else(|| bad(path, format!("disk {id} is not in the DiskSection")))?;
        let href = d
            .file_ref()
            .and_then(|f| env.files.iter().find(|x| x.id == f))
            .map(|f| f.href.clone())
            .ok_or_else(|| {
                bad(
                    path,
                    format!("disk {id} has no file (blank disks are not exported)"),
                )
            })?;
        if !d.format().contains("vmdk") {
            return Err(bad(
                path,
                format!("disk {id} is not a VMDK ({})", d.format()),
            ));
        }
        let location = locate(&href)?;
        let capacity = d.capacity().unwrap_or_default();
        let (controller_index, unit) = placement(system, id);
        spec.disks.push(DiskSpec {
            name: href.clone(),
            capacity,
            format: DiskFormat::Vmdk,
            controller: controller_index
                .and_then(|i| spec.hardware.controllers.get(i))
                .map_or(ControllerKind::Scsi, |c| c.kind),
            unit,
            location: location.to_string(),
            controller_index,
        });
        at.push(location);
    }
    Ok((spec, at))
}

/// The controllers of a system, in item order: (InstanceID, spec).
fn controllers(s: &VirtualSystem) -> Vec<(String, ControllerSpec)> {
    let mut out = Vec::new();
    for i in s.hardware.iter().take(1).flat_map(|h| h.items.iter()) {
        let sub = i
            .get("ResourceSubType")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (kind, model) = match (i.get("ResourceType").unwrap_or_default(), sub.as_str()) {
            ("5", _) => (ControllerKind::Ide, "piix4"),
            ("6", "virtualscsi") => (ControllerKind::Scsi, "pvscsi"),
            ("6", "lsilogicsas") => (ControllerKind::Scsi, "lsilogic-sas"),
            ("6", "buslogic") => (ControllerKind::Scsi, "buslogic"),
            ("6", _) => (ControllerKind::Scsi, "lsilogic"),
            ("20", "vmware.nvme.controller") => (ControllerKind::Nvme, "nvme"),
            ("20", _) => (ControllerKind::Sata, "ahci"),
            _ => continue,
        };
        out.push((
            i.get("InstanceID").unwrap_or_default().to_string(),
            ControllerSpec {
                kind,
                model: model.to_string(),
                bus: i.get("Address").and_then(|a| a.parse().ok()).unwrap_or(0),
            },
        ));
    }
    out
}

/// Which controller (index) and unit an item sits on.
fn parent_of(s: &VirtualSystem, item: &HwItem) -> (Option<usize>, u32) {
    let index = item
        .get("Parent")
        .and_then(|p| controllers(s).iter().position(|(id, _)| id == p));
    let unit = item
        .get("AddressOnParent")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    (index, unit)
}

/// Where disk `id`'s item sits.
fn placement(s: &VirtualSystem, id: &str) -> (Option<usize>, u32) {
    s.items("17")
        .find(|i| {
            i.get("HostResource")
                .is_some_and(|h| h.rsplit('/').next() == Some(id))
        })
        .map_or((None, 0), |i| parent_of(s, i))
}

/// Its `vmw:BootOrderSection`s as boot devices: each names an item, whose
/// position among the items of its type is the device's index (disks and
/// NICs are taken in item order, as drives are). A section naming no item
/// of its type is skipped.
fn boot_order(s: &VirtualSystem) -> Vec<BootDevice> {
    s.boot_devices()
        .into_iter()
        .filter_map(|(id, kind)| {
            let &(kind, _, t) = BOOT_TYPES.iter().find(|(_, v, _)| *v == kind)?;
            let id = id.to_string();
            let index = s
                .items(t)
                .position(|i| i.get("InstanceID") == Some(id.as_str()))?;
            Some(BootDevice {
                kind: kind.to_string(),
                index,
            })
        })
        .collect()
}

/// The VM a virtual system describes (disks are added by the caller).
fn vm_spec(s: &VirtualSystem) -> VmSpec {
    let hw = s.hardware.first();
    let section = hw.map(|h| h.configs.as_slice()).unwrap_or_default();
    let firmware = match s.firmware() {
        Some("efi") => Firmware::Uefi,
        _ => Firmware::Bios,
    };
    let mut hardware = Hardware {
        version: s.system_type().map(str::to_string),
        cores_per_socket: s.items("3").next().and_then(|i| {
            i.fields
                .iter()
                .find(|f| f.name.rsplit(':').next() == Some("CoresPerSocket"))
                .and_then(|f| f.value.parse().ok())
        }),
        controllers: controllers(s).into_iter().map(|(_, c)| c).collect(),
        secure_boot: config_value(section, "bootOptions.efiSecureBootEnabled") == Some("true"),
        vmci: s
            .items("1")
            .any(|i| i.get("ResourceSubType") == Some("vmware.vmci")),
        boot_order: boot_order(s),
        ..Default::default()
    };
    for (t, kind) in [("15", DriveKind::Cdrom), ("14", DriveKind::Floppy)] {
        for i in s.items(t) {
            let (controller_index, unit) = parent_of(s, i);
            hardware.drives.push(DriveSpec {
                kind,
                controller_index,
                bus: controller_index
                    .and_then(|c| hardware.controllers.get(c))
                    .map(|c| c.kind),
                unit,
            });
        }
    }
    hardware.video = s.items("24").next().map(|i| VideoSpec {
        vram_kib: config_value(&i.configs, "videoRamSizeInKB").and_then(|v| v.parse().ok()),
        displays: config_value(&i.configs, "numDisplays").and_then(|v| v.parse().ok()),
        accel_3d: config_value(&i.configs, "enable3DSupport") == Some("true"),
    });
    let attr = |c: &Vec<(String, String)>, k: &str| {
        c.iter()
            .find(|(n, _)| n.rsplit(':').next() == Some(k))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for c in section {
        let key = attr(c, "key");
        if key != "firmware" && key != "bootOptions.efiSecureBootEnabled" {
            hardware.settings.push((key, attr(c, "value")));
        }
    }
    for c in hw.map(|h| h.extra_config.as_slice()).unwrap_or_default() {
        hardware
            .extra_config
            .push((attr(c, "key"), attr(c, "value")));
    }
    let os = s.os().to_string();
    VmSpec {
        id: s.id.clone(),
        name: s.display_name().to_string(),
        power_state: PowerState::Off,
        cpus: s.cpus() as u32,
        memory_mib: s.memory_mib(),
        firmware,
        guest_os: GuestOs {
            family: OsFamily::guess(&[&os, s.os_description.as_deref().unwrap_or_default()]),
            description: s.os_description.clone().unwrap_or_else(|| os.clone()),
            id: os,
        },
        nics: s
            .nics()
            .iter()
            .map(|n| NicSpec {
                network: n.network.to_string(),
                mac: n.mac.map(str::to_string),
                model: n.adapter.to_ascii_lowercase(),
            })
            .collect(),
        disks: Vec::new(),
        annotation: s.annotation.clone(),
        hardware,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(href: &str) -> String {
        format!(
            "<Envelope><References><File ovf:id='f1' ovf:href='{href}'/></References>\
             <DiskSection><Disk ovf:diskId='d1' ovf:fileRef='f1' ovf:capacity='1048576' \
             ovf:format='http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized'/></DiskSection>\
             <VirtualSystem ovf:id='v'><VirtualHardwareSection><Item>\
             <rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>1</rasd:InstanceID>\
             <rasd:ResourceType>17</rasd:ResourceType></Item></VirtualHardwareSection></VirtualSystem></Envelope>"
        )
    }

    #[test]
    fn disks_are_read_only_inside_the_package() {
        let dir = tempfile::tempdir().unwrap();
        for href in ["../outside.vmdk", "/etc/passwd", "sub/dir.vmdk"] {
            let ovf = dir.path().join("v.ovf");
            std::fs::write(&ovf, descriptor(href)).unwrap();
            let err = read_package(&ovf).unwrap_err().to_string();
            assert!(err.contains("v.ovf"), "{href}: {err}");
        }
        let ovf = dir.path().join("v.ovf");
        std::fs::write(&ovf, descriptor("disk1.vmdk")).unwrap();
        let (spec, at) = read_package(&ovf).unwrap();
        assert_eq!(spec.disks[0].capacity, 1 << 20);
        assert_eq!(at, vec![DiskAt::File(dir.path().join("disk1.vmdk"))]);
    }
}
