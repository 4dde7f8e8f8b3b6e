//! From a [`VmSpec`] to the pieces of an OVF package: file names and the
//! OVF hardware description.
//!
//! The hardware is kept as the platform describes it ([`VmSpec::hardware`](crate::VmSpec)),
//! in the shape ovftool writes: the virtual hardware family (`vmx-13` stays
//! `vmx-13`; without one, the oldest that has every device used, at least
//! `vmx-10`), each controller as its own type (ParaVirtual SCSI as
//! `VirtualSCSI`, LSI Logic, LSI Logic SAS, BusLogic, SATA/AHCI, NVMe, IDE) on
//! its bus, disks and CD-ROMs on the controller and unit they sit on, empty
//! CD-ROM and floppy drives, the video card and VMCI device, cores per
//! socket, firmware and secure boot, and the platform's settings
//! (`vmw:Config`) and advanced settings (`vmw:ExtraConfig`).
//!
//! Where VMware has no such device: virtio-scsi, virtio-blk and unknown SCSI
//! controllers become LSI Logic (`lsilogicsas` for Windows guests); virtio
//! NICs become `VmxNet3`, unknown ones `E1000`. Disks and CD-ROMs whose
//! controller the platform does not name go on the first controller of
//! their bus type, added if missing.

use hypersdk_formats::ovf::{ControllerType, Envelope, OvfVersion, BOOT_TYPES};
use hypersdk_formats::vmdk::STREAM_OPTIMIZED_FORMAT_URI;

use crate::vm::{ControllerKind, DriveKind, Firmware, GuestOs, OsFamily, VmSpec};

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

/// The OVF descriptor of `spec` whose disks were written as `disks`,
/// declaring virtual hardware family `hardware_version` if given.
pub fn ovf_descriptor(
    spec: &VmSpec,
    disks: &[WrittenDisk],
    hardware_version: Option<&str>,
) -> String {
    let mut env = ovf_envelope(spec, disks);
    if let Some(v) = hardware_version {
        env.set_system_type(v);
    }
    env.to_xml(OvfVersion::V1_0)
}

/// The OVF envelope of `spec` whose disks were written as `disks`: its
/// hardware as the platform describes it (see the module's mapping).
pub fn ovf_envelope(spec: &VmSpec, disks: &[WrittenDisk]) -> Envelope {
    let windows = spec.guest_os.family == OsFamily::Windows;
    let hw_spec = &spec.hardware;
    let mut env = Envelope::for_vm(&spec.name, &hardware_version(spec));
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
    let (cim_id, version, vmw_os_type) = ovf_os(&spec.guest_os);
    sys.set_os(cim_id, version, &vmw_os_type, &spec.guest_os.description);
    let hw = &mut sys.hardware[0];
    hw.add_cpus(
        spec.cpus.max(1),
        hw_spec.cores_per_socket.filter(|c| *c > 1),
    );
    hw.add_memory_mib(spec.memory_mib.max(1));

    // The VM's own controllers, in its device order, each as its own type.
    let mut controllers: Vec<Placed> = hw_spec
        .controllers
        .iter()
        .map(|c| Placed {
            kind: ovf_controller(c.kind, &c.model, windows),
            bus: c.bus,
            id: None,
            next_unit: 0,
        })
        .collect();
    // Where each disk and drive goes: its own controller and unit when the
    // platform says; else the first controller of a fitting type (added if
    // missing), at the next free unit.
    let mut disk_places = Vec::new();
    for d in &spec.disks {
        let at = match d.controller_index.filter(|i| *i < controllers.len()) {
            Some(i) => (i, controllers[i].took(d.unit)),
            None => {
                let kind = ovf_controller(d.controller, "", windows);
                let i = fitting(&mut controllers, kind);
                (i, controllers[i].take_unit())
            }
        };
        disk_places.push(at);
    }
    let mut drive_places = Vec::new();
    for d in &hw_spec.drives {
        drive_places.push(match (d.kind, d.controller_index) {
            (DriveKind::Floppy, _) => None,
            (DriveKind::Cdrom, Some(i)) if i < controllers.len() => {
                Some((i, controllers[i].took(d.unit)))
            }
            (DriveKind::Cdrom, _) => {
                let kind = ovf_controller(d.bus.unwrap_or(ControllerKind::Ide), "", windows);
                let i = fitting(&mut controllers, kind);
                Some((i, controllers[i].take_unit()))
            }
        });
    }
    for c in &mut controllers {
        c.id = Some(hw.add_controller(&c.kind, c.bus));
    }
    let parent = |i: usize| controllers[i].id.unwrap_or(0);
    // Each device's InstanceID by kind, in order, for the boot order.
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut note = |kind: &'static str, id: u32| ids.push((kind, id));
    for (n, (id, (ci, unit))) in disk_ids.iter().zip(disk_places).enumerate() {
        note("disk", hw.add_disk(n + 1, id, parent(ci), unit));
    }
    let (mut cdroms, mut floppies) = (0, 0);
    for place in drive_places {
        match place {
            Some((ci, unit)) => {
                cdroms += 1;
                note("cdrom", hw.add_cdrom(cdroms, parent(ci), unit));
            }
            None => {
                floppies += 1;
                note("floppy", hw.add_floppy(floppies));
            }
        }
    }
    for (i, n) in spec.nics.iter().enumerate() {
        note(
            "net",
            hw.add_nic(i + 1, &n.network, ovf_nic(&n.model), n.mac.as_deref()),
        );
    }
    if let Some(v) = &hw_spec.video {
        hw.add_video(v.vram_kib, v.displays, v.accel_3d);
    }
    if hw_spec.vmci {
        hw.add_vmci();
    }
    let efi = spec.firmware == Firmware::Uefi;
    hw.set_config("firmware", if efi { "efi" } else { "bios" });
    if efi && hw_spec.secure_boot {
        hw.set_config("bootOptions.efiSecureBootEnabled", "true");
    }
    for (k, v) in &hw_spec.settings {
        hw.set_config(k, v);
    }
    for (k, v) in &hw_spec.extra_config {
        hw.add_extra_config(k, v);
    }
    // Boot order where the platform gave one, as vmw:BootOrderSections
    // naming each device's item; a device the descriptor lacks is skipped.
    for dev in &hw_spec.boot_order {
        let Some(&(_, kind, _)) = BOOT_TYPES.iter().find(|(k, _, _)| *k == dev.kind) else {
            continue;
        };
        if let Some((_, id)) = ids.iter().filter(|(k, _)| *k == kind).nth(dev.index) {
            sys.add_boot_device(*id, kind);
        }
    }
    env
}

