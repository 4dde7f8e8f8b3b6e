//! OVF descriptors (DMTF DSP0243, OVF 1.x and 2.0): one typed model,
//! [`model::Envelope`], that every part of the project reads, builds and
//! writes.
//!
//! - [`model`]: the envelope's types; [`Envelope::parse`](model::Envelope::parse)
//!   reads real-world descriptors (vCenter/ovftool with `vmw:` extensions and
//!   vApp properties, VirtualBox, the DMTF examples, VirtualSystemCollections)
//!   and reports every element it does not keep; [`Envelope::to_xml`](model::Envelope::to_xml)
//!   writes OVF 1.0, 1.1 or 2.0.
//! - [`view`]: what an envelope amounts to — file sizes, disk capacities,
//!   per virtual system its OS, CPUs, memory, disks, NICs and firmware — and
//!   [`Envelope::read`](model::Envelope::read), which parses and checks
//!   that every such number is one.
//! - [`os`]: guest operating systems both ways — VMware guest ids, CIM
//!   `OsType` numbers (with `ovf:version`) and libosinfo ids in one table.
//! - [`build`]: an envelope of one virtual machine, as the exporter writes
//!   it: `References` (one `File` per disk file), `DiskSection` (capacity in
//!   bytes, format URI, `ovf:populatedSize`), `NetworkSection`, and a
//!   `VirtualSystem` with `OperatingSystemSection` (CIM OS id and
//!   `vmw:osType`) and `VirtualHardwareSection`: CPUs (ResourceType 3),
//!   memory (4, in MiB), controllers (IDE 5, SCSI 6, SATA 20), disks (17),
//!   NICs (10), and the firmware as `vmw:Config firmware=efi|bios`.
//!
//! Inside an `Item`, the `rasd:` elements are written in alphabetical order,
//! as the CIM schema's sequence requires.

pub mod build;
pub mod model;
pub mod os;
pub mod view;

pub use build::{ControllerType, BOOT_TYPES};
pub use model::{Envelope, OvfVersion, MAX_OVF_BYTES};
pub use view::{allocation_units, config_value, Nic};
