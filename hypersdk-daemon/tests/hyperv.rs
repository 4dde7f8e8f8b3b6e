//! hypervisord with a Hyper-V provider in its configuration (the WinRM stub
//! of tests/peers/winrm_hyperv.py and a real Samba server sharing the VHDX
//! files): the inventory lists the host's VMs, a job exports the running VM
//! as an OVA whose disks equal its VHDX files, a cancelled job keeps its
//! checkpoint with its partial export and its retry finishes from the same
//! checkpoint and removes it, and names that are no VM are refused without
//! touching the host.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

mod common;

use common::{
    cancel_then_retry_from_the_kept_snapshot, names_are_not_found, provider_config, unpack, Daemon,
};
use hypersdk_testsupport::hyperv::HyperV;

fn checkpoints_left(hv: &HyperV) -> usize {
    hv.stats()["checkpoints"]["web-1"].as_array().unwrap().len()
}

fn same_disks(hv: &HyperV, dir: &std::path::Path) {
    for (n, rel) in [(1, "web-1\\disk0.vhdx"), (2, "web-1\\data.vhdx")] {
        hypersdk_testsupport::assert_same_guest_data(
            &dir.join(format!("web-1-disk{n}.vmdk")),
            Some("vmdk"),
            &hv.file(rel),
            Some("vhdx"),
        );
    }
}

#[test]
fn a_daemon_exports_hyperv_vms_and_a_cancelled_job_resumes_from_its_checkpoint() {
    let hv = HyperV::start();
    hv.seed_example();
    let tmp = tempfile::tempdir().unwrap();
    let config = provider_config(tmp.path(), "hv", hv.settings(), "password");
    let d = Daemon::start(&config);

    let (code, vms) = d.json("GET", "/api/v1/providers/hv/vms", None);
    assert_eq!(code, 200, "{vms}");
    let listed = vms.to_string();
    assert!(listed.contains("web-1") && listed.contains("db-1"), "{vms}");

    let id = d.submit(r#"{"vm": "web-1", "provider": "hv", "format": "ova", "output": "wave1"}"#);
    let job = d.wait(id, Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    let ova = tmp.path().join("out/wave1/web-1.ova");
    let unpacked = tmp.path().join("unpacked");
    unpack(&ova, &unpacked);
    same_disks(&hv, &unpacked);
    assert_eq!(checkpoints_left(&hv), 0);

    // Cancelled while it reads: the partial export and its checkpoint are
    // kept together; the retry reads the same checkpoint on and removes it.
    cancel_then_retry_from_the_kept_snapshot(
        &d,
        "hv",
        "web-1",
        "wave2",
        || checkpoints_left(&hv),
        || hv.stats()["checkpoints_made"].clone(),
    );
    same_disks(&hv, &tmp.path().join("out/wave2/web-1"));

    // Names that are no VM of the host fail the job naming them, and no
    // script with them reaches PowerShell as code.
    names_are_not_found(
        &d,
        "hv",
        &["../web-1", "web-1'; Remove-VM -Name db-1; '", "web-9"],
    );
    let (_, vms) = d.json("GET", "/api/v1/providers/hv/vms", None);
    assert!(vms.to_string().contains("db-1"), "db-1 still there: {vms}");
    let stats = hv.stats();
    assert_eq!(
        stats["checkpoints_made"], stats["checkpoints_removed"],
        "{stats}"
    );
}