/// A controller of the envelope being built.
struct Placed {
    kind: ControllerType,
    bus: u32,
    /// Its `InstanceID`, once added.
    id: Option<u32>,
    /// The next unit a device without one gets.
    next_unit: u32,
}

impl Placed {
    /// Notes that a device sits at `unit` (returned); devices without a
    /// unit go after it.
    fn took(&mut self, unit: u32) -> u32 {
        self.next_unit = self.next_unit.max(unit + 1);
        unit
    }

    fn take_unit(&mut self) -> u32 {
        let mut u = self.next_unit;
        // SCSI unit 7 is the controller itself; IDE has two units per bus.
        if matches!(self.kind, ControllerType::Scsi(_)) && u == 7 {
            u += 1;
        }
        self.next_unit = u + 1;
        u
    }
}

/// The first controller of type `kind` (with a free IDE unit), added at the
/// next bus number if there is none.
fn fitting(controllers: &mut Vec<Placed>, kind: ControllerType) -> usize {
    let free = |c: &Placed| c.kind == kind && !(kind == ControllerType::Ide && c.next_unit >= 2);
    if let Some(i) = controllers.iter().position(free) {
        return i;
    }
    let bus = controllers.iter().filter(|c| c.kind == kind).count() as u32;
    controllers.push(Placed {
        kind,
        bus,
        id: None,
        next_unit: 0,
    });
    controllers.len() - 1
}

/// The OVF controller type of a controller of `kind` and platform `model`.
/// SCSI keeps its model where VMware has it (ParaVirtual, LSI Logic, LSI
/// Logic SAS, BusLogic); virtio-scsi, virtio-blk and unknown SCSI become LSI
/// Logic (LSI Logic SAS for Windows), which every guest has a driver for.
fn ovf_controller(kind: ControllerKind, model: &str, windows: bool) -> ControllerType {
    let lsi = || ControllerType::Scsi(if windows { "lsilogicsas" } else { "lsilogic" }.into());
    match kind {
        ControllerKind::Ide => ControllerType::Ide,
        ControllerKind::Sata => ControllerType::Sata,
        ControllerKind::Nvme => ControllerType::Nvme,
        ControllerKind::Scsi => match model.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "pvscsi" | "paravirtual" | "virtualscsi" => ControllerType::Scsi("VirtualSCSI".into()),
            "lsilogic" => ControllerType::Scsi("lsilogic".into()),
            "lsilogicsas" => ControllerType::Scsi("lsilogicsas".into()),
            "buslogic" => ControllerType::Scsi("buslogic".into()),
            _ => lsi(),
        },
        _ => lsi(),
    }
}

