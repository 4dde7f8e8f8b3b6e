//! A Proxmox VE QEMU VM's configuration (`GET /nodes/{node}/qemu/{vmid}/config`,
//! the `qm config` keys of the PVE admin guide, "qm(1) > Configuration")
//! as the VM model: CPU topology, memory, firmware, machine, disks on
//! virtio/scsi/sata/ide with their storage volumes, NICs, OS type.

use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmSpec,
};
use hypersdk_core::{Error, Result};
use serde_json::Value;

/// A VM's disk and the storage volume holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Volume {
    /// The configuration key (`scsi0`, `virtio1`, …).
    pub(crate) key: String,
    /// The volume id (`local:100/vm-100-disk-0.qcow2`, `local-lvm:vm-100-disk-1`).
    pub(crate) volid: String,
}

/// A VM described, with what its export needs.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) spec: VmSpec,
    /// Per disk of the spec, its volume.
    pub(crate) volumes: Vec<Volume>,
}

/// A config value as text (PVE answers numbers as numbers or strings).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `key=value` options of a property string after its first item
/// (`local:100/vm-100-disk-0.qcow2,size=32G,cache=writeback`).
pub(crate) fn options(prop: &str) -> Vec<(&str, &str)> {
    prop.split(',')
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .collect()
}

fn option<'a>(prop: &'a str, key: &str) -> Option<&'a str> {
    options(prop)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Bytes of a PVE disk size (`32G`, `528K`, `1T`, `1073741824`), None if
/// it is not one.
pub(crate) fn size(s: &str) -> Option<u64> {
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let f: f64 = num.parse().ok()?;
    (f >= 0.0).then_some((f * factor as f64) as u64)
}

/// The guest OS an `ostype` names ("qm(1)": l24, l26, win11 … wxp, solaris, other).
fn guest_os(ostype: Option<&str>) -> GuestOs {
    let Some(t) = ostype else {
        return GuestOs::default();
    };
    let (family, description) = match t {
        "l26" => (OsFamily::Linux, "Linux 2.6 - 6.x kernel"),
        "l24" => (OsFamily::Linux, "Linux 2.4 kernel"),
        "win11" => (OsFamily::Windows, "Microsoft Windows 11/2022/2025"),
        "win10" => (OsFamily::Windows, "Microsoft Windows 10/2016/2019"),
        "win8" => (OsFamily::Windows, "Microsoft Windows 8.x/2012/2012r2"),
        "win7" => (OsFamily::Windows, "Microsoft Windows 7/2008r2"),
        "w2k8" | "wvista" => (OsFamily::Windows, "Microsoft Windows Vista/2008"),
        "w2k3" | "wxp" | "w2k" => (OsFamily::Windows, "Microsoft Windows XP/2003/2000"),
        "solaris" => (OsFamily::Other, "Solaris/OpenSolaris/OpenIndiania kernel"),
        _ => (OsFamily::Other, "Other OS"),
    };
    GuestOs {
        id: t.to_string(),
        family,
        description: description.into(),
    }
}

