//! hypervisord with a Proxmox VE provider in its configuration (the API
//! stub of tests/peers/proxmox_api.py and a real OpenSSH server as the
//! node): the inventory lists the cluster's VMs, a job exports the running
//! VM as an OVA whose disks equal its volumes, a cancelled job keeps its
//! snapshot with its partial export and its retry finishes and deletes it,
//! and names that are no VM are refused without touching the cluster.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

mod common;

use common::{
    cancel_then_retry_from_the_kept_snapshot, names_are_not_found, provider_config, unpack, Daemon,
};
use hypersdk_testsupport::proxmox::{make_parent, Proxmox};
use hypersdk_testsupport::{mixed_content, path_str, run_tool};
use serde_json::json;

fn seed(pve: &Proxmox) {
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in [
        ("vm-100-disk-0.qcow2", 24 << 20),
        ("vm-100-disk-1.qcow2", 8 << 20),
    ] {
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, mixed_content(size)).unwrap();
        let file = pve.volume(100, name);
        make_parent(&file);
        run_tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                path_str(&raw),
                path_str(&file),
            ],
        );
    }
    pve.seed_vm(
        "pve1",
        100,
        "running",
        json!({
            "name": "web-1", "cores": 2, "memory": 2048, "boot": "order=scsi0",
            "scsi0": "local:100/vm-100-disk-0.qcow2,size=24M",
            "virtio1": "local:100/vm-100-disk-1.qcow2,size=8M",
            "net0": "virtio=BC:24:11:2A:3B:4C,bridge=vmbr0",
        }),
    );
}

fn snapshots_left(pve: &Proxmox) -> usize {
    pve.stats()["snapshots"]["100"].as_array().unwrap().len()
}

#[test]
fn a_daemon_exports_proxmox_vms_and_a_cancelled_job_resumes_from_its_snapshot() {
    let pve = Proxmox::start();
    seed(&pve);
    let tmp = tempfile::tempdir().unwrap();
    let config = provider_config(tmp.path(), "pve", pve.settings(), "token");
    let d = Daemon::start(&config);

    let (code, vms) = d.json("GET", "/api/v1/providers/pve/vms", None);
    assert_eq!(code, 200, "{vms}");
    assert!(vms.to_string().contains("web-1"), "{vms}");

    let id = d.submit(r#"{"vm": "web-1", "provider": "pve", "format": "ova", "output": "wave1"}"#);
    let job = d.wait(id, Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    let ova = tmp.path().join("out/wave1/web-1.ova");
    let unpacked = tmp.path().join("unpacked");
    unpack(&ova, &unpacked);
    for (n, vol) in [(1, "vm-100-disk-0.qcow2"), (2, "vm-100-disk-1.qcow2")] {
        hypersdk_testsupport::assert_same_guest_data(
            &unpacked.join(format!("web-1-disk{n}.vmdk")),
            Some("vmdk"),
            &pve.volume(100, vol),
            Some("qcow2"),
        );
    }
    assert_eq!(snapshots_left(&pve), 0);

    // Cancelled while it reads: the partial export and its snapshot are
    // kept together; the retry reads the same snapshot on and deletes it.
    cancel_then_retry_from_the_kept_snapshot(
        &d,
        "pve",
        "web-1",
        "wave2",
        || snapshots_left(&pve),
        || pve.stats()["snapshots_made"].clone(),
    );
    for (n, vol) in [(1, "vm-100-disk-0.qcow2"), (2, "vm-100-disk-1.qcow2")] {
        hypersdk_testsupport::assert_same_guest_data(
            &tmp.path()
                .join(format!("out/wave2/web-1/web-1-disk{n}.vmdk")),
            Some("vmdk"),
            &pve.volume(100, vol),
            Some("qcow2"),
        );
    }

    // Names that are no VM of the cluster fail the job naming them.
    names_are_not_found(&d, "pve", &["../web-1", "pve1/../100", "web-9"]);
    assert_eq!(snapshots_left(&pve), 0);
}
