//! The sink suite.

use hypersdk_core::sink::ObjectMeta;
use hypersdk_core::{Artifact, Sink, Staging, UploadState};
use tokio::io::AsyncReadExt;

use crate::unique;

/// What the sink under test says it can do; the suite checks that it does.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// [`Sink::begin_resumable`] gives a staging area with checkpoints that
    /// survives [`Staging::keep`].
    pub resumable: bool,
    /// The smallest part the sink keeps durably when it is not an
    /// object's last (5 MiB on S3); 0 where any save is durable.
    pub min_part: usize,
    /// A continued upload may keep fewer bytes than were saved (a local
    /// file is cut); false where only whole saved parts can be kept.
    pub truncates: bool,
}

impl Capabilities {
    /// A local directory's: resumable, any save durable, files cut.
    pub const LOCAL: Capabilities = Capabilities {
        resumable: true,
        min_part: 0,
        truncates: true,
    };

    /// An object store's: resumable, parts of 5 MiB, whole parts kept.
    pub const OBJECT_STORE: Capabilities = Capabilities {
        resumable: true,
        min_part: 5 << 20,
        truncates: false,
    };
}

/// Runs every check of this module on `sink`.
pub async fn run_suite(sink: &dyn Sink, caps: Capabilities) {
    a_directory_appears_whole_on_commit(sink).await;
    a_file_artifact_publishes_only_its_file(sink).await;
    abort_and_drop_leave_nothing(sink).await;
    existing_artifacts_are_refused_unless_overwriting(sink).await;
    names_cannot_climb_out(sink).await;
    an_aborted_upload_leaves_nothing(sink).await;
    reserved_regions_are_filled_in_place(sink).await;
    if caps.resumable {
        a_kept_upload_continues_to_the_same_object(sink, caps).await;
    } else {
        a_plain_sink_keeps_nothing(sink).await;
    }
}

/// For the connection-cut tests of object stores: a file artifact `name` of `total` bytes (1 MiB blocks, each numbered)
/// written into `sink` in one upload, completed and published; the SHA-256
/// of what was written.
pub async fn publish_numbered_blocks(sink: &dyn Sink, name: &str, total: u64) -> [u8; 32] {
    use sha2::Digest;
    let artifact = Artifact::File(name.to_string());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    let mut w = staging.start(name).await.expect("start");
    let mut h = sha2::Sha256::new();
    let block = pattern(11, 1 << 20);
    for i in 0..total.div_ceil(1 << 20) {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        b.truncate((total - (i << 20)).min(1 << 20) as usize);
        h.update(&b);
        w.put(&b).await.expect("put");
    }
    assert_eq!(w.complete().await.expect("complete"), total);
    staging.commit().await.expect("commit");
    h.finalize().into()
}

/// The SHA-256 of a file (one a store's own client downloaded).
pub fn sha256_of_file(path: &std::path::Path) -> [u8; 32] {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).expect("open the downloaded file");
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).expect("read the downloaded file");
    h.finalize().into()
}

/// Bytes of a test object: `len` bytes of a pattern seeded by `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

async fn write(staging: &mut Box<dyn Staging>, name: &str, data: &[u8]) {
    let mut w = staging.start(name).await.expect("start an upload");
    for part in data.chunks(300_007) {
        w.put(part).await.expect("put a part");
    }
    assert_eq!(w.size(), data.len() as u64, "size() counts what was put");
    assert_eq!(
        w.complete().await.expect("complete an upload"),
        data.len() as u64,
        "complete() reports the object's size"
    );
}

/// A published object's bytes.
pub async fn read_all(sink: &dyn Sink, path: &str) -> Vec<u8> {
    let mut r = sink
        .read(path)
        .await
        .unwrap_or_else(|e| panic!("{}: read {path}: {e}", sink.describe()));
    let mut v = Vec::new();
    r.read_to_end(&mut v)
        .await
        .expect("read a published object");
    v
}

async fn listed(sink: &dyn Sink, prefix: &str) -> Vec<ObjectMeta> {
    sink.list(prefix)
        .await
        .unwrap_or_else(|e| panic!("{}: list {prefix}: {e}", sink.describe()))
}

