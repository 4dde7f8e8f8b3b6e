//! `hyperctl export --provider gcp://…` against the Compute Engine + Cloud
//! Build stub over gcp-storage-emulator (tests/peers/gce.py): a running
//! instance seeded with two persistent disks is exported as an OVF
//! directory whose disks qemu-img finds equal to the seeded content, and as
//! an OVA that verifies; the images, builds and staged objects the exports
//! made are released; credentials come the way Google's clients take them
//! (GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST) and never show;
//! a kill -9 mid-export is taken up by `--resume` without new images.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_testsupport::gce::{GceCompute, BUCKET, PROJECT, ZONE};
use hypersdk_testsupport::{assert_same_guest_data, path_str};

struct Cli {
    provider: String,
    opts: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Cli {
    fn new(peer: &GceCompute) -> Cli {
        Cli {
            provider: format!("gcp://{PROJECT}/{ZONE}"),
            opts: vec![
                format!("compute_endpoint={}", peer.endpoint()),
                format!("cloudbuild_endpoint={}", peer.endpoint()),
                format!("bucket=gs://{BUCKET}/exports"),
            ],
            env: vec![
                (
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    peer.key_file.display().to_string(),
                ),
                ("STORAGE_EMULATOR_HOST", peer.storage.endpoint()),
            ],
        }
    }

    /// `hyperctl SUBCOMMAND… --provider … --provider-opt …` + `rest`.
    fn args<'a>(&'a self, head: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
        let mut a = head.to_vec();
        a.extend(["--provider", &self.provider]);
        for o in &self.opts {
            a.extend(["--provider-opt", o.as_str()]);
        }
        a.extend_from_slice(rest);
        a
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

fn released(peer: &GceCompute) {
    let s = peer.stats();
    assert_eq!(s["live_images"], serde_json::json!([]), "{s}");
    assert_eq!(s["running_builds"], serde_json::json!([]), "{s}");
    assert_eq!(peer.storage.list(BUCKET), Vec::<String>::new());
}

fn same_disks(peer: &GceCompute, out: &std::path::Path) {
    for (n, disk) in [(1, "web-03"), (2, "web-03-data")] {
        assert_same_guest_data(
            &out.join(format!("web-03/web-03-disk{n}.vmdk")),
            Some("vmdk"),
            &peer.disk_dir().join(format!("{disk}.raw")),
            Some("raw"),
        );
    }
}

#[test]
fn a_compute_engine_instance_exports_through_image_exports() {
    let peer = GceCompute::start();
    peer.seed_vm(false, None);
    let cli = Cli::new(&peer);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let export = |format: &str| {
        hyperctl_env(
            &cli.args(
                &["export", "web-03"],
                &[
                    "--format",
                    format,
                    "--output",
                    path_str(&out),
                    "--verify",
                    "--json",
                ],
            ),
            &cli.env(),
        )
    };
    let o = export("ovf");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(!text.contains("PRIVATE KEY"), "the key was printed");
    same_disks(&peer, &out);
    let ovf = std::fs::read_to_string(out.join("web-03/web-03.ovf")).unwrap();
    assert!(
        ovf.contains("<rasd:VirtualQuantity>2</rasd:VirtualQuantity>"),
        "2 vCPUs of an e2-medium"
    );
    assert!(ovf.contains("4096"), "4 GiB of an e2-medium");
    assert!(ovf.contains("efi"), "a UEFI boot disk boots UEFI");
    assert!(ovf.contains("env=prod"), "the labels are kept");
    released(&peer);

    let o = export("ova");
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["verified"], true, "{report}");
    assert!(out.join("web-03.ova").exists());
    released(&peer);
    assert_eq!(peer.stats()["images_made"], 4);

    // The listing, and a missing instance named in the error.
    let o = hyperctl_env(&cli.args(&["vms", "list"], &[]), &cli.env());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("web-03"));
    let o = hyperctl_env(
        &cli.args(&["export", "db-99"], &["--output", path_str(&out)]),
        &cli.env(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("db-99"), "{}", stderr(&o));
}

/// kill -9 in the middle of an export, then the same command with
/// `--resume`: the resumed run takes up the killed one's images (and
/// staged objects) instead of making new ones, the disks equal the seeded
/// ones, and nothing is left on the cloud side at the end.
#[test]
fn kill_9_then_resume_takes_up_the_same_images() {
    use std::time::Duration;
    let peer = GceCompute::start();
    peer.seed_vm(false, None);
    let cli = Cli::new(&peer);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Slow enough for the kill to land mid-export.
    let head = cli.args(&["export", "web-03"], &[]);
    let args = |resume: bool| resumable_ovf_export(&head, &out, resume, "2M");
    kill_9_while_reading(
        &args(false),
        &cli.env(),
        &out.join(".web-03.partial/.checkpoint.json"),
        Duration::from_millis(2500),
    );
    let s = peer.stats();
    assert_eq!(s["images_made"], 2, "{s}");
    assert_eq!(
        s["live_images"].as_array().unwrap().len(),
        2,
        "the killed run's images stay: {s}"
    );

    let o = hyperctl_env(&args(true), &cli.env());
    assert!(o.status.success(), "{}", stderr(&o));
    let s = peer.stats();
    assert_eq!(s["images_made"], 2, "the resumed run made no image: {s}");
    same_disks(&peer, &out);
    released(&peer);
}
