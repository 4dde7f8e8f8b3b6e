//! Guest operating systems both ways: one table of VMware guest ids
//! (`vmw:osType`), DMTF CIM `OsType` numbers with the OVF section's
//! `ovf:version`, and libosinfo ids (what libvirt domains carry).
//!
//! CIM numbers follow the DMTF CIM_OperatingSystem schema (e.g. 94 Ubuntu
//! 64-bit, 96 Debian 64-bit, 80 RHEL 64-bit, 85 SLES 64-bit, 107 CentOS
//! 64-bit, 109 Oracle Linux 64-bit, 101 Linux 64-bit, 102 other 64-bit,
//! 103/112/115 Windows Server 2008 R2/2012/2012 R2, 105 Windows 7); guest
//! ids are vSphere's `VirtualMachineGuestOsIdentifier` values. Guests newer
//! than the CIM schema (Windows 10/11, Server 2016 and later, Rocky, Alma)
//! carry the generic 64-bit number, as VMware's own tools write them.

/// One guest OS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestOsEntry {
    /// VMware guest id (`vmw:osType`).
    pub guest_id: &'static str,
    /// CIM `OsType` number (`ovf:id` of the OperatingSystemSection).
    pub cim: u16,
    /// The section's `ovf:version`, when the CIM number needs one.
    pub version: Option<&'static str>,
    /// libosinfo ids that are this OS (the id's path after the vendor's
    /// host, e.g. `debian/12`; a trailing `*` matches any rest).
    pub libosinfo: &'static [&'static str],
    /// A human name.
    pub name: &'static str,
}

const fn os(
    guest_id: &'static str,
    cim: u16,
    version: Option<&'static str>,
    libosinfo: &'static [&'static str],
    name: &'static str,
) -> GuestOsEntry {
    GuestOsEntry {
        guest_id,
        cim,
        version,
        libosinfo,
        name,
    }
}

/// The table, most specific first.
pub const GUEST_OS: &[GuestOsEntry] = &[
    os(
        "debian8_64Guest",
        96,
        Some("8"),
        &["debian/8"],
        "Debian GNU/Linux 8 (64-bit)",
    ),
    os(
        "debian9_64Guest",
        96,
        Some("9"),
        &["debian/9"],
        "Debian GNU/Linux 9 (64-bit)",
    ),
    os(
        "debian10_64Guest",
        96,
        Some("10"),
        &["debian/10"],
        "Debian GNU/Linux 10 (64-bit)",
    ),
    os(
        "debian11_64Guest",
        96,
        Some("11"),
        &["debian/11"],
        "Debian GNU/Linux 11 (64-bit)",
    ),
    os(
        "debian12_64Guest",
        96,
        Some("12"),
        &["debian/12", "debian/13", "debian/testing"],
        "Debian GNU/Linux 12 (64-bit)",
    ),
    os(
        "ubuntu64Guest",
        94,
        None,
        &["ubuntu/*"],
        "Ubuntu Linux (64-bit)",
    ),
    os(
        "rhel6_64Guest",
        80,
        Some("6"),
        &["rhel/6*"],
        "Red Hat Enterprise Linux 6 (64-bit)",
    ),
    os(
        "rhel7_64Guest",
        80,
        Some("7"),
        &["rhel/7*"],
        "Red Hat Enterprise Linux 7 (64-bit)",
    ),
    os(
        "rhel8_64Guest",
        80,
        Some("8"),
        &["rhel/8*"],
        "Red Hat Enterprise Linux 8 (64-bit)",
    ),
    os(
        "rhel9_64Guest",
        80,
        Some("9"),
        &["rhel/9*"],
        "Red Hat Enterprise Linux 9 (64-bit)",
    ),
    os(
        "rhel10_64Guest",
        80,
        Some("10"),
        &["rhel/10*"],
        "Red Hat Enterprise Linux 10 (64-bit)",
    ),
    os(
        "centos6_64Guest",
        107,
        Some("6"),
        &["centos/6*"],
        "CentOS 6 (64-bit)",
    ),
    os(
        "centos7_64Guest",
        107,
        Some("7"),
        &["centos/7*"],
        "CentOS 7 (64-bit)",
    ),
    os(
        "centos8_64Guest",
        107,
        Some("8"),
        &["centos/8*", "centos-stream/8"],
        "CentOS 8 (64-bit)",
    ),
    os(
        "centos9_64Guest",
        107,
        Some("9"),
        &["centos-stream/9", "centos-stream/10"],
        "CentOS Stream 9 (64-bit)",
    ),
    os(
        "rockylinux_64Guest",
        101,
        None,
        &["rocky/*"],
        "Rocky Linux (64-bit)",
    ),
    os(
        "almalinux_64Guest",
        101,
        None,
        &["almalinux/*"],
        "AlmaLinux (64-bit)",
    ),
    os(
        "oracleLinux7_64Guest",
        109,
        Some("7"),
        &["ol/7*"],
        "Oracle Linux 7 (64-bit)",
    ),
    os(
        "oracleLinux8_64Guest",
        109,
        Some("8"),
        &["ol/8*"],
        "Oracle Linux 8 (64-bit)",
    ),
    os(
        "oracleLinux9_64Guest",
        109,
        Some("9"),
        &["ol/9*"],
        "Oracle Linux 9 (64-bit)",
    ),
    os(
        "sles12_64Guest",
        85,
        Some("12"),
        &["sles/12*"],
        "SUSE Linux Enterprise 12 (64-bit)",
    ),
    os(
        "sles15_64Guest",
        85,
        Some("15"),
        &["sles/15*"],
        "SUSE Linux Enterprise 15 (64-bit)",
    ),
    os(
        "opensuse64Guest",
        83,
        None,
        &["opensuse/*"],
        "openSUSE (64-bit)",
    ),
    os("fedora64Guest", 101, None, &["fedora/*"], "Fedora (64-bit)"),
    os(
        "windows7_64Guest",
        105,
        None,
        &["win/7"],
        "Microsoft Windows 7 (64-bit)",
    ),
    os(
        "windows8_64Guest",
        114,
        None,
        &["win/8", "win/8.1"],
        "Microsoft Windows 8 (64-bit)",
    ),
    os(
        "windows9_64Guest",
        102,
        None,
        &["win/10"],
        "Microsoft Windows 10 (64-bit)",
    ),
    os(
        "windows11_64Guest",
        102,
        None,
        &["win/11"],
        "Microsoft Windows 11 (64-bit)",
    ),
    os(
        "windows7Server64Guest",
        103,
        None,
        &["win/2k8r2"],
        "Microsoft Windows Server 2008 R2 (64-bit)",
    ),
    os(
        "windows8Server64Guest",
        112,
        None,
        &["win/2k12"],
        "Microsoft Windows Server 2012 (64-bit)",
    ),
    os(
        "windows9Server64Guest",
        115,
        None,
        &["win/2k12r2", "win/2k16"],
        "Microsoft Windows Server 2016 or later (64-bit)",
    ),
    os(
        "windows2019srv_64Guest",
        102,
        None,
        &["win/2k19"],
        "Microsoft Windows Server 2019 (64-bit)",
    ),
    os(
        "windows2019srvNext_64Guest",
        102,
        None,
        &["win/2k22"],
        "Microsoft Windows Server 2022 (64-bit)",
    ),
    os(
        "windows2022srvNext_64Guest",
        102,
        None,
        &["win/2k25"],
        "Microsoft Windows Server 2025 (64-bit)",
    ),
    os(
        "freebsd13_64Guest",
        78,
        None,
        &["freebsd/13*"],
        "FreeBSD 13 (64-bit)",
    ),
    os(
        "freebsd14_64Guest",
        78,
        None,
        &["freebsd/14*"],
        "FreeBSD 14 (64-bit)",
    ),
    // Generic entries last: what a family falls back to.
    os("otherLinux64Guest", 101, None, &[], "Other Linux (64-bit)"),
    os("otherLinuxGuest", 36, None, &[], "Other Linux"),
    os("otherGuest64", 102, None, &[], "Other (64-bit)"),
    os("otherGuest", 1, None, &[], "Other"),
];