/// A directory artifact: nothing is listed before commit; after, exactly
/// its objects, with their sizes and bytes; delete removes them all.
pub async fn a_directory_appears_whole_on_commit(sink: &dyn Sink) {
    let name = unique("tk-dir");
    let artifact = Artifact::Directory(name.clone());
    let (a, b) = (pattern(1, 1_500_000), pattern(2, 10));
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    write(&mut staging, "a.bin", &a).await;
    write(&mut staging, "b.txt", &b).await;
    write(&mut staging, "empty", &[]).await;
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: staged objects are listed before commit",
        sink.describe()
    );
    staging.commit().await.expect("commit");
    let l = listed(sink, &format!("{name}/")).await;
    let want: Vec<ObjectMeta> = [("a.bin", a.len()), ("b.txt", b.len()), ("empty", 0)]
        .iter()
        .map(|(n, len)| ObjectMeta {
            path: format!("{name}/{n}"),
            size: *len as u64,
        })
        .collect();
    assert_eq!(l, want, "{}: listing after commit", sink.describe());
    assert_eq!(
        read_all(sink, &format!("{name}/a.bin")).await,
        a,
        "{}: bytes read back",
        sink.describe()
    );
    assert!(
        sink.delete(&artifact).await.expect("delete"),
        "delete says it removed the artifact"
    );
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: objects left after delete",
        sink.describe()
    );
    assert!(
        !sink.delete(&artifact).await.expect("delete again"),
        "a second delete finds nothing"
    );
    assert!(
        sink.read(&format!("{name}/a.bin")).await.is_err(),
        "a deleted object still reads"
    );
}

/// A file artifact (an OVA): only the object of its name is published;
/// the staging area's other objects (spools) are not.
pub async fn a_file_artifact_publishes_only_its_file(sink: &dyn Sink) {
    let name = format!("{}.ova", unique("tk-file"));
    let artifact = Artifact::File(name.clone());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    write(&mut staging, "spool", &pattern(3, 1000)).await;
    let body = pattern(4, 70_000);
    write(&mut staging, &name, &body).await;
    staging.commit().await.expect("commit");
    let stem = name.trim_end_matches(".ova");
    assert_eq!(
        listed(sink, stem).await,
        vec![ObjectMeta {
            path: name.clone(),
            size: body.len() as u64
        }],
        "{}: a file artifact publishes its file alone",
        sink.describe()
    );
    assert_eq!(read_all(sink, &name).await, body);
    sink.delete(&artifact).await.expect("delete");
}

/// Aborted, or dropped without a word (a cancelled future), a staging area
/// leaves nothing listed, and the name can be used again at once.
pub async fn abort_and_drop_leave_nothing(sink: &dyn Sink) {
    let name = unique("tk-abort");
    let artifact = Artifact::Directory(name.clone());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    write(&mut staging, "x", &pattern(5, 5000)).await;
    staging.abort().await.expect("abort");
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: an aborted upload is visible",
        sink.describe()
    );
    let mut staging = sink
        .begin(&artifact, false)
        .await
        .expect("begin after abort");
    write(&mut staging, "x", &pattern(5, 5000)).await;
    drop(staging);
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: a dropped upload is visible",
        sink.describe()
    );
    let staging = sink
        .begin(&artifact, false)
        .await
        .expect("begin after drop");
    staging.abort().await.expect("abort");
}

/// An existing artifact is refused (`already_exists`) without overwrite;
/// with it, the new artifact replaces the old one whole (no old object
/// survives).
pub async fn existing_artifacts_are_refused_unless_overwriting(sink: &dyn Sink) {
    let name = unique("tk-exists");
    let artifact = Artifact::Directory(name.clone());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    write(&mut staging, "old-only", b"old").await;
    write(&mut staging, "both", b"old").await;
    staging.commit().await.expect("commit");
    let e = sink
        .begin(&artifact, false)
        .await
        .expect_err("begin over an existing artifact");
    assert_eq!(e.code(), "already_exists", "{}: {e}", sink.describe());
    let mut staging = sink
        .begin(&artifact, true)
        .await
        .expect("begin with overwrite");
    write(&mut staging, "both", b"new").await;
    staging.commit().await.expect("commit with overwrite");
    assert_eq!(
        listed(sink, &format!("{name}/")).await,
        vec![ObjectMeta {
            path: format!("{name}/both"),
            size: 3
        }],
        "{}: the replaced artifact keeps old objects",
        sink.describe()
    );
    assert_eq!(read_all(sink, &format!("{name}/both")).await, b"new");
    sink.delete(&artifact).await.expect("delete");
}

