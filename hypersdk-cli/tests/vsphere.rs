//! `hyperctl --provider vsphere` against the govmomi vCenter simulator:
//! connection settings from flags, the environment and a config file; clear
//! one-line errors; an export checked with tar and qemu-img.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::fs;

use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_testsupport::{assert_same_guest_data, mixed_content, path_str, run_tool};

struct Setup {
    sim: Vcsim,
    _dir: tempfile::TempDir,
    password_file: String,
    ca_file: String,
}

fn setup() -> Setup {
    let sim = Vcsim::start_with_login(&[("alpha", &[8, 4])], "migrator", "pa55-word");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    fs::write(&pw, "pa55-word\n").unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, &sim.ca_pem).unwrap();
    Setup {
        password_file: path_str(&pw).to_string(),
        ca_file: path_str(&ca).to_string(),
        sim,
        _dir: dir,
    }
}

#[test]
fn connection_settings_from_flags_environment_and_config_file() {
    let s = setup();
    // Flags, verified TLS through the CA file.
    let list = ok_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere",
            "--url",
            &s.sim.url,
            "--username",
            "migrator",
            "--password-file",
            &s.password_file,
            "--ca-file",
            &s.ca_file,
        ],
        &[],
    );
    assert!(
        list.contains("alpha") && list.contains("DC0_H0_VM0"),
        "{list}"
    );
    // govc's environment variables.
    let show = ok_env(
        &["vms", "show", "alpha", "--json"],
        &[
            ("HYPERSDK_PROVIDER", "vsphere"),
            ("GOVC_URL", &s.sim.url),
            ("GOVC_USERNAME", "migrator"),
            ("GOVC_PASSWORD", "pa55-word"),
            ("GOVC_INSECURE", "1"),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(v["disks"].as_array().unwrap().len(), 2);
    assert_eq!(v["firmware"], "uefi");
    // A config file, with the thumbprint pinned.
    let cfg = s._dir.path().join("vsphere.env");
    fs::write(
        &cfg,
        format!(
            "# test vCenter\nGOVC_URL={}\nGOVC_USERNAME=migrator\nGOVC_PASSWORD=pa55-word\nGOVC_TLS_THUMBPRINT={}\n",
            s.sim.url, s.sim.thumbprint
        ),
    )
    .unwrap();
    let search = ok_env(
        &[
            "vms",
            "search",
            "--name",
            "alp*",
            "--provider",
            "vsphere",
            "--vsphere-config",
            path_str(&cfg),
        ],
        &[],
    );
    assert!(
        search.contains("alpha") && !search.contains("DC0_H0_VM0"),
        "{search}"
    );
    // The registry's URL form, and settings from a --provider-config file
    // plus --provider-opt (the same fields as a daemon's providers: entry).
    let host = s.sim.url.trim_start_matches("https://");
    let host = host.split('/').next().unwrap();
    let list = ok_env(
        &[
            "vms",
            "list",
            "--provider",
            &format!("vsphere://migrator@{host}"),
            "--provider-opt",
            "insecure=true",
        ],
        &[("GOVC_PASSWORD", "pa55-word")],
    );
    assert!(list.contains("alpha"), "{list}");
    let yaml = s._dir.path().join("vc.yaml");
    fs::write(
        &yaml,
        format!(
            "url: {}\nuser: migrator\npassword_file: {}\n",
            s.sim.url, s.password_file
        ),
    )
    .unwrap();
    let list = ok_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere",
            "--provider-config",
            path_str(&yaml),
            "--provider-opt",
            &format!("thumbprint={}", s.sim.thumbprint),
        ],
        &[],
    );
    assert!(list.contains("alpha"), "{list}");
    let line = fails_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere",
            "--provider-config",
            path_str(&yaml),
            "--provider-opt",
            "colour=blue",
        ],
        &[],
    );
    assert!(line.contains("unknown field `colour`"), "{line}");
    let line = fails_env(&["vms", "list", "--provider", "xenserver"], &[]);
    assert!(line.contains("unknown provider kind 'xenserver'"), "{line}");
    let line = fails_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere://root:secret@vc.example",
        ],
        &[],
    );
    assert!(
        line.contains("password in it") && !line.contains("secret"),
        "{line}"
    );
}

