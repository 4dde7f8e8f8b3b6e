//! A typed OVF envelope that reads real-world descriptors and writes them
//! back as OVF 1.x or 2.0.
//!
//! Understood, and kept through a read/write round trip: References; the
//! DiskSection; the NetworkSection; one VirtualSystem or a
//! VirtualSystemCollection of them, each with Name, AnnotationSection,
//! ProductSection (product, vendor, version, vApp properties),
//! OperatingSystemSection (id, `vmw:osType`, description) and
//! VirtualHardwareSection (System, every Item / StorageItem /
//! EthernetPortItem with all its `rasd:`/`sasd:`/`epasd:` fields, `vmw:Config`
//! and `vmw:ExtraConfig`). Everything else — vendor sections such as
//! `vbox:Machine`, EULA, StartupSection, signatures — is reported in
//! [`Parsed::dropped`] by path, never silently lost.

use std::fmt::Write as _;

use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::error::{Error, Result};

/// Largest descriptor accepted, in bytes.
pub const MAX_OVF_BYTES: u64 = 16 << 20;

/// OVF versions the writer emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvfVersion {
    /// OVF 1.0 (namespace envelope/1), what vSphere and VirtualBox write.
    V1_0,
    /// OVF 1.1 (same namespace, `ovf:version="1.1"`).
    V1_1,
    /// OVF 2.0 (namespace envelope/2).
    V2_0,
}

/// `References/File`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRef {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`.
    pub href: String,
    /// `ovf:size`.
    pub size: Option<String>,
    /// `ovf:compression`, `ovf:chunkSize` and other attributes, as written.
    pub other: Vec<(String, String)>,
}

/// `DiskSection/Disk`: attributes kept as written (capacity may be a `${property}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualDiskDesc {
    /// Attributes in document order, e.g. `ovf:diskId`, `ovf:capacity`.
    pub attrs: Vec<(String, String)>,
}

/// `NetworkSection/Network`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    /// `ovf:name`.
    pub name: String,
    /// `Description`.
    pub description: Option<String>,
}

/// A vApp property of a ProductSection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Property {
    /// Attributes (`ovf:key`, `ovf:type`, `ovf:value`, `ovf:userConfigurable`, …).
    pub attrs: Vec<(String, String)>,
    /// `Label`.
    pub label: Option<String>,
    /// `Description`.
    pub description: Option<String>,
}

/// `ProductSection`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductSection {
    /// Section attributes (`ovf:class`, `ovf:instance`).
    pub attrs: Vec<(String, String)>,
    /// Simple child elements in order: Product, Vendor, Version, FullVersion, ProductUrl, VendorUrl, Category.
    pub fields: Vec<(String, String)>,
    /// vApp properties.
    pub properties: Vec<Property>,
}

/// One hardware item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HwItem {
    /// Element name: `Item`, `StorageItem` or `EthernetPortItem`.
    pub element: String,
    /// Attributes of the item (`ovf:required`, `ovf:configuration`, …).
    pub attrs: Vec<(String, String)>,
    /// Child fields in order, e.g. `rasd:ResourceType` = `10`.
    pub fields: Vec<HwField>,
    /// `vmw:Config` children as attribute lists.
    pub configs: Vec<Vec<(String, String)>>,
}

/// One field of a hardware item or of `System`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HwField {
    /// Qualified element name, e.g. `rasd:VirtualQuantity`, `vmw:CoresPerSocket`.
    pub name: String,
    /// Its attributes (e.g. `ovf:required`).
    pub attrs: Vec<(String, String)>,
    /// Its text.
    pub value: String,
}

/// `VirtualHardwareSection`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardwareSection {
    /// Section attributes.
    pub attrs: Vec<(String, String)>,
    /// `System` fields (`vssd:…`), in order.
    pub system: Vec<HwField>,
    /// Items in order.
    pub items: Vec<HwItem>,
    /// `vmw:Config` elements of the section.
    pub configs: Vec<Vec<(String, String)>>,
    /// `vmw:ExtraConfig` elements of the section.
    pub extra_config: Vec<Vec<(String, String)>>,
}

