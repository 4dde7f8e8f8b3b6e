//! Exports straight into object stores — S3 (moto's server), Azure Blob
//! (Azurite) and Cloud Storage (gcp-storage-emulator): read back with each
//! store's own client (boto3, azure-storage-blob, google-cloud-storage),
//! checked with `hyperctl verify` and qemu-img; interrupted with kill -9 and
//! continued with --resume without sending finished parts again; outputs
//! with a scheme never taken as local paths.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hypersdk_testsupport::gcs::GcsEmulator;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};
use hypersdk_testsupport::{
    assert_same_guest_data, disk_like_content, domain_xml, mixed_content, path_str, workspace_root,
};

fn aws_env(moto: &MotoS3) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", moto.endpoint()),
    ]
}

/// The example VM exported as an OVF directory under `dir/` of a bucket
/// whose keys are `keys`: its four files, downloaded with `download` into
/// `tmp/dir`, verify, and its disks hold the example's guest data.
fn check_example_ovf_dir(keys: &[String], download: &dyn Fn(&str, &Path), tmp: &Path) {
    let dir = tmp.join("dir");
    std::fs::create_dir(&dir).unwrap();
    let mut names = Vec::new();
    for k in keys.iter().filter(|k| k.starts_with("dir/demo-vm/")) {
        let name = k.rsplit('/').next().unwrap();
        names.push(name.to_string());
        download(k, &dir.join(name));
    }
    assert_eq!(
        names,
        [
            "demo-vm-disk1.vmdk",
            "demo-vm-disk2.vmdk",
            "demo-vm.mf",
            "demo-vm.ovf"
        ]
    );
    ok(&["verify", path_str(&dir.join("demo-vm.ovf"))]);
    let disks = workspace_root().join("examples/vms/disks");
    assert_same_guest_data(
        &dir.join("demo-vm-disk1.vmdk"),
        Some("vmdk"),
        &disks.join("demo-root.qcow2"),
        Some("qcow2"),
    );
    assert_same_guest_data(
        &dir.join("demo-vm-disk2.vmdk"),
        Some("vmdk"),
        &disks.join("demo-data.raw"),
        Some("raw"),
    );
}

fn run(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    hyperctl_env(args, &env)
}

