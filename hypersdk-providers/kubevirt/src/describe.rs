//! A KubeVirt `VirtualMachine` (kubevirt.io/v1) as the VM model: CPU
//! topology, memory, firmware, disks and their volumes, interfaces and
//! networks, run strategy and state.

use hypersdk_core::vm::{
    ControllerKind, DiskFormat, DiskSpec, Firmware, GuestOs, Hardware, NicSpec, OsFamily,
    PowerState, VmSpec,
};
use hypersdk_core::{Error, Result};
use serde_json::Value;

/// A VM's disk and where its bytes live.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Volume {
    /// A PersistentVolumeClaim (directly, or a DataVolume's): exportable.
    Claim(String),
    /// A containerDisk (an image in a registry): not exportable.
    ContainerDisk(String),
}

/// A VM described, with what its export needs.
#[derive(Debug)]
pub(crate) struct Described {
    pub(crate) spec: VmSpec,
    /// Per disk of the spec, its volume.
    pub(crate) volumes: Vec<Volume>,
    /// Whether a VM instance runs (the export then goes through a snapshot).
    pub(crate) running: bool,
    /// Whether this is a lone PersistentVolumeClaim (`pvc:NAME`), exported
    /// with a VirtualMachineExport of the claim, not of a VM.
    pub(crate) pvc: bool,
}