#[test]
fn wrong_password_untrusted_certificate_and_missing_url_are_one_line() {
    let s = setup();
    let bad_pw = s._dir.path().join("bad");
    fs::write(&bad_pw, "guess-1234\n").unwrap();
    let line = fails_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere",
            "--url",
            &s.sim.url,
            "--username",
            "migrator",
            "--password-file",
            path_str(&bad_pw),
            "--insecure",
        ],
        &[],
    );
    assert!(
        line.contains("login to 127.0.0.1") && line.contains("'migrator'"),
        "{line}"
    );
    assert!(!line.contains("guess-1234"), "{line}");
    let line = fails_env(
        &[
            "vms",
            "list",
            "--provider",
            "vsphere",
            "--url",
            &s.sim.url,
            "--username",
            "migrator",
            "--password-file",
            &s.password_file,
        ],
        &[],
    );
    assert!(
        line.contains("not trusted") && line.contains(&s.sim.thumbprint),
        "{line}"
    );
    let line = fails_env(&["vms", "list", "--provider", "vsphere"], &[]);
    assert!(line.contains("--url"), "{line}");
}

#[test]
fn export_from_vsphere_to_an_ova() {
    let s = setup();
    for i in 0..2 {
        let mut data = mixed_content(if i == 0 { 8 << 20 } else { 2 << 20 });
        data[0] = 0x5a + i as u8;
        fs::write(s.sim.flat_file("alpha", i), data).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let json = ok_env(
        &[
            "export",
            "alpha",
            "--provider",
            "vsphere",
            "--url",
            &s.sim.url,
            "--username",
            "migrator",
            "--password-file",
            &s.password_file,
            "--ca-file",
            &s.ca_file,
            "--output",
            path_str(out.path()),
            "--verify",
            "--json",
        ],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["provider"], "vsphere");
    assert_eq!(report["verified"], true);
    let ova = out.path().join("alpha.ova");
    let x = tempfile::tempdir().unwrap();
    run_tool("tar", &["-xf", path_str(&ova), "-C", path_str(x.path())]);
    for i in 0..2 {
        assert_same_guest_data(
            &s.sim.flat_file("alpha", i),
            Some("raw"),
            &x.path().join(format!("alpha-disk{}.vmdk", i + 1)),
            Some("vmdk"),
        );
    }
    let verified = ok_env(&["verify", path_str(&ova)], &[]);
    assert!(verified.contains("verified"), "{verified}");
}

#[test]
fn vm_operations_snapshots_power_and_cdrom() {
    let sim = Vcsim::start(&[("web:on", &[2])]);
    let env = [
        ("HYPERSDK_PROVIDER", "vsphere"),
        ("GOVC_URL", sim.url.as_str()),
        ("GOVC_USERNAME", sim.user.as_str()),
        ("GOVC_PASSWORD", sim.password.as_str()),
        ("GOVC_INSECURE", "true"),
    ];
    let out = ok_env(
        &[
            "vms",
            "snapshot",
            "create",
            "web",
            "pre-move",
            "--description",
            "before",
        ],
        &env,
    );
    assert!(out.contains("created snapshot 'pre-move'"), "{out}");
    let list = ok_env(&["vms", "snapshot", "list", "web", "--json"], &env);
    let tree: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(tree[0]["name"], "pre-move");
    ok_env(&["vms", "snapshot", "revert", "web", "pre-move"], &env);
    ok_env(&["vms", "snapshot", "remove", "web", "pre-move"], &env);
    let list = ok_env(&["vms", "snapshot", "list", "web"], &env);
    assert!(list.contains("no snapshots"), "{list}");
    let out = ok_env(&["vms", "eject-cdrom", "web"], &env);
    assert!(out.contains("emptied 1 CD-ROM"), "{out}");
    ok_env(&["vms", "power-off", "web"], &env);
    let show = ok_env(&["vms", "show", "web", "--json"], &env);
    assert!(show.contains("\"power_state\": \"off\""), "{show}");
    // The local provider has no such operations: a clear refusal.
    let line = fails_env(&["vms", "power-off", "demo-vm", "--provider", "local"], &[]);
    assert!(
        line.contains("provider 'local' has no VM operations"),
        "{line}"
    );
}
