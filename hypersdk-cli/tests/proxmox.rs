//! `hyperctl export --provider proxmox` against the PVE API stub
//! (tests/peers/proxmox_api.py) and a real OpenSSH server as the node,
//! serving qcow2/raw files qemu-img made: a running VM with two disks of
//! mixed content is exported as OVF and OVA through a snapshot that is gone
//! afterwards, its disks equal to the volumes by `qemu-img compare` and its
//! OVF hardware equal to its configuration; a cut connection and a kill -9
//! each end in a `--resume` that gives the same disks; a bad token, a wrong
//! fingerprint and a missing VM each give one clear error.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::proxmox::{make_parent, Proxmox, TOKEN};
use hypersdk_testsupport::{assert_same_guest_data, mixed_content, path_str, run_tool};
use serde_json::json;
use std::path::{Path, PathBuf};

/// VM 100 "web-1" (running; qcow2 scsi0 of 24 MiB and qcow2 virtio1 of
/// 8 MiB) and VM 101 "db-1" (stopped; raw sata0 of 8 MiB).
fn seed(pve: &Proxmox) {
    let dir = tempfile::tempdir().unwrap();
    for (vmid, name, fmt, size) in [
        (100, "vm-100-disk-0.qcow2", "qcow2", 24 << 20),
        (100, "vm-100-disk-1.qcow2", "qcow2", 8 << 20),
        (101, "vm-101-disk-0.raw", "raw", 8 << 20),
    ] {
        let mut data = mixed_content(size);
        data[..name.len()].copy_from_slice(name.as_bytes());
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, &data).unwrap();
        let file = pve.volume(vmid, name);
        make_parent(&file);
        run_tool(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                fmt,
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
            "name": "web-1", "cores": 2, "sockets": 2, "memory": "3072", "bios": "ovmf",
            "machine": "q35", "ostype": "l26", "boot": "order=scsi0;net0",
            "scsi0": "local:100/vm-100-disk-0.qcow2,size=24M",
            "virtio1": "local:100/vm-100-disk-1.qcow2,size=8M",
            "ide2": "none,media=cdrom",
            "net0": "virtio=BC:24:11:2A:3B:4C,bridge=vmbr0,firewall=1",
        }),
    );
    pve.seed_vm(
        "pve2",
        101,
        "stopped",
        json!({
            "name": "db-1", "cores": 1, "memory": 1024, "ostype": "win10",
            "sata0": "local:101/vm-101-disk-0.raw,size=8M",
        }),
    );
}

