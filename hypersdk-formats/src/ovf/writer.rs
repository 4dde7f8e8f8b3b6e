//! The OVF 1.x envelope writer.

use std::fmt::Write as _;

use quick_xml::escape::escape;

/// The guest operating system as OVF names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfOs {
    /// CIM_OperatingSystem OsType number (`ovf:id`), e.g. 101 for 64-bit Linux.
    pub cim_id: u16,
    /// VMware guest id (`vmw:osType`), e.g. `otherLinux64Guest`.
    pub vmw_os_type: String,
    /// Free-text description.
    pub description: String,
}

/// A storage controller kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OvfControllerKind {
    /// IDE (ResourceType 5).
    Ide,
    /// SCSI with a subtype such as `lsilogic`, `lsilogicsas`, `VirtualSCSI`.
    Scsi(String),
    /// SATA AHCI (ResourceType 20).
    Sata,
}

/// A storage controller; disks refer to it by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfController {
    /// What kind of controller.
    pub kind: OvfControllerKind,
    /// Bus number among controllers of this kind.
    pub bus: u32,
}

/// A disk and the file that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfDisk {
    /// File name inside the package.
    pub file_href: String,
    /// Size of that file in bytes.
    pub file_size: u64,
    /// Guest-visible capacity in bytes.
    pub capacity: u64,
    /// Guest bytes actually stored, when known.
    pub populated_size: Option<u64>,
    /// Disk format URI, e.g. [`crate::vmdk::STREAM_OPTIMIZED_FORMAT_URI`].
    pub format_uri: String,
    /// Index into [`OvfSystem::controllers`].
    pub controller: usize,
    /// Unit number on that controller.
    pub address_on_parent: u32,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfNic {
    /// Name of the network it connects to.
    pub network: String,
    /// MAC address, if fixed.
    pub mac: Option<String>,
    /// Adapter type (`ResourceSubType`): `E1000`, `E1000e`, `VmxNet3`, …
    pub adapter: String,
}

/// Everything the envelope describes: one virtual system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvfSystem {
    /// `ovf:id` of the VirtualSystem and its `Name`.
    pub name: String,
    /// Optional annotation.
    pub annotation: Option<String>,
    /// The guest OS.
    pub os: OvfOs,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// UEFI firmware instead of BIOS.
    pub efi: bool,
    /// `vssd:VirtualSystemType`, e.g. `vmx-14`.
    pub system_type: String,
    /// Storage controllers.
    pub controllers: Vec<OvfController>,
    /// Disks, in the order their files appear in the package.
    pub disks: Vec<OvfDisk>,
    /// Network adapters.
    pub nics: Vec<OvfNic>,
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s)
}

