//! Exported packages read by an OVF tool people use besides VMware's: the
//! Common OVF Tool (COT, PyPI `cot`), which checks the manifest and lists
//! the hardware. (govc and govmomi's reader are in the vSphere and local
//! provider tests.)

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::python::venv_python;
use hypersdk_testsupport::{path_str, run_tool, workspace_root};

/// `cot info --verbose PACKAGE`: its output and standard error together.
fn cot_info(package: &std::path::Path) -> String {
    let cot = venv_python().with_file_name("cot");
    let out = std::process::Command::new(cot)
        .args(["--quiet", "info", "--verbose"])
        .arg(package)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cot info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn cot_reads_the_example_vm_and_checks_a_sha1_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = workspace_root().join("examples/vms/demo-vm.xml");
    for digest in ["sha1", "sha256"] {
        let out = tmp.path().join(digest);
        ok(&[
            "export",
            path_str(&xml),
            "--output",
            path_str(&out),
            "--digest",
            digest,
        ]);
        let info = cot_info(&out.join("demo-vm.ova"));
        // The hardware as exported: disks on their controllers, the
        // hardware family, CPUs, memory, NICs.
        for want in [
            "harddisk @ SCSI 0:0",
            "harddisk @ SATA 0:0",
            "vmx-10",
            "lsilogic",
            "VmxNet3 E1000e",
            "Network adapter 2 : br-storage",
        ] {
            assert!(info.contains(want), "{digest}: no {want:?} in\n{info}");
        }
        let profile = info
            .lines()
            .find(|l| l.contains("None (default)"))
            .unwrap_or_else(|| panic!("{digest}: no configuration profile in\n{info}"));
        let cols: Vec<&str> = profile.split_whitespace().collect();
        assert_eq!(&cols[2..6], &["2", "1", "GiB", "2"], "{profile}");
        // COT 2.2.1 checks an OVF 1.x manifest as SHA-1 whatever its lines
        // say (the OVF 1.x specification's algorithm): a SHA-1 manifest
        // passes, a SHA-256 one is reported as tampered with — the reason
        // `--digest sha1` exists (see the README on manifests).
        let complains = info.contains("may have been tampered with");
        assert_eq!(complains, digest == "sha256", "{digest}:\n{info}");
    }
}

/// A libvirt VM (virtio-scsi and virtio disks, an IDE CD-ROM, UEFI, two
/// cores per socket) exported by hyperctl and imported into the vCenter
/// simulator by govc, then read back through the vSphere provider.
#[test]
fn govc_imports_a_libvirt_vm() {
    use hypersdk_testsupport::vcsim::Vcsim;
    let tmp = tempfile::tempdir().unwrap();
    for (name, mib) in [("a.raw", 6u64), ("b.raw", 2)] {
        let f = std::fs::File::create(tmp.path().join(name)).unwrap();
        f.set_len(mib << 20).unwrap();
    }
    let xml = tmp.path().join("kvm1.xml");
    std::fs::write(
        &xml,
        "<domain type='kvm'><name>kvm1</name><memory unit='MiB'>1536</memory><vcpu>4</vcpu>\
         <os firmware='efi'><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>\
         <cpu><topology sockets='2' cores='2' threads='1'/></cpu>\
         <devices>\
         <controller type='scsi' index='0' model='virtio-scsi'/>\
         <disk type='file' device='disk'><source file='a.raw'/><target dev='sda' bus='scsi'/>\
           <address type='drive' controller='0' bus='0' target='0' unit='2'/></disk>\
         <disk type='file' device='disk'><source file='b.raw'/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>\
         <interface type='network'><mac address='52:54:00:00:00:09'/><source network='VM Network'/>\
           <model type='virtio'/></interface>\
         </devices></domain>",
    )
    .unwrap();
    let out = tmp.path().join("out");
    ok(&["export", path_str(&xml), "--output", path_str(&out)]);
    // What VMware's OVF reader makes of it: all of the hardware. (The
    // simulator's import below keeps less: it sets no cores per socket or
    // firmware and numbers units itself.)
    let x = tmp.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    run_tool(
        "tar",
        &["-xf", path_str(&out.join("kvm1.ova")), "-C", path_str(&x)],
    );
    let spec = hypersdk_testsupport::vcsim::config_spec(&x.join("kvm1.ovf"));
    assert_eq!(
        (spec["cores"].as_u64(), spec["firmware"].as_str()),
        (Some(2), Some("efi")),
        "{spec}"
    );
    let first_disk = hypersdk_testsupport::vcsim::devices_of(&spec, "VirtualDisk")[0];
    assert_eq!(first_disk["unit"], 2, "{spec}");

    let sim = Vcsim::start(&[]);
    sim.govc(&[
        "import.ova",
        "-pool",
        "/DC0/host/DC0_C0/Resources",
        "-ds",
        "LocalDS_0",
        path_str(&out.join("kvm1.ova")),
    ]);
    let show = ok_env(
        &["vms", "show", "kvm1", "--json"],
        &[
            ("HYPERSDK_PROVIDER", "vsphere"),
            ("GOVC_URL", &sim.url),
            ("GOVC_USERNAME", &sim.user),
            ("GOVC_PASSWORD", &sim.password),
            ("GOVC_INSECURE", "1"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        (v["cpus"].as_u64(), v["memory_mib"].as_u64()),
        (Some(4), Some(1536))
    );
    assert_eq!(v["hardware"]["version"], "vmx-10", "{v}");
    let disks = v["disks"].as_array().unwrap();
    let caps: Vec<u64> = disks
        .iter()
        .map(|d| d["capacity"].as_u64().unwrap())
        .collect();
    assert_eq!(caps, vec![6 << 20, 2 << 20]);
    // Both disks on the one LSI Logic controller.
    let controllers = v["hardware"]["controllers"].as_array().unwrap();
    for d in disks {
        let c = &controllers[d["controller_index"].as_u64().unwrap() as usize];
        assert_eq!(
            (c["kind"].as_str(), c["model"].as_str()),
            (Some("scsi"), Some("lsilogic")),
            "{v}"
        );
    }
    let drives = v["hardware"]["drives"].as_array().unwrap();
    assert!(drives.iter().any(|d| d["kind"] == "cdrom"), "{v}");
    assert_eq!(v["nics"][0]["model"], "vmxnet3", "{v}");
    assert_eq!(v["nics"][0]["network"], "VM Network", "{v}");
}
