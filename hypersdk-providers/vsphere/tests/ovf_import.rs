//! Packages exported from the simulator, imported by VMware's own tools:
//! govmomi's OVF reader turns the descriptor into the ConfigSpec an import
//! creates (strict: an item it does not know fails), and govc imports the
//! OVA into the simulator. The VM that comes out is compared with the one
//! that went in.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_core::{ControllerKind, DriveKind, ExportOptions, Exporter, PackageFormat, Provider};
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::vcsim::{config_spec, devices_of as of_type, Vcsim};
use hypersdk_testsupport::{mixed_content, run_tool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_vm_imports_with_its_hardware() {
    let sim = Vcsim::start(&[("alpha", &[8, 4])]);
    for (i, mib) in [8usize, 4].iter().enumerate() {
        std::fs::write(sim.flat_file("alpha", i), mixed_content(mib << 20)).unwrap();
    }
    let vc = connect(&sim).await;
    let source = vc.vm_spec("alpha").await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let report = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .export(&vc, "alpha", &LocalDirSink::new(out.path()))
        .await
        .unwrap();
    let x = tempfile::tempdir().unwrap();
    run_tool(
        "tar",
        &["-xf", &report.location, "-C", x.path().to_str().unwrap()],
    );

    // govmomi's reader: the VM as it was, device by device.
    let spec = config_spec(&x.path().join("alpha.ovf"));
    assert_eq!(spec["version"], "vmx-13", "{spec}");
    assert_eq!(
        source.hardware.version.as_deref(),
        Some("vmx-13"),
        "the simulator's hardware version is kept, not normalised"
    );
    assert_eq!(
        (spec["cpus"].as_u64(), spec["memory"].as_u64()),
        (Some(2), Some(2048))
    );
    assert_eq!(spec["firmware"], "efi");
    assert_eq!(spec["guest_id"], "ubuntu64Guest");
    let pvscsi = of_type(&spec, "ParaVirtualSCSIController");
    assert_eq!(pvscsi.len(), 1, "{spec}");
    let disks = of_type(&spec, "VirtualDisk");
    assert_eq!(disks.len(), 2);
    for (i, d) in disks.iter().enumerate() {
        assert_eq!(d["controller_key"], pvscsi[0]["key"]);
        assert_eq!(d["unit"].as_u64(), Some(source.disks[i].unit as u64));
        assert_eq!(d["capacity_bytes"].as_u64(), Some(source.disks[i].capacity));
    }
    let ide_keys: Vec<_> = of_type(&spec, "VirtualIDEController")
        .iter()
        .map(|c| c["key"].clone())
        .collect();
    let cdroms = of_type(&spec, "VirtualCdrom");
    assert_eq!(cdroms.len(), 1);
    assert!(ide_keys.contains(&cdroms[0]["controller_key"]), "{spec}");
    assert_eq!(of_type(&spec, "VirtualVmxnet3").len(), 1);
    assert_eq!(of_type(&spec, "VirtualMachineVideoCard").len(), 1);
    assert_eq!(of_type(&spec, "VirtualMachineVMCIDevice").len(), 1);

    // The package taken as a VM (the local provider reads OVAs) and
    // exported again: the same hardware, device by device.
    let local = hypersdk_local::LocalProvider::new(x.path());
    let again = tempfile::tempdir().unwrap();
    let report2 = Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .export(&local, &report.location, &LocalDirSink::new(again.path()))
        .await
        .unwrap();
    assert_eq!(report2.files.len(), report.files.len());
    let spec2 = config_spec(&again.path().join("alpha/alpha.ovf"));
    let shape = |s: &serde_json::Value| {
        let mut s = s.clone();
        for d in s["devices"].as_array_mut().unwrap() {
            let d = d.as_object_mut().unwrap();
            // Disk keys are made up per reading; controllers are matched by position.
            d.remove("key");
            d.remove("controller_key");
        }
        s
    };
    assert_eq!(
        shape(&spec2),
        shape(&spec),
        "the re-export changed the hardware"
    );

    // govc import.ova into the simulator, then read back as any VM.
    sim.govc(&[
        "import.ova",
        "-pool",
        "/DC0/host/DC0_C0/Resources",
        "-ds",
        "LocalDS_0",
        "-name",
        "alpha-imported",
        &report.location,
    ]);
    let imported = vc.vm_spec("alpha-imported").await.unwrap();
    assert_eq!(
        (imported.cpus, imported.memory_mib),
        (source.cpus, source.memory_mib)
    );
    assert_eq!(imported.hardware.version, source.hardware.version);
    assert_eq!(imported.guest_os.id, source.guest_os.id);
    let caps = |s: &hypersdk_core::VmSpec| s.disks.iter().map(|d| d.capacity).collect::<Vec<_>>();
    assert_eq!(caps(&imported), caps(&source));
    for d in &imported.disks {
        let c = &imported.hardware.controllers[d.controller_index.unwrap()];
        assert_eq!((c.kind, c.model.as_str()), (ControllerKind::Scsi, "pvscsi"));
    }
    assert_eq!(
        imported
            .hardware
            .drives
            .iter()
            .filter(|d| d.kind == DriveKind::Cdrom)
            .count(),
        1
    );
    let nics = |s: &hypersdk_core::VmSpec| {
        s.nics
            .iter()
            .map(|n| (n.network.clone(), n.model.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(nics(&imported), nics(&source));
}

/// Networks by name (a distributed portgroup and an NSX opaque network,
/// which the VM's NICs name by key and by logical-switch id) and the boot
/// order, set with govc as an administrator would: all in the descriptor,
/// accepted by govc's import, and kept by a re-export of the package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_by_name_and_boot_order() {
    let sim = Vcsim::start_with_flags(&[("beta", &[4])], &["-opaque-network", "nsx-segment-1"]);
    sim.govc(&[
        "vm.network.change",
        "-vm",
        "beta",
        "-net",
        "DC0_DVPG0",
        "ethernet-0",
    ]);
    sim.govc(&[
        "vm.network.add",
        "-vm",
        "beta",
        "-net",
        "nsx-segment-1",
        "-net.adapter",
        "vmxnet3",
    ]);
    sim.govc(&[
        "device.boot",
        "-vm",
        "beta",
        "-order",
        "cdrom,ethernet,disk",
    ]);
    let vc = connect(&sim).await;
    let source = vc.vm_spec("beta").await.unwrap();
    let networks: Vec<&str> = source.nics.iter().map(|n| n.network.as_str()).collect();
    assert_eq!(
        networks,
        ["DC0_DVPG0", "nsx-segment-1"],
        "{:?}",
        source.nics
    );
    let boot = |s: &hypersdk_core::VmSpec| {
        s.hardware
            .boot_order
            .iter()
            .map(|b| format!("{}{}", b.kind, b.index))
            .collect::<Vec<_>>()
    };
    // govc puts every NIC in the order, each by its device key.
    assert_eq!(boot(&source), ["cdrom0", "network0", "network1", "disk0"]);

    let out = tempfile::tempdir().unwrap();
    let report = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .export(&vc, "beta", &LocalDirSink::new(out.path()))
        .await
        .unwrap();
    let package =
        hypersdk_core::files::verify_package(std::path::Path::new(&report.location), None).unwrap();
    let envelope = &package.envelope;
    let sys = &envelope.systems[0];
    let kinds: Vec<&str> = sys.boot_devices().into_iter().map(|(_, k)| k).collect();
    assert_eq!(kinds, ["cdrom", "net", "net", "disk"]);
    // Each boot device names the item of its kind.
    let items = &sys.hardware[0].items;
    for (id, kind) in sys.boot_devices() {
        let item = items
            .iter()
            .find(|i| i.get("InstanceID") == Some(id.to_string().as_str()))
            .unwrap();
        let want = match kind {
            "cdrom" => "15",
            "net" => "10",
            _ => "17",
        };
        assert_eq!(item.get("ResourceType"), Some(want), "{kind}");
    }
    let names: Vec<&str> = envelope.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["DC0_DVPG0", "nsx-segment-1"]);

    // govc imports it (the section is optional to importers), and the
    // package read back as a VM keeps networks and boot order.
    sim.govc(&[
        "import.ova",
        "-pool",
        "/DC0/host/DC0_C0/Resources",
        "-ds",
        "LocalDS_0",
        "-name",
        "beta-imported",
        &report.location,
    ]);
    let local = hypersdk_local::LocalProvider::new(out.path());
    let read = local.vm_spec(&report.location).await.unwrap();
    assert_eq!(boot(&read), boot(&source));
    let networks: Vec<&str> = read.nics.iter().map(|n| n.network.as_str()).collect();
    assert_eq!(networks, ["DC0_DVPG0", "nsx-segment-1"]);
}
