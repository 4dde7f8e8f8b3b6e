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

/// A directory `vms` in `dir` with VM `big`, one raw disk of `bytes`.
fn big_vm(dir: &std::path::Path, bytes: u64) -> std::path::PathBuf {
    let vms = dir.join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    hypersdk_testsupport::write_mixed_file(&vms.join("big.raw"), bytes).unwrap();
    std::fs::write(
        vms.join("big.xml"),
        hypersdk_testsupport::domain_xml("big", &[(&vms.join("big.raw"), "raw")]),
    )
    .unwrap();
    vms
}

/// A daemon killed (-9) while jobs upload into a named sink: after the
/// restart each job continues its uploads from its checkpoint and publishes
/// the same bytes as an uninterrupted job.
#[test]
fn kill_9_during_sink_jobs_then_restart_continues_them() {
    let gcs = GcsEmulator::start(&["archive"]);
    let tmp = tempfile::tempdir().unwrap();
    let vms = big_vm(tmp.path(), 96 << 20);
    let extra = format!(
        "sinks:\n  cold:\n    url: gs://archive/vms/\n    gcs: {{ endpoint: \"{}\", anonymous: true }}\n",
        gcs.endpoint()
    );
    let cfg = common::config_at(tmp.path(), &vms, "", &extra);
    let mut d = Daemon::start(&cfg);
    let body = r#"[{"vm": "big", "provider": "kvm", "sink": "cold", "output": "a", "format": "ovf", "bwlimit": "16M", "checkpoint_mib": 4},
                   {"vm": "big", "provider": "kvm", "output": "local", "format": "ovf"}]"#;
    let (code, sub) = d.json("POST", "/api/v1/jobs", Some(body));
    assert_eq!(code, 201, "{sub}");
    let ids: Vec<i64> = sub["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    d.wait_progress(ids[0], 48 << 20);
    d.kill();
    assert!(gcs.list("archive").is_empty(), "published before the kill");
    let sent = gcs.count("chunk_bytes");

    let d = Daemon::start(&cfg);
    let job = d.wait(ids[0], Duration::from_secs(120));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(
        job["result"]["resumed_bytes"].as_u64().unwrap() > 0,
        "{job}"
    );
    let local = d.wait(ids[1], Duration::from_secs(120));
    assert_eq!(local["status"], "succeeded", "{local}");
    let keys = gcs.list("archive");
    assert_eq!(keys.len(), 3, "{keys:?}");
    let dl = tempfile::tempdir().unwrap();
    let mut total = 0;
    for k in &keys {
        let name = k.rsplit('/').next().unwrap();
        let got = dl.path().join(name);
        gcs.download("archive", k, &got);
        let want = tmp.path().join("out/local/big").join(name);
        total += std::fs::metadata(&want).unwrap().len();
        assert!(
            std::fs::read(&got).unwrap() == std::fs::read(&want).unwrap(),
            "{k} differs from the uninterrupted export's"
        );
    }
    assert!(
        gcs.count("chunk_bytes") - sent < total,
        "the restarted job sent everything again"
    );
}

/// A job into a named sink cancelled midway keeps its uploads for a retry;
/// deleting the job discards them through the sink (the session cancelled,
/// the local state gone), and nothing was ever published.
#[test]
fn deleting_a_cancelled_sink_job_discards_its_kept_uploads() {
    let gcs = GcsEmulator::start(&["archive"]);
    let tmp = tempfile::tempdir().unwrap();
    let vms = big_vm(tmp.path(), 256 << 20);
    let extra = format!(
        "sinks:\n  cold:\n    url: gs://archive/vms/\n    gcs: {{ endpoint: \"{}\", anonymous: true }}\n",
        gcs.endpoint()
    );
    let d = Daemon::start(&common::config_at(tmp.path(), &vms, "", &extra));
    let (code, sub) = d.json(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"vm": "big", "provider": "kvm", "sink": "cold", "output": "w", "format": "ovf", "bwlimit": "32M"}"#),
    );
    assert_eq!(code, 201, "{sub}");
    let id = sub["jobs"][0]["id"].as_i64().unwrap();
    d.wait_progress(id, 40 << 20);
    let (code, _) = d.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    assert_eq!(code, 202);
    let job = d.wait(id, Duration::from_secs(60));
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["partial"]["path"], "gs://archive/vms/w/big/", "{job}");
    let uploads = tmp.path().join("uploads");
    let state_dirs = || std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
    assert!(gcs.count("sessions") >= 1, "{}", gcs.stats());
    assert!(gcs.list("archive").is_empty(), "published while cancelled");
    let (code, body) = d.call("DELETE", &format!("/api/v1/jobs/{id}"), None, &[]);
    assert_eq!(code, 204, "{body}");
    assert!(gcs.count("cancels") >= 1, "the kept session was cancelled");
    assert_eq!(state_dirs(), 0, "the export's local upload state is gone");
    assert!(gcs.list("archive").is_empty());
}
