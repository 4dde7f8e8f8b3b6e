//! libvirt domain XML (as `virsh dumpxml` writes it) to a [`VmSpec`].

use std::path::{Path, PathBuf};

use hypersdk_core::{
    BootDevice, ControllerKind, ControllerSpec, DiskFormat, DiskSpec, DriveKind, DriveSpec,
    Firmware, GuestOs, Hardware, NicSpec, OsFamily, PowerState, VideoSpec, VmSpec,
};

use crate::LocalError;
use hypersdk_formats::xml::{parse, Element};

/// The largest domain XML we read: real ones are a few KiB.
pub const MAX_DOMAIN_XML: u64 = 4 << 20;

/// A parsed domain: its spec (disk capacities still unknown) and the files of its disks.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The XML file it came from.
    pub xml_path: PathBuf,
    /// The VM description; `disks[i].capacity` is filled by the provider.
    pub spec: VmSpec,
    /// Absolute path of each disk's image, parallel to `spec.disks`.
    pub disk_paths: Vec<PathBuf>,
}

/// Bytes of a libvirt memory value in `unit` (libvirt's default is KiB).
fn memory_bytes(value: &str, unit: Option<&str>) -> Option<u64> {
    let v: u64 = value.trim().parse().ok()?;
    let mult: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    v.checked_mul(mult)
}

fn guest_os(root: &Element) -> GuestOs {
    let id = root
        .child("metadata")
        .and_then(|m| {
            m.children
                .iter()
                .find(|c| c.local_name() == "libosinfo")
                .and_then(|l| l.children.iter().find(|c| c.local_name() == "os"))
        })
        .and_then(|os| os.attr("id"))
        .unwrap_or("")
        .to_string();
    let family = OsFamily::guess(&[&id]);
    // "http://ubuntu.com/ubuntu/22.04" -> "ubuntu 22.04"
    let description = {
        let parts: Vec<&str> = id.trim_end_matches('/').rsplit('/').take(2).collect();
        match parts.as_slice() {
            [version, distro] if !id.is_empty() => format!("{distro} {version}"),
            _ if !id.is_empty() => id.clone(),
            _ => "Unknown operating system".into(),
        }
    };
    GuestOs {
        id,
        family,
        description,
    }
}

fn controller(bus: &str) -> ControllerKind {
    match bus {
        "ide" => ControllerKind::Ide,
        "sata" => ControllerKind::Sata,
        "scsi" => ControllerKind::Scsi,
        "nvme" => ControllerKind::Nvme,
        _ => ControllerKind::Virtio,
    }
}

