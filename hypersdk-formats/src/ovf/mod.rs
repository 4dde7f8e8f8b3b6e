//! OVF descriptors (DMTF DSP0243, OVF 1.x).
//!
//! [`write_envelope`] renders an [`OvfSystem`] — the hardware of one virtual
//! machine and the files of its disks — as an OVF 1.0 envelope in the shape
//! vSphere, VirtualBox and virt-v2v import:
//!
//! - `References`: one `File` per disk file (`ovf:href`, `ovf:size`);
//! - `DiskSection`: one `Disk` per disk (`ovf:capacity` in bytes, `ovf:format`
//!   URI, `ovf:populatedSize`);
//! - `NetworkSection`: the distinct networks the NICs connect to;
//! - `VirtualSystem` with `OperatingSystemSection` (CIM OS id and `vmw:osType`)
//!   and `VirtualHardwareSection`: CPUs (ResourceType 3), memory (4, in MiB),
//!   controllers (IDE 5, SCSI 6, SATA 20), disks (17), NICs (10), and the
//!   firmware as `vmw:Config firmware=efi|bios`.
//!
//! [`model::Envelope`] is the typed model: it reads real-world descriptors
//! (vCenter/ovftool with `vmw:` extensions and vApp properties, VirtualBox,
//! the DMTF examples, VirtualSystemCollections), reports every element it
//! does not keep, and writes OVF 1.0, 1.1 or 2.0.
//!
//! [`read_summary`] reads any OVF 1.x/2.x descriptor (vendor sections skipped)
//! into an [`OvfSummary`]: files, disks with capacities, networks, and per
//! virtual system its name, OS, CPUs, memory, disks, NICs and firmware.
//!
//! Inside an `Item`, the `rasd:` elements are written in alphabetical order,
//! as the CIM schema's sequence requires.

pub mod model;
mod reader;
mod writer;

pub use reader::{
    allocation_units, read_summary, OvfDiskInfo, OvfFileRef, OvfNicInfo, OvfSummary, OvfSystemInfo,
    MAX_OVF_BYTES,
};

pub use writer::{
    write_envelope, OvfController, OvfControllerKind, OvfDisk, OvfNic, OvfOs, OvfSystem,
};
