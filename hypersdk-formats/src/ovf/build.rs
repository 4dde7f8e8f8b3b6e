//! Building an [`Envelope`] for one virtual machine: the package's files
//! and disks, its networks, and hardware items in the shape vSphere,
//! VirtualBox and virt-v2v import. What each item means is the caller's
//! (the exporter maps a VM's hardware onto these); the envelope is written
//! with [`Envelope::to_xml`].

use super::model::{
    Envelope, FileRef, HardwareSection, HwField, HwItem, Network, VirtualDiskDesc, VirtualSystem,
};

/// A `rasd:`/`vssd:` field without attributes.
fn field(name: &str, value: impl Into<String>) -> HwField {
    HwField {
        name: name.to_string(),
        attrs: Vec::new(),
        value: value.into(),
    }
}

impl Envelope {
    /// An envelope of one virtual system named `name`, of virtual hardware
    /// family `system_type` (`vssd:VirtualSystemType`, e.g. `vmx-14`), with
    /// no files, disks or devices yet.
    pub fn for_vm(name: &str, system_type: &str) -> Envelope {
        Envelope {
            systems: vec![VirtualSystem {
                id: name.to_string(),
                info: "A virtual machine".into(),
                name: Some(name.to_string()),
                hardware: vec![HardwareSection {
                    system: vec![
                        field("vssd:ElementName", "Virtual Hardware Family"),
                        field("vssd:InstanceID", "0"),
                        field("vssd:VirtualSystemIdentifier", name),
                        field("vssd:VirtualSystemType", system_type),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Adds a package file `href` of `file_size` bytes holding a disk of
    /// `capacity` bytes (`populated` of them stored) in format `format_uri`;
    /// returns the disk's `ovf:diskId`, for [`HardwareSection::add_disk`].
    pub fn add_disk_file(
        &mut self,
        href: &str,
        file_size: u64,
        capacity: u64,
        populated: Option<u64>,
        format_uri: &str,
    ) -> String {
        let n = self.files.len() + 1;
        let file_id = format!("file{n}");
        let disk_id = format!("vmdisk{}", self.disks.len() + 1);
        self.files.push(FileRef {
            id: file_id.clone(),
            href: href.to_string(),
            size: Some(file_size.to_string()),
            other: Vec::new(),
        });
        let mut attrs = vec![
            ("ovf:capacity".to_string(), capacity.to_string()),
            ("ovf:capacityAllocationUnits".into(), "byte".into()),
            ("ovf:diskId".into(), disk_id.clone()),
            ("ovf:fileRef".into(), file_id),
            ("ovf:format".into(), format_uri.to_string()),
        ];
        if let Some(p) = populated {
            attrs.push(("ovf:populatedSize".into(), p.to_string()));
        }
        self.disks.push(VirtualDiskDesc { attrs });
        disk_id
    }

    /// Sets the virtual hardware family (`vssd:VirtualSystemType`) of every
    /// system.
    pub fn set_system_type(&mut self, system_type: &str) {
        for f in self
            .systems
            .iter_mut()
            .flat_map(|s| s.hardware.iter_mut())
            .flat_map(|h| h.system.iter_mut())
            .filter(|f| f.name.rsplit(':').next() == Some("VirtualSystemType"))
        {
            f.value = system_type.to_string();
        }
    }

    /// Declares network `name` (once).
    pub fn add_network(&mut self, name: &str) {
        if !self.networks.iter().any(|n| n.name == name) {
            self.networks.push(Network {
                name: name.to_string(),
                description: Some(format!("The {name} network")),
            });
        }
    }
}

impl VirtualSystem {
    /// Sets the guest OS: its CIM `OsType` number (with the `ovf:version`
    /// it needs, see [`os`](super::os)), VMware guest id and a description.
    pub fn set_os(
        &mut self,
        cim_id: u16,
        version: Option<&str>,
        vmw_os_type: &str,
        description: &str,
    ) {
        self.os_attrs = vec![("ovf:id".into(), cim_id.to_string())];
        if let Some(v) = version {
            self.os_attrs.push(("ovf:version".into(), v.to_string()));
        }
        self.os_attrs
            .push(("vmw:osType".into(), vmw_os_type.to_string()));
        self.os_description = Some(description.to_string());
    }

    /// Adds a boot device after those already added: the item whose
    /// `InstanceID` is `instance_id`, of `kind` (`disk`, `cdrom`, `net`,
    /// `floppy`), as a `vmw:BootOrderSection`. Unlike ovftool's, the section
    /// says `ovf:required="false"`: an importer that does not know it (some
    /// vCenter versions refuse such packages, per Packer's users) skips it.
    pub fn add_boot_device(&mut self, instance_id: u32, kind: &str) {
        self.boot_order.push(vec![
            ("ovf:required".into(), "false".into()),
            ("vmw:instanceId".into(), instance_id.to_string()),
            ("vmw:type".into(), kind.to_string()),
        ]);
    }

    /// The boot devices, in order: (`InstanceID`, kind).
    pub fn boot_devices(&self) -> Vec<(u32, &str)> {
        self.boot_order
            .iter()
            .filter_map(|b| {
                let get = |n: &str| {
                    b.iter()
                        .find(|(k, _)| local_of(k) == n)
                        .map(|(_, v)| v.as_str())
                };
                Some((get("instanceId")?.parse().ok()?, get("type")?))
            })
            .collect()
    }
}

/// Boot devices: the VM model's kind, `vmw:BootOrderSection`'s
/// `vmw:type`, and the CIM `ResourceType` of the item it names.
pub const BOOT_TYPES: [(&str, &str, &str); 4] = [
    ("disk", "disk", "17"),
    ("cdrom", "cdrom", "15"),
    ("floppy", "floppy", "14"),
    ("network", "net", "10"),
];

fn local_of(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

impl HardwareSection {
    /// Adds an `Item` of `rasd:` fields (given by local name, written in
    /// the alphabetical order the CIM schema requires) with the next free
    /// `InstanceID`, which it returns.
    pub fn add_item(&mut self, fields: &[(&str, String)]) -> u32 {
        self.add_item_with(fields, true, &[])
    }

    /// [`add_item`](Self::add_item), marked `ovf:required="false"` unless
    /// `required` (an importer may leave the device out), with `vmw:Config`
    /// entries (key, value) for VMware's importers.
    pub fn add_item_with(
        &mut self,
        fields: &[(&str, String)],
        required: bool,
        configs: &[(&str, String)],
    ) -> u32 {
        let id = self
            .items
            .iter()
            .filter_map(|i| i.get("InstanceID")?.parse::<u32>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let mut fields: Vec<HwField> = fields
            .iter()
            .map(|(k, v)| field(&format!("rasd:{k}"), v.clone()))
            .chain([field("rasd:InstanceID", id.to_string())])
            .collect();
        fields.sort_by(|a, b| a.name.cmp(&b.name));
        self.items.push(HwItem {
            element: "Item".into(),
            attrs: if required {
                Vec::new()
            } else {
                vec![("ovf:required".into(), "false".into())]
            },
            fields,
            configs: configs.iter().map(|(k, v)| config(k, v)).collect(),
        });
        id
    }

    /// Adds `n` virtual CPUs, `cores_per_socket` of them per socket when
    /// given (`vmw:CoresPerSocket`, as ovftool writes it).
    pub fn add_cpus(&mut self, n: u32, cores_per_socket: Option<u32>) -> u32 {
        let id = self.add_item(&[
            ("AllocationUnits", "hertz * 10^6".into()),
            ("Description", "Number of Virtual CPUs".into()),
            ("ElementName", format!("{n} virtual CPU(s)")),
            ("ResourceType", "3".into()),
            ("VirtualQuantity", n.to_string()),
        ]);
        if let (Some(c), Some(item)) = (cores_per_socket, self.items.last_mut()) {
            item.fields.push(HwField {
                name: "vmw:CoresPerSocket".into(),
                attrs: vec![("ovf:required".into(), "false".into())],
                value: c.to_string(),
            });
        }
        id
    }

    /// Adds `mib` MiB of memory.
    pub fn add_memory_mib(&mut self, mib: u64) -> u32 {
        self.add_item(&[
            ("AllocationUnits", "byte * 2^20".into()),
            ("Description", "Memory Size".into()),
            ("ElementName", format!("{mib}MB of memory")),
            ("ResourceType", "4".into()),
            ("VirtualQuantity", mib.to_string()),
        ])
    }

    /// Adds a storage controller of `kind` as bus `bus`; returns its
    /// `InstanceID`, the `Parent` of its disks.
    pub fn add_controller(&mut self, kind: &ControllerType, bus: u32) -> u32 {
        let (desc, name, subtype, rtype) = match kind {
            ControllerType::Ide => ("IDE Controller", format!("IDE {bus}"), None, "5"),
            ControllerType::Scsi(sub) => (
                "SCSI Controller",
                format!("SCSI controller {bus}"),
                Some(sub.clone()),
                "6",
            ),
            ControllerType::Sata => (
                "SATA Controller",
                format!("SATA controller {bus}"),
                Some("vmware.sata.ahci".to_string()),
                "20",
            ),
            ControllerType::Nvme => (
                "NVMe Controller",
                format!("NVME controller {bus}"),
                Some("vmware.nvme.controller".to_string()),
                "20",
            ),
        };
        let mut fields = vec![
            ("Address", bus.to_string()),
            ("Description", desc.to_string()),
            ("ElementName", name),
            ("ResourceType", rtype.to_string()),
        ];
        if let Some(s) = subtype {
            fields.push(("ResourceSubType", s));
        }
        self.add_item(&fields)
    }

    /// Adds hard disk number `n` (1-based, for its name), `disk_id` of the
    /// DiskSection, at unit `unit` of the controller whose `InstanceID` is
    /// `parent`.
    pub fn add_disk(&mut self, n: usize, disk_id: &str, parent: u32, unit: u32) -> u32 {
        self.add_item(&[
            ("AddressOnParent", unit.to_string()),
            ("ElementName", format!("Hard disk {n}")),
            ("HostResource", format!("ovf:/disk/{disk_id}")),
            ("Parent", parent.to_string()),
            ("ResourceType", "17".into()),
        ])
    }

    /// Adds network adapter number `n` (1-based) of type `adapter`
    /// (`E1000`, `E1000e`, `VmxNet3`, …) on network `network`, with a fixed
    /// `mac` if given.
    pub fn add_nic(&mut self, n: usize, network: &str, adapter: &str, mac: Option<&str>) -> u32 {
        let mut fields = vec![
            ("AddressOnParent", (6 + n).to_string()),
            ("AutomaticAllocation", "true".into()),
            ("Connection", network.to_string()),
            (
                "Description",
                format!("{adapter} ethernet adapter on \"{network}\""),
            ),
            ("ElementName", format!("Network adapter {n}")),
            ("ResourceSubType", adapter.to_string()),
            ("ResourceType", "10".into()),
        ];
        if let Some(m) = mac {
            fields.push(("Address", m.to_string()));
        }
        self.add_item(&fields)
    }

    /// Adds an empty CD/DVD drive (number `n`, 1-based) at unit `unit` of
    /// the controller whose `InstanceID` is `parent`, as ovftool writes one.
    pub fn add_cdrom(&mut self, n: usize, parent: u32, unit: u32) -> u32 {
        self.add_item_with(
            &[
                ("AddressOnParent", unit.to_string()),
                ("AutomaticAllocation", "false".into()),
                ("ElementName", format!("CD/DVD drive {n}")),
                ("Parent", parent.to_string()),
                ("ResourceSubType", "vmware.cdrom.remotepassthrough".into()),
                ("ResourceType", "15".into()),
            ],
            false,
            &[],
        )
    }

    /// Adds an empty floppy drive (number `n`, 1-based).
    pub fn add_floppy(&mut self, n: usize) -> u32 {
        self.add_item_with(
            &[
                ("AddressOnParent", (n - 1).to_string()),
                ("AutomaticAllocation", "false".into()),
                ("ElementName", format!("Floppy drive {n}")),
                ("ResourceSubType", "vmware.floppy.remotedevice".into()),
                ("ResourceType", "14".into()),
            ],
            false,
            &[],
        )
    }

    /// Adds the video card: `vram_kib` of video memory, `displays`, 3D
    /// support.
    pub fn add_video(
        &mut self,
        vram_kib: Option<u64>,
        displays: Option<u32>,
        accel_3d: bool,
    ) -> u32 {
        let mut configs = vec![
            ("enable3DSupport", accel_3d.to_string()),
            ("useAutoDetect", "false".to_string()),
        ];
        if let Some(v) = vram_kib {
            configs.push(("videoRamSizeInKB", v.to_string()));
        }
        if let Some(d) = displays {
            configs.push(("numDisplays", d.to_string()));
        }
        self.add_item_with(
            &[
                ("AutomaticAllocation", "false".into()),
                ("ElementName", "Video card".into()),
                ("ResourceType", "24".into()),
            ],
            false,
            &configs,
        )
    }

    /// Adds VMware's VMCI device.
    pub fn add_vmci(&mut self) -> u32 {
        self.add_item_with(
            &[
                ("AutomaticAllocation", "false".into()),
                ("ElementName", "VMCI device".into()),
                ("ResourceSubType", "vmware.vmci".into()),
                ("ResourceType", "1".into()),
            ],
            false,
            &[("allowUnrestrictedCommunication", "false".into())],
        )
    }

    /// Sets a `vmw:Config` entry of the section (e.g. `firmware`), not
    /// required of importers that do not know it.
    pub fn set_config(&mut self, key: &str, value: &str) {
        self.configs
            .retain(|c| !c.iter().any(|(k, v)| k == "vmw:key" && v == key));
        self.configs.push(config(key, value));
    }

    /// Adds a `vmw:ExtraConfig` entry (an advanced setting).
    pub fn add_extra_config(&mut self, key: &str, value: &str) {
        self.extra_config.push(config(key, value));
    }
}

/// A `vmw:Config`/`vmw:ExtraConfig` entry's attributes.
fn config(key: &str, value: &str) -> Vec<(String, String)> {
    vec![
        ("ovf:required".into(), "false".into()),
        ("vmw:key".into(), key.to_string()),
        ("vmw:value".into(), value.to_string()),
    ]
}

/// A storage controller type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerType {
    /// IDE (ResourceType 5).
    Ide,
    /// SCSI with a subtype such as `lsilogic`, `lsilogicsas`, `VirtualSCSI`.
    Scsi(String),
    /// SATA AHCI (ResourceType 20).
    Sata,
    /// NVMe (ResourceType 20, `vmware.nvme.controller`).
    Nvme,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::model::OvfVersion;

    #[test]
    fn builds_escaped_well_formed_xml_that_reads_back() {
        let mut env = Envelope::for_vm("web<1>&", "vmx-14");
        let disk = env.add_disk_file(
            "d1.vmdk",
            10,
            1 << 30,
            Some(4096),
            crate::vmdk::STREAM_OPTIMIZED_FORMAT_URI,
        );
        env.add_network("VM Network");
        env.add_network("VM Network");
        let sys = &mut env.systems[0];
        sys.annotation = Some("a \"quote\"".into());
        sys.set_os(101, None, "otherLinux64Guest", "Linux");
        let hw = &mut sys.hardware[0];
        assert_eq!(hw.add_cpus(2, Some(2)), 1);
        hw.add_memory_mib(2048);
        let scsi = hw.add_controller(&ControllerType::Scsi("lsilogic".into()), 0);
        hw.add_disk(1, &disk, scsi, 0);
        hw.add_nic(1, "VM Network", "E1000", Some("52:54:00:aa:bb:cc"));
        let ide = hw.add_controller(&ControllerType::Ide, 1);
        hw.add_cdrom(1, ide, 0);
        hw.add_floppy(1);
        hw.add_video(Some(8192), Some(1), false);
        hw.add_vmci();
        hw.add_extra_config("tools.guest.desktop.autolock", "false");
        hw.set_config("firmware", "bios");
        hw.set_config("firmware", "efi");
        let xml = env.to_xml(OvfVersion::V1_0);
        assert!(xml.contains("web&lt;1&gt;&amp;"));
        assert!(xml.contains("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>"));
        assert!(xml.contains("vmw:value=\"efi\"") && !xml.contains("vmw:value=\"bios\""));
        // rasd fields in alphabetical order inside each item.
        let cpu = &env.systems[0].hardware[0].items[0];
        let names: Vec<&str> = cpu.fields.iter().map(|f| f.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        let back = Envelope::parse(&xml).unwrap();
        assert!(back.dropped.is_empty(), "{:?}", back.dropped);
        assert_eq!(back.envelope, env);
        let s = &back.envelope.systems[0];
        assert_eq!((s.cpus(), s.memory_mib()), (2, 2048));
        assert_eq!(s.disk_ids(), vec!["vmdisk1"]);
        assert_eq!(s.firmware(), Some("efi"));
        assert_eq!(s.os(), "otherLinux64Guest");
        let nic = &s.nics()[0];
        assert_eq!(
            (nic.network, nic.adapter, nic.mac),
            ("VM Network", "E1000", Some("52:54:00:aa:bb:cc"))
        );
        assert_eq!(back.envelope.networks.len(), 1);
        assert_eq!(back.envelope.disks[0].capacity(), Some(1 << 30));
        assert_eq!(back.envelope.files[0].size_bytes(), Some(10));
    }
}
