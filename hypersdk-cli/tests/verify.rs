//! `hyperctl verify` and `hyperctl inspect` on packages: what we export
//! verifies; a changed byte, a missing file or a hostile archive does not.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use hypersdk_testsupport::{path_str, workspace_root};

fn hyperctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperctl"))
        .args(args)
        .output()
        .unwrap()
}

fn export(format: &str, out: &Path) {
    let xml = workspace_root().join("examples/vms/demo-vm.xml");
    let o = hyperctl(&[
        "export",
        path_str(&xml),
        "--format",
        format,
        "--output",
        path_str(out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn error_line(o: &Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn exported_packages_verify_and_tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    export("ova", tmp.path());
    export("ovf", tmp.path());
    let ova = tmp.path().join("demo-vm.ova");
    let dir = tmp.path().join("demo-vm");
    for p in [&ova, &dir, &dir.join("demo-vm.ovf")] {
        let o = hyperctl(&["verify", path_str(p)]);
        assert!(
            o.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = hyperctl(&["inspect", path_str(&ova), "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verified"], true);
    assert_eq!(j["systems"][0]["cpus"], 2);
    assert_eq!(j["systems"][0]["memory_mib"], 1024);
    assert_eq!(j["disks"][0][1], 67108864);

    // one byte changed inside a disk of the directory package
    let disk = dir.join("demo-vm-disk2.vmdk");
    let mut bytes = fs::read(&disk).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    fs::write(&disk, bytes).unwrap();
    let err = error_line(&hyperctl(&["verify", path_str(&dir)]));
    assert!(err.contains("demo-vm-disk2.vmdk SHA256 digest is"), "{err}");

    // a missing disk
    fs::remove_file(&disk).unwrap();
    let err = error_line(&hyperctl(&["verify", path_str(&dir)]));
    assert!(err.contains("demo-vm-disk2.vmdk is missing"), "{err}");

    // one byte changed inside the OVA
    let mut bytes = fs::read(&ova).unwrap();
    let n = bytes.len();
    bytes[n - 4096] ^= 0x40;
    fs::write(&ova, bytes).unwrap();
    let err = error_line(&hyperctl(&["verify", path_str(&ova)]));
    assert!(err.contains("digest is"), "{err}");
}

#[test]
fn hostile_ova_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // A tar whose member climbs out of the target (GNU tar would strip the
    // "../", so the header is built by hand, checksum and all).
    let body = b"<Envelope/>";
    let mut h = hypersdk_formats::ova::tar_header("xxxevil.ovf", body.len() as u64, 0).unwrap();
    h[..11].copy_from_slice(b"../evil.ovf");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = h.to_vec();
    tar.extend_from_slice(body);
    tar.resize(1024, 0);
    tar.extend_from_slice(&[0; 1024]);
    let ova = tmp.path().join("evil.ova");
    fs::write(&ova, tar).unwrap();
    let err = error_line(&hyperctl(&["inspect", path_str(&ova)]));
    assert!(
        err.contains("unsafe OVA member") && err.contains("../evil.ovf"),
        "{err}"
    );
}

#[test]
fn verify_errors_speak_of_reading_and_show_hostile_names_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    export("ova", tmp.path());
    export("ovf", tmp.path());
    // A truncated OVA: a read that failed, never "cannot write".
    let ova = tmp.path().join("demo-vm.ova");
    let bytes = fs::read(&ova).unwrap();
    let cut = tmp.path().join("cut.ova");
    fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = error_line(&hyperctl(&["verify", path_str(&cut)]));
    assert!(!err.contains("cannot write"), "{err}");
    assert!(err.contains("cannot read package"), "{err}");
    // A file whose name holds terminal escapes and a newline, and one with
    // a name of 250 characters, beside a package: shown escaped and cut.
    let dir = tmp.path().join("demo-vm");
    let evil = "evil\u{1b}[2J\nname.vmdk";
    fs::write(dir.join(evil), b"x").unwrap();
    let long = format!("{}.vmdk", "l".repeat(245));
    fs::write(dir.join(&long), b"x").unwrap();
    let o = hyperctl(&["verify", path_str(&dir)]);
    let err = error_line(&o);
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("evil\\u{1b}[2J\\nname.vmdk"), "{err}");
    assert!(err.contains(&format!("{}…", "l".repeat(120))), "{err}");
    assert!(!err.contains(&long), "{err}");
}
