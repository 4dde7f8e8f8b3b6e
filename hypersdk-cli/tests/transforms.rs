//! `hyperctl export` with compression, encryption, a bandwidth limit and a
//! verify pass, judged by the real tools (zstd, gzip, tar, qemu-img) after
//! `hyperctl unwrap` / `hyperctl decrypt`.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::fs;
use std::path::{Path, PathBuf};

use hypersdk_testsupport::{assert_same_guest_data, path_str, run_tool, workspace_root};

fn example_xml() -> PathBuf {
    workspace_root().join("examples/vms/demo-vm.xml")
}

fn write_key(dir: &Path) -> PathBuf {
    let key = dir.join("key.hex");
    fs::write(&key, "5f".repeat(32)).unwrap();
    key
}

#[test]
fn compressed_encrypted_ova_is_verified_and_unwraps_to_the_plain_ova() {
    let tmp = tempfile::tempdir().unwrap();
    let key = write_key(tmp.path());
    let out = tmp.path().join("out");
    let json = ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&out),
        "--compress",
        "zstd:3",
        "--encrypt-key-file",
        path_str(&key),
        "--verify",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listing(&out), vec!["demo-vm.ova.zst.enc"]);
    let stored = out.join("demo-vm.ova.zst.enc");
    assert_eq!(report["location"], path_str(&stored));
    assert_eq!(report["verified"], true);
    assert_eq!(report["encrypted"], true);
    assert_eq!(report["compression"], "zstd:3");
    assert_eq!(report["ova"]["stored_name"], "demo-vm.ova.zst.enc");
    assert_eq!(
        report["size"].as_u64().unwrap(),
        fs::metadata(&stored).unwrap().len()
    );
    // Not readable as plain data: it starts with our header.
    assert!(fs::read(&stored).unwrap().starts_with(b"HSDKENC\0"));

    // The real zstd reads what is left after decryption.
    let zst = tmp.path().join("demo-vm.ova.zst");
    ok(&[
        "decrypt",
        path_str(&stored),
        path_str(&zst),
        "--key-file",
        path_str(&key),
    ]);
    let by_zstd = tmp.path().join("by-zstd.ova");
    run_tool(
        "zstd",
        &["-q", "-d", path_str(&zst), "-o", path_str(&by_zstd)],
    );

    // hyperctl unwrap does both steps; the result is the OVA the report describes.
    let ova = tmp.path().join("demo-vm.ova");
    ok(&[
        "unwrap",
        path_str(&stored),
        path_str(&ova),
        "--key-file",
        path_str(&key),
    ]);
    assert_eq!(fs::read(&ova).unwrap(), fs::read(&by_zstd).unwrap());
    assert_eq!(report["ova"]["digest"].as_str().unwrap(), sha256_hex(&ova));
    assert_eq!(
        report["ova"]["size"].as_u64().unwrap(),
        fs::metadata(&ova).unwrap().len()
    );
    let verified = ok(&["verify", path_str(&ova)]);
    assert!(verified.contains("verified"), "{verified}");
    let x = tmp.path().join("x");
    fs::create_dir(&x).unwrap();
    run_tool("tar", &["-xf", path_str(&ova), "-C", path_str(&x)]);
    assert_same_guest_data(
        &workspace_root().join("examples/vms/disks/demo-root.qcow2"),
        Some("qcow2"),
        &x.join("demo-vm-disk1.vmdk"),
        Some("vmdk"),
    );

    // The same export without transforms gives the very same OVA bytes.
    let plain = tmp.path().join("plain");
    ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&plain),
    ]);
    assert_eq!(
        fs::read(plain.join("demo-vm.ova")).unwrap(),
        fs::read(&ova).unwrap(),
        "wrapping changes nothing inside"
    );
}

#[test]
fn ovf_directory_with_gzip_passphrase_and_sha512_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let pass = tmp.path().join("pass");
    fs::write(&pass, "correct horse battery staple\n").unwrap();
    let out = tmp.path().join("out");
    let json = ok(&[
        "export",
        path_str(&example_xml()),
        "--format",
        "ovf",
        "--output",
        path_str(&out),
        "--compress",
        "gzip",
        "--encrypt-passphrase-file",
        path_str(&pass),
        "--digest",
        "sha512",
        "--verify",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["digest_algorithm"], "SHA512");
    let dir = out.join("demo-vm");
    assert_eq!(
        listing(&dir),
        vec![
            "demo-vm-disk1.vmdk.gz.enc",
            "demo-vm-disk2.vmdk.gz.enc",
            "demo-vm.mf.gz.enc",
            "demo-vm.ovf.gz.enc"
        ]
    );
    // Without the passphrase: a clear error naming the need, nothing written.
    let plain = tmp.path().join("plain");
    let line = fails(&["unwrap", path_str(&dir), path_str(&plain)]);
    assert!(line.contains("is encrypted"), "{line}");
    // With it: the standard package, whose SHA512 manifest checks out.
    ok(&[
        "unwrap",
        path_str(&dir),
        path_str(&plain),
        "--passphrase-file",
        path_str(&pass),
        "--overwrite",
    ]);
    assert_eq!(
        listing(&plain),
        vec![
            "demo-vm-disk1.vmdk",
            "demo-vm-disk2.vmdk",
            "demo-vm.mf",
            "demo-vm.ovf"
        ]
    );
    let mf = fs::read_to_string(plain.join("demo-vm.mf")).unwrap();
    assert!(mf.lines().all(|l| l.starts_with("SHA512(")), "{mf}");
    let verified = ok(&["verify", path_str(&plain)]);
    assert!(verified.contains("verified — 3 files"), "{verified}");
    // gzip reads the compressed layer.
    let gz = tmp.path().join("disk2.vmdk.gz");
    ok(&[
        "decrypt",
        path_str(&dir.join("demo-vm-disk2.vmdk.gz.enc")),
        path_str(&gz),
        "--passphrase-file",
        path_str(&pass),
    ]);
    run_tool("gzip", &["-t", path_str(&gz)]);
    assert_same_guest_data(
        &workspace_root().join("examples/vms/disks/demo-data.raw"),
        Some("raw"),
        &plain.join("demo-vm-disk2.vmdk"),
        Some("vmdk"),
    );
}