/// Parses domain XML text read from `xml_path`. Relative disk paths are
/// resolved against the XML file's directory.
pub fn parse_domain(text: &str, xml_path: &Path) -> Result<Domain, LocalError> {
    let bad = |what: String| LocalError::BadDomainXml {
        path: xml_path.to_path_buf(),
        what,
    };
    let root = parse(text).map_err(bad)?;
    if root.name != "domain" {
        return Err(bad(format!(
            "root element is <{}>, not <domain>",
            root.name
        )));
    }
    let name = root
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("missing <name>".into()))?
        .to_string();
    let id = root.child_text("uuid").unwrap_or(&name).to_string();
    let memory = root
        .child("memory")
        .ok_or_else(|| bad("missing <memory>".into()))?;
    let memory_bytes = memory_bytes(&memory.text, memory.attr("unit"))
        .ok_or_else(|| bad(format!("bad <memory> value {:?}", memory.text.trim())))?;
    let cpus = match root.child_text("vcpu") {
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| bad(format!("bad <vcpu> value {v:?}")))?,
        None => 1,
    };
    let os = root.child("os");
    let efi = os.is_some_and(|os| {
        os.attr("firmware") == Some("efi")
            || os.child("loader").is_some_and(|l| {
                l.attr("type") == Some("pflash")
                    || l.text.to_ascii_lowercase().contains("ovmf")
                    || l.text.to_ascii_lowercase().contains("edk2")
            })
    });
    // libvirt writes id='N' on <domain> only while the domain runs.
    let power_state = if root.attr("id").is_some_and(|i| i != "-1") {
        PowerState::On
    } else {
        PowerState::Off
    };
    let base_dir = xml_path.parent().unwrap_or(Path::new("."));
    let mut disks = Vec::new();
    let mut disk_paths = Vec::new();
    let mut nics = Vec::new();
    let mut hw = Hardware {
        version: os
            .and_then(|o| o.child("type"))
            .and_then(|t| t.attr("machine"))
            .map(str::to_string),
        cores_per_socket: root
            .child("cpu")
            .and_then(|c| c.child("topology"))
            .and_then(|t| {
                let n = |a: &str| t.attr(a).and_then(|v| v.parse::<u32>().ok());
                Some(n("cores")? * n("threads").unwrap_or(1))
            }),
        // <os><boot dev='…'/> in order; a device's own <boot order='N'/>
        // (which libvirt allows only without those) replaces it below.
        boot_order: os
            .into_iter()
            .flat_map(|o| o.children_named("boot"))
            .filter_map(|b| match b.attr("dev")? {
                "hd" => Some("disk"),
                "cdrom" => Some("cdrom"),
                "network" => Some("network"),
                "fd" => Some("floppy"),
                _ => None,
            })
            .map(BootDevice::first)
            .collect(),
        secure_boot: os.is_some_and(|o| {
            o.child("loader").and_then(|l| l.attr("secure")) == Some("yes")
                || o.child("firmware").is_some_and(|f| {
                    f.children_named("feature").any(|x| {
                        x.attr("name") == Some("secure-boot") && x.attr("enabled") == Some("yes")
                    })
                })
        }),
        ..Default::default()
    };
    if let Some(devices) = root.child("devices") {
        // Storage controllers, by (bus, libvirt index) → index in hw.
        let mut by_index = std::collections::HashMap::new();
        for c in devices.children_named("controller") {
            let t = c.attr("type").unwrap_or("");
            if !matches!(t, "scsi" | "sata" | "ide" | "nvme") {
                continue; // usb, pci, virtio-serial, …
            }
            let index: u32 = c.attr("index").and_then(|i| i.parse().ok()).unwrap_or(0);
            by_index.insert((controller(t), index), hw.controllers.len());
            hw.controllers.push(ControllerSpec {
                kind: controller(t),
                model: c
                    .attr("model")
                    .unwrap_or(if t == "sata" { "ahci" } else { "" })
                    .to_string(),
                bus: index,
            });
        }
        let placed = |d: &Element, kind: ControllerKind| -> Option<usize> {
            let a = d
                .child("address")
                .filter(|a| a.attr("type") == Some("drive"));
            let index: u32 = a
                .and_then(|a| a.attr("controller"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            by_index.get(&(kind, index)).copied()
        };
        let mut units: Vec<((ControllerKind, Option<usize>), u32)> = Vec::new();
        // Devices with <boot order='N'/>: (N, device).
        let mut per_device: Vec<(u32, BootDevice)> = Vec::new();
        let mut boot_of = |e: &Element, kind: &str, index: usize| {
            if let Some(n) = e
                .child("boot")
                .and_then(|b| b.attr("order"))
                .and_then(|o| o.parse().ok())
            {
                per_device.push((
                    n,
                    BootDevice {
                        kind: kind.to_string(),
                        index,
                    },
                ));
            }
        };
        for d in devices.children_named("disk") {
            let device = d.attr("device").unwrap_or("disk");
            if device == "cdrom" || device == "floppy" {
                let same = hw
                    .drives
                    .iter()
                    .filter(|x| (x.kind == DriveKind::Cdrom) == (device == "cdrom"))
                    .count();
                boot_of(d, device, same);
                let bus = d
                    .child("target")
                    .and_then(|t| t.attr("bus"))
                    .unwrap_or(if device == "cdrom" { "ide" } else { "fdc" });
                let kind = controller(bus);
                hw.drives.push(DriveSpec {
                    kind: if device == "cdrom" {
                        DriveKind::Cdrom
                    } else {
                        DriveKind::Floppy
                    },
                    controller_index: (device == "cdrom").then(|| placed(d, kind)).flatten(),
                    bus: (device == "cdrom").then_some(kind),
                    unit: d
                        .child("address")
                        .and_then(|a| a.attr("unit"))
                        .and_then(|u| u.parse().ok())
                        .unwrap_or(0),
                });
                continue;
            }
            if device != "disk" {
                continue; // lun
            }
            let target = d.child("target");
            let dev = target
                .and_then(|t| t.attr("dev"))
                .unwrap_or("disk")
                .to_string();
            let source = d.child("source");
            let file = match d.attr("type").unwrap_or("file") {
                "file" => source.and_then(|s| s.attr("file")),
                "block" => source.and_then(|s| s.attr("dev")),
                other => {
                    return Err(bad(format!(
                        "disk {dev} has type '{other}'; only file and block disks can be exported"
                    )))
                }
            }
            .ok_or_else(|| bad(format!("disk {dev} has no source file")))?;
            let format = match d
                .child("driver")
                .and_then(|dr| dr.attr("type"))
                .unwrap_or("raw")
            {
                "qcow2" => DiskFormat::Qcow2,
                "raw" => DiskFormat::Raw,
                "vmdk" => DiskFormat::Vmdk,
                other => {
                    return Err(bad(format!(
                        "disk {dev} has driver type '{other}'; qcow2, raw and vmdk are supported"
                    )))
                }
            };
            let bus = target.and_then(|t| t.attr("bus")).unwrap_or("virtio");
            let kind = controller(bus);
            // Without an address, the first unit free on its controller.
            let on = (kind, placed(d, kind));
            let unit = match d
                .child("address")
                .and_then(|a| a.attr("unit"))
                .and_then(|u| u.parse().ok())
            {
                Some(u) => u,
                None => (0..)
                    .find(|u| !units.contains(&(on, *u)))
                    .unwrap_or_default(),
            };
            units.push((on, unit));
            boot_of(d, "disk", disks.len());
            let path = base_dir.join(file);
            disks.push(DiskSpec {
                name: dev,
                capacity: 0,
                format,
                controller: kind,
                unit,
                location: path.display().to_string(),
                controller_index: on.1,
            });
            disk_paths.push(path);
        }
        if let Some(m) = devices.child("video").and_then(|v| v.child("model")) {
            let n = |a: &str| m.attr(a).and_then(|v| v.parse::<u64>().ok());
            hw.video = Some(VideoSpec {
                vram_kib: n("vram"),
                displays: n("heads").map(|h| h as u32),
                accel_3d: m.child("acceleration").and_then(|a| a.attr("accel3d")) == Some("yes"),
            });
        }
        for i in devices.children_named("interface") {
            let source = i.child("source");
            let network = match i.attr("type").unwrap_or("network") {
                "network" => source.and_then(|s| s.attr("network")),
                "bridge" => source.and_then(|s| s.attr("bridge")),
                "direct" => source.and_then(|s| s.attr("dev")),
                _ => None,
            }
            .unwrap_or("default")
            .to_string();
            boot_of(i, "network", nics.len());
            nics.push(NicSpec {
                network,
                mac: i
                    .child("mac")
                    .and_then(|m| m.attr("address"))
                    .map(str::to_string),
                model: i
                    .child("model")
                    .and_then(|m| m.attr("type"))
                    .unwrap_or("rtl8139")
                    .to_string(),
            });
        }
        if !per_device.is_empty() {
            per_device.sort_by_key(|(n, _)| *n);
            hw.boot_order = per_device.into_iter().map(|(_, b)| b).collect();
        }
    }
    Ok(Domain {
        xml_path: xml_path.to_path_buf(),
        spec: VmSpec {
            id,
            name,
            power_state,
            cpus,
            memory_mib: memory_bytes.div_ceil(1 << 20),
            firmware: if efi { Firmware::Uefi } else { Firmware::Bios },
            guest_os: guest_os(&root),
            nics,
            disks,
            annotation: root
                .child_text("description")
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            hardware: hw,
        },
        disk_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm' id='7'>
  <name>web01</name>
  <uuid>8a8e1a3a-0000-4000-8000-000000000001</uuid>
  <description>front end</description>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://ubuntu.com/ubuntu/22.04"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='disks/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/x.iso'/><target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"#;

    #[test]
    fn reads_domain() {
        let d = parse_domain(XML, Path::new("/vms/web01.xml")).unwrap();
        let s = &d.spec;
        assert_eq!(s.name, "web01");
        assert_eq!(s.power_state, PowerState::On);
        assert_eq!(s.cpus, 2);
        assert_eq!(s.memory_mib, 2048);
        assert_eq!(s.firmware, Firmware::Uefi);
        assert_eq!(s.guest_os.family, OsFamily::Linux);
        assert_eq!(s.guest_os.description, "ubuntu 22.04");
        assert_eq!(s.disks.len(), 1);
        assert_eq!(s.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(d.disk_paths[0], Path::new("/vms/disks/web01.qcow2"));
        assert_eq!(s.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(s.annotation.as_deref(), Some("front end"));
    }

    #[test]
    fn reads_controllers_drives_and_the_rest_of_the_hardware() {
        let xml = r#"<domain type='kvm'>
  <name>db</name><memory unit='GiB'>4</memory><vcpu>4</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <firmware><feature enabled='yes' name='secure-boot'/></firmware>
    <boot dev='cdrom'/><boot dev='hd'/></os>
  <cpu mode='host-passthrough'><topology sockets='1' dies='1' cores='2' threads='2'/></cpu>
  <devices>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <controller type='scsi' index='1' model='lsilogic'/>
    <controller type='sata' index='0'/>
    <disk type='file' device='disk'><source file='a.qcow2'/><driver type='qcow2'/>
      <target dev='sda' bus='scsi'/><address type='drive' controller='1' bus='0' target='0' unit='3'/></disk>
    <disk type='file' device='disk'><source file='b.raw'/>
      <target dev='sdb' bus='scsi'/></disk>
    <disk type='file' device='cdrom'><target dev='sdc' bus='sata'/>
      <address type='drive' controller='0' bus='0' target='0' unit='1'/></disk>
    <disk type='file' device='floppy'><target dev='fda' bus='fdc'/></disk>
    <video><model type='qxl' ram='65536' vram='16384' heads='2'/></video>
  </devices>
</domain>"#;
        let d = parse_domain(xml, Path::new("/vms/db.xml")).unwrap();
        let h = &d.spec.hardware;
        assert_eq!(h.version.as_deref(), Some("pc-q35-8.2"));
        assert_eq!(h.cores_per_socket, Some(4));
        assert!(h.secure_boot);
        assert_eq!(
            h.boot_order,
            vec![BootDevice::first("cdrom"), BootDevice::first("disk")]
        );
        // Per-device boot order: the second disk, then the NIC.
        let xml = r"<domain type='kvm'><name>b</name><memory unit='MiB'>64</memory>
  <devices>
    <disk type='file' device='disk'><source file='a.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><source file='b.raw'/><target dev='vdb' bus='virtio'/><boot order='1'/></disk>
    <interface type='network'><source network='default'/><boot order='2'/></interface>
  </devices></domain>";
        let per_device = parse_domain(xml, Path::new("/x/b.xml")).unwrap();
        let b = |kind: &str, index| BootDevice {
            kind: kind.into(),
            index,
        };
        assert_eq!(
            per_device.spec.hardware.boot_order,
            vec![b("disk", 1), b("network", 0)]
        );
        let kinds: Vec<_> = h
            .controllers
            .iter()
            .map(|c| (c.kind, c.model.as_str(), c.bus))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ControllerKind::Scsi, "virtio-scsi", 0),
                (ControllerKind::Scsi, "lsilogic", 1),
                (ControllerKind::Sata, "ahci", 0)
            ]
        );
        // An address names the controller; without one, controller 0.
        let at: Vec<_> = d
            .spec
            .disks
            .iter()
            .map(|x| (x.controller_index, x.unit))
            .collect();
        assert_eq!(at, vec![(Some(1), 3), (Some(0), 0)]);
        assert_eq!(h.drives.len(), 2);
        assert_eq!(
            (
                h.drives[0].kind,
                h.drives[0].controller_index,
                h.drives[0].unit
            ),
            (DriveKind::Cdrom, Some(2), 1)
        );
        assert_eq!(
            (h.drives[1].kind, h.drives[1].controller_index),
            (DriveKind::Floppy, None)
        );
        let v = h.video.as_ref().unwrap();
        assert_eq!((v.vram_kib, v.displays), (Some(16384), Some(2)));
    }

    #[test]
    fn errors_name_the_file_and_problem() {
        let err =
            parse_domain("<domain><memory>1</memory></domain>", Path::new("/x.xml")).unwrap_err();
        assert!(
            err.to_string().contains("/x.xml") && err.to_string().contains("<name>"),
            "{err}"
        );
        let err = parse_domain("<network/>", Path::new("/x.xml")).unwrap_err();
        assert!(err.to_string().contains("not <domain>"), "{err}");
        assert_eq!(memory_bytes("2", Some("GiB")), Some(2 << 30));
        assert_eq!(memory_bytes("2", Some("parsecs")), None);
    }
}