/// Artifact and object names are single plain components.
pub async fn names_cannot_climb_out(sink: &dyn Sink) {
    for bad in ["../evil", "a/b", "..", "", "x\0y"] {
        let r = sink.begin(&Artifact::Directory(bad.into()), false).await;
        assert!(
            r.is_err(),
            "{}: artifact name {bad:?} accepted",
            sink.describe()
        );
    }
    let name = unique("tk-names");
    let mut staging = sink
        .begin(&Artifact::Directory(name), false)
        .await
        .expect("begin");
    for bad in ["../evil", "a/b", ".."] {
        assert!(
            staging.start(bad).await.is_err(),
            "{}: object name {bad:?} accepted",
            sink.describe()
        );
    }
    staging.abort().await.expect("abort");
    assert!(
        sink.read("../etc/passwd").await.is_err(),
        "{}: read climbed out",
        sink.describe()
    );
}

/// A resumable upload kept after an interruption: the checkpoint and the
/// bytes made durable come back; appending the rest gives the same object
/// as an uninterrupted upload; nothing is listed until the commit.
pub async fn a_kept_upload_continues_to_the_same_object(sink: &dyn Sink, caps: Capabilities) {
    let name = unique("tk-resume");
    let artifact = Artifact::Directory(name.clone());
    let cut = 1_234_567 + caps.min_part;
    let whole = pattern(6, cut + 765_433 + caps.min_part);
    let mut staging = sink
        .begin_resumable(&artifact, false, false)
        .await
        .expect("begin_resumable");
    let cps = staging.checkpoints().unwrap_or_else(|| {
        panic!(
            "{}: a resumable staging area has no checkpoints",
            sink.describe()
        )
    });
    let mut w = staging.start("disk").await.expect("start");
    w.put(&whole[..cut]).await.expect("put");
    let saved = w.save().await.expect("save").unwrap_or_else(|| {
        panic!(
            "{}: a resumable sink's upload saves no state",
            sink.describe()
        )
    });
    assert_eq!(
        saved.size,
        cut as u64,
        "{}: save reports the durable size",
        sink.describe()
    );
    // What a checkpoint records must survive being written down.
    let saved: UploadState =
        serde_json::from_slice(&serde_json::to_vec(&saved).expect("encode the upload state"))
            .expect("decode the upload state");
    w.put(b"not durable: lost with the process")
        .await
        .expect("put");
    drop(w);
    cps.save(b"{\"at\":1234567}").expect("save checkpoint");
    staging.keep().await.expect("keep");
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: a kept partial upload is listed",
        sink.describe()
    );

    let mut staging = sink
        .begin_resumable(&artifact, false, true)
        .await
        .expect("resume");
    let cps = staging.checkpoints().expect("checkpoints on resume");
    assert_eq!(
        cps.load().expect("load").as_deref(),
        Some(&b"{\"at\":1234567}"[..]),
        "{}: checkpoint after resume",
        sink.describe()
    );
    // Keeping less than was saved (a resume at an earlier record) is
    // allowed; more is not.
    assert!(
        staging
            .resume("disk", &saved, saved.size + 1)
            .await
            .is_err(),
        "{}: resume kept more than was saved",
        sink.describe()
    );
    let keep = if caps.truncates {
        cut - 1000
    } else {
        assert!(
            staging
                .resume("disk", &saved, saved.size - 1000)
                .await
                .is_err(),
            "{}: resume kept part of a part",
            sink.describe()
        );
        cut
    };
    let mut w = staging
        .resume("disk", &saved, keep as u64)
        .await
        .expect("resume the upload");
    assert_eq!(
        w.size(),
        keep as u64,
        "{}: a resumed upload's size",
        sink.describe()
    );
    w.put(&whole[keep..]).await.expect("put the rest");
    assert_eq!(
        w.complete().await.expect("complete"),
        whole.len() as u64,
        "{}: complete counts kept bytes",
        sink.describe()
    );
    staging.commit().await.expect("commit");
    assert_eq!(
        read_all(sink, &format!("{name}/disk")).await,
        whole,
        "{}: resumed object differs",
        sink.describe()
    );
    assert!(
        !sink
            .discard_partial(&artifact)
            .await
            .expect("discard_partial"),
        "a committed upload leaves a partial"
    );

    // Starting afresh (resume = false) discards a kept partial upload.
    let mut staging = sink
        .begin_resumable(&artifact, true, false)
        .await
        .expect("begin");
    write(&mut staging, "stale", b"x").await;
    staging.keep().await.expect("keep");
    let staging = sink
        .begin_resumable(&artifact, true, false)
        .await
        .expect("begin afresh");
    assert_eq!(
        staging.size("stale").await.expect("size"),
        None,
        "{}: a fresh start kept old objects",
        sink.describe()
    );
    staging.abort().await.expect("abort");
    sink.delete(&artifact).await.expect("delete");
}