/// The OVF adapter type (`ResourceSubType`) of a NIC model: VMware's own
/// keep their name; the paravirtual ones of other platforms (virtio, AWS's
/// ENA, Hyper-V's and Azure's netvsc, Compute Engine's gVNIC) become
/// VmxNet3, the rest E1000.
fn ovf_nic(model: &str) -> &'static str {
    match model.to_ascii_lowercase().as_str() {
        "vmxnet3" | "virtio" | "ena" | "netvsc" | "gvnic" => "VmxNet3",
        "vmxnet2" => "VmxNet2",
        "vmxnet" => "VmxNet",
        "e1000e" => "E1000e",
        "pcnet32" => "PCNet32",
        _ => "E1000",
    }
}

/// The virtual hardware family written: the VM's own (`vmx-NN`) when the
/// platform has one; else the oldest that has every device and feature
/// the VM uses (NVMe needs `vmx-13`, secure boot `vmx-14`), at least
/// `vmx-10` (ESXi 5.5).
pub fn hardware_version(spec: &VmSpec) -> String {
    if let Some(v) = spec
        .hardware
        .version
        .as_deref()
        .filter(|v| v.starts_with("vmx-") && v[4..].parse::<u32>().is_ok())
    {
        return v.to_string();
    }
    let nvme = spec
        .disks
        .iter()
        .any(|d| d.controller == ControllerKind::Nvme)
        || spec
            .hardware
            .controllers
            .iter()
            .any(|c| c.kind == ControllerKind::Nvme);
    let secure_boot = spec.firmware == Firmware::Uefi && spec.hardware.secure_boot;
    let n = if secure_boot {
        14
    } else if nvme {
        13
    } else {
        10
    };
    format!("vmx-{n}")
}

