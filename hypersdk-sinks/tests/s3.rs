//! The S3 sink against moto's S3 server: the sink testkit, and what only an
//! object store can get wrong — no open uploads left behind, parts not
//! sent again on resume, objects AWS's own client reads back.

#![cfg(feature = "s3")]
#![allow(clippy::unwrap_used)]

use hypersdk_core::{Artifact, Sink};
use hypersdk_sinks::s3::{sink, S3Settings};
use hypersdk_sinks::ObjectStoreSink;
use hypersdk_testkit::sink::{
    pattern, publish_numbered_blocks, run_suite, sha256_of_file, Capabilities,
};
use hypersdk_testsupport::s3::{MotoS3, S3Peer, ACCESS_KEY, SECRET_KEY};

fn settings(moto: &MotoS3) -> S3Settings {
    S3Settings {
        endpoint: Some(moto.endpoint()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        region: Some("us-east-1".into()),
        ..Default::default()
    }
}

fn s3_sink(moto: &MotoS3, url: &str, state: &std::path::Path) -> ObjectStoreSink {
    sink(url, &settings(moto), state.to_path_buf()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sink_passes_the_sink_testkit_on_moto() {
    let moto = MotoS3::start();
    moto.create_bucket("tk-bucket");
    let state = tempfile::tempdir().unwrap();
    let s = s3_sink(&moto, "s3://tk-bucket/some/prefix/", state.path());
    assert_eq!(s.describe(), "s3://tk-bucket/some/prefix");
    run_suite(&s, Capabilities::OBJECT_STORE).await;
    // Everything the suite published it deleted; nothing is left open.
    assert_eq!(moto.list("tk-bucket"), vec![]);
    // Aborts of dropped staging areas run in the background.
    for _ in 0..50 {
        if moto.open_uploads("tk-bucket").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(moto.open_uploads("tk-bucket"), Vec::<String>::new());
    // The root of a bucket works too.
    let root = s3_sink(&moto, "s3://tk-bucket", state.path());
    run_suite(&root, Capabilities::OBJECT_STORE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_not_sent_again_and_boto3_reads_the_object() {
    let moto = MotoS3::start();
    moto.create_bucket("resume");
    let state = tempfile::tempdir().unwrap();
    let s = s3_sink(&moto, "s3://resume/x", state.path()).with_part_size(5 << 20);
    let artifact = Artifact::File("vm.ova".into());
    let whole = pattern(9, 40 << 20);
    let mut staging = s.begin_resumable(&artifact, false, false).await.unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    w.put(&whole[..30 << 20]).await.unwrap();
    // A save within 5 MiB of the last part cannot be made now.
    assert!(w.save_to(12 << 20).await.unwrap().is_none());
    let saved = w.save_to(27 << 20).await.unwrap().unwrap();
    assert_eq!(saved.size, 27 << 20);
    drop(w);
    staging.keep().await.unwrap();
    let sent = moto.stats()["part_puts"].as_u64().unwrap();
    assert_eq!(
        sent, 3,
        "two 5 MiB parts by size (16 MiB kept back), then 17 MiB cut at the save"
    );

    let mut staging = s.begin_resumable(&artifact, false, true).await.unwrap();
    let mut w = staging.resume("vm.ova", &saved, saved.size).await.unwrap();
    w.put(&whole[27 << 20..]).await.unwrap();
    assert_eq!(w.complete().await.unwrap(), whole.len() as u64);
    assert!(moto.list("resume").is_empty(), "visible before commit");
    let at = staging.commit().await.unwrap();
    assert_eq!(at, "s3://resume/x/vm.ova");
    // The last 13 MiB in one part: nothing sent again.
    assert_eq!(moto.stats()["part_puts"].as_u64().unwrap(), sent + 1);
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("vm.ova");
    moto.download("resume", "x/vm.ova", &got);
    assert!(
        std::fs::read(&got).unwrap() == whole,
        "boto3 read other bytes"
    );
    assert!(moto.open_uploads("resume").is_empty());
    assert!(
        !std::fs::read_dir(state.path()).unwrap().any(|_| true),
        "state left after commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_bucket_and_never_the_secret() {
    let moto = MotoS3::start();
    let state = tempfile::tempdir().unwrap();
    let s = s3_sink(&moto, "s3://no-such-bucket/p", state.path());
    let e = s
        .begin(&Artifact::Directory("vm".into()), false)
        .await
        .unwrap_err();
    let text = hypersdk_core::error::chain(&e);
    assert!(text.contains("s3://no-such-bucket/p"), "{text}");
    assert!(!text.contains(SECRET_KEY), "{text}");
    assert!(!format!("{s:?}").contains(SECRET_KEY));
}

/// Twenty connections cut mid-upload (a fault-injecting proxy in front of
/// moto): the sink's retries carry the upload through, and the object is
/// the one put, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cut_connections_during_a_256_mib_upload() {
    use hypersdk_testsupport::faultproxy::FaultProxy;
    let moto = MotoS3::start();
    moto.create_bucket("cuts");
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse().unwrap());
    let total: u64 = 256 << 20;
    // Spread over the upload: every ~12 MiB, from 3 MiB on.
    let cuts: Vec<u64> = (0..20)
        .map(|i| (3 << 20) + i * (12 << 20) + i * 7919)
        .collect();
    proxy.cut_uploads_at_totals(&cuts);
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "s3://cuts/p",
        &S3Settings {
            endpoint: Some(format!("http://{}", proxy.addr())),
            ..settings(&moto)
        },
        state.path().to_path_buf(),
    )
    .unwrap();
    let sent = publish_numbered_blocks(&s, "big.ova", total).await;
    assert_eq!(proxy.upload_cuts_done(), 20, "every planned cut happened");
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("big.ova");
    moto.download("cuts", "p/big.ova", &got);
    assert_eq!(sha256_of_file(&got), sent);
    assert!(moto.open_uploads("cuts").is_empty());
}

/// MinIO, the more faithful S3: the testkit, and a resumed upload boto3
/// reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sink_passes_the_sink_testkit_on_minio() {
    use hypersdk_testsupport::s3::Minio;
    let minio = Minio::start();
    minio.create_bucket("tk-minio");
    let state = tempfile::tempdir().unwrap();
    let settings = S3Settings {
        endpoint: Some(minio.endpoint()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let s = sink("s3://tk-minio/pre", &settings, state.path().to_path_buf()).unwrap();
    run_suite(&s, Capabilities::OBJECT_STORE).await;

    let s = s.with_part_size(5 << 20);
    let artifact = Artifact::File("vm.ova".into());
    let whole = pattern(5, 40 << 20);
    let mut staging = s.begin_resumable(&artifact, false, false).await.unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    w.put(&whole[..30 << 20]).await.unwrap();
    let saved = w.save_to(27 << 20).await.unwrap().unwrap();
    drop(w);
    staging.keep().await.unwrap();
    let mut staging = s.begin_resumable(&artifact, false, true).await.unwrap();
    let mut w = staging.resume("vm.ova", &saved, saved.size).await.unwrap();
    w.put(&whole[27 << 20..]).await.unwrap();
    w.complete().await.unwrap();
    staging.commit().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("vm.ova");
    minio.download("tk-minio", "pre/vm.ova", &got);
    assert!(
        std::fs::read(&got).unwrap() == whole,
        "boto3 read other bytes from MinIO"
    );
    for _ in 0..50 {
        if minio.open_uploads("tk-minio").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(minio.open_uploads("tk-minio"), Vec::<String>::new());
}
