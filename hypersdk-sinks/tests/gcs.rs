//! The Cloud Storage sink against gcp-storage-emulator: the sink testkit,
//! objects Google's own Python client reads back, resumed sessions that
//! send nothing twice, and cut connections.

#![cfg(feature = "gcs")]
#![allow(clippy::unwrap_used)]

use hypersdk_core::{Artifact, Sink};
use hypersdk_sinks::gcs::{sink, GcsSettings};
use hypersdk_testkit::sink::{
    pattern, publish_numbered_blocks, run_suite, sha256_of_file, Capabilities,
};
use hypersdk_testsupport::gcs::GcsEmulator;

fn settings(gcs: &GcsEmulator) -> GcsSettings {
    GcsSettings {
        endpoint: Some(gcs.endpoint()),
        anonymous: true,
        ..Default::default()
    }
}

/// A session keeps what it took; a save keeps the rest up to its point, so
/// any save is durable and a continued upload may keep fewer bytes.
const GCS: Capabilities = Capabilities {
    resumable: true,
    min_part: 0,
    truncates: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_sink_passes_the_sink_testkit_on_the_emulator() {
    let gcs = GcsEmulator::start(&["tk-bucket"]);
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "gs://tk-bucket/some/prefix/",
        &settings(&gcs),
        state.path().into(),
    )
    .unwrap();
    assert_eq!(s.describe(), "gs://tk-bucket/some/prefix");
    run_suite(&s, GCS).await;
    assert_eq!(gcs.list("tk-bucket"), Vec::<String>::new());
}

/// Kept after 30 MiB with a save at 27 MiB (not a 256 KiB boundary), then
/// continued: the object Google's client reads is the one put, and the
/// chunks the session already held were not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_sends_nothing_twice_and_reads_back_whole() {
    let gcs = GcsEmulator::start(&["resume"]);
    let state = tempfile::tempdir().unwrap();
    let s = sink("gs://resume/x", &settings(&gcs), state.path().into()).unwrap();
    let artifact = Artifact::File("vm.ova".into());
    let whole = pattern(3, 40 << 20);
    let save_at: usize = (27 << 20) + 12_345;
    let mut staging = s.begin_resumable(&artifact, false, false).await.unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    w.put(&whole[..30 << 20]).await.unwrap();
    let saved = w.save_to(save_at as u64).await.unwrap().unwrap();
    assert_eq!(saved.size, save_at as u64);
    let text = serde_json::to_string(&saved).unwrap();
    assert!(
        !text.contains("upload_id="),
        "the session URI is in the checkpoint: {text}"
    );
    drop(w);
    staging.keep().await.unwrap();
    assert!(gcs.list("resume").is_empty(), "visible before commit");
    let sent_before = gcs.count("chunk_bytes");
    // The session took every whole 256 KiB unit of the 30 MiB put.
    assert_eq!(sent_before, 30 << 20);

    let mut staging = s.begin_resumable(&artifact, false, true).await.unwrap();
    let mut w = staging.resume("vm.ova", &saved, saved.size).await.unwrap();
    assert_eq!(w.size(), save_at as u64);
    w.put(&whole[save_at..]).await.unwrap();
    assert_eq!(w.complete().await.unwrap(), whole.len() as u64);
    assert!(gcs.list("resume").is_empty(), "visible before commit");
    assert_eq!(staging.commit().await.unwrap(), "gs://resume/x/vm.ova");
    assert_eq!(
        gcs.count("chunk_bytes") - sent_before,
        (10 << 20) as u64,
        "only the last 10 MiB went after the resume"
    );
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("vm.ova");
    gcs.download("resume", "x/vm.ova", &got);
    assert!(
        std::fs::read(&got).unwrap() == whole,
        "Google's client read other bytes"
    );
    // What the emulator computed over the object is the CRC32C the sink
    // sent (and checked on publication).
    let crc = gcs.client(
        "b = gcs.bucket(sys.argv[2]).get_blob(sys.argv[3]); print(b.crc32c, b.size)",
        &["resume", "x/vm.ova"],
    );
    assert!(crc.trim().ends_with(&format!(" {}", whole.len())), "{crc}");
}