/// The OVF guest OS of `os` ([`hypersdk_formats::ovf::os`]): a VMware
/// guest id is kept as the platform wrote it (with its CIM number when the
/// table knows it); a libosinfo id is looked up; anything else falls back
/// to its family's generic entry.
pub fn ovf_os(os: &GuestOs) -> (u16, Option<&'static str>, String) {
    use hypersdk_formats::ovf::os::{by_guest_id, by_libosinfo};
    let fallback = match os.family {
        OsFamily::Linux => "otherLinux64Guest",
        OsFamily::Windows => "windows9Server64Guest",
        OsFamily::Other => "otherGuest64",
    };
    let generic = by_guest_id(fallback);
    if let Some(e) = by_guest_id(&os.id).or_else(|| by_libosinfo(&os.id)) {
        return (e.cim, e.version, e.guest_id.to_string());
    }
    let (cim, version) = generic.map_or((102, None), |e| (e.cim, e.version));
    // A vSphere guest id the table does not list stays as it is.
    if os.id.ends_with("Guest") && os.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return (cim, version, os.id.clone());
    }
    (cim, version, fallback.to_string())
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

    use crate::vm::{DiskFormat, DiskSpec, DriveSpec, PowerState};

    fn vm(disks: &[(ControllerKind, Option<usize>, u32)], hardware: crate::Hardware) -> VmSpec {
        VmSpec {
            id: "1".into(),
            name: "t".into(),
            power_state: PowerState::Off,
            cpus: 4,
            memory_mib: 4096,
            firmware: Firmware::Bios,
            guest_os: GuestOs {
                id: "http://microsoft.com/win/2k22".into(),
                family: OsFamily::Windows,
                description: "Windows Server 2022".into(),
            },
            nics: vec![],
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, (kind, index, unit))| DiskSpec {
                    name: format!("d{i}"),
                    capacity: 1 << 30,
                    format: DiskFormat::Raw,
                    controller: *kind,
                    unit: *unit,
                    location: String::new(),
                    controller_index: *index,
                })
                .collect(),
            annotation: None,
            hardware,
        }
    }

    fn written(n: usize) -> Vec<WrittenDisk> {
        (0..n)
            .map(|i| WrittenDisk {
                file: format!("t-disk{}.vmdk", i + 1),
                file_size: 1,
                populated: 0,
            })
            .collect()
    }

    /// (ResourceType, ResourceSubType, Parent, AddressOnParent) of each item
    /// after CPU and memory.
    fn items(env: &Envelope) -> Vec<(String, String, String, String)> {
        env.systems[0].hardware[0].items[2..]
            .iter()
            .map(|i| {
                let f = |k: &str| i.get(k).unwrap_or_default().to_string();
                (
                    f("ResourceType"),
                    f("ResourceSubType"),
                    f("Parent"),
                    f("AddressOnParent"),
                )
            })
            .collect()
    }

    #[test]
    fn without_controllers_disks_get_one_per_bus_and_units_in_order() {
        // virtio-blk and NVMe of a Windows guest, three IDE CD-ROMs and disks.
        let spec = vm(
            &[
                (ControllerKind::Virtio, None, 0),
                (ControllerKind::Nvme, None, 0),
                (ControllerKind::Ide, None, 0),
                (ControllerKind::Ide, None, 0),
                (ControllerKind::Ide, None, 0),
            ],
            crate::Hardware::default(),
        );
        let env = ovf_envelope(&spec, &written(5));
        assert_eq!(hardware_version(&spec), "vmx-13", "NVMe needs vmx-13");
        let got = items(&env);
        let s = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
        assert_eq!(
            got[..4],
            [
                s("6", "lsilogicsas", "", ""),
                s("20", "vmware.nvme.controller", "", ""),
                s("5", "", "", ""),
                s("5", "", "", ""),
            ]
        );
        // Controllers are items 3..6 (InstanceIDs 3, 4, 5, 6).
        assert_eq!(
            got[4..],
            [
                s("17", "", "3", "0"),
                s("17", "", "4", "0"),
                s("17", "", "5", "0"),
                s("17", "", "5", "1"),
                s("17", "", "6", "0"),
            ],
            "two units per IDE bus, then the next bus"
        );
        let os = &env.systems[0].os_attrs;
        assert!(os
            .iter()
            .any(|(k, v)| k == "vmw:osType" && v == "windows2019srvNext_64Guest"));
    }

    #[test]
    fn named_controllers_keep_their_units_and_secure_boot_needs_vmx14() {
        let hardware = crate::Hardware {
            controllers: vec![crate::ControllerSpec {
                kind: ControllerKind::Scsi,
                model: "pvscsi".into(),
                bus: 0,
            }],
            drives: vec![DriveSpec {
                kind: crate::DriveKind::Cdrom,
                controller_index: None,
                bus: Some(ControllerKind::Sata),
                unit: 0,
            }],
            secure_boot: true,
            ..Default::default()
        };
        let mut spec = vm(&[(ControllerKind::Scsi, Some(0), 3)], hardware);
        spec.firmware = Firmware::Uefi;
        let env = ovf_envelope(&spec, &written(1));
        assert_eq!(hardware_version(&spec), "vmx-14");
        let got = items(&env);
        assert_eq!(got[0].1, "VirtualSCSI");
        assert_eq!(got[1].1, "vmware.sata.ahci", "the CD-ROM's bus is added");
        assert_eq!((got[2].0.as_str(), got[2].3.as_str()), ("17", "3"));
        assert_eq!((got[3].0.as_str(), got[3].2.as_str()), ("15", "4"));
        let configs = &env.systems[0].hardware[0].configs;
        assert!(configs.iter().any(|c| c
            .iter()
            .any(|(_, v)| v == "bootOptions.efiSecureBootEnabled")));
        // A platform version is kept as it is.
        spec.hardware.version = Some("vmx-19".into());
        assert_eq!(hardware_version(&spec), "vmx-19");
        spec.hardware.version = Some("pc-q35-8.2".into());
        assert_eq!(hardware_version(&spec), "vmx-14");
    }

    #[test]
    fn boot_order_names_each_device_by_its_item() {
        let b = |kind: &str, index| crate::BootDevice {
            kind: kind.into(),
            index,
        };
        let hardware = crate::Hardware {
            // The second disk first, a NIC that is not there, then the first disk.
            boot_order: vec![b("disk", 1), b("network", 3), b("disk", 0)],
            ..Default::default()
        };
        let spec = vm(
            &[
                (ControllerKind::Scsi, None, 0),
                (ControllerKind::Scsi, None, 0),
            ],
            hardware,
        );
        let env = ovf_envelope(&spec, &written(2));
        let sys = &env.systems[0];
        let disk_items: Vec<u32> = sys.hardware[0]
            .items
            .iter()
            .filter(|i| i.get("ResourceType") == Some("17"))
            .map(|i| i.get("InstanceID").unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            sys.boot_devices(),
            vec![(disk_items[1], "disk"), (disk_items[0], "disk")]
        );
        let xml = env.to_xml(OvfVersion::V1_0);
        assert!(xml.contains("<vmw:BootOrderSection ovf:required=\"false\" vmw:instanceId="));
        let back = Envelope::read(&xml).unwrap();
        assert_eq!(back.systems[0].boot_devices(), sys.boot_devices());
    }
}