/// The entry of a VMware guest id (case as vSphere writes it).
pub fn by_guest_id(guest_id: &str) -> Option<&'static GuestOsEntry> {
    GUEST_OS.iter().find(|e| e.guest_id == guest_id)
}

/// The entry of a libosinfo id (`http://debian.org/debian/12`) or short id
/// (`debian12` is not parsed: pass the URL libvirt stores).
pub fn by_libosinfo(id: &str) -> Option<&'static GuestOsEntry> {
    let path = id
        .split_once("://")
        .map_or(id, |(_, rest)| rest)
        .split_once('/')
        .map(|(_, p)| p)?
        .trim_end_matches('/');
    GUEST_OS.iter().find(|e| {
        e.libosinfo.iter().any(|pat| match pat.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *pat,
        })
    })
}

/// The guest id for a CIM `OsType` number and the section's `ovf:version`
/// (exact pair first, then the number alone); None where no VMware guest
/// has that number.
pub fn by_cim(cim: u16, version: Option<&str>) -> Option<&'static GuestOsEntry> {
    let version = version.map(str::trim).filter(|v| !v.is_empty());
    let with = |f: &dyn Fn(&GuestOsEntry) -> bool| GUEST_OS.iter().find(|e| e.cim == cim && f(e));
    // The exact pair; else the generic entry of that number (one no
    // libosinfo id names); else any without a version; else any.
    with(&|e| version.is_some() && e.version == version)
        .or_else(|| with(&|e| e.libosinfo.is_empty()))
        .or_else(|| with(&|e| e.version.is_none()))
        .or_else(|| with(&|_| true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways() {
        let d12 = by_libosinfo("http://debian.org/debian/12").unwrap();
        assert_eq!(
            (d12.guest_id, d12.cim, d12.version),
            ("debian12_64Guest", 96, Some("12"))
        );
        assert_eq!(by_cim(96, Some("12")).unwrap().guest_id, "debian12_64Guest");
        assert_eq!(by_cim(96, Some("10")).unwrap().guest_id, "debian10_64Guest");
        assert_eq!(
            by_libosinfo("http://ubuntu.com/ubuntu/24.04")
                .unwrap()
                .guest_id,
            "ubuntu64Guest"
        );
        assert_eq!(
            by_libosinfo("http://redhat.com/rhel/9.4").unwrap().guest_id,
            "rhel9_64Guest"
        );
        assert_eq!(
            by_libosinfo("http://microsoft.com/win/2k22")
                .unwrap()
                .guest_id,
            "windows2019srvNext_64Guest"
        );
        assert_eq!(by_cim(94, None).unwrap().guest_id, "ubuntu64Guest");
        assert_eq!(by_cim(101, None).unwrap().guest_id, "otherLinux64Guest");
        assert_eq!(by_cim(9999, None), None);
        assert_eq!(by_libosinfo("http://example.com/nothing/1"), None);
        // Every guest id's own entry gives back its CIM number.
        for e in GUEST_OS {
            assert!(by_guest_id(e.guest_id).is_some());
            assert!(by_cim(e.cim, e.version).is_some());
        }
    }
}