/// One virtual system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtualSystem {
    /// `ovf:id`.
    pub id: String,
    /// `Info`.
    pub info: String,
    /// `Name`.
    pub name: Option<String>,
    /// `AnnotationSection/Annotation`.
    pub annotation: Option<String>,
    /// ProductSections.
    pub products: Vec<ProductSection>,
    /// OperatingSystemSection attributes (`ovf:id`, `vmw:osType`, …).
    pub os_attrs: Vec<(String, String)>,
    /// OperatingSystemSection `Description`.
    pub os_description: Option<String>,
    /// VirtualHardwareSections (several when per-configuration).
    pub hardware: Vec<HardwareSection>,
    /// `vmw:BootOrderSection` attributes (`vmw:instanceId`, `vmw:type`),
    /// one section per boot device, in boot order.
    pub boot_order: Vec<Vec<(String, String)>>,
}

/// A whole descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Package files.
    pub files: Vec<FileRef>,
    /// Disks.
    pub disks: Vec<VirtualDiskDesc>,
    /// Networks.
    pub networks: Vec<Network>,
    /// `VirtualSystemCollection` id and info, when the systems are in one.
    pub collection: Option<(String, String)>,
    /// Virtual systems.
    pub systems: Vec<VirtualSystem>,
    /// Namespace prefixes declared on the source's root beyond the standard
    /// ones the writer declares (e.g. `vbox`), so kept attributes stay valid.
    pub extra_namespaces: Vec<(String, String)>,
}

/// Prefixes the writer always declares.
const STANDARD_PREFIXES: [&str; 8] = ["ovf", "cim", "rasd", "vssd", "sasd", "epasd", "vmw", "xsi"];

/// The result of [`Envelope::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// What was understood.
    pub envelope: Envelope,
    /// Elements not understood and so not kept, as `/`-joined paths of local names.
    pub dropped: Vec<String>,
}

fn bad(offset: u64, what: impl Into<String>) -> Error {
    Error::OvfInvalid {
        offset,
        what: what.into(),
    }
}

fn local(q: &str) -> &str {
    q.rsplit(':').next().unwrap_or(q)
}

/// Name/value pairs in document order.
type Attrs = Vec<(String, String)>;

/// Attributes and `xmlns:` declarations of an element.
fn attrs_of(e: &BytesStart<'_>, pos: u64) -> Result<(Attrs, Attrs)> {
    let mut v = Vec::new();
    let mut ns = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| bad(pos, format!("bad attribute: {err}")))?;
        let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let val = a
            .unescape_value()
            .map_err(|err| bad(pos, format!("bad attribute value: {err}")))?
            .into_owned();
        if let Some(prefix) = k.strip_prefix("xmlns:") {
            ns.push((prefix.to_string(), val));
        } else if k != "xmlns" {
            v.push((k, val));
        }
    }
    Ok((v, ns))
}

fn get<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| local(k) == name)
        .map(|(_, v)| v.as_str())
}

/// A minimal element tree used while parsing.
#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    /// `xmlns:prefix` declarations on this element.
    ns: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn local(&self) -> &str {
        local(&self.name)
    }
    fn child(&self, l: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.local() == l)
    }
    fn text_of(&self, l: &str) -> Option<String> {
        self.child(l).map(|c| c.text.trim().to_string())
    }
}