#[test]
fn the_example_vm_exported_to_s3_reads_back_with_boto3() {
    let moto = MotoS3::start();
    moto.create_bucket("exports");
    let env = aws_env(&moto);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let vm = workspace_root().join("examples/vms/demo-vm.xml");
    let vm = path_str(&vm);

    // An OVA, verified after publication, the same bytes as a local export.
    let o = run(
        &[
            "export",
            vm,
            "--output",
            "s3://exports/wave1/",
            "--verify",
            "--state-dir",
            path_str(&state),
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["location"], "s3://exports/wave1/demo-vm.ova");
    assert_eq!(report["verified"], true);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!text.contains(SECRET_KEY), "the secret was printed");
    let got = tmp.path().join("got.ova");
    moto.download("exports", "wave1/demo-vm.ova", &got);
    let local = tmp.path().join("local");
    ok(&["export", vm, "--output", path_str(&local)]);
    assert_eq!(sha256_hex(&got), sha256_hex(&local.join("demo-vm.ova")));
    ok(&["verify", path_str(&got)]);
    assert!(moto.open_uploads("exports").is_empty());
    // Verified in place, read through once from the bucket.
    let o = run(&["verify", "s3://exports/wave1/demo-vm.ova"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));

    // An OVF directory: every file under its key, the disks the example's.
    let o = run(
        &[
            "export",
            vm,
            "--format",
            "ovf",
            "--output",
            "s3://exports/dir",
            "--verify",
            "--state-dir",
            path_str(&state),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let keys: Vec<String> = moto.list("exports").into_iter().map(|(k, _)| k).collect();
    check_example_ovf_dir(&keys, &|k, to| moto.download("exports", k, to), tmp.path());

    // An OVA, compressed and encrypted.
    let key = tmp.path().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    let o = run(
        &[
            "export",
            vm,
            "--compress",
            "zstd",
            "--encrypt-key-file",
            path_str(&key),
            "--output",
            "s3://exports/enc",
            "--verify",
            "--state-dir",
            path_str(&state),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = tmp.path().join("got.ova.zst.enc");
    moto.download("exports", "enc/demo-vm.ova.zst.enc", &got);
    ok(&["verify", path_str(&got), "--key-file", path_str(&key)]);
    let o = run(
        &[
            "verify",
            "s3://exports/enc/demo-vm.ova.zst.enc",
            "--key-file",
            path_str(&key),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["verify", "s3://exports/enc/no-such.ova"], &env);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("s3://exports/enc/no-such.ova"),
        "{}",
        stderr(&o)
    );
    assert!(
        !state.exists()
            || std::fs::read_dir(&state).unwrap().all(|e| {
                std::fs::read_dir(e.unwrap().path())
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true)
            }),
        "resume state left after success"
    );
}

#[test]
fn outputs_with_a_scheme_are_never_local_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = workspace_root().join("examples/vms/demo-vm.xml");
    for (out, says) in [
        ("gs://Bad_Bucket/x/", "not a Cloud Storage bucket name"),
        ("ftp://host/x", "unknown output scheme"),
        ("s3://Bad_Bucket/x", "not a bucket name"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_hyperctl"))
            .args(["export", path_str(&vm), "--output", out])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(says), "{out}: {err}");
        assert!(
            listing(tmp.path()).is_empty(),
            "{out} made {:?}",
            listing(tmp.path())
        );
    }
}

/// Whether an S3 export's checkpoint under `state` records durable bytes.
fn durable_saved(state: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(state) else {
        return false;
    };
    dirs.filter_map(Result::ok)
        .any(|d| durable_bytes_saved(&d.path().join("checkpoint.json")))
}

/// What the kill -9 test asks of a store.
struct Store<'a> {
    /// The export's output URL.
    url: &'a str,
    env: Vec<(&'static str, String)>,
    /// Bytes of parts or chunks the store received so far.
    sent: &'a dyn Fn() -> u64,
    /// Keys of the objects in the bucket.
    list: &'a dyn Fn() -> Vec<String>,
    /// Downloads a key with the store's own client.
    download: &'a dyn Fn(&str, &Path),
}

/// An OVF export killed (-9) once a checkpoint records durable bytes, then
/// continued with --resume: nothing published by the killed run, and the
/// continued run sends at most what was not kept; the objects are those of
/// an uninterrupted export.
fn kill_9_then_resume(store: Store) {
    let env = store.env;
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.raw"), tmp.path().join("b.raw"));
    std::fs::write(&a, disk_like_content(40 << 20)).unwrap();
    std::fs::write(&b, mixed_content(40 << 20)).unwrap();
    let xml = tmp.path().join("big.xml");
    std::fs::write(&xml, domain_xml("big", &[(&a, "raw"), (&b, "raw")])).unwrap();
    let state = tmp.path().join("state");
    let args = |resume: bool| {
        let mut v = vec![
            "export".to_string(),
            path_str(&xml).to_string(),
            "--format".into(),
            "ovf".into(),
            "--output".into(),
            store.url.into(),
            "--state-dir".into(),
            path_str(&state).to_string(),
            "--bwlimit".into(),
            "16M".into(),
            "--checkpoint-mib".into(),
            "6".into(),
        ];
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperctl"))
        .args(args(false))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60)
        && !durable_saved(&state)
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    assert!(
        !child.wait().unwrap().success(),
        "killed before it finished"
    );
    assert!(durable_saved(&state), "a checkpoint with durable parts");
    assert!(
        (store.list)().is_empty(),
        "nothing published by the killed run"
    );
    let before = (store.sent)();

    let v = args(true);
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    let mut with_json = v.clone();
    with_json.push("--json");
    let o = run(&with_json, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["resumed_bytes"].as_u64().unwrap() > 0, "{report}");
    // The same export uninterrupted, for its bytes.
    let reference = tmp.path().join("reference");
    ok(&[
        "export",
        path_str(&xml),
        "--format",
        "ovf",
        "--output",
        path_str(&reference),
    ]);
    let whole: u64 = std::fs::read_dir(reference.join("big"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let resent = (store.sent)() - before;
    println!("resumed run sent {resent} bytes; the export is {whole} bytes");
    assert!(
        resent + report["resumed_bytes"].as_u64().unwrap() <= whole,
        "the resumed run sent {resent} bytes though {} were kept of {whole}",
        report["resumed_bytes"]
    );
    let keys = (store.list)();
    for k in &keys {
        let got = tmp.path().join("dl");
        (store.download)(k, &got);
        let name = k.rsplit('/').next().unwrap();
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&reference.join("big").join(name)),
            "{k}"
        );
    }
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[test]
fn kill_9_then_resume_sends_no_finished_part_again() {
    let moto = MotoS3::start();
    moto.create_bucket("wave");
    kill_9_then_resume(Store {
        url: "s3://wave/vms",
        env: aws_env(&moto),
        sent: &|| moto.stats()["part_bytes"].as_u64().unwrap_or(0),
        list: &|| moto.list("wave").into_iter().map(|(k, _)| k).collect(),
        download: &|k, to| moto.download("wave", k, to),
    });
    assert!(moto.open_uploads("wave").is_empty());
}

#[test]
fn kill_9_then_resume_into_gcs_sends_no_chunk_again() {
    let gcs = GcsEmulator::start(&["wave"]);
    kill_9_then_resume(Store {
        url: "gs://wave/vms",
        env: vec![("STORAGE_EMULATOR_HOST", gcs.endpoint())],
        sent: &|| gcs.count("chunk_bytes"),
        list: &|| gcs.list("wave"),
        download: &|k, to| gcs.download("wave", k, to),
    });
}

#[test]
fn the_example_vm_exported_to_gcs_reads_back_with_googles_client() {
    let gcs = GcsEmulator::start(&["exports"]);
    let tmp = tempfile::tempdir().unwrap();
    let vm = workspace_root().join("examples/vms/demo-vm.xml");
    let vm = path_str(&vm);
    let env = [
        ("STORAGE_EMULATOR_HOST", gcs.endpoint()),
        ("XDG_STATE_HOME", path_str(tmp.path()).to_string()),
    ];
    // An OVA, verified after publication, the same bytes as a local export.
    let o = run(
        &[
            "export",
            vm,
            "--output",
            "gs://exports/wave1/",
            "--verify",
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["location"], "gs://exports/wave1/demo-vm.ova");
    assert_eq!(report["verified"], true);
    let got = tmp.path().join("got.ova");
    gcs.download("exports", "wave1/demo-vm.ova", &got);
    ok(&["verify", path_str(&got)]);
    let local = tmp.path().join("local");
    ok(&["export", vm, "--output", path_str(&local)]);
    assert_eq!(sha256_hex(&got), sha256_hex(&local.join("demo-vm.ova")));
    let o = run(&["verify", "gs://exports/wave1/demo-vm.ova"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verified"));

    // An OVF directory: every file under its key, the disks the example's.
    let o = run(
        &[
            "export",
            vm,
            "--format",
            "ovf",
            "--output",
            "gs://exports/dir",
            "--verify",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    check_example_ovf_dir(
        &gcs.list("exports"),
        &|k, to| gcs.download("exports", k, to),
        tmp.path(),
    );

    // An OVA, compressed and encrypted, verified in place.
    let key = tmp.path().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let o = run(
        &[
            "export",
            vm,
            "--compress",
            "zstd",
            "--encrypt-key-file",
            path_str(&key),
            "--output",
            "gs://exports/enc",
            "--verify",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &[
            "verify",
            "gs://exports/enc/demo-vm.ova.zst.enc",
            "--key-file",
            path_str(&key),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["verify", "gs://exports/wave1/no-such.ova"], &env);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("gs://exports/wave1/no-such.ova"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_example_vm_exported_to_azure_reads_back_with_the_sdk() {
    use hypersdk_testsupport::azurite::{Azurite, KEY};
    let az = Azurite::start();
    az.create_container("exports");
    let tmp = tempfile::tempdir().unwrap();
    let vm = workspace_root().join("examples/vms/demo-vm.xml");
    let env = [
        ("AZURE_STORAGE_CONNECTION_STRING", az.connection_string()),
        ("XDG_STATE_HOME", path_str(tmp.path()).to_string()),
    ];
    let o = run(
        &[
            "export",
            path_str(&vm),
            "--output",
            "az://exports/wave1/",
            "--verify",
            "--json",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        report["location"],
        "azure://devstoreaccount1/exports/wave1/demo-vm.ova"
    );
    assert_eq!(report["verified"], true);
    assert!(!format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)).contains(KEY));
    let got = tmp.path().join("got.ova");
    az.download("exports", "wave1/demo-vm.ova", &got);
    ok(&["verify", path_str(&got)]);
    let o = run(&["verify", "az://exports/wave1/demo-vm.ova"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let local = tmp.path().join("local");
    ok(&["export", path_str(&vm), "--output", path_str(&local)]);
    assert_eq!(sha256_hex(&got), sha256_hex(&local.join("demo-vm.ova")));
}
