//! The Compute Engine provider against the Compute Engine + Cloud Build
//! stub (tests/peers/gce.py) over gcp-storage-emulator: an instance seeded
//! with two persistent disks of known content passes the provider testkit,
//! its description matches what Google's own clients (google-cloud-compute)
//! read from the same stub, its disks read back as seeded through images
//! and image exports, and every image, build and staged object is released
//! afterwards — also when the export fails or is cancelled.

#![allow(clippy::unwrap_used)]

use hypersdk_core::{ExportSource, Provider};
use hypersdk_gcp::{GcpConfig, GcpProvider};
use hypersdk_testsupport::gce::{GceCompute, BUCKET};
use serde_json::json;

fn config(peer: &GceCompute) -> GcpConfig {
    serde_json::from_value(peer.config()).unwrap()
}

fn provider(peer: &GceCompute) -> GcpProvider {
    config(peer).provider().unwrap()
}

/// Nothing the exports made is left: no image, no running build, no
/// staged object.
/// The seeded disks' digests, in the spec's order.
fn seeded_digests(seeded: &serde_json::Value) -> Vec<String> {
    ["web-03", "web-03-data"]
        .iter()
        .map(|d| seeded["disks"][d].as_str().unwrap().to_string())
        .collect()
}

fn released(peer: &GceCompute) {
    let s = peer.stats();
    assert_eq!(s["live_images"], json!([]), "{s}");
    assert_eq!(s["running_builds"], json!([]), "{s}");
    assert_eq!(peer.storage.list(BUCKET), Vec::<String>::new(), "{s}");
}