fn tree(xml: &str) -> Result<Node> {
    if xml.len() as u64 > MAX_OVF_BYTES {
        return Err(bad(
            0,
            format!("descriptor larger than {MAX_OVF_BYTES} bytes"),
        ));
    }
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Node> = Vec::new();
    loop {
        let pos = reader.buffer_position();
        match reader
            .read_event()
            .map_err(|e| bad(pos, format!("malformed XML: {e}")))?
        {
            Event::Start(e) => {
                if stack.len() >= 256 {
                    return Err(bad(pos, "nesting deeper than 256"));
                }
                let (attrs, ns) = attrs_of(&e, pos)?;
                stack.push(Node {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    attrs,
                    ns,
                    ..Default::default()
                });
            }
            Event::Empty(e) => {
                let (attrs, ns) = attrs_of(&e, pos)?;
                let n = Node {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    attrs,
                    ns,
                    ..Default::default()
                };
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => return finish_root(n, &mut reader),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(
                        &t.xml_content()
                            .map_err(|e| bad(pos, format!("bad text: {e}")))?,
                    );
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
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
                if let Some(top) = stack.last_mut() {
                    top.text.push(c);
                }
            }
            Event::End(_) => {
                let n = stack
                    .pop()
                    .ok_or_else(|| bad(pos, "unbalanced closing tag"))?;
                match stack.last_mut() {
                    Some(p) => p.children.push(n),
                    None => return finish_root(n, &mut reader),
                }
            }
            Event::Eof => {
                return Err(bad(
                    xml.len() as u64,
                    "document ends before its root element closes",
                ))
            }
            _ => {}
        }
    }
}

fn finish_root(root: Node, reader: &mut Reader<&[u8]>) -> Result<Node> {
    loop {
        let pos = reader.buffer_position();
        match reader
            .read_event()
            .map_err(|e| bad(pos, format!("malformed XML: {e}")))?
        {
            Event::Eof => return Ok(root),
            Event::Start(_) | Event::Empty(_) => return Err(bad(pos, "a second root element")),
            _ => {}
        }
    }
}

impl Envelope {
    /// Reads a descriptor: what is understood goes into the model, the rest is
    /// listed in [`Parsed::dropped`].
    pub fn parse(xml: &str) -> Result<Parsed> {
        let root = tree(xml)?;
        if root.local() != "Envelope" {
            return Err(bad(
                0,
                format!("root element is <{}>, not <Envelope>", root.name),
            ));
        }
        let mut env = Envelope {
            extra_namespaces: root
                .ns
                .iter()
                .filter(|(p, _)| !STANDARD_PREFIXES.contains(&p.as_str()))
                .cloned()
                .collect(),
            ..Default::default()
        };
        let mut dropped = Vec::new();
        for c in &root.children {
            match c.local() {
                "References" => {
                    for f in &c.children {
                        if f.local() != "File" {
                            dropped.push(format!("Envelope/References/{}", f.local()));
                            continue;
                        }
                        env.files.push(FileRef {
                            id: get(&f.attrs, "id").unwrap_or_default().to_string(),
                            href: get(&f.attrs, "href")
                                .ok_or_else(|| bad(0, "File without ovf:href"))?
                                .to_string(),
                            size: get(&f.attrs, "size").map(str::to_string),
                            other: f
                                .attrs
                                .iter()
                                .filter(|(k, _)| !matches!(local(k), "id" | "href" | "size"))
                                .cloned()
                                .collect(),
                        });
                    }
                }
                "DiskSection" => {
                    for d in &c.children {
                        match d.local() {
                            "Info" => {}
                            "Disk" => env.disks.push(VirtualDiskDesc {
                                attrs: d.attrs.clone(),
                            }),
                            other => dropped.push(format!("Envelope/DiskSection/{other}")),
                        }
                    }
                }
                "NetworkSection" => {
                    for n in &c.children {
                        match n.local() {
                            "Info" => {}
                            "Network" => {
                                report_others(
                                    n,
                                    &["Description"],
                                    "Envelope/NetworkSection/Network",
                                    &mut dropped,
                                );
                                env.networks.push(Network {
                                    name: get(&n.attrs, "name").unwrap_or_default().to_string(),
                                    description: n.text_of("Description"),
                                })
                            }
                            other => dropped.push(format!("Envelope/NetworkSection/{other}")),
                        }
                    }
                }
                "VirtualSystem" => {
                    env.systems
                        .push(system(c, "Envelope/VirtualSystem", &mut dropped)?)
                }
                "VirtualSystemCollection" => {
                    env.collection = Some((
                        get(&c.attrs, "id").unwrap_or_default().to_string(),
                        c.text_of("Info").unwrap_or_default(),
                    ));
                    for s in &c.children {
                        match s.local() {
                            "Info" => {}
                            "VirtualSystem" => env.systems.push(system(
                                s,
                                "Envelope/VirtualSystemCollection/VirtualSystem",
                                &mut dropped,
                            )?),
                            other => {
                                dropped.push(format!("Envelope/VirtualSystemCollection/{other}"))
                            }
                        }
                    }
                }
                other => dropped.push(format!("Envelope/{other}")),
            }
        }
        Ok(Parsed {
            envelope: env,
            dropped,
        })
    }

