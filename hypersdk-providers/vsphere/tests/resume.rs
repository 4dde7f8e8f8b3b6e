//! Disk downloads that break off and resume, through a fault-injecting TCP
//! proxy between the exporter and the simulator's NFC server.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use hypersdk_core::retry::RetryPolicy;
use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::faultproxy::FaultProxy;
use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_testsupport::{assert_same_guest_data, dir_contents, write_mixed_file};
use hypersdk_vsphere::{TlsMode, VsphereProvider};

/// A session whose retries are quick (the proxy refuses nothing, so a
/// retry only waits out its backoff).
async fn quick_retries(sim: &Vcsim) -> VsphereProvider {
    let mut o = opts(sim, TlsMode::Insecure);
    o.retry = RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        ..RetryPolicy::default()
    };
    VsphereProvider::connect(&o).await.unwrap()
}

/// `n` distinct cut points in `1..limit`, from a seed printed for replay.
fn random_cuts(n: usize, limit: u64) -> Vec<u64> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    if let Ok(s) = std::env::var("HYPERSDK_CUT_SEED") {
        seed = s.parse().unwrap();
    }
    println!("cut seed {seed} (HYPERSDK_CUT_SEED replays it)");
    let mut cuts = std::collections::BTreeSet::new();
    while cuts.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        cuts.insert(1 + seed % (limit - 1));
    }
    cuts.into_iter().collect()
}

async fn export_ovf(vc: &VsphereProvider, vm: &str, out: &Path) -> Vec<(String, Vec<u8>)> {
    Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .export(vc, vm, &LocalDirSink::new(out))
        .await
        .unwrap();
    dir_contents(&out.join(vm))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cuts_during_a_256_mib_export_resume_with_range() {
    let sim = Vcsim::start_with_flags(&[("big", &[256])], &["-nfc-range"]);
    write_mixed_file(&sim.flat_file("big", 0), 256 << 20).unwrap();
    let vc = quick_retries(&sim).await;

    // The uninterrupted export, straight from the simulator.
    let plain = tempfile::tempdir().unwrap();
    let expected = export_ovf(&vc, "big", plain.path()).await;
    let served = expected
        .iter()
        .find(|(n, _)| n == "big-disk1.vmdk")
        .map(|(_, b)| b.len() as u64)
        .unwrap();

    // The same through a proxy that cuts the download 20 times.
    let proxy = FaultProxy::start(sim.addr());
    sim.route_nfc_via(proxy.addr());
    let cuts = random_cuts(20, served);
    proxy.cut_at_totals(&cuts);
    let before = sim.stats();
    let out = tempfile::tempdir().unwrap();
    let got = export_ovf(&vc, "big", out.path()).await;

    assert_eq!(proxy.cuts_done(), 20, "every planned cut happened");
    let fetched = proxy.bytes_from_server();
    println!(
        "served VMDK {served} bytes; fetched {fetched} through 20 cuts ({:.4}x)",
        fetched as f64 / served as f64
    );
    assert!(
        fetched as f64 <= 1.1 * served as f64,
        "fetched {fetched} bytes for a {served}-byte download"
    );
    let after = sim.stats();
    let ranged = after["nfc_ranged"].as_i64().unwrap() - before["nfc_ranged"].as_i64().unwrap();
    assert!(ranged >= 20, "each break resumed with Range ({ranged})");
    assert!(
        got == expected,
        "the resumed export is byte-identical to the uninterrupted one"
    );
    assert_same_guest_data(
        &sim.flat_file("big", 0),
        Some("raw"),
        &out.path().join("big/big-disk1.vmdk"),
        Some("vmdk"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_is_reread_never_appended() {
    // Without -nfc-range the launcher answers every GET with the whole VMDK
    // (200), as a server that ignores Range does.
    let sim = Vcsim::start(&[("norange", &[16, 8])]);
    write_mixed_file(&sim.flat_file("norange", 0), 16 << 20).unwrap();
    write_mixed_file(&sim.flat_file("norange", 1), 8 << 20).unwrap();
    let vc = quick_retries(&sim).await;
    let plain = tempfile::tempdir().unwrap();
    let expected = export_ovf(&vc, "norange", plain.path()).await;
    let served: u64 = expected
        .iter()
        .filter(|(n, _)| n.ends_with(".vmdk"))
        .map(|(_, b)| b.len() as u64)
        .sum();

    let proxy = FaultProxy::start(sim.addr());
    sim.route_nfc_via(proxy.addr());
    proxy.cut_at_totals(&random_cuts(3, served));
    let out = tempfile::tempdir().unwrap();
    let got = export_ovf(&vc, "norange", out.path()).await;
    assert_eq!(proxy.cuts_done(), 3);
    assert!(
        sim.stats()["nfc_ranged"].as_i64().unwrap() >= 3,
        "resumes asked for a Range"
    );
    assert!(
        proxy.bytes_from_server() > served,
        "the bytes already held were fetched again and dropped"
    );
    assert!(
        got == expected,
        "byte-identical to the uninterrupted export"
    );
}
