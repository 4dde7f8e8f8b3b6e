//! Reading an [`Envelope`]: what a package's files, disks and virtual
//! systems amount to (sizes in bytes, CPUs, memory, disks, NICs, firmware),
//! from any OVF 1.x/2.x descriptor [`Envelope::parse`] reads.
//! [`Envelope::check`] makes sure every number these views read parses, so
//! that they can be read without errors afterwards.

use super::model::{Envelope, FileRef, HwItem, VirtualDiskDesc, VirtualSystem};
use crate::error::{Error, Result};

/// Multiplier of an OVF allocation-units string: `byte`, `byte * 2^20`,
/// `KiloBytes`, `MegaBytes`, `GigaBytes`.
pub fn allocation_units(units: &str) -> Option<u64> {
    let u = units.trim();
    match u {
        "" | "byte" | "bytes" => return Some(1),
        "KiloBytes" => return Some(1 << 10),
        "MegaBytes" => return Some(1 << 20),
        "GigaBytes" => return Some(1 << 30),
        _ => {}
    }
    let rest = u.strip_prefix("byte")?.trim().strip_prefix('*')?.trim();
    let exp = rest.strip_prefix("2^")?.trim().parse::<u32>().ok()?;
    1u64.checked_shl(exp).filter(|_| exp < 64)
}

fn bad(what: String) -> Error {
    Error::OvfInvalid { offset: 0, what }
}

/// The value of the attribute whose local name is `name`.
fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k.rsplit(':').next() == Some(name))
        .map(|(_, v)| v.as_str())
}

impl FileRef {
    /// `ovf:size` in bytes, when given as a number.
    pub fn size_bytes(&self) -> Option<u64> {
        self.size.as_deref()?.trim().parse().ok()
    }
}

impl VirtualDiskDesc {
    /// `ovf:diskId`.
    pub fn disk_id(&self) -> &str {
        attr(&self.attrs, "diskId").unwrap_or_default()
    }

    /// `ovf:fileRef`, when the disk has a file.
    pub fn file_ref(&self) -> Option<&str> {
        attr(&self.attrs, "fileRef")
    }

    /// `ovf:format` URI.
    pub fn format(&self) -> &str {
        attr(&self.attrs, "format").unwrap_or_default()
    }

    /// Capacity in bytes (`ovf:capacity` × `ovf:capacityAllocationUnits`),
    /// None if it is not a number (e.g. a `${property}`) or overflows.
    pub fn capacity(&self) -> Option<u64> {
        let cap: u64 = attr(&self.attrs, "capacity")?.trim().parse().ok()?;
        let units = attr(&self.attrs, "capacityAllocationUnits").unwrap_or_default();
        cap.checked_mul(allocation_units(units)?)
    }
}

impl HwItem {
    /// The text of the field whose local name is `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name.rsplit(':').next() == Some(name))
            .map(|f| f.value.as_str())
    }

    fn number(&self, name: &str) -> Option<u64> {
        self.get(name).unwrap_or("0").trim().parse().ok()
    }
}

/// A network adapter of a virtual system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nic<'a> {
    /// Network it connects to (`Connection`).
    pub network: &'a str,
    /// Adapter type (`ResourceSubType`).
    pub adapter: &'a str,
    /// MAC address (`Address`), when given.
    pub mac: Option<&'a str>,
}

impl VirtualSystem {
    /// Items of its (first) hardware section of CIM resource type `t`.
    pub fn items(&self, t: &str) -> impl Iterator<Item = &HwItem> {
        let t = t.to_string();
        self.hardware
            .iter()
            .take(1)
            .flat_map(|h| h.items.iter())
            .filter(move |i| i.get("ResourceType") == Some(t.as_str()))
    }

    /// `Name`, or the id.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }

    /// The guest OS as a VMware guest id: `vmw:osType`; else the guest id
    /// of its CIM `OsType` number and `ovf:version` ([`os`](super::os));
    /// else the OS section's description.
    pub fn os(&self) -> &str {
        let cim = || {
            let id = attr(&self.os_attrs, "id")?.trim().parse::<u16>().ok()?;
            super::os::by_cim(id, attr(&self.os_attrs, "version")).map(|e| e.guest_id)
        };
        attr(&self.os_attrs, "osType")
            .or_else(cim)
            .or(self.os_description.as_deref())
            .unwrap_or_default()
    }

    /// Virtual CPUs (ResourceType 3).
    pub fn cpus(&self) -> u64 {
        self.items("3")
            .last()
            .and_then(|i| i.number("VirtualQuantity"))
            .unwrap_or(0)
    }

    /// Memory in MiB (ResourceType 4).
    pub fn memory_mib(&self) -> u64 {
        self.items("4")
            .last()
            .and_then(|i| {
                let q = i.number("VirtualQuantity")?;
                let units = i.get("AllocationUnits").unwrap_or("byte * 2^20");
                Some(q.saturating_mul(allocation_units(units)?) >> 20)
            })
            .unwrap_or(0)
    }

    /// Disk ids its disk items (ResourceType 17) refer to, in order.
    pub fn disk_ids(&self) -> Vec<&str> {
        self.items("17")
            .filter_map(|i| i.get("HostResource"))
            .map(|h| h.rsplit('/').next().unwrap_or(h))
            .collect()
    }