    /// Writes the envelope as OVF `version`.
    pub fn to_xml(&self, version: OvfVersion) -> String {
        let ovf_ns = match version {
            OvfVersion::V2_0 => "http://schemas.dmtf.org/ovf/envelope/2",
            _ => "http://schemas.dmtf.org/ovf/envelope/1",
        };
        let mut x = String::with_capacity(8192);
        x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = write!(
            x,
            "<Envelope xmlns=\"{ovf_ns}\" xmlns:ovf=\"{ovf_ns}\" \
             xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\" \
             xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\" \
             xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\" \
             xmlns:sasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData\" \
             xmlns:epasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData\" \
             xmlns:vmw=\"http://www.vmware.com/schema/ovf\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\""
        );
        for (prefix, uri) in &self.extra_namespaces {
            let _ = write!(x, " xmlns:{prefix}=\"{}\"", escape(uri));
        }
        if version == OvfVersion::V1_1 {
            x.push_str(" ovf:version=\"1.1\"");
        } else if version == OvfVersion::V2_0 {
            x.push_str(" ovf:version=\"2.0\"");
        }
        x.push_str(">\n  <References>\n");
        for f in &self.files {
            let mut attrs = vec![
                ("ovf:href".to_string(), f.href.clone()),
                ("ovf:id".to_string(), f.id.clone()),
            ];
            if let Some(s) = &f.size {
                attrs.push(("ovf:size".into(), s.clone()));
            }
            attrs.extend(f.other.iter().cloned());
            empty(&mut x, 4, "File", &attrs);
        }
        x.push_str("  </References>\n");
        if !self.disks.is_empty() {
            x.push_str("  <DiskSection>\n    <Info>Virtual disk information</Info>\n");
            for d in &self.disks {
                empty(&mut x, 4, "Disk", &d.attrs);
            }
            x.push_str("  </DiskSection>\n");
        }
        if !self.networks.is_empty() {
            x.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n");
            for n in &self.networks {
                let _ = write!(x, "    <Network ovf:name=\"{}\">", escape(&n.name));
                if let Some(d) = &n.description {
                    let _ = write!(x, "\n      <Description>{}</Description>\n    ", escape(d));
                }
                x.push_str("</Network>\n");
            }
            x.push_str("  </NetworkSection>\n");
        }
        let indent = if let Some((id, info)) = &self.collection {
            let _ = writeln!(
                x,
                "  <VirtualSystemCollection ovf:id=\"{}\">\n    <Info>{}</Info>",
                escape(id),
                escape(info)
            );
            4
        } else {
            2
        };
        for s in &self.systems {
            write_system(&mut x, indent, s);
        }
        if self.collection.is_some() {
            x.push_str("  </VirtualSystemCollection>\n");
        }
        x.push_str("</Envelope>\n");
        x
    }
}

/// Reports the children of `n` other than `kept`.
fn report_others(n: &Node, kept: &[&str], path: &str, dropped: &mut Vec<String>) {
    for c in &n.children {
        if !kept.contains(&c.local()) {
            dropped.push(format!("{path}/{}", c.local()));
        }
    }
}

fn fields_of(n: &Node, path: &str, dropped: &mut Vec<String>) -> Vec<HwField> {
    let mut v = Vec::new();
    for c in &n.children {
        if local(&c.name) == "Config" {
            continue;
        }
        if !c.children.is_empty() {
            dropped.push(format!("{path}/{}", c.local()));
            continue;
        }
        v.push(HwField {
            name: c.name.clone(),
            attrs: c.attrs.clone(),
            value: c.text.trim().to_string(),
        });
    }
    v
}

