//! Reading OVF descriptors into a summary: the virtual systems, their
//! hardware, disks, files and networks. Tolerant of vendor extensions
//! (vmw:, vbox:, …), which it skips; strict about well-formedness.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::error::{Error, Result};

/// Largest descriptor accepted, in bytes.
pub const MAX_OVF_BYTES: u64 = 16 << 20;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 256;

/// A file of the package (`References/File`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfFileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the file name.
    pub href: String,
    /// `ovf:size`, when given.
    pub size: Option<u64>,
}

/// A disk (`DiskSection/Disk`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfDiskInfo {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// `ovf:fileRef`, when the disk has a file.
    pub file_ref: Option<String>,
    /// Capacity in bytes (`ovf:capacity` × `ovf:capacityAllocationUnits`).
    pub capacity: u64,
    /// `ovf:format` URI.
    pub format: String,
}

/// A network adapter of a virtual system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfNicInfo {
    /// Network it connects to (`rasd:Connection`).
    pub network: String,
    /// Adapter type (`rasd:ResourceSubType`).
    pub adapter: String,
    /// MAC address (`rasd:Address`), when given.
    pub mac: Option<String>,
}

/// One virtual system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfSystemInfo {
    /// `ovf:id`.
    pub id: String,
    /// `Name`, or the id.
    pub name: String,
    /// `vmw:osType` or the OS section's description.
    pub os: String,
    /// Virtual CPUs (ResourceType 3).
    pub cpus: u64,
    /// Memory in MiB (ResourceType 4).
    pub memory_mib: u64,
    /// Disk ids referenced by disk items (ResourceType 17), in order.
    pub disks: Vec<String>,
    /// NICs (ResourceType 10).
    pub nics: Vec<OvfNicInfo>,
    /// Firmware from `vmw:Config firmware`, when given.
    pub firmware: Option<String>,
}

/// What a descriptor says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OvfSummary {
    /// Files of the package.
    pub files: Vec<OvfFileRef>,
    /// Disks.
    pub disks: Vec<OvfDiskInfo>,
    /// Network names.
    pub networks: Vec<String>,
    /// Virtual systems (more than one inside a VirtualSystemCollection).
    pub systems: Vec<OvfSystemInfo>,
}

fn bad(offset: u64, what: impl Into<String>) -> Error {
    Error::OvfInvalid {
        offset,
        what: what.into(),
    }
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    s.rsplit(':').next().unwrap_or(&s).to_string()
}

