//! The platform-neutral description of a virtual machine.

use serde::{Deserialize, Serialize};

/// Whether a VM is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PowerState {
    /// Running.
    On,
    /// Stopped.
    Off,
    /// Paused or suspended.
    Suspended,
    /// The provider cannot tell.
    Unknown,
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Suspended => "suspended",
            PowerState::Unknown => "unknown",
        })
    }
}

/// Boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS.
    Bios,
    /// UEFI.
    Uefi,
}

/// Broad guest OS family, for choosing device models and OS ids on export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFamily {
    /// Linux distributions.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// Anything else or unknown.
    Other,
}

impl OsFamily {
    /// The family a platform's OS identifiers and names point to (a
    /// libosinfo URI, a vSphere guest id and full name, an AMI platform,
    /// an Azure image offer, …): one keyword list for every provider.
    ///
    /// ```
    /// use hypersdk_core::OsFamily;
    /// assert_eq!(OsFamily::guess(&["http://microsoft.com/win/2k22"]), OsFamily::Windows);
    /// assert_eq!(OsFamily::guess(&["windows9Server64Guest"]), OsFamily::Windows);
    /// assert_eq!(OsFamily::guess(&["rhel9_64Guest", "Red Hat Enterprise Linux 9"]), OsFamily::Linux);
    /// assert_eq!(OsFamily::guess(&["http://ubuntu.com/ubuntu/22.04"]), OsFamily::Linux);
    /// assert_eq!(OsFamily::guess(&["freebsd13_64Guest"]), OsFamily::Other);
    /// ```
    pub fn guess(texts: &[&str]) -> OsFamily {
        const WINDOWS: [&str; 3] = ["windows", "microsoft", "/win"];
        const LINUX: [&str; 22] = [
            "linux", "ubuntu", "debian", "fedora", "redhat", "red hat", "rhel", "centos", "suse",
            "sles", "alpine", "arch", "rocky", "alma", "oracle", "photon", "coreos", "amazon",
            "amzn", "flatcar", "mint", "gentoo",
        ];
        let lower: Vec<String> = texts.iter().map(|t| t.to_ascii_lowercase()).collect();
        if lower
            .iter()
            .any(|t| t.starts_with("win") || WINDOWS.iter().any(|k| t.contains(k)))
        {
            OsFamily::Windows
        } else if lower.iter().any(|t| LINUX.iter().any(|k| t.contains(k))) {
            OsFamily::Linux
        } else {
            OsFamily::Other
        }
    }
}

/// The guest operating system, as far as the platform knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestOs {
    /// The platform's identifier (a libosinfo URI, a vSphere guest id, …), or "".
    pub id: String,
    /// Family.
    pub family: OsFamily,
    /// Human-readable description.
    pub description: String,
}

impl Default for GuestOs {
    fn default() -> Self {
        GuestOs {
            id: String::new(),
            family: OsFamily::Other,
            description: "Unknown operating system".into(),
        }
    }
}

/// The bus a disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ControllerKind {
    /// IDE.
    Ide,
    /// SATA.
    Sata,
    /// SCSI.
    Scsi,
    /// virtio-blk (exported as SCSI to platforms without virtio).
    Virtio,
    /// NVMe.
    Nvme,
}

/// The format a disk is stored in on its platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum DiskFormat {
    /// Raw bytes.
    Raw,
    /// QEMU qcow2.
    Qcow2,
    /// VMware VMDK.
    Vmdk,
    /// Microsoft VHDX (Hyper-V).
    Vhdx,
    /// Microsoft VHD (older Hyper-V, Azure).
    Vhd,
}

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Name on the platform, e.g. "vda" or "Hard disk 1".
    pub name: String,
    /// Guest-visible capacity in bytes.
    pub capacity: u64,
    /// Storage format on the platform.
    pub format: DiskFormat,
    /// Controller the disk hangs off.
    pub controller: ControllerKind,
    /// Unit number on its controller.
    pub unit: u32,
    /// Where it is stored (file path or URL, never with credentials).
    pub location: String,
    /// Its controller among [`Hardware::controllers`], when the platform
    /// says which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_index: Option<usize>,
}

