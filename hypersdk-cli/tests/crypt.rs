//! `hyperctl encrypt` / `hyperctl decrypt`: round trips, and clear one-line
//! failures that leave no output for a wrong passphrase or an altered file.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::fs;

use hypersdk_testsupport::{path_str, workspace_root};

#[test]
fn encrypt_decrypt_round_trip_and_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let src = workspace_root().join("examples/vms/disks/demo-root.qcow2");
    let pass = tmp.path().join("pass");
    fs::write(&pass, "a long passphrase\n").unwrap();
    let enc = tmp.path().join("disk.enc");
    let dec = tmp.path().join("disk.dec");
    let o = hyperctl(&[
        "encrypt",
        path_str(&src),
        path_str(&enc),
        "--passphrase-file",
        path_str(&pass),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = hyperctl(&[
        "decrypt",
        path_str(&enc),
        path_str(&dec),
        "--passphrase-file",
        path_str(&pass),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&dec).unwrap() == fs::read(&src).unwrap());

    let fails = |args: &[&str], needle: &str| {
        let out = tmp.path().join("never");
        let mut a = args.to_vec();
        a.insert(2, path_str(&out));
        let o = hyperctl(&a);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(!out.exists());
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };
    // wrong passphrase
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "not it\n").unwrap();
    fails(
        &[
            "decrypt",
            path_str(&enc),
            "--passphrase-file",
            path_str(&wrong),
        ],
        "wrong key or passphrase",
    );
    // one byte altered deep inside
    let mut bytes = fs::read(&enc).unwrap();
    bytes[2_000_000] ^= 0x10;
    let altered = tmp.path().join("altered.enc");
    fs::write(&altered, &bytes).unwrap();
    fails(
        &[
            "decrypt",
            path_str(&altered),
            "--passphrase-file",
            path_str(&pass),
        ],
        "failed authentication",
    );
    // the header tampered with: a damaged header, not a wrong passphrase
    let mut bytes = fs::read(&enc).unwrap();
    bytes[30] ^= 0x01; // inside the salt
    let tampered = tmp.path().join("tampered.enc");
    fs::write(&tampered, &bytes).unwrap();
    fails(
        &[
            "decrypt",
            path_str(&tampered),
            "--passphrase-file",
            path_str(&pass),
        ],
        "damaged header",
    );
    // a header asking argon2id for 4 GiB: refused before any work
    let mut bytes = fs::read(&enc).unwrap();
    bytes[12..16].copy_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
    let greedy = tmp.path().join("greedy.enc");
    fs::write(&greedy, &bytes).unwrap();
    // (the checksum now fails first; recompute it as a crafted file would)
    fix_header_checksum(&greedy);
    fails(
        &[
            "decrypt",
            path_str(&greedy),
            "--passphrase-file",
            path_str(&pass),
        ],
        "more than the 256 MiB accepted",
    );
    // truncated
    let bytes = fs::read(&enc).unwrap();
    let cut = tmp.path().join("cut.enc");
    fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    fails(
        &[
            "decrypt",
            path_str(&cut),
            "--passphrase-file",
            path_str(&pass),
        ],
        "failed authentication",
    );
    // a key file where a passphrase was used
    let key = tmp.path().join("key");
    fs::write(&key, "11".repeat(32)).unwrap();
    fails(
        &["decrypt", path_str(&enc), "--key-file", path_str(&key)],
        "passphrase, not a key file",
    );
}

/// Rewrites the CRC-16/CCITT-FALSE header checksum (bytes 11 and 47) of an
/// encrypted file, as someone crafting a header would.
fn fix_header_checksum(path: &std::path::Path) {
    let mut b = fs::read(path).unwrap();
    let mut crc: u16 = 0xffff;
    for (i, &x) in b[..48].iter().enumerate() {
        let x = if i == 11 || i == 47 { 0 } else { x };
        crc ^= u16::from(x) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    b[11] = (crc >> 8) as u8;
    b[47] = crc as u8;
    fs::write(path, b).unwrap();
}

#[test]
fn a_closed_stdout_ends_hyperctl_quietly() {
    let dir = workspace_root().join("examples/vms");
    let exe = env!("CARGO_BIN_EXE_hyperctl");
    // More output than a pipe holds (64 KiB), so that writes certainly
    // continue after `head` has gone.
    let tmp = tempfile::tempdir().unwrap();
    let pad = "x".repeat(60);
    for i in 0..2000 {
        fs::write(
            tmp.path().join(format!("vm{i:04}.xml")),
            format!("<domain><name>vm{i:04}-{pad}</name><memory>1024</memory></domain>"),
        )
        .unwrap();
    }
    for d in [tmp.path(), dir.as_path()] {
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{exe}' vms list --dir '{}' | head -1; exit ${{PIPESTATUS:-0}}",
                d.display()
            ))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
        assert!(err.trim().is_empty(), "{err}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1);
    }
}
