//! The provider testkit against the govmomi vCenter simulator, through the
//! registry (settings as a daemon config or a binding would give them):
//! a powered-off VM (ExportVm) and a running one (snapshot + ExportSnapshot).

#![allow(clippy::unwrap_used)]

use hypersdk_core::{Fields, ProviderSettings};
use hypersdk_testsupport::mixed_content;
use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_vsphere::VsphereConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vsphere_passes_the_provider_testkit() {
    let sim = Vcsim::start(&[("tk-off", &[3, 2]), ("tk-on:on", &[2])]);
    for (vm, i) in [("tk-off", 0), ("tk-off", 1), ("tk-on", 0)] {
        let mut data = mixed_content(if i == 0 { 2 << 20 } else { 1 << 20 });
        data[0] = i as u8 + 1;
        std::fs::write(sim.flat_file(vm, i), data).unwrap();
    }
    let fields: Fields = serde_json::from_value(serde_json::json!({
        "url": sim.url, "user": sim.user, "password": sim.password,
        "thumbprint": sim.thumbprint, "timeout_secs": 30,
    }))
    .unwrap();
    let config: VsphereConfig = serde_json::from_value(serde_json::Value::Object(fields)).unwrap();
    let vc = config.connect().await.unwrap();
    assert!(vc.vm_ops().is_some(), "vSphere offers VM operations");
    hypersdk_testkit::provider::run_suite(vc.as_ref(), "tk-off").await;
    // A running VM is exported from a snapshot, removed afterwards.
    hypersdk_testkit::provider::run_suite(vc.as_ref(), "tk-on").await;
    let ops = vc.vm_ops().unwrap();
    assert!(ops.snapshot_tree("tk-on").await.unwrap().is_empty());
    vc.close().await.unwrap();
}
