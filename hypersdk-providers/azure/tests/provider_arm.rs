//! The Azure provider against the ARM stub (tests/peers/azure_arm.py) over
//! Azurite: a VM seeded with three managed disks of known content passes the
//! provider testkit, its description matches what Microsoft's own SDK
//! (azure-mgmt-compute, azure-mgmt-network) reads from the same stub, its
//! disks read back as seeded — through snapshots while it runs, directly
//! when it is deallocated — and every access granted and snapshot made is
//! released afterwards, also when the export is cancelled.

#![allow(clippy::unwrap_used)]

use hypersdk_azure::arm::{Arm, Credential};
use hypersdk_azure::AzureProvider;
use hypersdk_core::connect::Secret;
use hypersdk_core::{ExportSource, Provider};
use hypersdk_testsupport::azure_compute::{
    AzureCompute, CLIENT_ID, CLIENT_SECRET, RESOURCE_GROUP, SUBSCRIPTION, TENANT,
};

fn provider(peer: &AzureCompute, secret: &str) -> AzureProvider {
    let arm = Arm::new(
        &peer.endpoint(),
        Credential::ClientSecret {
            authority: peer.endpoint(),
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            secret: Secret::new(secret),
        },
    )
    .unwrap();
    AzureProvider::new(arm, SUBSCRIPTION, None).unwrap()
}

/// The SHA-256 of disk `i` of `source`, read whole.
async fn digest(source: &dyn ExportSource, i: usize) -> (String, u64) {
    hypersdk_testkit::provider::disk_sha256(source, i).await
}