fn system(n: &Node, path: &str, dropped: &mut Vec<String>) -> Result<VirtualSystem> {
    let mut s = VirtualSystem {
        id: get(&n.attrs, "id").unwrap_or_default().to_string(),
        ..Default::default()
    };
    for c in &n.children {
        match c.local() {
            "Info" => s.info = c.text.trim().to_string(),
            "Name" => s.name = Some(c.text.trim().to_string()),
            "AnnotationSection" => {
                s.annotation = c.text_of("Annotation");
                report_others(
                    c,
                    &["Info", "Annotation"],
                    &format!("{path}/AnnotationSection"),
                    dropped,
                );
            }
            "ProductSection" => {
                let mut p = ProductSection {
                    attrs: c.attrs.clone(),
                    ..Default::default()
                };
                for f in &c.children {
                    match f.local() {
                        "Info" => {}
                        "Property" => {
                            report_others(
                                f,
                                &["Label", "Description"],
                                &format!("{path}/ProductSection/Property"),
                                dropped,
                            );
                            p.properties.push(Property {
                                attrs: f.attrs.clone(),
                                label: f.text_of("Label"),
                                description: f.text_of("Description"),
                            })
                        }
                        "Category" | "Product" | "Vendor" | "Version" | "FullVersion"
                        | "ProductUrl" | "VendorUrl" | "AppUrl" => p
                            .fields
                            .push((f.local().to_string(), f.text.trim().to_string())),
                        other => dropped.push(format!("{path}/ProductSection/{other}")),
                    }
                }
                s.products.push(p);
            }
            "OperatingSystemSection" => {
                s.os_attrs = c.attrs.clone();
                s.os_description = c.text_of("Description");
                report_others(
                    c,
                    &["Info", "Description"],
                    &format!("{path}/OperatingSystemSection"),
                    dropped,
                );
            }
            "VirtualHardwareSection" => {
                let mut h = HardwareSection {
                    attrs: c.attrs.clone(),
                    ..Default::default()
                };
                for i in &c.children {
                    match i.local() {
                        "Info" => {}
                        "System" => {
                            h.system = fields_of(
                                i,
                                &format!("{path}/VirtualHardwareSection/System"),
                                dropped,
                            )
                        }
                        "Item" | "StorageItem" | "EthernetPortItem" => h.items.push(HwItem {
                            element: i.local().to_string(),
                            attrs: i.attrs.clone(),
                            fields: fields_of(
                                i,
                                &format!("{path}/VirtualHardwareSection/{}", i.local()),
                                dropped,
                            ),
                            configs: i
                                .children
                                .iter()
                                .filter(|c| c.local() == "Config")
                                .map(|c| c.attrs.clone())
                                .collect(),
                        }),
                        "Config" => h.configs.push(i.attrs.clone()),
                        "ExtraConfig" => h.extra_config.push(i.attrs.clone()),
                        other => dropped.push(format!("{path}/VirtualHardwareSection/{other}")),
                    }
                }
                s.hardware.push(h);
            }
            "BootOrderSection" => {
                s.boot_order.push(c.attrs.clone());
                report_others(c, &["Info"], &format!("{path}/BootOrderSection"), dropped);
            }
            other => dropped.push(format!("{path}/{other}")),
        }
    }
    Ok(s)
}

fn empty(x: &mut String, indent: usize, name: &str, attrs: &[(String, String)]) {
    let _ = write!(x, "{:indent$}<{name}", "");
    for (k, v) in attrs {
        let _ = write!(x, " {k}=\"{}\"", escape(v));
    }
    x.push_str("/>\n");
}

fn write_field(x: &mut String, indent: usize, f: &HwField) {
    let _ = write!(x, "{:indent$}<{}", "", f.name);
    for (k, v) in &f.attrs {
        let _ = write!(x, " {k}=\"{}\"", escape(v));
    }
    let _ = writeln!(x, ">{}</{}>", escape(&f.value), f.name);
}