    /// Its network adapters (ResourceType 10).
    pub fn nics(&self) -> Vec<Nic<'_>> {
        self.items("10")
            .map(|i| Nic {
                network: i.get("Connection").unwrap_or_default(),
                adapter: i.get("ResourceSubType").unwrap_or_default(),
                mac: i.get("Address").filter(|a| !a.is_empty()),
            })
            .collect()
    }

    /// The virtual hardware family (`vssd:VirtualSystemType`, e.g.
    /// `vmx-13`) of its first hardware section, when given.
    pub fn system_type(&self) -> Option<&str> {
        self.hardware
            .first()?
            .system
            .iter()
            .find(|f| f.name.rsplit(':').next() == Some("VirtualSystemType"))
            .map(|f| f.value.as_str())
    }

    /// Firmware from `vmw:Config firmware`, when given.
    pub fn firmware(&self) -> Option<&str> {
        let h = self.hardware.first()?;
        config_value(&h.configs, "firmware").or_else(|| {
            h.items
                .iter()
                .find_map(|i| config_value(&i.configs, "firmware"))
        })
    }
}

/// The value of the `vmw:Config` entry `key` among `configs` (a hardware
/// section's or an item's).
pub fn config_value<'a>(configs: &'a [Vec<(String, String)>], key: &str) -> Option<&'a str> {
    configs
        .iter()
        .find(|c| attr(c, "key") == Some(key))
        .and_then(|c| attr(c, "value"))
}

impl Envelope {
    /// Checks that every number the views read is one: file sizes, disk
    /// capacities (property references such as `${size}` are not
    /// supported) and their units, CPU and memory quantities and units.
    pub fn check(&self) -> Result<()> {
        for f in &self.files {
            if f.size.is_some() && f.size_bytes().is_none() {
                return Err(bad(format!(
                    "File {} size {:?} is not a number",
                    f.href,
                    f.size.as_deref().unwrap_or_default()
                )));
            }
        }
        for d in &self.disks {
            if d.capacity().is_none() {
                return Err(bad(format!(
                    "Disk {} capacity {:?} {:?} is not a number of bytes (property references are not supported)",
                    d.disk_id(),
                    attr(&d.attrs, "capacity").unwrap_or_default(),
                    attr(&d.attrs, "capacityAllocationUnits").unwrap_or_default()
                )));
            }
        }
        for s in &self.systems {
            for i in s.items("3").chain(s.items("4")) {
                if i.number("VirtualQuantity").is_none() {
                    return Err(bad(format!(
                        "{}: VirtualQuantity {:?} is not a number",
                        s.display_name(),
                        i.get("VirtualQuantity").unwrap_or_default()
                    )));
                }
            }
            for i in s.items("4") {
                let units = i.get("AllocationUnits").unwrap_or("byte * 2^20");
                if allocation_units(units).is_none() {
                    return Err(bad(format!(
                        "{}: unknown memory AllocationUnits {units:?}",
                        s.display_name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Parses a descriptor and [`check`](Self::check)s it: elements it does
    /// not keep are left out (see [`Parsed::dropped`](super::model::Parsed::dropped)).
    pub fn read(xml: &str) -> Result<Envelope> {
        let env = Envelope::parse(xml)?.envelope;
        env.check()?;
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(allocation_units("byte * 2^30"), Some(1 << 30));
        assert_eq!(allocation_units("byte*2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte * 2^99"), None);
        assert!(Envelope::read("<Envelope><References>").is_err());
        assert!(Envelope::read("<html/>").is_err());
        assert!(Envelope::read(
            "<Envelope><DiskSection><Disk ovf:capacity='${size}'/></DiskSection></Envelope>"
        )
        .is_err());
        assert!(Envelope::read("").is_err());
        let quantity = "<Envelope><VirtualSystem ovf:id='v'><VirtualHardwareSection><Item>\
             <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>two</rasd:VirtualQuantity>\
             </Item></VirtualHardwareSection></VirtualSystem></Envelope>";
        assert!(Envelope::read(quantity).is_err());
    }

    #[test]
    fn a_cim_os_id_alone_names_the_guest() {
        let os = |section: &str| {
            let xml =
                format!("<Envelope><VirtualSystem ovf:id='v'>{section}</VirtualSystem></Envelope>");
            Envelope::read(&xml).unwrap().systems[0].os().to_string()
        };
        let cim = |id: &str, version: &str| {
            os(&format!(
                "<OperatingSystemSection ovf:id='{id}' ovf:version='{version}'/>"
            ))
        };
        assert_eq!(cim("96", "12"), "debian12_64Guest");
        assert_eq!(cim("94", ""), "ubuntu64Guest");
        assert_eq!(
            os("<OperatingSystemSection ovf:id='101' vmw:osType='rockylinux_64Guest'/>"),
            "rockylinux_64Guest"
        );
        assert_eq!(
            os("<OperatingSystemSection ovf:id='9999'><Description>Plan 9</Description></OperatingSystemSection>"),
            "Plan 9"
        );
    }
}