fn released(peer: &AzureCompute) {
    let s = peer.stats();
    assert_eq!(s["open_access"], serde_json::json!([]), "{s}");
    assert_eq!(s["snapshots"], serde_json::json!([]), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_passes_the_testkit_and_reads_back_through_snapshots() {
    let peer = AzureCompute::start();
    let seeded = peer.seed_vm(None, false);
    let p = provider(&peer, CLIENT_SECRET);
    hypersdk_testkit::provider::run_suite(&p, "web-02").await;
    released(&peer);

    // The description, against what Microsoft's SDK reads from the stub.
    let spec = p.vm_spec("rg-hypersdk/web-02").await.unwrap();
    let sdk: serde_json::Value = serde_json::from_str(peer.sdk(
        "vm = c.virtual_machines.get('rg-hypersdk', 'web-02', expand='instanceView', **o)\n\
         sizes = {s.name: s for s in c.virtual_machine_sizes.list(vm.location, **o)}\n\
         size = sizes[vm.hardware_profile.vm_size]\n\
         disks = [vm.storage_profile.os_disk.name] + [d.name for d in sorted(vm.storage_profile.data_disks, key=lambda d: d.lun)]\n\
         sizes_b = [c.disks.get('rg-hypersdk', d, **o).disk_size_bytes for d in disks]\n\
         macs = [n.network_interfaces.get('rg-hypersdk', r.id.rsplit('/', 1)[1], **o).mac_address for r in vm.network_profile.network_interfaces]\n\
         print(json.dumps({'id': vm.id, 'vm_id': vm.vm_id, 'cpus': size.number_of_cores, 'memory': size.memory_in_mb, 'disks': disks, 'sizes': sizes_b, 'macs': macs, 'secure_boot': vm.security_profile.uefi_settings.secure_boot_enabled, 'power': [s.code for s in vm.instance_view.statuses][-1]}))",
    ).trim())
    .unwrap();
    assert_eq!(spec.id, sdk["id"]);
    assert!(spec
        .annotation
        .as_deref()
        .unwrap()
        .contains(sdk["vm_id"].as_str().unwrap()));
    assert_eq!(spec.name, "web-02");
    assert_eq!(u64::from(spec.cpus), sdk["cpus"].as_u64().unwrap());
    assert_eq!(spec.memory_mib, sdk["memory"].as_u64().unwrap());
    let names: Vec<&str> = spec.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(serde_json::json!(names), sdk["disks"]);
    let caps: Vec<u64> = spec.disks.iter().map(|d| d.capacity).collect();
    assert_eq!(serde_json::json!(caps), sdk["sizes"]);
    let macs: Vec<String> = spec
        .nics
        .iter()
        .map(|n| n.mac.clone().unwrap().replace(':', "-").to_uppercase())
        .collect();
    assert_eq!(serde_json::json!(macs), sdk["macs"]);
    assert_eq!(spec.nics[0].network, "vnet-1/default");
    assert_eq!(
        spec.firmware,
        hypersdk_core::vm::Firmware::Uefi,
        "Trusted Launch"
    );
    assert!(spec.hardware.secure_boot);
    assert_eq!(sdk["power"], "PowerState/running");
    assert_eq!(spec.power_state, hypersdk_core::vm::PowerState::On);
    assert!(spec
        .annotation
        .as_deref()
        .unwrap()
        .contains("owner=hypersdk"));

    // A running VM is read through a snapshot per disk.
    let before = peer.stats()["snapshots_made"].as_u64().unwrap();
    let source = p.open_export("web-02").await.unwrap();
    let s = peer.stats();
    assert_eq!(s["snapshots_made"].as_u64().unwrap() - before, 3, "{s}");
    assert_eq!(s["open_access"].as_array().unwrap().len(), 3, "{s}");
    assert!(
        s["open_access"][0]
            .as_str()
            .unwrap()
            .contains("/snapshots/"),
        "{s}"
    );
    for (i, d) in spec.disks.iter().enumerate() {
        let (got, n) = digest(source.as_ref(), i).await;
        assert_eq!(n, d.capacity);
        assert_eq!(
            got,
            seeded["disks"][&d.name].as_str().unwrap(),
            "{} reads back as seeded",
            d.name
        );
        // Only the non-zero pages are allocated: a data disk's holes are never read.
        let ranges = source.allocated_ranges(i).await.unwrap().unwrap();
        let allocated: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(
            allocated > 0 && allocated < d.capacity,
            "{}: {ranges:?}",
            d.name
        );
    }
    // Reading from an offset gives the tail.
    let mut s = source.open_disk(1, (3 << 20) + 100).await.unwrap();
    let first = futures_util::StreamExt::next(&mut s)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.len(),
        (1 << 20) - 100,
        "the rest of the 4 MiB chunk holding the offset"
    );
    drop(s);
    source.close_after(true).await.unwrap();
    released(&peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deallocated_vm_is_read_without_snapshots() {
    let peer = AzureCompute::start();
    let seeded = peer.seed_vm(None, true);
    let p = provider(&peer, CLIENT_SECRET);
    let source = p.open_export("web-02").await.unwrap();
    assert_eq!(
        source.spec().power_state,
        hypersdk_core::vm::PowerState::Off
    );
    let s = peer.stats();
    assert_eq!(s["snapshots_made"], 0, "{s}");
    assert!(
        s["open_access"][0].as_str().unwrap().contains("/disks/"),
        "{s}"
    );
    let (got, _) = digest(source.as_ref(), 0).await;
    assert_eq!(got, seeded["disks"]["web-02_OsDisk"].as_str().unwrap());
    source.close_after(true).await.unwrap();
    let s = peer.stats();
    assert_eq!(s["revokes"], 3, "{s}");
    released(&peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_missing_vms_are_named() {
    let peer = AzureCompute::start();
    peer.seed_vm(None, false);
    let e = provider(&peer, "wrong-secret")
        .list_vms()
        .await
        .unwrap_err();
    assert_eq!(e.code(), "auth", "{e}");
    let text = e.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");

    // The machine's managed identity (the stub's metadata endpoint).
    let mi = AzureProvider::new(
        Arm::new(
            &peer.endpoint(),
            Credential::ManagedIdentity {
                endpoint: peer.endpoint(),
                client_id: None,
            },
        )
        .unwrap(),
        SUBSCRIPTION,
        Some(RESOURCE_GROUP),
    )
    .unwrap();
    assert_eq!(mi.list_vms().await.unwrap().len(), 1);

    let p = provider(&peer, CLIENT_SECRET);
    let e = p.vm_spec("db-99").await.unwrap_err();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    let e = p
        .vm_spec(&format!("{RESOURCE_GROUP}/db-99"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    assert!(e.to_string().contains("rg-hypersdk"), "{e}");
    for hostile in [
        "a/b/c",
        "../..",
        "rg/..",
        "web-02?api-version=1",
        "rg/web%2f02",
        "",
    ] {
        let e = p.vm_spec(hostile).await.unwrap_err();
        assert_eq!(e.code(), "invalid_argument", "{hostile:?}: {e}");
    }
}

/// An export cancelled while it reads: it ends as cancelled, nothing is
/// published, and the access and snapshots it took are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_releases_access_and_snapshots() {
    let peer = AzureCompute::start();
    peer.seed_vm(None, false);
    let p = provider(&peer, CLIENT_SECRET);
    let out = tempfile::tempdir().unwrap();
    let sink = hypersdk_sinks::LocalDirSink::new(out.path());
    hypersdk_testkit::provider::an_export_cancelled_while_reading_leaves_nothing(
        &p,
        "web-02",
        4 << 20,
        &sink,
    )
    .await;
    assert!(!out.path().join("web-02.ova").exists());
    released(&peer);
    assert!(peer.stats()["grants"].as_u64().unwrap() >= 1);
}

/// A run that dies (its source dropped without closing) leaves its
/// snapshots; resuming with its token reads the same snapshots — none is
/// made — and releases them at the end. A token whose snapshot is gone
/// gives a new export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_export_reads_the_snapshots_of_the_interrupted_one() {
    let peer = AzureCompute::start();
    let seeded = peer.seed_vm(None, false);
    let p = provider(&peer, CLIENT_SECRET);
    let first = p.open_export("web-02").await.unwrap();
    let token = first.resume_token().unwrap();
    assert!(!token.contains("sig="), "no SAS in the token: {token}");
    drop(first); // the process died
    let s = peer.stats();
    assert_eq!(s["snapshots"].as_array().unwrap().len(), 3, "{s}");

    let again = p.resume_export("web-02", &token).await.unwrap();
    assert_eq!(again.resume_token().as_deref(), Some(token.as_str()));
    assert_eq!(peer.stats()["snapshots_made"], 3, "no new snapshot");
    let (got, _) = digest(again.as_ref(), 2).await;
    assert_eq!(got, seeded["disks"]["web-02-data2"].as_str().unwrap());
    again.close_after(true).await.unwrap();
    released(&peer);

    // The snapshots are gone now: resuming takes new ones.
    let fresh = p.resume_export("web-02", &token).await.unwrap();
    assert_ne!(fresh.resume_token().as_deref(), Some(token.as_str()));
    assert_eq!(peer.stats()["snapshots_made"], 6);
    fresh.close_after(true).await.unwrap();
    released(&peer);
    // A token of something else is refused.
    let e = p
        .resume_export("web-02", r#"{"snapshots": []}"#)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_argument", "{e}");
}

/// Connections to the blob service reset or cut mid-answer (a
/// fault-injecting proxy between the SAS URLs and Azurite): the reads are
/// tried again and the disks read back as seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_blob_connections_are_tried_again() {
    use hypersdk_testsupport::faultproxy::Fault;
    let (peer, proxy) = AzureCompute::start_with_proxy();
    let seeded = peer.seed_vm(None, true);
    let p = provider(&peer, CLIENT_SECRET);
    let source = p.open_export("web-02").await.unwrap();
    proxy.inject(&[
        Fault::Reset,
        Fault::CutAfter(100_000),
        Fault::CutAfter(3_000_000),
    ]);
    for (i, d) in source.spec().disks.clone().iter().enumerate() {
        let (got, _) = digest(source.as_ref(), i).await;
        assert_eq!(
            got,
            seeded["disks"][&d.name].as_str().unwrap(),
            "{}",
            d.name
        );
    }
    // Each fault ends its connection: the reads opened a new one per fault.
    assert!(proxy.connections() >= 3, "the faults were met");
    source.close_after(true).await.unwrap();
    released(&peer);
}