/// The VM with id `vmid` on `node` whose configuration is `config`, in
/// power state `status` (`running`, `stopped`, `paused`).
pub(crate) fn describe(node: &str, vmid: u64, config: &Value, status: &str) -> Result<Described> {
    let get = |k: &str| config.get(k).and_then(text);
    let name = get("name").unwrap_or_else(|| format!("VM {vmid}"));
    let num = |k: &str, default: u64| -> Result<u64> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::Provider {
                provider: "proxmox".into(),
                message: format!("VM {vmid} on {node}: {k} is {v:?}, not a number"),
                retryable: false,
                source: None,
            }),
        }
    };
    let cores = num("cores", 1)?.max(1) as u32;
    let sockets = num("sockets", 1)?.max(1) as u32;
    let memory = num("memory", 512)?;

    // Disks in the order PVE lists buses (its boot order comes below).
    let mut keys: Vec<(ControllerKind, u32, String)> = Vec::new();
    if let Some(map) = config.as_object() {
        for k in map.keys() {
            let bus = [
                ("virtio", ControllerKind::Virtio),
                ("scsi", ControllerKind::Scsi),
                ("sata", ControllerKind::Sata),
                ("ide", ControllerKind::Ide),
            ]
            .into_iter()
            .find_map(|(p, kind)| {
                k.strip_prefix(p)
                    .and_then(|n| n.parse::<u32>().ok())
                    .map(|n| (kind, n))
            });
            if let Some((kind, unit)) = bus {
                keys.push((kind, unit, k.clone()));
            }
        }
    }
    let order = |k: &ControllerKind| match k {
        ControllerKind::Virtio => 0,
        ControllerKind::Scsi => 1,
        ControllerKind::Sata => 2,
        _ => 3,
    };
    keys.sort_by_key(|(kind, unit, _)| (order(kind), *unit));
    // The boot disk first, as PVE's `boot: order=scsi0;ide2;net0` says.
    if let Some(boot) = get("boot") {
        let first = boot
            .strip_prefix("order=")
            .and_then(|o| o.split(';').find(|d| keys.iter().any(|(_, _, k)| k == d)))
            .map(str::to_string);
        if let Some(first) = first {
            if let Some(i) = keys.iter().position(|(_, _, k)| *k == first) {
                let d = keys.remove(i);
                keys.insert(0, d);
            }
        }
    }
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    let mut skipped = Vec::new();
    for (kind, unit, key) in keys {
        let prop = get(&key).unwrap_or_default();
        let volid = prop.split(',').next().unwrap_or_default().to_string();
        if option(&prop, "media") == Some("cdrom") || volid == "none" || volid.is_empty() {
            continue;
        }
        if !volid.contains(':') {
            // A pass-through device or a path (/dev/sdb): not a storage volume.
            skipped.push(format!("{key} ({volid})"));
            continue;
        }
        let capacity = option(&prop, "size")
            .and_then(size)
            .ok_or_else(|| Error::Provider {
                provider: "proxmox".into(),
                message: format!("VM {vmid} on {node}: disk {key} says no size ({prop})"),
                retryable: false,
                source: None,
            })?;
        let format = if volid.ends_with(".qcow2") {
            DiskFormat::Qcow2
        } else if volid.ends_with(".vmdk") {
            DiskFormat::Vmdk
        } else {
            DiskFormat::Raw
        };
        disks.push(DiskSpec {
            name: key.clone(),
            capacity,
            format,
            controller: kind,
            unit,
            location: volid.clone(),
            controller_index: None,
        });
        volumes.push(Volume { key, volid });
    }
    // NICs: net0: virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1
    let mut nic_keys: Vec<(u32, String)> = config
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| {
            k.strip_prefix("net")
                .and_then(|n| n.parse().ok())
                .map(|n| (n, k.clone()))
        })
        .collect();
    nic_keys.sort();
    let nics = nic_keys
        .into_iter()
        .filter_map(|(_, k)| get(&k))
        .map(|prop| {
            let (model, mac) = prop
                .split(',')
                .next()
                .and_then(|first| first.split_once('='))
                .map(|(m, mac)| (m.to_string(), Some(mac.to_ascii_lowercase())))
                .unwrap_or_else(|| (prop.split(',').next().unwrap_or("virtio").to_string(), None));
            NicSpec {
                network: option(&prop, "bridge").unwrap_or("").to_string(),
                mac,
                model,
            }
        })
        .collect();
    let efi = get("bios").as_deref() == Some("ovmf");
    let secure_boot =
        efi && get("efidisk0").is_some_and(|p| option(&p, "pre-enrolled-keys") == Some("1"));
    let power_state = match status {
        "running" => PowerState::On,
        "stopped" => PowerState::Off,
        "paused" | "suspended" | "prelaunch" => PowerState::Suspended,
        _ => PowerState::Unknown,
    };
    let mut annotation = format!("Proxmox VE VM {vmid} on node {node}");
    if let Some(m) = get("machine") {
        annotation.push_str(&format!(", machine {m}"));
    }
    if let Some(d) = get("description") {
        annotation.push_str(&format!("; {d}"));
    }
    if !skipped.is_empty() {
        annotation.push_str(&format!(
            "; not exported (not storage volumes): {}",
            skipped.join(", ")
        ));
    }
    let mut settings = Vec::new();
    for k in ["machine", "scsihw", "cpu", "vga"] {
        if let Some(v) = get(k) {
            settings.push((format!("proxmox.{k}"), v));
        }
    }
    Ok(Described {
        spec: VmSpec {
            id: vmid.to_string(),
            name,
            power_state,
            cpus: cores * sockets,
            memory_mib: memory,
            firmware: if efi { Firmware::Uefi } else { Firmware::Bios },
            guest_os: guest_os(get("ostype").as_deref()),
            nics,
            disks,
            annotation: Some(annotation),
            hardware: Hardware {
                cores_per_socket: Some(cores),
                secure_boot,
                settings,
                ..Default::default()
            },
        },
        volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_qm_config_becomes_the_vm_model() {
        let c = json!({
            "name": "web-1", "cores": 2, "sockets": "2", "memory": "4096",
            "bios": "ovmf", "machine": "q35", "ostype": "win11",
            "efidisk0": "local:100/vm-100-disk-9.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K",
            "ide2": "local:iso/virtio-win.iso,media=cdrom,size=612M",
            "sata1": "local:100/vm-100-disk-2.raw,size=1G",
            "scsi0": "local:100/vm-100-disk-0.qcow2,iothread=1,size=32G",
            "virtio3": "/dev/disk/by-id/ata-XYZ,size=100G",
            "scsi1": "none,media=cdrom",
            "boot": "order=scsi0;ide2;net0",
            "net0": "virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1",
            "net1": "e1000=BC:24:11:00:00:01,bridge=vmbr1,tag=20",
        });
        let d = describe("pve1", 100, &c, "running").unwrap();
        let s = &d.spec;
        assert_eq!(
            (s.cpus, s.hardware.cores_per_socket, s.memory_mib),
            (4, Some(2), 4096)
        );
        assert_eq!(s.firmware, Firmware::Uefi);
        assert!(s.hardware.secure_boot);
        assert_eq!(s.guest_os.family, OsFamily::Windows);
        assert_eq!(s.power_state, PowerState::On);
        let names: Vec<_> = s.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["scsi0", "sata1"],
            "boot disk first; no CD-ROM, EFI vars or pass-through"
        );
        assert_eq!(s.disks[0].capacity, 32 << 30);
        assert_eq!(s.disks[0].format, DiskFormat::Qcow2);
        assert_eq!(
            (s.disks[1].controller, s.disks[1].unit),
            (ControllerKind::Sata, 1)
        );
        assert_eq!(d.volumes[1].volid, "local:100/vm-100-disk-2.raw");
        assert_eq!(s.nics.len(), 2);
        assert_eq!(s.nics[0].mac.as_deref(), Some("bc:24:11:2a:3b:4c"));
        assert_eq!(
            (s.nics[1].model.as_str(), s.nics[1].network.as_str()),
            ("e1000", "vmbr1")
        );
        assert!(s
            .annotation
            .as_deref()
            .unwrap()
            .contains("virtio3 (/dev/disk/by-id/ata-XYZ)"));
        assert_eq!(size("528K"), Some(528 << 10));
        assert_eq!(size("1.5G"), Some(3 << 29));
        assert_eq!(size("12Q"), None);
        let bad = describe("pve1", 101, &json!({"memory": "lots"}), "stopped").unwrap_err();
        assert!(bad.to_string().contains("memory is \"lots\""), "{bad}");
    }
}
