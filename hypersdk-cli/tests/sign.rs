//! Signed packages: `--sign-key-file`/`--sign-cert-file` write a `.cert` as
//! ovftool's `--privateKey` does; OpenSSL (the peer) verifies its signature
//! over the manifest, and `hyperctl verify` checks it and refuses a changed
//! one.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::Path;

use hypersdk_testsupport::{path_str, run_tool, workspace_root};

/// An RSA key and a self-signed certificate for it, made by OpenSSL.
fn key_and_cert(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    run_tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ],
    );
    (path_str(&key).to_string(), path_str(&cert).to_string())
}

/// Checks `.cert` file `cert` over manifest `mf` with OpenSSL.
fn openssl_verifies(dir: &Path, cert: &Path, mf: &Path) -> bool {
    let text = std::fs::read_to_string(cert).unwrap();
    let (line, pem) = text.split_once('\n').unwrap();
    let (head, hex) = line.split_once(")= ").unwrap();
    assert!(head.starts_with("SHA256("), "{line}");
    let sig: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    std::fs::write(dir.join("sig.bin"), sig).unwrap();
    std::fs::write(dir.join("signer.pem"), pem).unwrap();
    let public = run_tool(
        "openssl",
        &[
            "x509",
            "-pubkey",
            "-noout",
            "-in",
            path_str(&dir.join("signer.pem")),
        ],
    );
    std::fs::write(dir.join("signer.pub"), public).unwrap();
    std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(dir.join("signer.pub"))
        .arg("-signature")
        .arg(dir.join("sig.bin"))
        .arg(mf)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_signed_package_verifies_with_openssl_and_hyperctl() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = key_and_cert(tmp.path(), "signer");
    let xml = workspace_root().join("examples/vms/demo-vm.xml");
    let export = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "export",
            path_str(&xml),
            "--output",
            path_str(out),
            "--sign-key-file",
            &key,
            "--sign-cert-file",
            &cert,
        ];
        args.extend_from_slice(extra);
        ok(&args);
    };

    // An OVF directory: the .cert next to the manifest.
    let ovf = tmp.path().join("ovf");
    export(&ovf, &["--format", "ovf"]);
    let dir = ovf.join("demo-vm");
    assert!(openssl_verifies(
        tmp.path(),
        &dir.join("demo-vm.cert"),
        &dir.join("demo-vm.mf")
    ));
    let out = ok(&["verify", path_str(&dir)]);
    assert!(
        out.contains("SHA256 signature, certificate SHA-256"),
        "{out}"
    );

    // An OVA (written in place) and a wrapped one (written front to back):
    // the .cert is the member right after the manifest.
    for (name, extra) in [("ova", vec![]), ("zst", vec!["--compress", "zstd"])] {
        let out_dir = tmp.path().join(name);
        export(&out_dir, &extra);
        let file = if name == "ova" {
            "demo-vm.ova"
        } else {
            "demo-vm.ova.zst"
        };
        let package = out_dir.join(file);
        let verified = ok(&["verify", path_str(&package)]);
        assert!(verified.contains("SHA256 signature"), "{verified}");
        if name == "ova" {
            let members = run_tool("tar", &["-tf", path_str(&package)]);
            let members: Vec<&str> = members.lines().collect();
            assert_eq!(
                &members[..3],
                &["demo-vm.ovf", "demo-vm.mf", "demo-vm.cert"]
            );
            let x = tmp.path().join("x");
            std::fs::create_dir_all(&x).unwrap();
            run_tool("tar", &["-xf", path_str(&package), "-C", path_str(&x)]);
            assert!(openssl_verifies(
                tmp.path(),
                &x.join("demo-vm.cert"),
                &x.join("demo-vm.mf")
            ));
            let inspected = ok(&["inspect", path_str(&package)]);
            assert!(
                inspected.contains("signed:    SHA256 signature"),
                "{inspected}"
            );
        }
    }

    // A changed signature is refused, naming the .cert.
    let certfile = dir.join("demo-vm.cert");
    let text = std::fs::read_to_string(&certfile).unwrap();
    let at = text.find(")= ").unwrap() + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&certfile, bytes).unwrap();
    let err = fails(&["verify", path_str(&dir)]);
    assert!(
        err.contains("demo-vm.cert") && err.contains("does not verify"),
        "{err}"
    );

    // A certificate of another key, or a key without its certificate.
    let (_, other) = key_and_cert(tmp.path(), "other");
    let err = fails(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&tmp.path().join("bad")),
        "--sign-key-file",
        &key,
        "--sign-cert-file",
        &other,
    ]);
    assert!(
        err.contains("is not the certificate of signing key"),
        "{err}"
    );
    let o = hyperctl(&[
        "export",
        path_str(&xml),
        "--output",
        path_str(&tmp.path().join("bad")),
        "--sign-key-file",
        &key,
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("--sign-cert-file"), "{err}");
}
