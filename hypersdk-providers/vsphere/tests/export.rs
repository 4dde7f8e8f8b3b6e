//! Exports from the govmomi vCenter simulator, judged byte for byte with
//! qemu-img against the bytes written into the simulator's datastore.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use hypersdk_core::{Error, ExportOptions, Exporter, PackageFormat, Provider};
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_testsupport::{assert_image_ok, assert_same_guest_data, mixed_content, run_tool};

/// Writes known content into each disk's flat file (the second disk is left
/// half empty: it reads as zeros past what is written).
fn fill(sim: &Vcsim, vm: &str, sizes_mib: &[u64]) {
    for (i, mib) in sizes_mib.iter().enumerate() {
        let len = if i == 1 { (mib << 20) / 2 } else { mib << 20 };
        let mut data = mixed_content(len as usize);
        data[0] = i as u8 + 1; // disks differ
        std::fs::write(sim.flat_file(vm, i), data).unwrap();
    }
}

fn check_disk(sim: &Vcsim, vm: &str, index: usize, vmdk: &std::path::Path) {
    assert_image_ok(vmdk);
    assert_same_guest_data(&sim.flat_file(vm, index), Some("raw"), vmdk, Some("vmdk"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powered_off_vm_exports_through_export_vm() {
    let sim = Vcsim::start(&[("alpha", &[8, 4])]);
    fill(&sim, "alpha", &[8, 4]);
    let vc = connect(&sim).await;
    let out = tempfile::tempdir().unwrap();
    let report = Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .export(&vc, "alpha", &LocalDirSink::new(out.path()))
        .await
        .unwrap();
    assert_eq!(report.provider, "vsphere");
    assert_eq!(report.bytes_read, 12 << 20);
    let dir = out.path().join("alpha");
    check_disk(&sim, "alpha", 0, &dir.join("alpha-disk1.vmdk"));
    check_disk(&sim, "alpha", 1, &dir.join("alpha-disk2.vmdk"));
    let mf = std::fs::read_to_string(dir.join("alpha.mf")).unwrap();
    assert_eq!(mf.lines().count(), 3, "{mf}");
    assert!(vc.snapshots("alpha").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_vmdk_is_stored_as_is_or_reencoded_on_request() {
    let sim = Vcsim::start(&[("beta", &[4])]);
    fill(&sim, "beta", &[4]);
    let vc = connect(&sim).await;
    let mut sizes = Vec::new();
    for reencode in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let mut options = ExportOptions::new(PackageFormat::Ovf);
        options.reencode = reencode;
        let report = Exporter::new(options)
            .export(&vc, "beta", &LocalDirSink::new(out.path()))
            .await
            .unwrap();
        let vmdk = out.path().join("beta/beta-disk1.vmdk");
        check_disk(&sim, "beta", 0, &vmdk);
        assert!(report.disks[0].populated > 0 && report.disks[0].populated <= 4 << 20);
        sizes.push(std::fs::metadata(&vmdk).unwrap().len());
    }
    // Stored as served (the simulator's zlib) vs re-encoded (ours): both
    // valid, and not the same bytes.
    assert_ne!(sizes[0], sizes[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_vm_exports_through_a_snapshot_that_is_removed() {
    let sim = Vcsim::start(&[("gamma:on", &[6])]);
    fill(&sim, "gamma", &[6]);
    let vc = connect(&sim).await;
    assert_eq!(
        vc.vm_spec("gamma").await.unwrap().power_state,
        hypersdk_core::PowerState::On
    );
    let out = tempfile::tempdir().unwrap();
    let report = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .export(&vc, "gamma", &LocalDirSink::new(out.path()))
        .await
        .unwrap();
    let x = tempfile::tempdir().unwrap();
    run_tool(
        "tar",
        &["-xf", &report.location, "-C", x.path().to_str().unwrap()],
    );
    check_disk(&sim, "gamma", 0, &x.path().join("gamma-disk1.vmdk"));
    assert!(
        vc.snapshots("gamma").await.unwrap().is_empty(),
        "the export's snapshot is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_vm_and_broken_downloads_fail_cleanly() {
    let sim = Vcsim::start(&[("delta", &[4])]);
    let vc = connect(&sim).await;
    let out = tempfile::tempdir().unwrap();
    let err = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .export(&vc, "nope", &LocalDirSink::new(out.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VmNotFound { .. }), "{err}");
    // The simulator's own VMs have no flat file the launcher knows: their
    // NFC URL serves a text descriptor, which is refused, not packaged.
    let err = Exporter::new(ExportOptions::new(PackageFormat::Ova))
        .export(&vc, "DC0_H0_VM0", &LocalDirSink::new(out.path()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot read disk") || matches!(err, Error::DiskRead { .. }),
        "{err}"
    );
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
    // ... and its snapshot is gone again.
    assert!(vc.snapshots("DC0_H0_VM0").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_releases_the_lease_and_the_snapshot() {
    let sim = Vcsim::start(&[("slow:on", &[16])]);
    fill(&sim, "slow", &[16]);
    let vc = connect(&sim).await;
    let out = tempfile::tempdir().unwrap();
    // Held to 2 MiB/s, the export would take seconds: cancel it at its
    // first progress event.
    let exporter = Exporter::new(ExportOptions::new(PackageFormat::Ovf).with_bwlimit(
        hypersdk_core::transforms::ratelimit::RateLimiter::new(Some(2 << 20), 256 << 10),
    ));
    let token = exporter.cancel_token();
    let exporter = exporter.on_progress(std::sync::Arc::new(move |_| token.cancel()));
    let err = exporter
        .export(&vc, "slow", &LocalDirSink::new(out.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(
        std::fs::read_dir(out.path()).unwrap().all(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "nothing published (a kept partial export is hidden)"
    );
    assert!(
        vc.snapshots("slow").await.unwrap().is_empty(),
        "the export's snapshot is removed after a cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_resumes_mid_disk_with_range_on_a_new_lease() {
    let sim = Vcsim::start_with_flags(&[("resumed", &[32])], &["-nfc-range"]);
    fill(&sim, "resumed", &[32]);
    let vc = connect(&sim).await;
    let out = tempfile::tempdir().unwrap();
    let mut options = ExportOptions::new(PackageFormat::Ovf);
    options.checkpoint_every = 1 << 20;
    let slow =
        options
            .clone()
            .with_bwlimit(hypersdk_core::transforms::ratelimit::RateLimiter::new(
                Some(8 << 20),
                256 << 10,
            ));
    let exporter = Exporter::new(slow);
    let token = exporter.cancel_token();
    let exporter = exporter.on_progress(std::sync::Arc::new(move |e| {
        if e.bytes_done >= 20 << 20 {
            token.cancel();
        }
    }));
    let err = exporter
        .export(&vc, "resumed", &LocalDirSink::new(out.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    let before = sim.stats();
    options.resume = true;
    let report = Exporter::new(options)
        .export(&vc, "resumed", &LocalDirSink::new(out.path()))
        .await
        .unwrap();
    assert!(report.resumed_bytes > 0, "continued mid-disk");
    let ranged =
        sim.stats()["nfc_ranged"].as_i64().unwrap() - before["nfc_ranged"].as_i64().unwrap();
    assert!(ranged >= 1, "the rest was asked for with Range");
    check_disk(
        &sim,
        "resumed",
        0,
        &out.path().join("resumed/resumed-disk1.vmdk"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_kept_alive_and_completed() {
    // Leases that declare an 8 s timeout are renewed every 5 s (a quarter of
    // the timeout, at least 5 s). The limit counts bytes on the wire: the
    // 12 MiB disk travels as a ~3 MiB VMDK, which at 256 KiB/s takes about
    // 12 s, so the lease must be renewed at least once, then completed.
    let sim = Vcsim::start_with_flags(&[("long", &[12])], &["-lease-timeout", "8"]);
    fill(&sim, "long", &[12]);
    let vc = connect(&sim).await;
    let out = tempfile::tempdir().unwrap();
    Exporter::new(ExportOptions::new(PackageFormat::Ovf).with_bwlimit(
        hypersdk_core::transforms::ratelimit::RateLimiter::new(Some(256 << 10), 32 << 10),
    ))
    .export(&vc, "long", &LocalDirSink::new(out.path()))
    .await
    .unwrap();
    let stats = sim.stats();
    assert!(stats["lease_progress"].as_i64().unwrap() >= 1, "{stats}");
    assert_eq!(stats["lease_complete"], 1, "{stats}");
    assert_eq!(stats["lease_abort"], 0, "{stats}");
}
