//! Snapshots and the VM operations a migration needs, against vcsim.

#![allow(clippy::unwrap_used)]

mod common;
use common::*;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hypersdk_core::{PowerState, Provider};
use hypersdk_testsupport::vcsim::Vcsim;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_tree_create_revert_remove() {
    let sim = Vcsim::start(&[("web:on", &[4])]);
    let vc = connect(&sim).await;
    let seen = AtomicU32::new(0);
    let report = |p: u32| seen.store(p, Ordering::SeqCst);
    let first = vc
        .create_snapshot(
            "web",
            "before-migration",
            "taken by the test",
            false,
            false,
            Some(&report),
        )
        .await
        .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 100, "progress reaches 100%");
    vc.create_snapshot("web", "child", "", true, false, None)
        .await
        .unwrap();
    let tree = vc.snapshot_tree("web").await.unwrap();
    assert_eq!(tree.len(), 2, "{tree:?}");
    assert_eq!(tree[0].name, "before-migration");
    assert_eq!(tree[0].id, first);
    assert_eq!(tree[0].description, "taken by the test");
    assert_eq!(
        (tree[1].depth, tree[1].parent.as_deref()),
        (1, Some("before-migration"))
    );
    vc.revert_snapshot("web", "before-migration", None)
        .await
        .unwrap();
    let err = vc
        .revert_snapshot("web", "no-such", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no snapshot named"), "{err}");
    vc.remove_snapshot("web", &first, true, None).await.unwrap();
    assert!(vc.snapshot_tree("web").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_shutdown_and_cdrom_ejection() {
    let sim = Vcsim::start(&[("a:on", &[2]), ("b:on", &[2])]);
    let vc = connect(&sim).await;
    vc.power_off("a", None).await.unwrap();
    assert_eq!(vc.vm_spec("a").await.unwrap().power_state, PowerState::Off);
    vc.power_off("a", None).await.unwrap(); // already off: nothing to do
    vc.shutdown_guest("b", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(vc.vm_spec("b").await.unwrap().power_state, PowerState::Off);

    let before = vc.cdrom_media("a").await.unwrap();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].ends_with("iso/install.iso"), "{before:?}");
    assert_eq!(vc.eject_cdroms("a", None).await.unwrap(), 1);
    assert!(vc.cdrom_media("a").await.unwrap().is_empty());
    assert_eq!(
        vc.eject_cdroms("a", None).await.unwrap(),
        0,
        "already empty"
    );
}
