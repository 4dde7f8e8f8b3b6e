//! The VM inventory through the PropertyCollector: one ContainerView over
//! every VM under the root folder (all datacenters, folders, clusters), one
//! `RetrievePropertiesEx` round trip per page of 100 VMs with every property
//! a listing and a [`VmSpec`] need — never one call per VM.

use hypersdk_core::{
    BootDevice, ControllerKind, ControllerSpec, DiskFormat, DiskSpec, DriveKind, DriveSpec, Error,
    Firmware, GuestOs, Hardware, NicSpec, OsFamily, PowerState, Result, VideoSpec, VmSpec,
};
use hypersdk_formats::xml::Element;

use crate::client::{permanent, Connection};
use crate::soap::{el, MoRef};

/// The properties read for each VM.
const VM_PROPERTIES: &[&str] = &[
    "name",
    "config.uuid",
    "config.instanceUuid",
    "config.guestId",
    "config.guestFullName",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.firmware",
    "config.version",
    "config.hardware.numCoresPerSocket",
    "config.bootOptions",
    "config.tools",
    "config.nestedHVEnabled",
    "config.cpuHotAddEnabled",
    "config.memoryHotAddEnabled",
    "config.extraConfig",
    "config.annotation",
    "runtime.powerState",
    "parent",
];

/// One VM as the inventory describes it.
#[derive(Debug, Clone)]
pub struct VmRecord {
    /// Its reference.
    pub moref: MoRef,
    /// BIOS UUID (`config.uuid`).
    pub uuid: String,
    /// vCenter instance UUID (`config.instanceUuid`).
    pub instance_uuid: String,
    /// The hardware description.
    pub spec: VmSpec,
    /// Datastore path of each disk's file, e.g. `[LocalDS_0] vm/vm.vmdk`.
    pub disk_files: Vec<String>,
    /// Inventory folder path, e.g. `/DC0/vm/Team`.
    pub folder: String,
}

/// Every VM visible to the session.
pub async fn list(conn: &Connection) -> Result<Vec<VmRecord>> {
    let vms = retrieve_view(conn, &[("VirtualMachine", VM_PROPERTIES)]).await?;
    let folders = retrieve_view(
        conn,
        &[
            ("Folder", &["name", "parent"]),
            ("Datacenter", &["name", "parent"]),
        ],
    )
    .await?;
    // Folder/datacenter moref → (name, parent moref).
    let mut tree = std::collections::HashMap::new();
    for o in &folders {
        let Some(me) = o.find("obj").and_then(MoRef::from_element) else {
            continue;
        };
        let mut name = String::new();
        let mut parent = None;
        for p in o.find_all("propSet") {
            match p.find_text("name") {
                Some("name") => name = p.find_text("val").unwrap_or("").to_string(),
                Some("parent") => parent = p.find("val").and_then(MoRef::from_element),
                _ => {}
            }
        }
        tree.insert(me.value, (name, parent.map(|p| p.value)));
    }
    let root = &conn.content().root_folder.value;
    // Networks a NIC names by key rather than by name: distributed
    // portgroups (`dvportgroup-12`) and NSX opaque networks (a logical
    // switch's uuid). vCenter exports both under their names.
    // (key, name) of each object; the key is property `prop`, or its field
    // `field` when given.
    let named = |objs: Vec<Element>, prop: &str, field: Option<&str>| {
        objs.iter()
            .filter_map(|o| {
                let val = |n: &str| {
                    o.find_all("propSet")
                        .find(|p| p.find_text("name") == Some(n))?
                        .find("val")
                };
                let name = val("name")?.text.trim().to_string();
                let v = val(prop)?;
                let key = match field {
                    Some(f) => v.find_text(f)?,
                    None => v.text.trim(),
                };
                Some((key.to_string(), name))
            })
            .collect::<Vec<_>>()
    };
    let network_names: std::collections::HashMap<String, String> = named(
        retrieve_view(conn, &[("DistributedVirtualPortgroup", &["name", "key"])]).await?,
        "key",
        None,
    )
    .into_iter()
    .chain(named(
        retrieve_view(conn, &[("OpaqueNetwork", &["name", "summary"])]).await?,
        "summary",
        Some("opaqueNetworkId"),
    ))
    .collect();
    let mut out = Vec::with_capacity(vms.len());
    for obj in &vms {
        let mut rec = record(obj)?;
        for n in &mut rec.spec.nics {
            if let Some(name) = network_names.get(&n.network) {
                n.network = name.clone();
            }
        }
        let mut parts = Vec::new();
        let mut at = obj
            .find_all("propSet")
            .find(|p| p.find_text("name") == Some("parent"))
            .and_then(|p| p.find("val"))
            .and_then(MoRef::from_element)
            .map(|m| m.value);
        while let Some(id) = at {
            if &id == root || parts.len() > 64 {
                break;
            }
            match tree.get(&id) {
                Some((name, parent)) => {
                    parts.push(name.clone());
                    at = parent.clone();
                }
                None => break,
            }
        }
        parts.reverse();
        rec.folder = format!("/{}", parts.join("/"));
        out.push(rec);
    }
    Ok(out)
}

