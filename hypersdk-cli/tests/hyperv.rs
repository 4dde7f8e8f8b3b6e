//! `hyperctl export --provider hyperv` against the WinRM stub
//! (tests/peers/winrm_hyperv.py) and a real Samba server sharing VHDX files
//! qemu-img made: a running VM with two disks of mixed content is exported
//! as OVF and OVA from a checkpoint that is gone afterwards, its disks
//! equal to the VHDX files by `qemu-img compare` and its OVF hardware equal
//! to what Hyper-V reports; a cut SMB connection and a kill -9 each end in
//! a `--resume` that gives the same disks; a wrong password, a wrong
//! fingerprint and an unreachable share each give one clear error.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::hyperv::{HyperV, PASSWORD};
use hypersdk_testsupport::{assert_same_guest_data, path_str};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A provider config file, the password in a file of its own.
fn config_file(hv: &HyperV, name: &str, tweak: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let pw = hv.dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let mut s = hv.settings();
    let o = s.as_object_mut().unwrap();
    o.remove("password");
    o.insert("password_file".into(), json!(pw));
    tweak(&mut s);
    let file = hv.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, s.to_string()).unwrap();
    file
}

fn same_disks(hv: &HyperV, out: &Path) {
    for (n, rel) in [(1, "web-1\\disk0.vhdx"), (2, "web-1\\data.vhdx")] {
        assert_same_guest_data(
            &out.join(format!("web-1/web-1-disk{n}.vmdk")),
            Some("vmdk"),
            &hv.file(rel),
            Some("vhdx"),
        );
    }
}

fn no_checkpoints_left(hv: &HyperV) {
    let stats = hv.stats();
    for (vm, c) in stats["checkpoints"].as_object().unwrap() {
        assert!(c.as_array().unwrap().is_empty(), "VM {vm}: {stats}");
    }
    assert_eq!(
        stats["checkpoints_made"], stats["checkpoints_removed"],
        "{stats}"
    );
}

#[test]
fn a_running_hyperv_vm_exports_as_ovf_and_ova_from_a_checkpoint() {
    let hv = HyperV::start();
    hv.seed_example();
    let config = config_file(&hv, "hv", |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let export = |vm: &str, format: &str| {
        hyperctl_env(
            &[
                "export",
                vm,
                "--provider",
                "hyperv",
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
    assert!(!stderr(&o).contains(PASSWORD), "the password was printed");
    same_disks(&hv, &out);
    let ovf = std::fs::read_to_string(out.join("web-1/web-1.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"),
        "4 processors: {ovf}"
    );
    assert!(ovf.contains("4096"), "4 GiB");
    assert!(ovf.contains("efi"), "generation 2: UEFI");
    assert!(ovf.contains("00:15:5d:01:02:03"), "the NIC's MAC");
    assert!(ovf.contains("External"), "the NIC's switch");
    assert!(ovf.contains("VmxNet3"), "netvsc: a paravirtual adapter");
    assert_eq!(hv.stats()["checkpoints_made"], 1);
    no_checkpoints_left(&hv);

    let o = export("0f4b2c1e-1111-2222-3333-444455556666", "ova");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("web-1.ova").exists());
    no_checkpoints_left(&hv);

    // The generation 1 VM on IDE.
    let o = export("db-1", "ovf");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_guest_data(
        &out.join("db-1/db-1-disk1.vmdk"),
        Some("vmdk"),
        &hv.file("db-1\\disk0.vhdx"),
        Some("vhdx"),
    );
    no_checkpoints_left(&hv);

    // The URL form, with the rest as options.
    let list = ok_env(
        &[
            "vms",
            "list",
            "--provider",
            &format!("hyperv://Administrator@127.0.0.1:{}", hv.port),
            "--provider-opt",
            &format!("fingerprint={}", hv.fingerprint),
            "--provider-opt",
            &format!("password={PASSWORD}"),
        ],
        &[],
    );
    assert!(list.contains("web-1") && list.contains("db-1"), "{list}");
}

#[test]
fn wrong_password_fingerprint_unreachable_share_and_missing_vm_each_give_one_clear_error() {
    let hv = HyperV::start();
    hv.seed_example();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = |config: &Path, vm: &str| {
        fails_env(
            &[
                "export",
                vm,
                "--provider",
                "hyperv",
                "--provider-config",
                path_str(config),
                "--output",
                path_str(&out),
            ],
            &[],
        )
    };
    let c = config_file(&hv, "badpw", |s| {
        s["password"] = json!("not-the-password");
        s.as_object_mut().unwrap().remove("password_file");
    });
    let line = run(&c, "web-1");
    assert!(
        line.contains("refused") && line.contains("Administrator"),
        "{line}"
    );
    assert!(!line.contains("not-the-password"), "{line}");
    let c = config_file(&hv, "badfp", |s| s["fingerprint"] = json!("AA:BB:CC"));
    let line = run(&c, "web-1");
    assert!(
        line.contains("not trusted") && line.contains(&hv.fingerprint),
        "{line}"
    );
    let c = config_file(&hv, "noshare", |s| s["smb_port"] = json!(1));
    let line = run(&c, "web-1");
    assert!(
        line.contains("SMB") && line.contains("127.0.0.1:1"),
        "{line}"
    );
    let c = config_file(&hv, "good", |_| {});
    let line = run(&c, "web-9");
    assert!(line.contains("web-9"), "{line}");
    assert!(!out.join("web-1").exists());
    no_checkpoints_left(&hv);
}

#[test]
fn a_cut_connection_and_a_kill_9_each_end_in_a_resume_with_the_same_disks() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let hv = HyperV::start();
    hv.seed_example();
    let config = config_file(&hv, "hv", |_| {});
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let config_arg = path_str(&config);
    let args = |resume: bool| {
        resumable_ovf_export(
            &[
                "export",
                "web-1",
                "--provider",
                "hyperv",
                "--provider-config",
                config_arg,
            ],
            &out,
            resume,
            "1M",
        )
    };
    let checkpoint = out.join(".web-1.partial/.checkpoint.json");

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
    hv.cut_connections();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "the export survived the cut");
    let err = stderr(&o);
    assert!(err.contains("SMB"), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(checkpoint.exists(), "the partial export is kept");
    assert_eq!(
        hv.stats()["checkpoints"]["web-1"].as_array().unwrap().len(),
        1,
        "the checkpoint is kept for the resume"
    );
    let o = hyperctl_env(&args(true), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_disks(&hv, &out);
    assert_eq!(hv.stats()["checkpoints_made"], 1, "the resume reused it");
    no_checkpoints_left(&hv);

    std::fs::remove_dir_all(&out).unwrap();
    kill_9_while_reading(&args(false), &[], &checkpoint, Duration::from_millis(1500));
    let o = hyperctl_env(&args(true), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    same_disks(&hv, &out);
    assert_eq!(hv.stats()["checkpoints_made"], 2);
    no_checkpoints_left(&hv);
}