/// One network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// The network or bridge it connects to.
    pub network: String,
    /// MAC address, if known.
    pub mac: Option<String>,
    /// Device model on the platform, e.g. "virtio", "e1000", "vmxnet3".
    pub model: String,
}

/// The full hardware description of a VM, enough to write an OVF for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Stable id on the platform (UUID, moref, …).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Power state when described.
    pub power_state: PowerState,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Boot firmware.
    pub firmware: Firmware,
    /// Guest OS.
    pub guest_os: GuestOs,
    /// Network adapters.
    pub nics: Vec<NicSpec>,
    /// Disks, in boot order.
    pub disks: Vec<DiskSpec>,
    /// Free-text notes.
    pub annotation: Option<String>,
    /// The rest of its virtual hardware, as far as the platform says.
    #[serde(default)]
    pub hardware: Hardware,
}

/// Virtual hardware beyond CPUs, memory, disks and NICs: what an OVF
/// descriptor carries so that the VM comes out of an import as it went in.
/// Empty where the platform does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// The platform's hardware version: a VMware virtual hardware family
    /// (`vmx-13`), or a QEMU machine type (`pc-q35-7.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Cores per virtual socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_per_socket: Option<u32>,
    /// Storage controllers, in the platform's device order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<ControllerSpec>,
    /// CD-ROM and floppy drives (exported empty, as ovftool does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveSpec>,
    /// The video card, if the VM has one the platform describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpec>,
    /// Whether it has a VMCI device (vSphere).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vmci: bool,
    /// UEFI secure boot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_boot: bool,
    /// Boot order: the devices a VM boots from, first first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_order: Vec<BootDevice>,
    /// Platform settings an importer can take back as they are, e.g.
    /// vSphere's `tools.syncTimeWithHost`, `nestedHVEnabled`,
    /// `cpuHotAddEnabled` (name, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, String)>,
    /// Advanced settings (vSphere `extraConfig`) worth keeping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_config: Vec<(String, String)>,
}

/// A device a VM boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootDevice {
    /// `disk`, `cdrom`, `network` or `floppy`.
    pub kind: String,
    /// Which device of its kind, counting from 0: disks in
    /// [`VmSpec::disks`] order, NICs in [`VmSpec::nics`] order, drives in
    /// [`Hardware::drives`] order.
    #[serde(default)]
    pub index: usize,
}

impl BootDevice {
    /// The first device of `kind`.
    pub fn first(kind: &str) -> BootDevice {
        BootDevice {
            kind: kind.to_string(),
            index: 0,
        }
    }
}

/// A storage controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerSpec {
    /// Its bus.
    pub kind: ControllerKind,
    /// Its model on the platform: for SCSI `pvscsi`, `lsilogic`,
    /// `lsilogic-sas`, `buslogic`, `virtio-scsi`; `ahci`, `nvme`, `piix4`…
    #[serde(default)]
    pub model: String,
    /// Bus number among controllers of its kind.
    #[serde(default)]
    pub bus: u32,
}

/// A removable-media drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSpec {
    /// CD-ROM or floppy.
    pub kind: DriveKind,
    /// Its controller among [`Hardware::controllers`] (none for a floppy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_index: Option<usize>,
    /// The bus it is on, when the platform names no controller (a CD-ROM
    /// goes on IDE unless told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<ControllerKind>,
    /// Unit number on that controller.
    #[serde(default)]
    pub unit: u32,
}

/// What a removable-media drive reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveKind {
    /// CD or DVD.
    Cdrom,
    /// Floppy disk.
    Floppy,
}

/// A video card.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSpec {
    /// Video memory in KiB, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_kib: Option<u64>,
    /// Displays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displays: Option<u32>,
    /// 3D acceleration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accel_3d: bool,
}

/// A one-line summary of a VM, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Stable id on the platform.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Power state.
    pub power_state: PowerState,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Guest OS description.
    pub guest_os: String,
    /// Number of disks.
    pub disks: usize,
    /// Sum of disk capacities in bytes.
    pub total_capacity: u64,
    /// Inventory folder path, where the platform has folders (vSphere:
    /// `/Datacenter/vm/Team/Web`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