/// Bytes of a Kubernetes quantity (`4Gi`, `512Mi`, `1G`, `1073741824`,
/// `1.5Gi`), None if it is not one.
pub(crate) fn quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => return None,
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let f: f64 = num.parse().ok()?;
    let bytes = f * factor as f64;
    (f.is_finite() && f >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The size a PVC asks for or has, if it says.
pub(crate) fn claim_size(pvc: &Value) -> Option<u64> {
    pvc["status"]["capacity"]["storage"]
        .as_str()
        .or(pvc["spec"]["resources"]["requests"]["storage"].as_str())
        .and_then(quantity)
}

/// The VM `vm`, its claims' sizes looked up with `size_of`.
pub(crate) fn describe(vm: &Value, size_of: &dyn Fn(&str) -> Option<u64>) -> Result<Described> {
    let meta = &vm["metadata"];
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
    let tmpl = &vm["spec"]["template"]["spec"];
    let domain = &tmpl["domain"];
    let cpu = &domain["cpu"];
    let n = |v: &Value| v.as_u64().unwrap_or(1).max(1) as u32;
    let (sockets, cores, threads) = (n(&cpu["sockets"]), n(&cpu["cores"]), n(&cpu["threads"]));
    let memory = [
        &domain["memory"]["guest"],
        &domain["resources"]["requests"]["memory"],
        &domain["resources"]["limits"]["memory"],
    ]
    .iter()
    .find_map(|v| v.as_str().and_then(quantity))
    .unwrap_or(0);
    let efi = domain["firmware"]["bootloader"].get("efi");
    // KubeVirt turns secure boot on for EFI unless told not to.
    let secure_boot = efi.is_some_and(|e| e["secureBoot"].as_bool().unwrap_or(true));
    let volumes: Vec<&Value> = tmpl["volumes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut disks = Vec::new();
    let mut vols = Vec::new();
    let mut skipped = Vec::new();
    for d in domain["devices"]["disks"].as_array().into_iter().flatten() {
        let disk_name = d["name"].as_str().unwrap_or_default();
        let Some(v) = volumes.iter().find(|v| v["name"] == disk_name) else {
            continue;
        };
        let volume = if let Some(c) = v["persistentVolumeClaim"]["claimName"].as_str() {
            Volume::Claim(c.to_string())
        } else if let Some(c) = v["dataVolume"]["name"].as_str() {
            Volume::Claim(c.to_string())
        } else if let Some(image) = v["containerDisk"]["image"].as_str() {
            Volume::ContainerDisk(image.to_string())
        } else {
            // cloud-init, config maps, secrets, empty and host disks: not
            // the VM's data.
            skipped.push(disk_name.to_string());
            continue;
        };
        if d.get("cdrom").is_some() {
            skipped.push(format!("{disk_name} (CD-ROM)"));
            continue;
        }
        let bus = d["disk"]["bus"]
            .as_str()
            .or(d["lun"]["bus"].as_str())
            .unwrap_or("virtio");
        let controller = match bus {
            "sata" => ControllerKind::Sata,
            "scsi" => ControllerKind::Scsi,
            _ => ControllerKind::Virtio,
        };
        let (capacity, location) = match &volume {
            Volume::Claim(c) => (size_of(c).unwrap_or(0), format!("pvc {ns}/{c}")),
            Volume::ContainerDisk(i) => (0, format!("containerDisk {i}")),
        };
        disks.push(DiskSpec {
            name: disk_name.to_string(),
            capacity,
            format: DiskFormat::Raw,
            controller,
            unit: disks.len() as u32,
            location,
            controller_index: None,
        });
        vols.push(volume);
    }
    let networks: Vec<&Value> = tmpl["networks"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let nics = domain["devices"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let iname = i["name"].as_str().unwrap_or_default();
            let net = networks.iter().find(|n| n["name"] == iname);
            NicSpec {
                network: match net {
                    Some(n) if n.get("pod").is_some() => "pod".into(),
                    Some(n) => n["multus"]["networkName"]
                        .as_str()
                        .unwrap_or(iname)
                        .to_string(),
                    None => iname.to_string(),
                },
                mac: i["macAddress"].as_str().map(|m| m.to_ascii_lowercase()),
                model: i["model"].as_str().unwrap_or("virtio").to_string(),
            }
        })
        .collect();
    let printable = vm["status"]["printableStatus"].as_str().unwrap_or("");
    let power_state = match printable {
        "Running" | "Starting" | "Migrating" | "Stopping" => PowerState::On,
        "Stopped" | "Halted" => PowerState::Off,
        "Paused" => PowerState::Suspended,
        _ => PowerState::Unknown,
    };
    let labels = &meta["labels"];
    let annotations = &meta["annotations"];
    let os_hint = [
        annotations["vm.kubevirt.io/os"].as_str(),
        labels["kubevirt.io/os"].as_str(),
        vm["spec"]["preference"]["name"].as_str(),
        labels["vm.kubevirt.io/template"].as_str(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let family = OsFamily::guess(&[&os_hint]);
    let run_strategy = vm["spec"]["runStrategy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            vm["spec"]["running"]
                .as_bool()
                .map(|r| if r { "Always".into() } else { "Halted".into() })
        });
    let mut annotation = format!(
        "KubeVirt VirtualMachine {ns}/{name} (uid {}",
        meta["uid"].as_str().unwrap_or("unknown")
    );
    if let Some(r) = &run_strategy {
        annotation.push_str(&format!(", runStrategy {r}"));
    }
    if !printable.is_empty() {
        annotation.push_str(&format!(", {printable}"));
    }
    annotation.push(')');
    if let Some(it) = vm["spec"]["instancetype"]["name"].as_str() {
        annotation.push_str(&format!("; instancetype {it}"));
    }
    if !skipped.is_empty() {
        annotation.push_str(&format!(
            "; not exported (not VM data): {}",
            skipped.join(", ")
        ));
    }
    if memory == 0 {
        return Err(Error::Provider {
            provider: "kubevirt".into(),
            message: format!("VM {ns}/{name} says no memory (domain.memory.guest or resources)"),
            retryable: false,
            source: None,
        });
    }
    let spec = VmSpec {
        id: format!("{ns}/{name}"),
        name,
        power_state,
        cpus: sockets * cores * threads,
        memory_mib: memory.div_ceil(1 << 20),
        firmware: if efi.is_some() {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        guest_os: GuestOs {
            id: os_hint.split(' ').next().unwrap_or_default().to_string(),
            family,
            description: if os_hint.is_empty() {
                "Unknown operating system".into()
            } else {
                os_hint
            },
        },
        nics,
        disks,
        annotation: Some(annotation),
        hardware: Hardware {
            cores_per_socket: Some(cores * threads),
            secure_boot,
            ..Default::default()
        },
    };
    let running = vm["status"]["ready"].as_bool().unwrap_or(false)
        || matches!(printable, "Running" | "Starting" | "Migrating" | "Paused");
    Ok(Described {
        spec,
        volumes: vols,
        running,
        pvc: false,
    })
}

/// A lone PersistentVolumeClaim as a one-disk machine. A claim carries no
/// VM hardware: one vCPU, 1 GiB and BIOS are placeholders, and the
/// annotation says so.
pub(crate) fn describe_pvc(pvc: &Value) -> Result<Described> {
    let meta = &pvc["metadata"];
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
    let capacity = claim_size(pvc).ok_or_else(|| Error::Provider {
        provider: "kubevirt".into(),
        message: format!("PersistentVolumeClaim {ns}/{name} says no size (status.capacity.storage or spec.resources.requests.storage)"),
        retryable: false,
        source: None,
    })?;
    let spec = VmSpec {
        id: format!("{ns}/pvc:{name}"),
        name: name.clone(),
        power_state: PowerState::Unknown,
        cpus: 1,
        memory_mib: 1024,
        firmware: Firmware::Bios,
        guest_os: GuestOs::default(),
        nics: Vec::new(),
        disks: vec![DiskSpec {
            name: name.clone(),
            capacity,
            format: DiskFormat::Raw,
            controller: ControllerKind::Virtio,
            unit: 0,
            location: format!("pvc {ns}/{name}"),
            controller_index: None,
        }],
        annotation: Some(format!(
            "KubeVirt PersistentVolumeClaim {ns}/{name} (uid {}), a disk without a VM: its 1 vCPU, 1 GiB of memory and BIOS are placeholders, set the VM's own on import",
            meta["uid"].as_str().unwrap_or("unknown")
        )),
        hardware: Hardware::default(),
    };
    Ok(Described {
        spec,
        volumes: vec![Volume::Claim(name)],
        running: false,
        pvc: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity("4Gi"), Some(4 << 30));
        assert_eq!(quantity("512Mi"), Some(512 << 20));
        assert_eq!(quantity("1G"), Some(1_000_000_000));
        assert_eq!(quantity("1073741824"), Some(1 << 30));
        assert_eq!(quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(quantity("12Xi"), None);
        assert_eq!(quantity("99999999999Pi"), None);
    }
}