fn write_system(x: &mut String, i: usize, s: &VirtualSystem) {
    let pad = " ".repeat(i);
    let _ = writeln!(x, "{pad}<VirtualSystem ovf:id=\"{}\">", escape(&s.id));
    let _ = writeln!(
        x,
        "{pad}  <Info>{}</Info>",
        escape(if s.info.is_empty() {
            "A virtual machine"
        } else {
            &s.info
        })
    );
    if let Some(n) = &s.name {
        let _ = writeln!(x, "{pad}  <Name>{}</Name>", escape(n));
    }
    if let Some(a) = &s.annotation {
        let _ = writeln!(x, "{pad}  <AnnotationSection>\n{pad}    <Info>A human-readable annotation</Info>\n{pad}    <Annotation>{}</Annotation>\n{pad}  </AnnotationSection>", escape(a));
    }
    for p in &s.products {
        let _ = write!(x, "{pad}  <ProductSection");
        for (k, v) in &p.attrs {
            let _ = write!(x, " {k}=\"{}\"", escape(v));
        }
        let _ = writeln!(
            x,
            ">\n{pad}    <Info>Information about the installed software</Info>"
        );
        for (k, v) in &p.fields {
            let _ = writeln!(x, "{pad}    <{k}>{}</{k}>", escape(v));
        }
        for prop in &p.properties {
            let _ = write!(x, "{pad}    <Property");
            for (k, v) in &prop.attrs {
                let _ = write!(x, " {k}=\"{}\"", escape(v));
            }
            x.push('>');
            if let Some(l) = &prop.label {
                let _ = write!(x, "\n{pad}      <Label>{}</Label>", escape(l));
            }
            if let Some(d) = &prop.description {
                let _ = write!(x, "\n{pad}      <Description>{}</Description>", escape(d));
            }
            let _ = writeln!(x, "\n{pad}    </Property>");
        }
        let _ = writeln!(x, "{pad}  </ProductSection>");
    }
    if !s.os_attrs.is_empty() || s.os_description.is_some() {
        let _ = write!(x, "{pad}  <OperatingSystemSection");
        for (k, v) in &s.os_attrs {
            let _ = write!(x, " {k}=\"{}\"", escape(v));
        }
        let _ = writeln!(
            x,
            ">\n{pad}    <Info>The kind of installed guest operating system</Info>"
        );
        if let Some(d) = &s.os_description {
            let _ = writeln!(x, "{pad}    <Description>{}</Description>", escape(d));
        }
        let _ = writeln!(x, "{pad}  </OperatingSystemSection>");
    }
    for h in &s.hardware {
        let _ = write!(x, "{pad}  <VirtualHardwareSection");
        for (k, v) in &h.attrs {
            let _ = write!(x, " {k}=\"{}\"", escape(v));
        }
        let _ = writeln!(x, ">\n{pad}    <Info>Virtual hardware requirements</Info>");
        if !h.system.is_empty() {
            let _ = writeln!(x, "{pad}    <System>");
            for f in &h.system {
                write_field(x, i + 6, f);
            }
            let _ = writeln!(x, "{pad}    </System>");
        }
        for it in &h.items {
            let _ = write!(x, "{pad}    <{}", it.element);
            for (k, v) in &it.attrs {
                let _ = write!(x, " {k}=\"{}\"", escape(v));
            }
            x.push_str(">\n");
            for f in &it.fields {
                write_field(x, i + 6, f);
            }
            for c in &it.configs {
                empty(x, i + 6, "vmw:Config", c);
            }
            let _ = writeln!(x, "{pad}    </{}>", it.element);
        }
        for c in &h.configs {
            empty(x, i + 4, "vmw:Config", c);
        }
        for c in &h.extra_config {
            empty(x, i + 4, "vmw:ExtraConfig", c);
        }
        let _ = writeln!(x, "{pad}  </VirtualHardwareSection>");
    }
    for b in &s.boot_order {
        let _ = write!(x, "{pad}  <vmw:BootOrderSection");
        for (k, v) in b {
            let _ = write!(x, " {k}=\"{}\"", escape(v));
        }
        let _ = writeln!(
            x,
            ">\n{pad}    <Info>Virtual hardware device boot order</Info>\n{pad}  </vmw:BootOrderSection>"
        );
    }
    let _ = writeln!(x, "{pad}</VirtualSystem>");
}