impl From<&VmSpec> for VmInfo {
    fn from(s: &VmSpec) -> Self {
        VmInfo {
            id: s.id.clone(),
            name: s.name.clone(),
            power_state: s.power_state,
            cpus: s.cpus,
            memory_mib: s.memory_mib,
            guest_os: s.guest_os.description.clone(),
            disks: s.disks.len(),
            total_capacity: s.disks.iter().map(|d| d.capacity).sum(),
            folder: None,
        }
    }
}

/// A search over VM listings. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmQuery {
    /// Glob on the name (`*` any run, `?` one character); case-insensitive.
    pub name: Option<String>,
    /// Regular expression the name must match (anywhere; anchor with `^…$`).
    pub name_regex: Option<String>,
    /// Only VMs in this folder or below it (a path prefix, whole components).
    pub folder: Option<String>,
    /// Only VMs in this power state.
    pub power_state: Option<PowerState>,
    /// Case-insensitive substring of the guest OS description.
    pub guest_os: Option<String>,
    /// At least this many CPUs.
    pub min_cpus: Option<u32>,
    /// At least this much memory, MiB.
    pub min_memory_mib: Option<u64>,
}

impl VmQuery {
    /// Checks the fields that can be malformed (the regular expression).
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(r) = &self.name_regex {
            regex::Regex::new(r).map_err(|e| {
                crate::Error::InvalidArgument(format!("bad name regular expression '{r}': {e}"))
            })?;
        }
        Ok(())
    }

    /// Whether `vm` satisfies every set field. (A malformed regular
    /// expression matches nothing; [`validate`](Self::validate) reports it.)
    pub fn matches(&self, vm: &VmInfo) -> bool {
        let regex_ok = match &self.name_regex {
            Some(r) => regex::Regex::new(r).is_ok_and(|re| re.is_match(&vm.name)),
            None => true,
        };
        let folder_ok = match &self.folder {
            Some(f) => {
                let f = f.trim_end_matches('/');
                vm.folder
                    .as_deref()
                    .is_some_and(|p| p == f || (p.starts_with(f) && p[f.len()..].starts_with('/')))
            }
            None => true,
        };
        regex_ok
            && folder_ok
            && self
                .name
                .as_deref()
                .is_none_or(|p| glob_match(&p.to_lowercase(), &vm.name.to_lowercase()))
            && self.power_state.is_none_or(|p| p == vm.power_state)
            && self
                .guest_os
                .as_deref()
                .is_none_or(|g| vm.guest_os.to_lowercase().contains(&g.to_lowercase()))
            && self.min_cpus.is_none_or(|c| vm.cpus >= c)
            && self.min_memory_mib.is_none_or(|m| vm.memory_mib >= m)
    }
}

/// Glob matching with `*` and `?`, linear time (no backtracking blow-up).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*db?", "prod-db1"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn query_matches_fields() {
        let vm = VmInfo {
            id: "1".into(),
            name: "Web-01".into(),
            power_state: PowerState::Off,
            cpus: 2,
            memory_mib: 2048,
            guest_os: "Ubuntu 22.04".into(),
            disks: 1,
            total_capacity: 1,
            folder: Some("/DC0/vm/web".into()),
        };
        let q = VmQuery {
            name: Some("web*".into()),
            guest_os: Some("ubuntu".into()),
            ..Default::default()
        };
        assert!(q.matches(&vm));
        assert!(!VmQuery {
            min_cpus: Some(4),
            ..Default::default()
        }
        .matches(&vm));
        assert!(!VmQuery {
            power_state: Some(PowerState::On),
            ..Default::default()
        }
        .matches(&vm));
        let regex = |r: &str| VmQuery {
            name_regex: Some(r.into()),
            ..Default::default()
        };
        assert!(regex("^Web-\\d+$").matches(&vm));
        assert!(!regex("^web").matches(&vm));
        assert!(regex("(").validate().is_err());
        let folder = |f: &str| VmQuery {
            folder: Some(f.into()),
            ..Default::default()
        };
        assert!(folder("/DC0/vm").matches(&vm));
        assert!(folder("/DC0/vm/web/").matches(&vm));
        assert!(!folder("/DC0/vm/we").matches(&vm));
        assert!(!folder("/DC1").matches(&vm));
    }
}