/// Renders the OVF 1.0 envelope of `sys`.
pub fn write_envelope(sys: &OvfSystem) -> String {
    let mut x = String::with_capacity(8192);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(concat!(
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\"",
        " xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\"",
        " xmlns:vmw=\"http://www.vmware.com/schema/ovf\"",
        " xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\"",
        " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
    ));
    x.push_str("  <References>\n");
    for (i, d) in sys.disks.iter().enumerate() {
        let _ = writeln!(
            x,
            "    <File ovf:href=\"{}\" ovf:id=\"file{}\" ovf:size=\"{}\"/>",
            esc(&d.file_href),
            i + 1,
            d.file_size
        );
    }
    x.push_str("  </References>\n");
    x.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
    for (i, d) in sys.disks.iter().enumerate() {
        let populated = d
            .populated_size
            .map(|p| format!(" ovf:populatedSize=\"{p}\""))
            .unwrap_or_default();
        let _ = writeln!(
            x,
            "    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk{n}\" ovf:fileRef=\"file{n}\" ovf:format=\"{}\"{populated}/>",
            d.capacity,
            esc(&d.format_uri),
            n = i + 1,
        );
    }
    x.push_str("  </DiskSection>\n");
    let mut networks: Vec<&str> = Vec::new();
    for n in &sys.nics {
        if !networks.contains(&n.network.as_str()) {
            networks.push(&n.network);
        }
    }
    if !networks.is_empty() {
        x.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
        for n in &networks {
            let _ = writeln!(
                x,
                "    <Network ovf:name=\"{0}\">\n      <Description>The {0} network</Description>\n    </Network>",
                esc(n)
            );
        }
        x.push_str("  </NetworkSection>\n");
    }
    let _ = writeln!(x, "  <VirtualSystem ovf:id=\"{}\">", esc(&sys.name));
    x.push_str("    <Info>A virtual machine</Info>\n");
    let _ = writeln!(x, "    <Name>{}</Name>", esc(&sys.name));
    if let Some(a) = &sys.annotation {
        let _ = writeln!(
            x,
            "    <AnnotationSection>\n      <Info>A human-readable annotation</Info>\n      <Annotation>{}</Annotation>\n    </AnnotationSection>",
            esc(a)
        );
    }
    let _ = writeln!(
        x,
        "    <OperatingSystemSection ovf:id=\"{}\" vmw:osType=\"{}\">\n      <Info>The kind of installed guest operating system</Info>\n      <Description>{}</Description>\n    </OperatingSystemSection>",
        sys.os.cim_id,
        esc(&sys.os.vmw_os_type),
        esc(&sys.os.description)
    );
    x.push_str("    <VirtualHardwareSection>\n      <Info>Virtual hardware requirements</Info>\n");
    let _ = writeln!(
        x,
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{}</vssd:VirtualSystemIdentifier>\n        <vssd:VirtualSystemType>{}</vssd:VirtualSystemType>\n      </System>",
        esc(&sys.name),
        esc(&sys.system_type)
    );
    let mut instance = 0u32;
    let mut next_id = || {
        instance += 1;
        instance
    };
    item(
        &mut x,
        &[
            ("AllocationUnits", "hertz * 10^6".into()),
            ("Description", "Number of Virtual CPUs".into()),
            ("ElementName", format!("{} virtual CPU(s)", sys.cpus)),
            ("InstanceID", next_id().to_string()),
            ("ResourceType", "3".into()),
            ("VirtualQuantity", sys.cpus.to_string()),
        ],
    );
    item(
        &mut x,
        &[
            ("AllocationUnits", "byte * 2^20".into()),
            ("Description", "Memory Size".into()),
            ("ElementName", format!("{}MB of memory", sys.memory_mib)),
            ("InstanceID", next_id().to_string()),
            ("ResourceType", "4".into()),
            ("VirtualQuantity", sys.memory_mib.to_string()),
        ],
    );
    let mut controller_ids = Vec::new();
    for c in &sys.controllers {
        let id = next_id();
        controller_ids.push(id);
        let (desc, name, subtype, rtype) = match &c.kind {
            OvfControllerKind::Ide => ("IDE Controller", format!("IDE {}", c.bus), None, "5"),
            OvfControllerKind::Scsi(sub) => (
                "SCSI Controller",
                format!("SCSI controller {}", c.bus),
                Some(sub.clone()),
                "6",
            ),
            OvfControllerKind::Sata => (
                "SATA Controller",
                format!("SATA controller {}", c.bus),
                Some("vmware.sata.ahci".to_string()),
                "20",
            ),
        };
        let mut fields = vec![
            ("Address", c.bus.to_string()),
            ("Description", desc.to_string()),
            ("ElementName", name),
            ("InstanceID", id.to_string()),
        ];
        if let Some(s) = subtype {
            fields.push(("ResourceSubType", s));
        }
        fields.push(("ResourceType", rtype.into()));
        item(&mut x, &fields);
    }
    for (i, d) in sys.disks.iter().enumerate() {
        let parent = controller_ids
            .get(d.controller)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "0".into());
        item(
            &mut x,
            &[
                ("AddressOnParent", d.address_on_parent.to_string()),
                ("ElementName", format!("Hard disk {}", i + 1)),
                ("HostResource", format!("ovf:/disk/vmdisk{}", i + 1)),
                ("InstanceID", next_id().to_string()),
                ("Parent", parent),
                ("ResourceType", "17".into()),
            ],
        );
    }
    for (i, n) in sys.nics.iter().enumerate() {
        let mut fields = Vec::new();
        if let Some(mac) = &n.mac {
            fields.push(("Address", mac.clone()));
        }
        fields.extend([
            ("AddressOnParent", (7 + i).to_string()),
            ("AutomaticAllocation", "true".into()),
            ("Connection", n.network.clone()),
            (
                "Description",
                format!("{} ethernet adapter on \"{}\"", n.adapter, n.network),
            ),
            ("ElementName", format!("Network adapter {}", i + 1)),
            ("InstanceID", next_id().to_string()),
            ("ResourceSubType", n.adapter.clone()),
            ("ResourceType", "10".into()),
        ]);
        item(&mut x, &fields);
    }
    let _ = writeln!(
        x,
        "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"{}\"/>",
        if sys.efi { "efi" } else { "bios" }
    );
    x.push_str("    </VirtualHardwareSection>\n  </VirtualSystem>\n</Envelope>\n");
    x
}

fn item(x: &mut String, fields: &[(&str, String)]) {
    x.push_str("      <Item>\n");
    for (k, v) in fields {
        let _ = writeln!(x, "        <rasd:{k}>{}</rasd:{k}>", esc(v));
    }
    x.push_str("      </Item>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_well_formed_xml() {
        let sys = OvfSystem {
            name: "web<1>&".into(),
            annotation: Some("a \"quote\"".into()),
            os: OvfOs {
                cim_id: 101,
                vmw_os_type: "otherLinux64Guest".into(),
                description: "Linux".into(),
            },
            cpus: 2,
            memory_mib: 2048,
            efi: true,
            system_type: "vmx-14".into(),
            controllers: vec![OvfController {
                kind: OvfControllerKind::Scsi("lsilogic".into()),
                bus: 0,
            }],
            disks: vec![OvfDisk {
                file_href: "d1.vmdk".into(),
                file_size: 10,
                capacity: 1 << 30,
                populated_size: None,
                format_uri: crate::vmdk::STREAM_OPTIMIZED_FORMAT_URI.into(),
                controller: 0,
                address_on_parent: 0,
            }],
            nics: vec![OvfNic {
                network: "VM Network".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                adapter: "E1000".into(),
            }],
        };
        let xml = write_envelope(&sys);
        assert!(xml.contains("web&lt;1&gt;&amp;"));
        assert!(xml.contains("<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>"));
        assert!(xml.contains("vmw:value=\"efi\""));
        let mut r = quick_xml::Reader::from_str(&xml);
        let mut depth = 0i32;
        loop {
            match r.read_event().unwrap() {
                quick_xml::events::Event::Start(_) => depth += 1,
                quick_xml::events::Event::End(_) => depth -= 1,
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0);
    }
}