/// An aborted upload leaves nothing: the artifact is published without it.
pub async fn an_aborted_upload_leaves_nothing(sink: &dyn Sink) {
    let name = unique("tk-abort-upload");
    let artifact = Artifact::Directory(name.clone());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    write(&mut staging, "kept", b"kept").await;
    let mut w = staging.start("dropped").await.expect("start");
    w.put(&pattern(3, 100_000)).await.expect("put");
    w.abort().await.expect("abort the upload");
    staging.commit().await.expect("commit");
    let got: Vec<String> = listed(sink, &name)
        .await
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(
        got,
        vec![format!("{name}/kept")],
        "{}: an aborted upload was published",
        sink.describe()
    );
    sink.delete(&artifact).await.expect("delete");
}

/// Where a sink fills reserved regions: a region left before the data and
/// filled after it gives the object with the region in its place; an
/// upload with a region never filled does not complete.
pub async fn reserved_regions_are_filled_in_place(sink: &dyn Sink) {
    let name = unique("tk-reserve");
    let artifact = Artifact::File(name.clone());
    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    if !staging.fills_reserved() {
        staging.abort().await.expect("abort");
        return;
    }
    let head = pattern(4, 1536);
    let body = pattern(5, 2_500_000);
    let mid = pattern(6, 512);
    let mut w = staging.start(&name).await.expect("start");
    let first = w.reserve(head.len() as u64).await.expect("reserve");
    assert_eq!(
        first.offset,
        0,
        "{}: first region's offset",
        sink.describe()
    );
    w.put(&body).await.expect("put");
    let second = w.reserve(mid.len() as u64).await.expect("reserve");
    assert_eq!(second.offset, (head.len() + body.len()) as u64);
    w.put(b"tail").await.expect("put");
    assert!(
        w.fill(second, &mid[..100]).await.is_err(),
        "{}: a fill of the wrong length was taken",
        sink.describe()
    );
    w.fill(second, &mid).await.expect("fill");
    w.fill(first, &head).await.expect("fill");
    let size = w.complete().await.expect("complete");
    let mut whole = head.clone();
    whole.extend_from_slice(&body);
    whole.extend_from_slice(&mid);
    whole.extend_from_slice(b"tail");
    assert_eq!(size, whole.len() as u64);
    staging.commit().await.expect("commit");
    assert_eq!(
        read_all(sink, &name).await,
        whole,
        "{}: filled regions are not in place",
        sink.describe()
    );
    sink.delete(&artifact).await.expect("delete");

    let mut staging = sink.begin(&artifact, false).await.expect("begin");
    let mut w = staging.start(&name).await.expect("start");
    w.reserve(512).await.expect("reserve");
    w.put(b"data").await.expect("put");
    assert!(
        w.complete().await.is_err(),
        "{}: an upload with an unfilled region completed",
        sink.describe()
    );
    staging.abort().await.expect("abort");
    assert!(
        listed(sink, &name).await.is_empty(),
        "{}: a failed upload was published",
        sink.describe()
    );
}

/// A sink that says it cannot resume gives no checkpoints.
pub async fn a_plain_sink_keeps_nothing(sink: &dyn Sink) {
    let artifact = Artifact::Directory(unique("tk-plain"));
    let staging = sink
        .begin_resumable(&artifact, false, false)
        .await
        .expect("begin");
    assert!(
        staging.checkpoints().is_none(),
        "{}: checkpoints from a sink said not to resume",
        sink.describe()
    );
    staging.abort().await.expect("abort");
}