/// Every object of the given types under the root folder, with the given
/// properties: a ContainerView and paged RetrievePropertiesEx (100 objects
/// per round trip). Returns the `ObjectContent` elements.
async fn retrieve_view(conn: &Connection, types: &[(&str, &[&str])]) -> Result<Vec<Element>> {
    let c = conn.content();
    let kinds: String = types.iter().map(|(t, _)| el("type", t)).collect();
    let view = conn
        .call(
            "CreateContainerView",
            &format!(
                "{}{}{kinds}{}",
                c.view_manager.xml("_this"),
                c.root_folder.xml("container"),
                el("recursive", "true")
            ),
        )
        .await?;
    let view = view
        .find("returnval")
        .and_then(MoRef::from_element)
        .ok_or_else(|| permanent("CreateContainerView returned no view"))?;
    let result = retrieve_pages(conn, &view, types).await;
    // The view is session state on the server: drop it on every path.
    let _ = conn.call("DestroyView", &view.xml("_this")).await;
    result
}

async fn retrieve_pages(
    conn: &Connection,
    view: &MoRef,
    types: &[(&str, &[&str])],
) -> Result<Vec<Element>> {
    let pc = &conn.content().property_collector;
    let prop_sets: String = types
        .iter()
        .map(|(t, paths)| {
            let paths: String = paths.iter().map(|p| el("pathSet", p)).collect();
            format!("<propSet>{}{paths}</propSet>", el("type", t))
        })
        .collect();
    let spec = format!(
        "<specSet>{prop_sets}\
         <objectSet>{}<skip>true</skip>\
         <selectSet xsi:type=\"TraversalSpec\"><name>traverseView</name><type>ContainerView</type>\
         <path>view</path><skip>false</skip></selectSet></objectSet></specSet>",
        view.xml("obj")
    );
    let mut out = Vec::new();
    let first = conn
        .call(
            "RetrievePropertiesEx",
            &format!(
                "{}{spec}<options><maxObjects>100</maxObjects></options>",
                pc.xml("_this")
            ),
        )
        .await?;
    let mut page = first.find("returnval").cloned();
    while let Some(rv) = page {
        out.extend(rv.find_all("objects").cloned());
        page = match rv.find_text("token") {
            Some(token) if !token.is_empty() => conn
                .call(
                    "ContinueRetrievePropertiesEx",
                    &format!("{}{}", pc.xml("_this"), el("token", token)),
                )
                .await?
                .find("returnval")
                .cloned(),
            _ => None,
        };
    }
    Ok(out)
}

