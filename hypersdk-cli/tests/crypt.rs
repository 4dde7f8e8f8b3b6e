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