fn attr(e: &BytesStart<'_>, wanted: &str) -> Result<Option<String>> {
    for a in e.attributes() {
        let a = a.map_err(|err| bad(0, format!("bad attribute: {err}")))?;
        if local(a.key.as_ref()) == wanted {
            let v = a
                .unescape_value()
                .map_err(|err| bad(0, format!("bad attribute value: {err}")))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

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

/// A hardware item being read.
#[derive(Default)]
struct Item {
    fields: Vec<(String, String)>,
}

impl Item {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a descriptor's summary. Every number must parse; unknown elements
/// are skipped.
pub fn read_summary(xml: &str) -> Result<OvfSummary> {
    if xml.len() as u64 > MAX_OVF_BYTES {
        return Err(bad(
            0,
            format!("descriptor larger than {MAX_OVF_BYTES} bytes"),
        ));
    }
    let mut reader = Reader::from_str(xml);
    let mut out = OvfSummary::default();
    let mut path: Vec<String> = Vec::new();
    let mut item: Option<Item> = None;
    let mut text = String::new();
    let mut saw_envelope = false;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| bad(pos, format!("malformed XML: {e}")))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = local(e.name().as_ref());
                if path.is_empty() {
                    if name != "Envelope" {
                        return Err(bad(
                            pos,
                            format!("root element is <{name}>, not <Envelope>"),
                        ));
                    }
                    saw_envelope = true;
                }
                match name.as_str() {
                    "File" if path.last().is_some_and(|p| p == "References") => {
                        let size = attr(e, "size")?
                            .map(|s| {
                                s.trim().parse::<u64>().map_err(|_| {
                                    bad(pos, format!("File size {s:?} is not a number"))
                                })
                            })
                            .transpose()?;
                        out.files.push(OvfFileRef {
                            id: attr(e, "id")?.unwrap_or_default(),
                            href: attr(e, "href")?
                                .ok_or_else(|| bad(pos, "File without ovf:href"))?,
                            size,
                        });
                    }
                    "Disk" if path.last().is_some_and(|p| p == "DiskSection") => {
                        let cap = attr(e, "capacity")?
                            .ok_or_else(|| bad(pos, "Disk without ovf:capacity"))?;
                        let cap: u64 = cap.trim().parse().map_err(|_| bad(pos, format!("Disk capacity {cap:?} is not a number (property references are not supported)")))?;
                        let units = attr(e, "capacityAllocationUnits")?.unwrap_or_default();
                        let mult = allocation_units(&units).ok_or_else(|| {
                            bad(pos, format!("unknown capacityAllocationUnits {units:?}"))
                        })?;
                        out.disks.push(OvfDiskInfo {
                            disk_id: attr(e, "diskId")?.unwrap_or_default(),
                            file_ref: attr(e, "fileRef")?,
                            capacity: cap
                                .checked_mul(mult)
                                .ok_or_else(|| bad(pos, "disk capacity overflows"))?,
                            format: attr(e, "format")?.unwrap_or_default(),
                        });
                    }
                    "Network" if path.last().is_some_and(|p| p == "NetworkSection") => {
                        out.networks.push(attr(e, "name")?.unwrap_or_default());
                    }
                    "VirtualSystem" => {
                        let id = attr(e, "id")?.unwrap_or_default();
                        out.systems.push(OvfSystemInfo {
                            name: id.clone(),
                            id,
                            ..Default::default()
                        });
                    }
                    "OperatingSystemSection" => {
                        if let (Some(sys), Some(t)) = (out.systems.last_mut(), attr(e, "osType")?) {
                            sys.os = t;
                        }
                    }
                    "Item" | "StorageItem" | "EthernetPortItem" => item = Some(Item::default()),
                    "Config" if attr(e, "key")?.as_deref() == Some("firmware") => {
                        if let Some(sys) = out.systems.last_mut() {
                            sys.firmware = attr(e, "value")?;
                        }
                    }
                    _ => {}
                }
                if !empty {
                    if path.len() >= MAX_DEPTH {
                        return Err(bad(pos, format!("nesting deeper than {MAX_DEPTH}")));
                    }
                    path.push(name);
                    text.clear();
                }
            }
            Event::Text(t) => {
                let s = t
                    .xml_content()
                    .map_err(|e| bad(pos, format!("bad text: {e}")))?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                let c = match name.as_str() {
                    "lt" => '<',
                    "gt" => '>',
                    "amp" => '&',
                    "apos" => '\'',
                    "quot" => '"',
                    _ => match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => return Err(bad(pos, format!("unknown entity &{name};"))),
                    },
                };
                text.push(c);
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err(bad(pos, "unbalanced closing tag"));
                };
                let value = text.trim().to_string();
                if let Some(it) = item.as_mut() {
                    if path.last().is_some_and(|p| {
                        p == "Item" || p == "StorageItem" || p == "EthernetPortItem"
                    }) {
                        it.fields.push((name.clone(), value.clone()));
                    }
                }
                match name.as_str() {
                    "Name" if path.last().is_some_and(|p| p == "VirtualSystem") => {
                        if let Some(sys) = out.systems.last_mut() {
                            sys.name = value;
                        }
                    }
                    "Description" if path.last().is_some_and(|p| p == "OperatingSystemSection") => {
                        if let Some(sys) = out.systems.last_mut() {
                            if sys.os.is_empty() {
                                sys.os = value;
                            }
                        }
                    }
                    "Item" | "StorageItem" | "EthernetPortItem" => {
                        if let (Some(it), Some(sys)) = (item.take(), out.systems.last_mut()) {
                            apply_item(sys, &it, pos)?;
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_envelope {
        return Err(bad(0, "no <Envelope> element"));
    }
    if !path.is_empty() {
        return Err(bad(
            xml.len() as u64,
            format!("document ends inside <{}>", path.join("/")),
        ));
    }
    Ok(out)
}

fn apply_item(sys: &mut OvfSystemInfo, it: &Item, pos: u64) -> Result<()> {
    let number = |k: &str| -> Result<u64> {
        let v = it.get(k).unwrap_or("0");
        v.parse::<u64>()
            .map_err(|_| bad(pos, format!("{k} {v:?} is not a number")))
    };
    match it.get("ResourceType") {
        Some("3") => sys.cpus = number("VirtualQuantity")?,
        Some("4") => {
            let q = number("VirtualQuantity")?;
            let units = it.get("AllocationUnits").unwrap_or("byte * 2^20");
            let mult = allocation_units(units)
                .ok_or_else(|| bad(pos, format!("unknown memory AllocationUnits {units:?}")))?;
            sys.memory_mib = q.saturating_mul(mult) >> 20;
        }
        Some("10") => sys.nics.push(OvfNicInfo {
            network: it.get("Connection").unwrap_or_default().to_string(),
            adapter: it.get("ResourceSubType").unwrap_or_default().to_string(),
            mac: it
                .get("Address")
                .filter(|a| !a.is_empty())
                .map(str::to_string),
        }),
        Some("17") => {
            if let Some(h) = it.get("HostResource") {
                let id = h.rsplit('/').next().unwrap_or(h).to_string();
                sys.disks.push(id);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovf::{
        write_envelope, OvfController, OvfControllerKind, OvfDisk, OvfNic, OvfOs, OvfSystem,
    };

    #[test]
    fn reads_what_the_writer_writes() {
        let sys = OvfSystem {
            name: "web & db".into(),
            annotation: None,
            os: OvfOs {
                cim_id: 94,
                vmw_os_type: "ubuntu64Guest".into(),
                description: "Ubuntu".into(),
            },
            cpus: 4,
            memory_mib: 8192,
            efi: true,
            system_type: "vmx-14".into(),
            controllers: vec![OvfController {
                kind: OvfControllerKind::Scsi("lsilogic".into()),
                bus: 0,
            }],
            disks: vec![OvfDisk {
                file_href: "d1.vmdk".into(),
                file_size: 123,
                capacity: 10 << 30,
                populated_size: None,
                format_uri: "x".into(),
                controller: 0,
                address_on_parent: 0,
            }],
            nics: vec![OvfNic {
                network: "VM Network".into(),
                mac: Some("00:50:56:aa:bb:cc".into()),
                adapter: "VmxNet3".into(),
            }],
        };
        let s = read_summary(&write_envelope(&sys)).unwrap();
        assert_eq!(
            s.files,
            vec![OvfFileRef {
                id: "file1".into(),
                href: "d1.vmdk".into(),
                size: Some(123)
            }]
        );
        assert_eq!(s.disks[0].capacity, 10 << 30);
        assert_eq!(s.networks, vec!["VM Network"]);
        let v = &s.systems[0];
        assert_eq!(
            (v.name.as_str(), v.cpus, v.memory_mib),
            ("web & db", 4, 8192)
        );
        assert_eq!(v.os, "ubuntu64Guest");
        assert_eq!(v.disks, vec!["vmdisk1"]);
        assert_eq!(v.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:cc"));
        assert_eq!(v.firmware.as_deref(), Some("efi"));
    }

    #[test]
    fn units_and_errors() {
        assert_eq!(allocation_units("byte * 2^30"), Some(1 << 30));
        assert_eq!(allocation_units("byte*2^20"), Some(1 << 20));
        assert_eq!(allocation_units("byte * 2^99"), None);
        assert!(read_summary("<Envelope><References>").is_err());
        assert!(read_summary("<html/>").is_err());
        assert!(read_summary(
            "<Envelope><DiskSection><Disk ovf:capacity='${size}'/></DiskSection></Envelope>"
        )
        .is_err());
        assert!(read_summary("").is_err());
    }
}
