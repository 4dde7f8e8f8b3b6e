//! The provider testkit over the local provider: the bundled example VM
//! (a qcow2 and a raw disk), through the registry as the daemon builds it
//! (confined to its directory).

#![allow(clippy::unwrap_used)]

use hypersdk_core::ProviderSettings;
use hypersdk_local::LocalConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_passes_the_provider_testkit() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vms");
    let mut config = LocalConfig {
        dir: examples,
        disk_roots: None,
    };
    config.confine();
    let p = config.connect().await.unwrap();
    assert!(p.vm_ops().is_none(), "local VMs have no VM operations");
    hypersdk_testkit::provider::run_suite(p.as_ref(), "demo-vm").await;
    p.close().await.unwrap();
}