/// Reads one `ObjectContent`.
fn record(obj: &Element) -> Result<VmRecord> {
    let moref = obj
        .find("obj")
        .and_then(MoRef::from_element)
        .ok_or_else(|| permanent("a VM without a reference in the property collector's answer"))?;
    let mut name = String::new();
    let (mut uuid, mut instance_uuid) = (String::new(), String::new());
    let (mut guest_id, mut guest_name) = (String::new(), String::new());
    let (mut cpus, mut memory) = (0u32, 0u64);
    let mut firmware = Firmware::Bios;
    let mut annotation = None;
    let mut boot: Vec<(&str, Option<String>)> = Vec::new();
    let mut power = PowerState::Unknown;
    let mut devices: Option<&Element> = None;
    let mut hw = Hardware::default();
    for prop in obj.find_all("propSet") {
        let val = prop.find("val");
        let text = val.map(|v| v.text.trim()).unwrap_or("");
        match prop.find_text("name").unwrap_or("") {
            "name" => name = text.to_string(),
            "config.uuid" => uuid = text.to_string(),
            "config.instanceUuid" => instance_uuid = text.to_string(),
            "config.guestId" => guest_id = text.to_string(),
            "config.guestFullName" => guest_name = text.to_string(),
            "config.hardware.numCPU" => cpus = text.parse().unwrap_or(0),
            "config.hardware.memoryMB" => memory = text.parse().unwrap_or(0),
            "config.firmware" => {
                firmware = if text == "efi" {
                    Firmware::Uefi
                } else {
                    Firmware::Bios
                }
            }
            "config.annotation" if !text.is_empty() => annotation = Some(text.to_string()),
            "runtime.powerState" => {
                power = match text {
                    "poweredOn" => PowerState::On,
                    "poweredOff" => PowerState::Off,
                    "suspended" => PowerState::Suspended,
                    _ => PowerState::Unknown,
                }
            }
            "config.hardware.device" => devices = val,
            "config.version" if !text.is_empty() => hw.version = Some(text.to_string()),
            "config.hardware.numCoresPerSocket" => hw.cores_per_socket = text.parse().ok(),
            "config.bootOptions" => {
                if let Some(v) = val {
                    hw.secure_boot = v.find_text("efiSecureBootEnabled") == Some("true");
                    boot = v
                        .find_all("bootOrder")
                        .filter_map(|b| {
                            let kind = boot_kind(b.attr_local("type").unwrap_or(""))?;
                            Some((kind, b.find_text("deviceKey").map(str::to_string)))
                        })
                        .collect();
                }
            }
            "config.tools" => {
                for k in TOOLS_SETTINGS {
                    if let Some(v) = val.and_then(|v| v.find_text(k)).filter(|v| !v.is_empty()) {
                        hw.settings.push((format!("tools.{k}"), v.to_string()));
                    }
                }
            }
            k @ ("config.nestedHVEnabled"
            | "config.cpuHotAddEnabled"
            | "config.memoryHotAddEnabled")
                if !text.is_empty() =>
            {
                hw.settings.push((
                    k.trim_start_matches("config.").to_string(),
                    text.to_string(),
                ));
            }
            "config.extraConfig" => {
                for o in val.into_iter().flat_map(|v| v.children.iter()) {
                    if let (Some(k), Some(v)) = (o.find_text("key"), o.find_text("value")) {
                        if keeps_extra_config(k) {
                            hw.extra_config.push((k.to_string(), v.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let (disks, disk_files, nics, keys) = devices.map(|d| hardware(d, &mut hw)).unwrap_or_default();
    // A bootable disk or NIC is named by device key; a CD-ROM or floppy
    // entry means the first of its kind.
    hw.boot_order = boot
        .into_iter()
        .filter_map(|(kind, key)| {
            let index = match (kind, key) {
                ("disk", Some(k)) => keys.disks.iter().position(|d| *d == k)?,
                ("network", Some(k)) => keys.nics.iter().position(|d| *d == k)?,
                _ => 0,
            };
            Some(BootDevice {
                kind: kind.to_string(),
                index,
            })
        })
        .collect();
    let family = os_family(&guest_id, &guest_name);
    Ok(VmRecord {
        uuid,
        instance_uuid,
        spec: VmSpec {
            id: moref.value.clone(),
            name,
            power_state: power,
            cpus,
            memory_mib: memory,
            firmware,
            guest_os: GuestOs {
                id: guest_id,
                family,
                description: if guest_name.is_empty() {
                    GuestOs::default().description
                } else {
                    guest_name
                },
            },
            nics,
            disks,
            annotation,
            hardware: hw,
        },
        moref,
        disk_files,
        folder: String::new(),
    })
}

fn os_family(id: &str, name: &str) -> OsFamily {
    OsFamily::guess(&[id, name])
}

/// `VirtualMachineToolsConfigInfo` fields kept as `tools.*` settings, as
/// ovftool exports them.
const TOOLS_SETTINGS: &[&str] = &[
    "afterPowerOn",
    "afterResume",
    "beforeGuestStandby",
    "beforeGuestShutdown",
    "beforeGuestReboot",
    "syncTimeWithHost",
    "toolsUpgradePolicy",
];

/// Whether an advanced setting (`extraConfig`) is exported: settings of
/// the virtual hardware and of VMware Tools, never `guestinfo.*` (which
/// often carries cloud-init user data and secrets) nor host-specific state
/// (`nvram`, `sched.*`, `migrate.*`, UUIDs).
fn keeps_extra_config(key: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "tools.",
        "svga.",
        "vhv.",
        "isolation.",
        "mks.",
        "cpuid.coresPerSocket",
    ];
    const EXACT: &[&str] = &[
        "disk.EnableUUID",
        "hpet0.present",
        "vcpu.hotadd",
        "mem.hotadd",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || EXACT.contains(&key)
}

/// The device kind of a `VirtualMachineBootOptionsBootableDevice` type.
fn boot_kind(t: &str) -> Option<&'static str> {
    match t {
        "VirtualMachineBootOptionsBootableDiskDevice" => Some("disk"),
        "VirtualMachineBootOptionsBootableCdromDevice" => Some("cdrom"),
        "VirtualMachineBootOptionsBootableEthernetDevice" => Some("network"),
        "VirtualMachineBootOptionsBootableFloppyDevice" => Some("floppy"),
        _ => None,
    }
}

/// A storage controller's kind and model from its device type.
fn controller_of(kind: &str) -> Option<(ControllerKind, &'static str)> {
    Some(match kind {
        "VirtualIDEController" => (ControllerKind::Ide, "piix4"),
        "VirtualAHCIController" => (ControllerKind::Sata, "ahci"),
        "VirtualSATAController" => (ControllerKind::Sata, "sata"),
        "VirtualNVMEController" => (ControllerKind::Nvme, "nvme"),
        "ParaVirtualSCSIController" => (ControllerKind::Scsi, "pvscsi"),
        "VirtualLsiLogicController" => (ControllerKind::Scsi, "lsilogic"),
        "VirtualLsiLogicSASController" => (ControllerKind::Scsi, "lsilogic-sas"),
        "VirtualBusLogicController" => (ControllerKind::Scsi, "buslogic"),
        k if k.ends_with("SCSIController") => (ControllerKind::Scsi, "scsi"),
        _ => return None,
    })
}

/// Device keys of the disks and NICs [`hardware`] returns, in its order.
#[derive(Default)]
struct DeviceKeys {
    disks: Vec<String>,
    nics: Vec<String>,
}

/// Disks (in device order), their files, NICs and their device keys from
/// `config.hardware.device`; its controllers, drives, video card and VMCI
/// device go into `hw`.
fn hardware(
    devices: &Element,
    hw: &mut Hardware,
) -> (Vec<DiskSpec>, Vec<String>, Vec<NicSpec>, DeviceKeys) {
    // Controller key → (kind, index in hw.controllers).
    let mut controllers = std::collections::HashMap::new();
    for d in &devices.children {
        let kind = d.attr_local("type").unwrap_or("");
        if let (Some((c, model)), Some(key)) = (controller_of(kind), d.find_text("key")) {
            controllers.insert(key.to_string(), (c, hw.controllers.len()));
            hw.controllers.push(ControllerSpec {
                kind: c,
                model: model.to_string(),
                bus: d
                    .find_text("busNumber")
                    .and_then(|b| b.parse().ok())
                    .unwrap_or(0),
            });
        }
    }
    let unit_of = |d: &Element| -> u32 {
        d.find_text("unitNumber")
            .and_then(|u| u.parse().ok())
            .unwrap_or(0)
    };
    let mut disks = Vec::new();
    let mut files = Vec::new();
    let mut nics = Vec::new();
    let mut keys = DeviceKeys::default();
    let key_of = |d: &Element| d.find_text("key").unwrap_or("").to_string();
    for d in &devices.children {
        let kind = d.attr_local("type").unwrap_or("");
        let label = d
            .find("deviceInfo")
            .and_then(|i| i.find_text("label"))
            .unwrap_or("")
            .to_string();
        if kind == "VirtualDisk" {
            let capacity = d
                .find_text("capacityInBytes")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .or_else(|| {
                    d.find_text("capacityInKB")
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                })
                .unwrap_or(0);
            let file = d
                .find("backing")
                .and_then(|b| b.find_text("fileName"))
                .unwrap_or("")
                .to_string();
            let on = d
                .find_text("controllerKey")
                .and_then(|k| controllers.get(k).copied());
            disks.push(DiskSpec {
                name: if label.is_empty() {
                    format!("disk {}", disks.len() + 1)
                } else {
                    label
                },
                capacity,
                format: DiskFormat::Vmdk,
                controller: on.map_or(ControllerKind::Scsi, |(k, _)| k),
                unit: unit_of(d),
                location: file.clone(),
                controller_index: on.map(|(_, i)| i),
            });
            files.push(file);
            keys.disks.push(key_of(d));
        } else if kind == "VirtualCdrom" || kind == "VirtualFloppy" {
            hw.drives.push(DriveSpec {
                kind: if kind == "VirtualCdrom" {
                    DriveKind::Cdrom
                } else {
                    DriveKind::Floppy
                },
                controller_index: d
                    .find_text("controllerKey")
                    .and_then(|k| controllers.get(k))
                    .map(|(_, i)| *i),
                bus: d
                    .find_text("controllerKey")
                    .and_then(|k| controllers.get(k))
                    .map(|(k, _)| *k),
                unit: unit_of(d),
            });
        } else if kind == "VirtualMachineVideoCard" {
            hw.video = Some(VideoSpec {
                vram_kib: d.find_text("videoRamSizeInKB").and_then(|v| v.parse().ok()),
                displays: d.find_text("numDisplays").and_then(|v| v.parse().ok()),
                accel_3d: d.find_text("enable3DSupport") == Some("true"),
            });
        } else if kind == "VirtualMachineVMCIDevice" {
            hw.vmci = true;
        } else if d.find("macAddress").is_some()
            || kind.starts_with("VirtualE1000")
            || kind.starts_with("VirtualVmxnet")
            || kind == "VirtualPCNet32"
            || kind == "VirtualSriovEthernetCard"
        {
            let backing = d.find("backing");
            let network = backing
                .and_then(|b| b.find_text("deviceName"))
                .map(str::to_string)
                .or_else(|| {
                    backing
                        .and_then(|b| b.find("port"))
                        .and_then(|p| p.find_text("portgroupKey"))
                        .map(str::to_string)
                })
                .or_else(|| {
                    backing
                        .and_then(|b| b.find_text("opaqueNetworkId"))
                        .map(str::to_string)
                })
                .or_else(|| {
                    d.find("deviceInfo")
                        .and_then(|i| i.find_text("summary"))
                        .map(str::to_string)
                })
                .unwrap_or_default();
            keys.nics.push(key_of(d));
            nics.push(NicSpec {
                network,
                mac: d
                    .find_text("macAddress")
                    .filter(|m| !m.is_empty())
                    .map(str::to_string),
                model: kind.trim_start_matches("Virtual").to_ascii_lowercase(),
            });
        }
    }
    (disks, files, nics, keys)
}

/// The VM named or identified by `key`: a name, a moref value (`vm-42`), a
/// BIOS UUID or an instance UUID. A name shared by several VMs is refused.
pub fn pick<'a>(records: &'a [VmRecord], key: &str, host: &str) -> Result<&'a VmRecord> {
    let by_id: Vec<&VmRecord> = records
        .iter()
        .filter(|r| {
            r.moref.value == key
                || r.uuid.eq_ignore_ascii_case(key)
                || r.instance_uuid.eq_ignore_ascii_case(key)
        })
        .collect();
    if let [one] = by_id[..] {
        return Ok(one);
    }
    let by_name: Vec<&VmRecord> = records.iter().filter(|r| r.spec.name == key).collect();
    match by_name[..] {
        [one] => Ok(one),
        [] => Err(Error::VmNotFound {
            provider: "vsphere".into(),
            vm: key.to_string(),
            detail: format!(
                "no VM of that name, moref or UUID among the {} VMs visible on {host}",
                records.len()
            ),
        }),
        _ => Err(Error::InvalidArgument(format!(
            "{} VMs on {host} are named '{key}' ({}); give the moref instead",
            by_name.len(),
            by_name
                .iter()
                .map(|r| r.moref.value.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads properties `paths` of one object: (name, `<val>`) pairs for those set.
pub(crate) async fn properties(
    conn: &Connection,
    obj: &MoRef,
    paths: &[&str],
) -> Result<Vec<(String, Element)>> {
    let pc = &conn.content().property_collector;
    let paths: String = paths.iter().map(|p| el("pathSet", p)).collect();
    let body = format!(
        "{}<specSet><propSet>{}{paths}</propSet><objectSet>{}<skip>false</skip></objectSet></specSet><options/>",
        pc.xml("_this"),
        el("type", &obj.kind),
        obj.xml("obj")
    );
    let rv = conn.call("RetrievePropertiesEx", &body).await?;
    let mut out = Vec::new();
    if let Some(o) = rv.find("returnval").and_then(|r| r.find("objects")) {
        for p in o.find_all("propSet") {
            if let (Some(name), Some(val)) = (p.find_text("name"), p.find("val")) {
                out.push((name.to_string(), val.clone()));
            }
        }
    }
    Ok(out)
}

/// Waits for task `task` to finish and returns its result (`info.result`),
/// or its error as a provider error naming `what`; reports `info.progress`
/// (percent) to `progress` as it changes.
pub(crate) async fn wait_task(
    conn: &Connection,
    task: &MoRef,
    what: &str,
    timeout: std::time::Duration,
    progress: hypersdk_core::TaskProgress<'_>,
) -> Result<Option<Element>> {
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(100);
    let mut last = None;
    loop {
        let props = properties(
            conn,
            task,
            &["info.state", "info.error", "info.result", "info.progress"],
        )
        .await?;
        let get = |n: &str| props.iter().find(|(k, _)| k == n).map(|(_, v)| v);
        if let (Some(f), Some(p)) = (
            progress,
            get("info.progress").and_then(|v| v.text.trim().parse::<u32>().ok()),
        ) {
            if last != Some(p) {
                f(p);
                last = Some(p);
            }
        }
        match get("info.state").map(|v| v.text.trim()) {
            Some("success") => {
                if let (Some(f), false) = (progress, last == Some(100)) {
                    f(100);
                }
                return Ok(get("info.result").cloned());
            }
            Some("error") => {
                let e = get("info.error");
                let msg = e
                    .and_then(|e| e.find_text("localizedMessage"))
                    .unwrap_or("");
                let kind = e
                    .and_then(|e| e.find("fault"))
                    .and_then(|f| f.attr_local("type"))
                    .unwrap_or("");
                return Err(Error::Provider {
                    provider: "vsphere".into(),
                    message: format!("{what} failed on {}: {kind} {msg}", conn.host())
                        .trim_end()
                        .to_string(),
                    retryable: false,
                    source: None,
                });
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(Error::Provider {
                provider: "vsphere".into(),
                message: format!("{what} did not finish within {} s", timeout.as_secs()),
                retryable: true,
                source: None,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(2));
    }
}
