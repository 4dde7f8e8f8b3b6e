//! Exported packages read by an OVF tool people use besides VMware's: the
//! Common OVF Tool (COT, PyPI `cot`), which checks the manifest and lists
//! the hardware. (govc and govmomi's reader are in the vSphere and local
//! provider tests.)

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::python::venv_python;
use hypersdk_testsupport::{path_str, workspace_root};

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
