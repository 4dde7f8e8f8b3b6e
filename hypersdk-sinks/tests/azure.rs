//! The Azure Blob sink against Azurite: the sink testkit, and blobs
//! Microsoft's own SDK reads back.

#![cfg(feature = "azure")]
#![allow(clippy::unwrap_used)]

use hypersdk_core::{Artifact, Sink};
use hypersdk_sinks::azure::{sink, AzureSettings};
use hypersdk_testkit::sink::{pattern, run_suite, Capabilities};
use hypersdk_testsupport::azurite::{Azurite, KEY};

fn settings(az: &Azurite) -> AzureSettings {
    AzureSettings {
        connection_string: Some(az.connection_string()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_sink_passes_the_sink_testkit_on_azurite() {
    let az = Azurite::start();
    az.create_container("tk-container");
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "az://tk-container/some/prefix/",
        &settings(&az),
        state.path().into(),
    )
    .unwrap();
    assert_eq!(
        s.describe(),
        "azure://devstoreaccount1/tk-container/some/prefix"
    );
    run_suite(&s, Capabilities::OBJECT_STORE).await;
    assert_eq!(az.list("tk-container"), vec![]);
    assert!(!format!("{s:?}").contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_blob_reads_back_whole_with_the_sdk() {
    let az = Azurite::start();
    az.create_container("resume");
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "azure://devstoreaccount1/resume/x",
        &settings(&az),
        state.path().into(),
    )
    .unwrap()
    .with_part_size(5 << 20);
    let artifact = Artifact::File("vm.ova".into());
    let whole = pattern(3, 40 << 20);
    let mut staging = s.begin_resumable(&artifact, false, false).await.unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    w.put(&whole[..30 << 20]).await.unwrap();
    let saved = w.save_to(27 << 20).await.unwrap().unwrap();
    drop(w);
    staging.keep().await.unwrap();
    assert!(az.list("resume").is_empty(), "visible before commit");
    let mut staging = s.begin_resumable(&artifact, false, true).await.unwrap();
    let mut w = staging.resume("vm.ova", &saved, saved.size).await.unwrap();
    w.put(&whole[27 << 20..]).await.unwrap();
    w.complete().await.unwrap();
    assert_eq!(
        staging.commit().await.unwrap(),
        "azure://devstoreaccount1/resume/x/vm.ova"
    );
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("vm.ova");
    az.download("resume", "x/vm.ova", &got);
    assert!(
        std::fs::read(&got).unwrap() == whole,
        "the SDK read other bytes"
    );
}
