//! A libvirt domain's hardware in the exported descriptor, as VMware's own
//! OVF reader (govmomi's `ToConfigSpec`, strict) reads it: controllers by
//! type, disks and CD-ROMs where the domain puts them. The simulator cannot
//! create SATA controllers, so a SATA package is judged by the reader alone.

#![allow(clippy::unwrap_used)]

use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
use hypersdk_local::LocalProvider;
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::vcsim::{config_spec, devices_of as of_type};
use hypersdk_testsupport::workspace_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_vm_reads_back_with_its_controllers_and_drives() {
    let vms = workspace_root().join("examples/vms");
    let out = tempfile::tempdir().unwrap();
    Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .export(
            &LocalProvider::new(&vms),
            vms.join("demo-vm.xml").to_str().unwrap(),
            &LocalDirSink::new(out.path()),
        )
        .await
        .unwrap();
    let spec = config_spec(&out.path().join("demo-vm/demo-vm.ovf"));
    // q35 with SATA: the oldest VMware hardware with AHCI, not vmx-14.
    assert_eq!(spec["version"], "vmx-10", "{spec}");
    assert_eq!(
        (spec["cpus"].as_u64(), spec["memory"].as_u64()),
        (Some(2), Some(1024))
    );
    // Debian 12 (libosinfo debian/12) is debian12_64Guest, not debian10.
    assert_eq!(spec["guest_id"], "debian12_64Guest");
    // vda (virtio-blk) on LSI Logic; sda and the CD-ROM sdb on one AHCI.
    let lsi = of_type(&spec, "VirtualLsiLogicController");
    let ahci = of_type(&spec, "VirtualAHCIController");
    assert_eq!((lsi.len(), ahci.len()), (1, 1), "{spec}");
    let disks = of_type(&spec, "VirtualDisk");
    assert_eq!(disks[0]["controller_key"], lsi[0]["key"]);
    assert_eq!(disks[0]["capacity_bytes"].as_u64(), Some(64 << 20));
    assert_eq!(disks[1]["controller_key"], ahci[0]["key"]);
    let cdrom = of_type(&spec, "VirtualCdrom");
    assert_eq!(cdrom.len(), 1);
    assert_eq!(cdrom[0]["controller_key"], ahci[0]["key"]);
    assert_ne!(cdrom[0]["unit"], disks[1]["unit"], "{spec}");
    assert_eq!(of_type(&spec, "VirtualVmxnet3").len(), 1);
    assert_eq!(of_type(&spec, "VirtualE1000e").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hardware_version_can_be_chosen() {
    let vms = workspace_root().join("examples/vms");
    let out = tempfile::tempdir().unwrap();
    let settings: hypersdk_core::ExportSettings =
        serde_json::from_str(r#"{"format": "ovf", "hardware_version": "vmx-13"}"#).unwrap();
    Exporter::new(settings.to_options().unwrap())
        .export(
            &LocalProvider::new(&vms),
            vms.join("demo-vm.xml").to_str().unwrap(),
            &LocalDirSink::new(out.path()),
        )
        .await
        .unwrap();
    let ovf = std::fs::read_to_string(out.path().join("demo-vm/demo-vm.ovf")).unwrap();
    assert!(
        ovf.contains("<vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>"),
        "{ovf}"
    );
    for bad in ["13", "vmx-", "vmx-x", "esx-13", "vmx-1000"] {
        let s: hypersdk_core::ExportSettings =
            serde_json::from_value(serde_json::json!({ "hardware_version": bad })).unwrap();
        let err = s.to_options().unwrap_err().to_string();
        assert!(err.contains("hardware_version"), "{bad}: {err}");
    }
}

/// An export taken as a VM and exported again gives the same package, byte
/// for byte: every field of the descriptor survives the round trip (and
/// the disks, decoded from the first package's VMDKs, encode the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_exported_again_is_the_same_package() {
    use hypersdk_core::Provider;
    let vms = workspace_root().join("examples/vms");
    let tmp = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(&vms);
    for format in [PackageFormat::Ova, PackageFormat::Ovf] {
        let first = tmp.path().join(format!("first-{format:?}"));
        let again = tmp.path().join(format!("again-{format:?}"));
        let a = Exporter::new(ExportOptions::new(format))
            .export(
                &provider,
                vms.join("demo-vm.xml").to_str().unwrap(),
                &LocalDirSink::new(&first),
            )
            .await
            .unwrap();
        let package = match format {
            PackageFormat::Ova => first.join("demo-vm.ova"),
            _ => first.join("demo-vm/demo-vm.ovf"),
        };
        let spec = provider.vm_spec(package.to_str().unwrap()).await.unwrap();
        assert_eq!(spec.name, "demo-vm");
        assert_eq!(spec.guest_os.id, "debian12_64Guest");
        assert_eq!(spec.hardware.drives.len(), 1);
        let b = Exporter::new(ExportOptions::new(format))
            .export(
                &provider,
                package.to_str().unwrap(),
                &LocalDirSink::new(&again),
            )
            .await
            .unwrap();
        assert_eq!(a.manifest, b.manifest, "{format:?}");
        let files = |root: &std::path::Path| {
            hypersdk_testsupport::dir_contents(&match format {
                PackageFormat::Ova => root.to_path_buf(),
                _ => root.join("demo-vm"),
            })
        };
        assert!(
            files(&first) == files(&again),
            "{format:?}: the packages differ"
        );
    }
}