async fn digests(source: &dyn ExportSource) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..source.spec().disks.len() {
        out.push(hypersdk_testkit::provider::disk_sha256(source, i).await.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_passes_the_testkit_and_reads_back_through_image_exports() {
    let peer = GceCompute::start();
    let seeded = peer.seed_vm(false, None);
    let p = provider(&peer);
    hypersdk_testkit::provider::run_suite(&p, "web-03").await;
    released(&peer);

    // The description, against what Google's client reads from the stub.
    let spec = p.vm_spec("us-central1-a/web-03").await.unwrap();
    let sdk: serde_json::Value = serde_json::from_str(peer.sdk(
        "i = instances.get(project=P, zone=Z, instance='web-03')\n\
         mt = machine_types.get(project=P, zone=Z, machine_type=i.machine_type.rsplit('/', 1)[1])\n\
         ds = [disks.get(project=P, zone=Z, disk=a.source.rsplit('/', 1)[1]) for a in sorted(i.disks, key=lambda a: (not a.boot, a.index))]\n\
         print(json.dumps({'id': i.id, 'cpus': mt.guest_cpus, 'memory': mt.memory_mb, 'disks': [d.name for d in ds], 'sizes': [d.size_gb << 30 for d in ds], 'secure_boot': i.shielded_instance_config.enable_secure_boot, 'uefi': any(f.type_ == 'UEFI_COMPATIBLE' for f in ds[0].guest_os_features), 'nics': [n.nic_type for n in i.network_interfaces], 'status': i.status}))",
    ).trim())
    .unwrap();
    assert_eq!(
        spec.id,
        "projects/hypersdk-test/zones/us-central1-a/instances/web-03"
    );
    assert!(spec
        .annotation
        .as_deref()
        .unwrap()
        .contains(&sdk["id"].as_u64().unwrap().to_string()));
    assert_eq!(u64::from(spec.cpus), sdk["cpus"].as_u64().unwrap());
    assert_eq!(spec.memory_mib, sdk["memory"].as_u64().unwrap());
    let names: Vec<&str> = spec.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(json!(names), sdk["disks"]);
    let caps: Vec<u64> = spec.disks.iter().map(|d| d.capacity).collect();
    assert_eq!(json!(caps), sdk["sizes"]);
    assert_eq!(spec.hardware.secure_boot, sdk["secure_boot"] == json!(true));
    assert_eq!(
        spec.firmware == hypersdk_core::vm::Firmware::Uefi,
        sdk["uefi"] == json!(true)
    );
    let models: Vec<&str> = spec.nics.iter().map(|n| n.model.as_str()).collect();
    assert_eq!(models, ["gvnic", "virtio"], "{sdk}");
    assert_eq!(spec.nics[1].network, "backend/backend-eu");
    assert_eq!(sdk["status"], "RUNNING");
    assert_eq!(spec.power_state, hypersdk_core::vm::PowerState::On);
    assert_eq!(spec.guest_os.family, hypersdk_core::vm::OsFamily::Linux);

    // The disks as seeded, read through images made with forceCreate.
    let made = peer.stats()["images_made"].as_u64().unwrap();
    let source = p.open_export("web-03").await.unwrap();
    let got = digests(source.as_ref()).await;
    source.close().await.unwrap();
    assert_eq!(got, seeded_digests(&seeded));
    assert_eq!(peer.stats()["images_made"].as_u64().unwrap(), made + 2);
    released(&peer);
}

/// Google's own clients make the calls the provider makes — an image of a
/// running instance's disk (forceCreate), its operation polled, the image
/// export submitted to Cloud Build and waited for, a build cancelled, the
/// image deleted — and the stub answers in the shapes they parse; the
/// staged tar.gz holds the disk as seeded.
#[test]
fn googles_clients_drive_the_stub_through_an_image_export() {
    let peer = GceCompute::start_with(1.0);
    let seeded = peer.seed_vm(false, None);
    let out = peer.sdk(
        "i = instances.get(project=P, zone=Z, instance='web-03')\n\
         def wait(op):\n\
         \x20   while operations.get(project=P, operation=op.name).status != compute_v1.Operation.Status.DONE: time.sleep(0.05)\n\
         errors = []\n\
         try: images.insert(project=P, image_resource=compute_v1.Image(name='sdk-img', source_disk=i.disks[0].source))\n\
         except Exception as e: errors.append(type(e).__name__)\n\
         wait(images.insert(request=compute_v1.InsertImageRequest(project=P, force_create=True, image_resource=compute_v1.Image(name='sdk-img', source_disk=i.disks[0].source, labels={'created-by': 'hypersdk'}))))\n\
         img = images.get(project=P, image='sdk-img')\n\
         step = cloudbuild_v1.BuildStep(name='gcr.io/compute-image-tools/gce_vm_image_export:release', args=['-timeout=7000s', '-source_image=projects/%s/global/images/sdk-img' % P, '-client_id=api', '-format=', '-destination_uri=gs://hypersdk-staging/sdk/web-03.tar.gz'])\n\
         lro = builds.create_build(project_id=P, build=cloudbuild_v1.Build(steps=[step], tags=['gce-daisy'], timeout='7200s'))\n\
         done = lro.result(timeout=120)\n\
         other = builds.create_build(project_id=P, build=cloudbuild_v1.Build(steps=[step], timeout='7200s')).metadata.build.id\n\
         cancelled = builds.cancel_build(project_id=P, id=other).status.name\n\
         wait(images.delete(project=P, image='sdk-img'))\n\
         print(json.dumps({'image': img.status, 'size': img.disk_size_gb, 'build': done.status.name, 'fetched': builds.get_build(project_id=P, id=done.id).status.name, 'cancelled': cancelled, 'errors': errors}))",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        json!({"image": "READY", "size": 1, "build": "SUCCESS", "fetched": "SUCCESS",
               "cancelled": "CANCELLED", "errors": ["BadRequest"]}),
        "{out}"
    );
    // The staged archive holds the boot disk as seeded (GNU tar unpacks it).
    let tmp = tempfile::tempdir().unwrap();
    let tgz = tmp.path().join("web-03.tar.gz");
    peer.storage.download(BUCKET, "sdk/web-03.tar.gz", &tgz);
    let st = std::process::Command::new("tar")
        .arg("-xzSf")
        .arg(&tgz)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(st.success());
    let raw = std::fs::read(tmp.path().join("disk.raw")).unwrap();
    use sha2::Digest;
    let got: String = sha2::Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, seeded["disks"]["web-03"].as_str().unwrap());
    assert_eq!(peer.stats()["live_images"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_exports_and_a_killed_export_is_taken_up_again() {
    let peer = GceCompute::start();
    let seeded = peer.seed_vm(true, None);
    let p = provider(&peer);
    let spec = p.vm_spec("web-03").await.unwrap();
    assert_eq!(spec.power_state, hypersdk_core::vm::PowerState::Off);

    // A process that dies mid-export closes nothing: its images and staged
    // objects stay, and its resume token finds them again.
    let first = p.open_export("web-03").await.unwrap();
    let token = first.resume_token().unwrap();
    let (disk0, _) = hypersdk_testkit::provider::disk_sha256(first.as_ref(), 0).await;
    assert_eq!(disk0, seeded["disks"]["web-03"]);
    std::mem::forget(first); // killed: no close
    let s = peer.stats();
    let (made, builds) = (s["images_made"].clone(), s["builds"].clone());
    let again = p.resume_export("web-03", &token).await.unwrap();
    assert_eq!(digests(again.as_ref()).await, seeded_digests(&seeded));
    // Disk 0 was staged: read again as it was; disk 1's export was taken
    // up from its image (or its object, if it had finished).
    let s = peer.stats();
    assert_eq!(s["images_made"], made, "{s}");
    assert!(
        s["builds"].as_u64() <= builds.as_u64().map(|b| b + 1),
        "{s}"
    );
    again.close().await.unwrap();
    released(&peer);

    // A token naming images that are not this provider's is not adopted.
    let forged = json!({"exports": [
        {"image": "debian-12", "object": "exports/x/web-03.tar.gz"},
        {"image": "hypersdk-other", "object": "../../etc/passwd.tar.gz"},
    ]})
    .to_string();
    let made = peer.stats()["images_made"].as_u64().unwrap();
    let src = p.resume_export("web-03", &forged).await.unwrap();
    assert_eq!(
        digests(src.as_ref()).await[1],
        seeded["disks"]["web-03-data"]
    );
    src.close().await.unwrap();
    assert_eq!(peer.stats()["images_made"].as_u64().unwrap(), made + 2);
    released(&peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_failed_export_releases_what_it_made() {
    let peer = GceCompute::start_with(2.0);
    peer.seed_vm(false, None);
    let p = provider(&peer);
    let sink = hypersdk_sinks::MemorySink::new();
    hypersdk_testkit::provider::an_export_cancelled_while_reading_leaves_nothing(
        &p,
        "web-03",
        1 << 20,
        &sink,
    )
    .await;
    released(&peer);

    // Closed while the image exports still run: their builds are cancelled.
    let source = p.open_export("web-03").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    source.close().await.unwrap();
    let s = peer.stats();
    assert!(s["builds_cancelled"].as_u64().unwrap() >= 1, "{s}");
    released(&peer);

    // An export the build cannot write (no such bucket) fails naming the
    // disk and the build, and leaves nothing behind.
    let mut c = peer.config();
    c["bucket"] = json!("gs://no-such-bucket/exports");
    let bad: GcpConfig = serde_json::from_value(c).unwrap();
    let p2 = bad.provider().unwrap();
    let source = p2.open_export("web-03").await.unwrap();
    let e = source.open_disk(0, 0).await.err().unwrap();
    let text = hypersdk_core::error::chain(&e);
    assert!(
        text.contains("ended FAILURE") && text.contains("web-03"),
        "{text}"
    );
    source.close().await.unwrap();
    let s = peer.stats();
    assert_eq!(s["live_images"], json!([]), "{s}");
}

/// Connections to Cloud Storage cut mid-read (a reset before the answer,
/// cuts after 100 kB and 300 kB of an object): each read resumes from the
/// byte it broke at, and the disks still read back as seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_to_the_bucket_resume_where_they_broke() {
    use hypersdk_testsupport::faultproxy::{Fault, FaultProxy};
    let peer = GceCompute::start();
    let seeded = peer.seed_vm(true, None);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", peer.storage.port).parse().unwrap());
    let mut c = peer.config();
    c["storage_endpoint"] = json!(format!("http://{}", proxy.addr()));
    let p: GcpProvider = serde_json::from_value::<GcpConfig>(c)
        .unwrap()
        .provider()
        .unwrap();
    let source = p.open_export("web-03").await.unwrap();
    proxy.inject(&[
        Fault::Reset,
        Fault::CutAfter(100_000),
        Fault::CutAfter(300_000),
    ]);
    assert_eq!(digests(source.as_ref()).await, seeded_digests(&seeded));
    assert!(proxy.connections() >= 4, "the faults were met");
    source.close().await.unwrap();
    released(&peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_a_missing_instance_and_no_bucket_are_named() {
    let peer = GceCompute::start();
    peer.seed_vm(false, None);
    // A key the stub does not know (the storage emulator's own).
    let other = hypersdk_testsupport::gcs::GcsEmulator::start_with_service_account(&["x-bucket"]);
    let mut c = peer.config();
    c["credentials"] = json!(other.key_file.as_ref().unwrap());
    let p: GcpProvider = serde_json::from_value::<GcpConfig>(c)
        .unwrap()
        .provider()
        .unwrap();
    let e = p.list_vms().await.err().unwrap();
    assert_eq!(e.code(), "auth", "{e}");

    let p = provider(&peer);
    let e = p.vm_spec("web-99").await.err().unwrap();
    assert_eq!(e.code(), "vm_not_found", "{e}");
    for bad in ["../web-03", "us-central1-a/web-03?x=1", "a/b/c", "WEB-03"] {
        let e = p.vm_spec(bad).await.err().unwrap();
        assert!(
            matches!(e.code(), "invalid_argument" | "vm_not_found"),
            "{bad}: {e}"
        );
    }
    let mut c = peer.config();
    c.as_object_mut().unwrap().remove("bucket");
    let p: GcpProvider = serde_json::from_value::<GcpConfig>(c)
        .unwrap()
        .provider()
        .unwrap();
    assert_eq!(p.list_vms().await.unwrap().len(), 1);
    let e = p.open_export("web-03").await.err().unwrap();
    assert!(e.to_string().contains("bucket"), "{e}");
    assert_eq!(peer.stats()["images_made"], 0);
}