/// Cancelled and aborted exports cancel their sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_cancel_their_sessions() {
    let gcs = GcsEmulator::start(&["gone"]);
    let state = tempfile::tempdir().unwrap();
    let s = sink("gs://gone", &settings(&gcs), state.path().into()).unwrap();
    let mut staging = s
        .begin(&Artifact::Directory("vm".into()), false)
        .await
        .unwrap();
    let mut w = staging.start("disk.vmdk").await.unwrap();
    w.put(&pattern(1, 1 << 20)).await.unwrap();
    w.complete().await.unwrap();
    staging.abort().await.unwrap();
    assert_eq!(gcs.count("cancels"), 1);
    assert!(gcs.list("gone").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_bucket() {
    let gcs = GcsEmulator::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "gs://no-such-bucket/p",
        &settings(&gcs),
        state.path().into(),
    )
    .unwrap();
    let e = s
        .begin(&Artifact::Directory("vm".into()), false)
        .await
        .unwrap_err();
    let text = hypersdk_core::error::chain(&e);
    assert!(text.contains("gs://no-such-bucket/p"), "{text}");
    assert!(
        matches!(&e, hypersdk_core::Error::Sink { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{text}"
    );
}

/// Twenty connections cut mid-upload (a fault-injecting proxy in front of
/// the emulator): the sink asks the session what it holds and goes on, and
/// the object is the one put, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cut_connections_during_a_256_mib_upload() {
    use hypersdk_testsupport::faultproxy::FaultProxy;
    let gcs = GcsEmulator::start(&["cuts"]);
    let proxy = FaultProxy::start(format!("127.0.0.1:{}", gcs.port).parse().unwrap());
    let total: u64 = 256 << 20;
    let cuts: Vec<u64> = (0..20)
        .map(|i| (3 << 20) + i * (12 << 20) + i * 7919)
        .collect();
    proxy.cut_uploads_at_totals(&cuts);
    let state = tempfile::tempdir().unwrap();
    let s = sink(
        "gs://cuts/p",
        &GcsSettings {
            endpoint: Some(format!("http://{}", proxy.addr())),
            anonymous: true,
            ..Default::default()
        },
        state.path().to_path_buf(),
    )
    .unwrap();
    let sent = publish_numbered_blocks(&s, "big.ova", total).await;
    assert_eq!(proxy.upload_cuts_done(), 20, "every planned cut happened");
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("big.ova");
    gcs.download("cuts", "p/big.ova", &got);
    assert_eq!(sha256_of_file(&got), sent);
}

/// With a service-account key (GOOGLE_APPLICATION_CREDENTIALS' kind of
/// file), the sink trades a signed assertion for a token at the key's
/// token_uri and sends it: the emulator, which then refuses requests
/// without one, checks the assertion with Google's own auth library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_key_gets_tokens_the_store_accepts() {
    let gcs = GcsEmulator::start_with_service_account(&["private"]);
    let key = gcs.key_file.clone().unwrap();
    let state = tempfile::tempdir().unwrap();
    // Without credentials: refused, and said so.
    let anon = sink("gs://private/p", &settings(&gcs), state.path().into()).unwrap();
    let e = anon
        .begin(&Artifact::File("vm.ova".into()), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, hypersdk_core::Error::Sink { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{e}"
    );
    let s = sink(
        "gs://private/p",
        &GcsSettings {
            endpoint: Some(gcs.endpoint()),
            credentials: Some(key.clone()),
            ..Default::default()
        },
        state.path().into(),
    )
    .unwrap();
    let mut staging = s
        .begin(&Artifact::File("vm.ova".into()), false)
        .await
        .unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    let data = pattern(4, 3 << 20);
    w.put(&data).await.unwrap();
    w.complete().await.unwrap();
    staging.commit().await.unwrap();
    assert_eq!(gcs.count("tokens"), 1, "one token, kept while valid");
    assert_eq!(gcs.count("bad_assertions"), 0);
    let dir = tempfile::tempdir().unwrap();
    gcs.download("private", "p/vm.ova", &dir.path().join("vm.ova"));
    assert!(std::fs::read(dir.path().join("vm.ova")).unwrap() == data);

    // A key that is not the account's: its assertion is refused, and the
    // error says where the credentials came from, never the key.
    let text = std::fs::read_to_string(&key).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&text).unwrap();
    let other = GcsEmulator::start_with_service_account(&[]);
    let other_key: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.key_file.as_ref().unwrap()).unwrap())
            .unwrap();
    forged["private_key"] = other_key["private_key"].clone();
    let s = sink(
        "gs://private/p",
        &GcsSettings {
            endpoint: Some(gcs.endpoint()),
            credentials_json: Some(forged.to_string()),
            ..Default::default()
        },
        state.path().into(),
    )
    .unwrap();
    let e = s
        .begin(&Artifact::File("other.ova".into()), false)
        .await
        .unwrap_err();
    let shown = hypersdk_core::error::chain(&e);
    assert!(
        shown.contains("cannot get an access token with the settings' credentials_json"),
        "{shown}"
    );
    assert!(
        shown.contains("invalid_grant") || shown.contains("Invalid JWT"),
        "{shown}"
    );
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!format!("{s:?}").contains("PRIVATE KEY"));
    assert_eq!(gcs.count("bad_assertions"), 1);
}

/// A byte damaged on the way (the emulator stores it inverted): the
/// object's CRC32C does not match at publication, the export fails saying
/// so, and no object stays under the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_upload_is_refused_at_publication_and_removed() {
    let gcs = GcsEmulator::start_flipping(&["dmg"], 5_000_000);
    let state = tempfile::tempdir().unwrap();
    let s = sink("gs://dmg", &settings(&gcs), state.path().into()).unwrap();
    let mut staging = s
        .begin(&Artifact::File("vm.ova".into()), false)
        .await
        .unwrap();
    let mut w = staging.start("vm.ova").await.unwrap();
    w.put(&pattern(8, 9 << 20)).await.unwrap();
    w.complete().await.unwrap();
    let e = staging.commit().await.unwrap_err();
    let text = hypersdk_core::error::chain(&e);
    assert!(
        text.contains("CRC32C") && text.contains("gs://dmg/vm.ova"),
        "{text}"
    );
    assert_eq!(gcs.count("flipped"), 1);
    assert!(gcs.list("dmg").is_empty(), "the damaged object stayed");
}
