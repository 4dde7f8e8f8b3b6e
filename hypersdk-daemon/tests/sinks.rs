//! Jobs into a named object-store sink of the daemon's configuration: the
//! credentials stay in the configuration, never in a job, its record, its
//! log or an error; a job names the sink and a directory below its prefix.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

mod common;

use common::{config, Daemon};
use hypersdk_testsupport::gcs::GcsEmulator;
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

#[test]
fn a_job_exports_into_a_named_s3_sink() {
    let moto = MotoS3::start();
    moto.create_bucket("archive");
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "sinks:\n  archive:\n    url: s3://archive/vms/\n    s3: {{ endpoint: \"{}\", region: us-east-1, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY} }}\n",
        moto.endpoint()
    );
    let d = Daemon::start(&config(tmp.path(), &extra));
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "sink": "archive", "output": "wave1", "verify": true}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    let job = d.wait(id, Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["location"],
        "s3://archive/vms/wave1/demo-vm.ova"
    );
    assert_eq!(job["result"]["verified"], true);
    let keys: Vec<String> = moto.list("archive").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["vms/wave1/demo-vm.ova"]);
    assert!(!tmp.path().join("out/wave1").exists(), "nothing local");
    let (_, log) = d.call("GET", &format!("/api/v1/jobs/{id}/logs"), None, &[]);
    for text in [job.to_string(), log] {
        assert!(!text.contains(SECRET_KEY), "the secret shows: {text}");
    }

    // Unknown sinks and climbing outputs are refused, naming the field.
    let (code, e) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "sink": "nope"}"#),
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e.to_string()
            .contains("sink: unknown sink 'nope' (configured: archive)"),
        "{e}"
    );
    let (code, e) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "sink": "archive", "output": "../other"}"#),
    );
    assert_eq!(code, 400, "{e}");
    assert!(e.to_string().contains("output: '../other'"), "{e}");
    assert_eq!(moto.list("archive").len(), 1);
}

/// A named Cloud Storage sink whose service-account key sits in the
/// daemon's configuration (as JSON text): the job reaches the bucket with
/// tokens from it, and the key shows nowhere.
#[test]
fn a_job_exports_into_a_named_gcs_sink_with_a_service_account() {
    let gcs = GcsEmulator::start_with_service_account(&["archive"]);
    let key_text = std::fs::read_to_string(gcs.key_file.as_ref().unwrap()).unwrap();
    let key: serde_json::Value = serde_json::from_str(&key_text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "sinks:\n  cold:\n    url: gs://archive/vms/\n    gcs:\n      endpoint: \"{}\"\n      credentials_json: {}\n",
        gcs.endpoint(),
        serde_json::to_string(&key_text).unwrap()
    );
    let d = Daemon::start(&config(tmp.path(), &extra));
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "demo-vm", "provider": "kvm", "sink": "cold", "output": "wave2", "format": "ovf", "verify": true}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    let job = d.wait(id, Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["location"], "gs://archive/vms/wave2/demo-vm/");
    assert_eq!(
        gcs.list("archive"),
        [
            "vms/wave2/demo-vm/demo-vm-disk1.vmdk",
            "vms/wave2/demo-vm/demo-vm-disk2.vmdk",
            "vms/wave2/demo-vm/demo-vm.mf",
            "vms/wave2/demo-vm/demo-vm.ovf"
        ]
    );
    assert!(gcs.count("tokens") >= 1);
    let secret = key["private_key"].as_str().unwrap();
    let body = secret.lines().nth(1).unwrap();
    let (_, log) = d.call("GET", &format!("/api/v1/jobs/{id}/logs"), None, &[]);
    for text in [job.to_string(), log] {
        assert!(!text.contains(body), "the key shows: {text}");
    }
}
