//! Every descriptor of tests/ovf-corpus is read, written back and read again:
//! the model must survive unchanged, every element not kept must be
//! reported, and the views (CPUs, memory, disks, NICs, firmware) must agree
//! before and after.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use hypersdk_formats::ovf::model::{Envelope, OvfVersion};

fn corpus(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/ovf-corpus")
            .join(name),
    )
    .unwrap()
}

/// Reads, writes as `version`, reads again; returns what the first read dropped.
fn round_trip(name: &str, version: OvfVersion) -> Vec<String> {
    let xml = corpus(name);
    let first = Envelope::parse(&xml).unwrap();
    let written = first.envelope.to_xml(version);
    let second = Envelope::parse(&written)
        .unwrap_or_else(|e| panic!("{name}: rewritten descriptor does not parse: {e}\n{written}"));
    assert_eq!(
        second.dropped,
        Vec::<String>::new(),
        "{name}: the writer emitted something the reader drops"
    );
    assert_eq!(
        first.envelope, second.envelope,
        "{name}: model changed through a round trip"
    );
    let (a, b) = (
        Envelope::read(&xml).unwrap(),
        Envelope::read(&written).unwrap(),
    );
    assert_eq!(
        views(&a),
        views(&b),
        "{name}: views changed through a round trip"
    );
    first.dropped
}

/// What the views say of each system and disk.
fn views(e: &Envelope) -> String {
    let mut out = String::new();
    for s in &e.systems {
        out += &format!(
            "{} {} {} {} {:?} {:?} {:?}\n",
            s.display_name(),
            s.os(),
            s.cpus(),
            s.memory_mib(),
            s.disk_ids(),
            s.nics(),
            s.firmware()
        );
    }
    for d in &e.disks {
        out += &format!("{} {:?} {:?}\n", d.disk_id(), d.capacity(), d.file_ref());
    }
    for f in &e.files {
        out += &format!("{} {:?}\n", f.href, f.size_bytes());
    }
    out
}

#[test]
fn vcenter_export_round_trips_with_vmware_extensions() {
    let dropped = round_trip("vcenter-export.ovf", OvfVersion::V1_0);
    assert_eq!(dropped, vec!["Envelope/VirtualSystem/EulaSection"]);
    let env = Envelope::parse(&corpus("vcenter-export.ovf"))
        .unwrap()
        .envelope;
    let hw = &env.systems[0].hardware[0];
    assert_eq!(hw.extra_config.len(), 2);
    assert!(hw.configs.iter().any(|c| c.iter().any(|(_, v)| v == "efi")));
    let cpu = &hw.items[0];
    let cores = cpu
        .fields
        .iter()
        .find(|f| f.name == "vmw:CoresPerSocket")
        .unwrap();
    assert_eq!(
        (cores.value.as_str(), cores.attrs[0].1.as_str()),
        ("2", "false")
    );
    assert_eq!(env.systems[0].products[0].properties.len(), 2);
    assert_eq!(
        env.systems[0].products[0].fields[1],
        ("Vendor".into(), "Example & Co".into())
    );
    let s = &env.systems[0];
    assert_eq!((s.cpus(), s.memory_mib()), (4, 16384));
    assert_eq!(env.disks[1].capacity(), Some(100 << 30));
    assert_eq!(s.firmware(), Some("efi"));
}

#[test]
fn virtualbox_export_reports_its_machine_section() {
    let dropped = round_trip("virtualbox-export.ovf", OvfVersion::V1_0);
    assert_eq!(
        dropped,
        vec![
            "Envelope/VirtualSystem/OperatingSystemSection/OSType",
            "Envelope/VirtualSystem/Machine"
        ]
    );
    let env = Envelope::parse(&corpus("virtualbox-export.ovf"))
        .unwrap()
        .envelope;
    assert!(
        env.extra_namespaces.iter().any(|(p, _)| p == "vbox"),
        "vbox prefix kept for vbox:uuid"
    );
    let s = &env.systems[0];
    assert_eq!((s.cpus(), s.memory_mib()), (2, 2048));
    assert_eq!(env.disks[0].capacity(), Some(20 << 30));
}

#[test]
fn dmtf_collection_keeps_every_system() {
    let dropped = round_trip("dmtf-collection.ovf", OvfVersion::V1_1);
    assert_eq!(
        dropped,
        vec!["Envelope/VirtualSystemCollection/StartupSection"]
    );
    let e = Envelope::read(&corpus("dmtf-collection.ovf")).unwrap();
    assert_eq!(e.systems.len(), 2);
    assert_eq!(
        (e.systems[1].display_name(), e.systems[1].memory_mib()),
        ("Database", 4096)
    );
}

#[test]
fn ovf2_storage_and_ethernet_items() {
    assert!(round_trip("ovf2-storage.ovf", OvfVersion::V2_0).is_empty());
    let e = Envelope::read(&corpus("ovf2-storage.ovf")).unwrap();
    let s = &e.systems[0];
    assert_eq!((s.cpus(), s.memory_mib()), (8, 32 << 10));
    assert_eq!(s.disk_ids(), vec!["d1"]);
    assert_eq!(s.nics()[0].mac, Some("52:54:00:00:00:01"));
    // written as 1.0 too
    let env = Envelope::parse(&corpus("ovf2-storage.ovf"))
        .unwrap()
        .envelope;
    assert!(env
        .to_xml(OvfVersion::V1_0)
        .contains("http://schemas.dmtf.org/ovf/envelope/1"));
}

#[test]
fn hypersdk_own_descriptor_round_trips_with_nothing_dropped() {
    let mut env = Envelope::for_vm("own", "vmx-14");
    let sys = &mut env.systems[0];
    sys.annotation = Some("note".into());
    sys.set_os(101, None, "otherLinux64Guest", "Linux");
    let hw = &mut sys.hardware[0];
    hw.add_cpus(2, None);
    hw.add_memory_mib(1024);
    hw.set_config("firmware", "bios");
    let p = Envelope::parse(&env.to_xml(OvfVersion::V1_0)).unwrap();
    assert!(p.dropped.is_empty(), "{:?}", p.dropped);
    assert_eq!(p.envelope, env);
}