#[test]
fn damaged_or_wrongly_keyed_exports_fail_clearly_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let key = write_key(tmp.path());
    let out = tmp.path().join("out");
    ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&out),
        "--compress",
        "zstd",
        "--encrypt-key-file",
        path_str(&key),
    ]);
    let stored = out.join("demo-vm.ova.zst.enc");
    let target = tmp.path().join("back.ova");

    let other = tmp.path().join("other.hex");
    fs::write(&other, "a0".repeat(32)).unwrap();
    let line = fails(&[
        "unwrap",
        path_str(&stored),
        path_str(&target),
        "--key-file",
        path_str(&other),
    ]);
    assert!(line.contains("wrong key"), "{line}");

    let mut bytes = fs::read(&stored).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    let damaged = tmp.path().join("damaged.ova.zst.enc");
    fs::write(&damaged, &bytes).unwrap();
    let line = fails(&[
        "unwrap",
        path_str(&damaged),
        path_str(&target),
        "--key-file",
        path_str(&key),
    ]);
    assert!(
        line.contains("chunk") && line.contains("authentic"),
        "{line}"
    );
    assert!(!target.exists());
    let leftovers: Vec<String> = listing(tmp.path())
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Bad options are refused before anything starts.
    let fresh = tmp.path().join("fresh");
    for (flag, value, want) in [
        ("--compress", "lzma", "unknown compression"),
        ("--compress", "zstd:42", "zstd level"),
        ("--bwlimit", "fast", "bad bandwidth"),
        ("--bwlimit", "25:00,1M", "time out of range"),
        ("--digest", "md5", "unknown digest"),
    ] {
        let line = fails(&[
            "export",
            path_str(&example_xml()),
            "--output",
            path_str(&fresh),
            flag,
            value,
        ]);
        assert!(line.contains(want), "{flag} {value}: {line}");
    }
    assert!(!fresh.exists() || listing(&fresh).is_empty());
}

#[test]
fn bandwidth_limit_holds_the_export_back() {
    // The example VM's disks are 68 MiB of guest data; at 32 MiB/s reading
    // them cannot take less than about two seconds (less the 3.2 MiB burst).
    // (A lower bound only: a slow machine makes it longer, never shorter.)
    let tmp = tempfile::tempdir().unwrap();
    let json = ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(tmp.path()),
        "--bwlimit",
        "32M",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let secs = report["duration_secs"].as_f64().unwrap();
    assert!(secs >= 1.9, "68 MiB at 32 MiB/s took only {secs:.2} s");
    assert_eq!(report["bytes_read"].as_u64().unwrap(), 68 << 20);
}

#[test]
fn verify_reads_a_wrapped_ova_in_one_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let key = write_key(tmp.path());
    let out = tmp.path().join("out");
    ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&out),
        "--compress",
        "zstd",
        "--encrypt-key-file",
        path_str(&key),
    ]);
    let stored = out.join("demo-vm.ova.zst.enc");
    let v = ok(&["verify", path_str(&stored), "--key-file", path_str(&key)]);
    assert!(v.contains("verified — 3 files"), "{v}");
    let line = fails(&["verify", path_str(&stored)]);
    assert!(line.contains("is encrypted"), "{line}");

    // Only compressed: no key needed; and the stream reader agrees with the
    // seeking one on the plain OVA.
    let zout = tmp.path().join("z");
    ok(&[
        "export",
        path_str(&example_xml()),
        "--output",
        path_str(&zout),
        "--compress",
        "gzip",
    ]);
    let v = ok(&["verify", path_str(&zout.join("demo-vm.ova.gz")), "--json"]);
    let streamed: serde_json::Value = serde_json::from_str(&v).unwrap();
    let plain = tmp.path().join("plain.ova");
    ok(&[
        "unwrap",
        path_str(&zout.join("demo-vm.ova.gz")),
        path_str(&plain),
    ]);
    let v = ok(&["verify", path_str(&plain), "--json"]);
    let seeking: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(streamed["verified"], true);
    assert_eq!(streamed["files"].as_array().unwrap().len(), 4);
    for key in [
        "verified", "failures", "files", "manifest", "systems", "disks", "networks",
    ] {
        assert_eq!(streamed[key], seeking[key], "{key}");
    }

    // A member changed inside the archive (re-wrapped so the outer layers
    // are sound): the manifest check catches it.
    let mut ova = fs::read(&plain).unwrap();
    let at = ova.len() - 2048;
    ova[at] ^= 1;
    let tampered = tmp.path().join("tampered.ova");
    fs::write(&tampered, &ova).unwrap();
    let gz = tmp.path().join("tampered.ova.gz");
    run_tool(
        "sh",
        &[
            "-c",
            &format!("gzip -c {} > {}", path_str(&tampered), path_str(&gz)),
        ],
    );
    let line = fails(&["verify", path_str(&gz)]);
    assert!(line.contains("digest is"), "{line}");
}