/// A provider config file (the same fields as a daemon's `providers:`
/// entry), the token in a file of its own.
fn config_file(pve: &Proxmox, tweak: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let token = pve.dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut s = pve.settings();
    let o = s.as_object_mut().unwrap();
    o.remove("token");
    o.insert("token_file".into(), json!(token));
    tweak(&mut s);
    let file = pve.dir.path().join(format!("pve-{}.yaml", rand_suffix()));
    std::fs::write(&file, s.to_string()).unwrap();
    file
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn same_disks(pve: &Proxmox, out: &Path) {
    for (n, vol) in [(1, "vm-100-disk-0.qcow2"), (2, "vm-100-disk-1.qcow2")] {
        assert_same_guest_data(
            &out.join(format!("web-1/web-1-disk{n}.vmdk")),
            Some("vmdk"),
            &pve.volume(100, vol),
            Some("qcow2"),
        );
    }
}

/// No snapshot made by an export is left on any VM.
fn no_snapshots_left(pve: &Proxmox) {
    let stats = pve.stats();
    for (vm, snaps) in stats["snapshots"].as_object().unwrap() {
        assert!(snaps.as_array().unwrap().is_empty(), "VM {vm}: {stats}");
    }
    assert_eq!(
        stats["snapshots_made"], stats["snapshots_deleted"],
        "{stats}"
    );
}

#[test]
fn a_running_proxmox_vm_exports_as_ovf_and_ova_through_a_snapshot() {
    let pve = Proxmox::start();
    seed(&pve);
    let config = config_file(&pve, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let export = |vm: &str, format: &str| {
        hyperctl_env(
            &[
                "export",
                vm,
                "--provider",
                "proxmox",
                "--provider-config",
                path_str(&config),
                "--format",
                format,
                "--output",
                path_str(&out),
                "--verify",
                "--json",
            ],
            &[],
        )
    };
    let o = export("web-1", "ovf");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert!(!stderr(&o).contains(TOKEN), "the token was printed");
    same_disks(&pve, &out);
    let ovf = std::fs::read_to_string(out.join("web-1/web-1.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"),
        "2 sockets x 2 cores: {ovf}"
    );
    assert!(ovf.contains("3072"), "3 GiB");
    assert!(ovf.contains("efi"), "OVMF firmware");
    assert!(
        ovf.to_ascii_lowercase().contains("bc:24:11:2a:3b:4c"),
        "the NIC's MAC"
    );
    assert!(ovf.contains("vmbr0"), "the NIC's bridge");
    assert_eq!(
        pve.stats()["snapshots_made"],
        1,
        "a running VM is snapshotted"
    );
    no_snapshots_left(&pve);

    let o = export("pve1/100", "ova");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("web-1.ova").exists());
    no_snapshots_left(&pve);

    // The stopped VM: no snapshot, the raw volume read as it is.
    let o = export("db-1", "ovf");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_guest_data(
        &out.join("db-1/db-1-disk1.vmdk"),
        Some("vmdk"),
        &pve.volume(101, "vm-101-disk-0.raw"),
        Some("raw"),
    );
    assert_eq!(pve.stats()["snapshots_made"], 2);

    // The URL form, the token from the environment Proxmox's tools read.
    let list = ok_env(
        &[
            "vms",
            "list",
            "--provider",
            &format!("proxmox://127.0.0.1:{}", pve.port),
            "--provider-opt",
            &format!("fingerprint={}", pve.fingerprint),
        ],
        &[("PROXMOX_TOKEN", TOKEN)],
    );
    assert!(list.contains("web-1") && list.contains("db-1"), "{list}");
}

#[test]
fn bad_token_wrong_fingerprint_and_missing_vm_each_give_one_clear_error() {
    let pve = Proxmox::start();
    seed(&pve);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |config: &Path, vm: &str| {
        fails_env(
            &[
                "export",
                vm,
                "--provider",
                "proxmox",
                "--provider-config",
                path_str(config),
                "--output",
                path_str(&out),
            ],
            &[],
        )
    };
    let bad_token = config_file(&pve, |s| {
        s["token"] = json!("root@pam!hypersdk=not-the-secret");
        s.as_object_mut().unwrap().remove("token_file");
    });
    let line = run(&bad_token, "web-1");
    assert!(line.contains("token was refused"), "{line}");
    assert!(
        !line.contains("not-the-secret"),
        "the secret was printed: {line}"
    );
    let wrong_fp = config_file(&pve, |s| s["fingerprint"] = json!("AA:BB:CC"));
    let line = run(&wrong_fp, "web-1");
    assert!(
        line.contains("not trusted") && line.contains(&pve.fingerprint),
        "{line}"
    );
    let good = config_file(&pve, |_| {});
    let line = run(&good, "web-9");
    assert!(line.contains("web-9"), "{line}");
    let wrong_host_key = config_file(&pve, |s| s["ssh_host_keys"] = json!(["SHA256:AAAA"]));
    let line = run(&wrong_host_key, "db-1");
    assert!(line.contains("host key"), "{line}");
    assert!(!out.join("web-1").exists() && !out.join("db-1").exists());
    no_snapshots_left(&pve);
}

#[test]
fn a_cut_connection_and_a_kill_9_each_end_in_a_resume_with_the_same_disks() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let pve = Proxmox::start();
    seed(&pve);
    let config = config_file(&pve, |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let config_arg = path_str(&config);
    // 32 MiB of disks at 1 MiB/s: slow enough to be interrupted midway.
    let args = |resume: bool| {
        resumable_ovf_export(
            &[
                "export",
                "web-1",
                "--provider",
                "proxmox",
                "--provider-config",
                config_arg,
            ],
            &out,
            resume,
            "1M",
        )
    };
    let checkpoint = out.join(".web-1.partial/.checkpoint.json");

    // The network drops mid-export: the export fails naming the lost
    // connection and keeps its partial export.
    let child = Command::new(env!("CARGO_BIN_EXE_hyperctl"))
        .args(args(false))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && !std::fs::read_to_string(&checkpoint).is_ok_and(|c| c.contains("\"source\""))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    pve.cut_connections();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "the export survived the cut");
    let err = stderr(&o);
    assert!(err.contains("connection to node"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(checkpoint.exists(), "the partial export is kept");
    assert_eq!(
        pve.stats()["snapshots"]["100"].as_array().unwrap().len(),
        1,
        "the snapshot is kept for the resume"
    );
    let o = hyperctl_env(&args(true), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_disks(&pve, &out);
    assert_eq!(pve.stats()["snapshots_made"], 1, "the resume reused it");
    no_snapshots_left(&pve);

    // kill -9 mid-export, then --resume.
    std::fs::remove_dir_all(&out).unwrap();
    kill_9_while_reading(&args(false), &[], &checkpoint, Duration::from_millis(1500));
    let o = hyperctl_env(&args(true), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_disks(&pve, &out);
    assert_eq!(pve.stats()["snapshots_made"], 2);
    no_snapshots_left(&pve);

    // kill -9, and an administrator deletes the kept snapshot: --resume
    // takes a new one and the disks start over (never bytes of two moments).
    std::fs::remove_dir_all(&out).unwrap();
    kill_9_while_reading(&args(false), &[], &checkpoint, Duration::from_millis(1500));
    let snap = pve.stats()["snapshots"]["100"][0]
        .as_str()
        .unwrap()
        .to_string();
    run_tool(
        "curl",
        &[
            "-sSk",
            "--fail",
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: PVEAPIToken={TOKEN}"),
            &format!(
                "{}/api2/json/nodes/pve1/qemu/100/snapshot/{snap}",
                pve.url()
            ),
        ],
    );
    let o = hyperctl_env(&args(true), &[("HYPERSDK_LOG", "warn")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("start over"), "{}", stderr(&o));
    same_disks(&pve, &out);
    assert_eq!(pve.stats()["snapshots_made"], 4);
    no_snapshots_left(&pve);
}
