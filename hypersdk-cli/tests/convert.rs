//! `hyperctl convert` and `hyperctl inspect`, judged by qemu-img.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::fs;

use hypersdk_testsupport::{assert_image_ok, assert_same_guest_data, path_str, workspace_root};

#[test]
fn qcow2_to_vmdk_to_raw_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = workspace_root().join("examples/vms/disks/demo-root.qcow2");
    let vmdk = tmp.path().join("d.vmdk");
    let raw = tmp.path().join("d.raw");
    let o = hyperctl(&[
        "convert",
        path_str(&src),
        path_str(&vmdk),
        "--to",
        "vmdk",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["input_format"], "qcow2");
    assert_eq!(r["data_read"], 3670016, "only allocated clusters are read");
    assert_image_ok(&vmdk);
    assert_same_guest_data(&src, Some("qcow2"), &vmdk, Some("vmdk"));
    let o = hyperctl(&["convert", path_str(&vmdk), path_str(&raw), "--to", "raw"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_guest_data(&src, Some("qcow2"), &raw, Some("raw"));
    let o = hyperctl(&["inspect", path_str(&vmdk), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["format"], "vmdk");
    assert_eq!(r["virtual_size"], 67108864);
    assert_eq!(r["allocated"], 3670016);
    // existing output is refused
    let o = hyperctl(&["convert", path_str(&src), path_str(&vmdk), "--to", "vmdk"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn corrupt_input_fails_clearly_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = workspace_root().join("examples/vms/disks/demo-root.qcow2");
    let bad = tmp.path().join("bad.qcow2");
    let mut bytes = fs::read(&src).unwrap();
    bytes.truncate(200_000); // the data clusters are gone
    fs::write(&bad, bytes).unwrap();
    let out = tmp.path().join("out.vmdk");
    let o = hyperctl(&["convert", path_str(&bad), path_str(&out), "--to", "vmdk"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("error: cannot convert")
            && err.contains("corrupt qcow2")
            && err.lines().count() == 1,
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec!["bad.qcow2"]);
}

#[test]
fn vhdx_from_qemu_img_converts_and_inspects() {
    let tmp = tempfile::tempdir().unwrap();
    let src = workspace_root().join("examples/vms/disks/demo-root.qcow2");
    let vhdx = tmp.path().join("d.vhdx");
    hypersdk_testsupport::run_tool(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "subformat=dynamic,block_size=1M",
            path_str(&src),
            path_str(&vhdx),
        ],
    );
    let o = hyperctl(&["inspect", path_str(&vhdx), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["format"], "vhdx");
    assert_eq!(r["virtual_size"], 67108864);
    for to in ["vmdk", "qcow2", "raw"] {
        let out = tmp.path().join(format!("d.{to}"));
        let o = hyperctl(&[
            "convert",
            path_str(&vhdx),
            path_str(&out),
            "--to",
            to,
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["input_format"], "vhdx");
        assert_same_guest_data(&vhdx, Some("vhdx"), &out, Some(to));
    }
    // A VHDX whose headers are both damaged: one line naming the structure.
    let mut bytes = fs::read(&vhdx).unwrap();
    bytes[(64 << 10) + 200] ^= 1;
    bytes[(128 << 10) + 200] ^= 1;
    let bad = tmp.path().join("bad.vhdx");
    fs::write(&bad, bytes).unwrap();
    let o = hyperctl(&["inspect", path_str(&bad)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("corrupt VHDX: neither header"),
        "{err}"
    );
}
