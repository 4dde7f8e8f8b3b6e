//! The export pipeline through the library API: local provider → Exporter →
//! local directory sink, including cancellation and sources that misbehave.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use hypersdk_core::transforms::compress::{decompress_reader, Compression};
use hypersdk_core::transforms::encrypt::{DecryptReader, KeySource};
use hypersdk_core::{
    Artifact, DiskStream, Error, ExportOptions, ExportSource, Exporter, PackageFormat, Phase,
    Provider, Result, Sink, Staging, Upload, VmSpec,
};
use hypersdk_local::LocalProvider;
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::{
    assert_image_ok, assert_same_guest_data, mixed_content, path_str, qemu_img,
};

fn listing(dir: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What an export published: the visible entries (a kept partial export is
/// a hidden `.NAME.partial` directory).
fn published(dir: &std::path::Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// A VM with one raw disk of `len` mixed bytes and one qcow2 disk made by qemu-img.
fn make_vm(dir: &std::path::Path, len: usize) -> std::path::PathBuf {
    std::fs::write(dir.join("a.raw"), mixed_content(len)).unwrap();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path_str(&dir.join("a.raw")),
        path_str(&dir.join("b.qcow2")),
    ]);
    let xml = dir.join("vm.xml");
    std::fs::write(
        &xml,
        "<domain type='kvm'><name>pipe</name><memory unit='GiB'>1</memory><vcpu>1</vcpu><devices>\
         <disk type='file' device='disk'><driver type='raw'/><source file='a.raw'/><target dev='vda' bus='scsi'/></disk>\
         <disk type='file' device='disk'><driver type='qcow2'/><source file='b.qcow2'/><target dev='vdb' bus='ide'/></disk>\
         </devices></domain>",
    )
    .unwrap();
    xml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_export_with_progress_events() {
    let tmp = tempfile::tempdir().unwrap();
    let len = (24 << 20) + 512 * 3; // not a multiple of the grain size
    let xml = make_vm(tmp.path(), len);
    let provider = LocalProvider::new(tmp.path());
    let out = tmp.path().join("out");
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let report = Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .on_progress(Arc::new(move |e| seen.lock().unwrap().push(e.clone())))
        .export(&provider, xml.to_str().unwrap(), &LocalDirSink::new(&out))
        .await
        .unwrap();
    assert_eq!(report.bytes_read, 2 * len as u64);
    assert_eq!(report.files.len(), 4);
    let dir = out.join("pipe");
    for (i, src, fmt) in [(1, "a.raw", "raw"), (2, "b.qcow2", "qcow2")] {
        let vmdk = dir.join(format!("pipe-disk{i}.vmdk"));
        assert_image_ok(&vmdk);
        assert_same_guest_data(&tmp.path().join(src), Some(fmt), &vmdk, Some("vmdk"));
    }
    let events = events.lock().unwrap();
    let done: Vec<_> = events
        .iter()
        .filter(|e| e.phase == Phase::DiskDone)
        .collect();
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|e| e.bytes_done == len as u64 && e.bytes_total == len as u64));
    assert_eq!(events.last().unwrap().phase, Phase::Done);
    // bytes_done never goes backwards within a disk
    for d in ["vda", "vdb"] {
        let v: Vec<u64> = events
            .iter()
            .filter(|e| e.disk == d)
            .map(|e| e.bytes_done)
            .collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "{d}: {v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_leaves_a_checkpoint_that_resume_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 32 << 20);
    let vm = xml.to_str().unwrap();
    let provider = LocalProvider::new(tmp.path());
    // An OVA is written in place: cut in its first member, in its second
    // (the first kept whole), and with both disks at once (the second
    // spooled in the scratch area).
    for (format, parallel, cut_disk) in [
        (PackageFormat::Ova, 1, 0),
        (PackageFormat::Ova, 1, 1),
        (PackageFormat::Ova, 2, 1),
        (PackageFormat::Ovf, 1, 0),
    ] {
        let case = format!("{format:?}-{parallel}-{cut_disk}");
        let out = tmp.path().join(format!("out-{case}"));
        let mut options = ExportOptions::new(format);
        options.checkpoint_every = 1 << 20;
        options.parallel_disks = parallel;
        let mut cut = options.clone();
        // Slowed down so that progress is seen mid-disk (an event every
        // 250 ms).
        cut.bwlimit = Some(hypersdk_core::transforms::ratelimit::RateLimiter::new(
            Some(48 << 20),
            1 << 20,
        ));
        let exporter = Exporter::new(cut);
        let token = exporter.cancel_token();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        // Cancel once disk `cut_disk` is well under way.
        let exporter = exporter.on_progress(Arc::new(move |e| {
            if e.phase == Phase::Disk
                && e.disk_index == cut_disk
                && e.bytes_done >= 12 << 20
                && c.fetch_add(1, Ordering::SeqCst) == 0
            {
                token.cancel();
            }
        }));
        let err = exporter
            .export(&provider, vm, &LocalDirSink::new(&out))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert!(published(&out).is_empty(), "{:?}", listing(&out));
        let partial = out.join(format!(
            ".pipe{}.partial",
            if format == PackageFormat::Ova {
                ".ova"
            } else {
                ""
            }
        ));
        assert!(
            partial.join(".checkpoint.json").is_file(),
            "{:?}",
            listing(&out)
        );

        options.resume = true;
        // Taken up and interrupted again at once, before it saves anything
        // new: what it continued is still recorded as continuable.
        let again = Exporter::new(cut_again(&options));
        let token = again.cancel_token();
        // Neither run reads back a byte of what was stored.
        let no_read_back = || OnRead(LocalDirSink::new(&out), ReadBack::Refused);
        let err = again
            .on_progress(Arc::new(move |_| token.cancel()))
            .export(&provider, vm, &no_read_back())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{case}: {err}");
        let resumed = Exporter::new(options.clone())
            .export(&provider, vm, &no_read_back())
            .await
            .unwrap();
        assert!(
            resumed.resumed_bytes > 0,
            "{case}: kept {}",
            resumed.resumed_bytes
        );
        assert!(
            resumed.bytes_read < 64 << 20,
            "{case}: read {} of 2 × 32 MiB",
            resumed.bytes_read
        );
        assert!(!partial.exists());
        assert!(
            listing(&out).iter().all(|n| !n.starts_with('.')),
            "{case}: left {:?}",
            listing(&out)
        );

        // The same bytes as an export that was never interrupted.
        let fresh_out = tmp.path().join(format!("fresh-{case}"));
        options.resume = false;
        let fresh = Exporter::new(options)
            .export(&provider, vm, &LocalDirSink::new(&fresh_out))
            .await
            .unwrap();
        assert_eq!(resumed.manifest, fresh.manifest);
        assert_eq!(published(&out), published(&fresh_out));
        for f in &fresh.files {
            let rel = |root: &std::path::Path| match format {
                PackageFormat::Ova => root.join("pipe.ova"),
                PackageFormat::Ovf => root.join("pipe").join(&f.stored_name),
            };
            assert!(
                std::fs::read(rel(&out)).unwrap() == std::fs::read(rel(&fresh_out)).unwrap(),
                "{} differs",
                f.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_checkpoints_a_cancelled_export_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 8 << 20);
    let provider = LocalProvider::new(tmp.path());
    let out = tmp.path().join("out");
    let mut options = ExportOptions::new(PackageFormat::Ova);
    options.checkpoint = false;
    let exporter = Exporter::new(options);
    let token = exporter.cancel_token();
    let exporter = exporter.on_progress(Arc::new(move |_| token.cancel()));
    let err = exporter
        .export(&provider, xml.to_str().unwrap(), &LocalDirSink::new(&out))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(listing(&out).is_empty(), "{:?}", listing(&out));
}

/// The spec of a VM made by `make_vm` in `dir`, cut to one disk of `capacity`
/// bytes (for sources that serve made-up disks).
async fn one_disk_spec(dir: &std::path::Path, capacity: u64) -> VmSpec {
    make_vm(dir, 1 << 20);
    let mut spec = LocalProvider::new(dir).vm_spec("pipe").await.unwrap();
    spec.disks.truncate(1);
    spec.disks[0].capacity = capacity;
    spec
}

/// A source whose single disk yields `good` bytes and then an error, or ends short.
#[derive(Debug)]
struct Flaky {
    spec: VmSpec,
    fail: bool,
}

#[async_trait]
impl ExportSource for Flaky {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, _index: usize, _offset: u64) -> Result<DiskStream> {
        let mut items: Vec<Result<Bytes>> = vec![Ok(Bytes::from(vec![7u8; 3 << 20]))];
        if self.fail {
            items.push(Err(Error::DiskRead {
                vm: "flaky".into(),
                disk: "d0".into(),
                location: "test".into(),
                source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            }));
        }
        Ok(Box::pin(futures_util::stream::iter(items)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_and_short_disks_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = one_disk_spec(tmp.path(), 8 << 20).await;
    let out = tmp.path().join("out");
    let sink = LocalDirSink::new(&out);
    let exporter = Exporter::new(ExportOptions::new(PackageFormat::Ova));

    let err = exporter
        .export_source(
            &Flaky {
                spec: spec.clone(),
                fail: true,
            },
            "test",
            &sink,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DiskRead { .. }), "{err}");
    assert!(err.is_retryable(), "a reset connection is worth retrying");
    assert!(published(&out).is_empty());

    let err = exporter
        .export_source(&Flaky { spec, fail: false }, "test", &sink)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::DiskLength { expected, actual, .. } if expected == 8 << 20 && actual == 3 << 20),
        "{err}"
    );
    assert!(listing(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmdk_backed_disks_export() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("src.raw");
    std::fs::write(&raw, mixed_content(9 << 20)).unwrap();
    let vmdk = tmp.path().join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        path_str(&raw),
        path_str(&vmdk),
    ]);
    std::fs::write(
        tmp.path().join("v.xml"),
        "<domain><name>v</name><memory>1048576</memory><devices><disk type='file' device='disk'>\
         <driver type='vmdk'/><source file='disk.vmdk'/><target dev='sda' bus='sata'/></disk></devices></domain>",
    )
    .unwrap();
    let out = tmp.path().join("out");
    Exporter::new(ExportOptions::new(PackageFormat::Ovf))
        .export(
            &LocalProvider::new(tmp.path()),
            "v",
            &LocalDirSink::new(&out),
        )
        .await
        .unwrap();
    let exported = out.join("v/v-disk1.vmdk");
    assert_image_ok(&exported);
    assert_same_guest_data(&raw, Some("raw"), &exported, Some("vmdk"));
}

/// What reading an object back gives.
#[derive(Debug, Clone, Copy)]
enum ReadBack {
    /// The object with one byte flipped: what a failing disk or a lying
    /// object store would do.
    Corrupt,
    /// An error: a sink that must never be read (resume without reading
    /// back).
    Refused,
}

/// A local directory sink whose read-back misbehaves as told.
#[derive(Debug)]
struct OnRead(LocalDirSink, ReadBack);

#[derive(Debug)]
struct OnReadStaging(Box<dyn Staging>, ReadBack);

#[async_trait]
impl Sink for OnRead {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>> {
        let inner = self.0.begin(artifact, overwrite).await?;
        Ok(Box::new(OnReadStaging(inner, self.1)))
    }
    async fn begin_resumable(
        &self,
        artifact: &Artifact,
        overwrite: bool,
        resume: bool,
    ) -> Result<Box<dyn Staging>> {
        let inner = self.0.begin_resumable(artifact, overwrite, resume).await?;
        Ok(Box::new(OnReadStaging(inner, self.1)))
    }
    async fn discard_partial(&self, artifact: &Artifact) -> Result<bool> {
        self.0.discard_partial(artifact).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<hypersdk_core::sink::ObjectMeta>> {
        self.0.list(prefix).await
    }
    async fn read(&self, path: &str) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
        self.0.read(path).await
    }
    async fn delete(&self, artifact: &Artifact) -> Result<bool> {
        self.0.delete(artifact).await
    }
}

#[async_trait]
impl Staging for OnReadStaging {
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>> {
        self.0.start(name).await
    }
    async fn resume(
        &mut self,
        name: &str,
        saved: &hypersdk_core::UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        self.0.resume(name, saved, keep).await
    }
    fn fills_reserved(&self) -> bool {
        self.0.fills_reserved()
    }
    async fn open(
        &self,
        name: &str,
        offset: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Send + Unpin>> {
        use tokio::io::AsyncReadExt;
        if let ReadBack::Refused = self.1 {
            panic!("{name} read back from byte {offset}");
        }
        let mut bytes = Vec::new();
        self.0
            .open(name, offset)
            .await?
            .read_to_end(&mut bytes)
            .await
            .unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
    async fn commit(self: Box<Self>) -> Result<String> {
        self.0.commit().await
    }
    async fn abort(self: Box<Self>) -> Result<()> {
        self.0.abort().await
    }
    async fn keep(self: Box<Self>) -> Result<String> {
        self.0.keep().await
    }
    fn destination(&self) -> String {
        self.0.destination()
    }
    fn checkpoints(&self) -> Option<Arc<dyn hypersdk_core::CheckpointStore>> {
        self.0.checkpoints()
    }
    fn scratch_hint(&self) -> Option<std::path::PathBuf> {
        self.0.scratch_hint()
    }
    async fn size(&self, name: &str) -> Result<Option<u64>> {
        self.0.size(name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_pass_catches_bytes_that_come_back_different() {
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 4 << 20);
    let provider = LocalProvider::new(tmp.path());
    let key = KeySource::Key(zeroize::Zeroizing::new([9u8; 32]));
    for (format, options) in [
        (PackageFormat::Ovf, ExportOptions::new(PackageFormat::Ovf)),
        (
            PackageFormat::Ova,
            ExportOptions::new(PackageFormat::Ova)
                .with_compression(Compression::ZSTD)
                .with_encryption(key.clone()),
        ),
    ] {
        let out = tmp.path().join(format!("out-{format}"));
        let err = Exporter::new(options.clone().with_verify(true))
            .export(
                &provider,
                xml.to_str().unwrap(),
                &OnRead(LocalDirSink::new(&out), ReadBack::Corrupt),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Integrity { file, .. } if file.starts_with("pipe")),
            "{format}: {err}"
        );
        assert!(listing(&out).is_empty(), "{format}: {:?}", listing(&out));

        // Without corruption the same export verifies and is published.
        let report = Exporter::new(options.with_verify(true))
            .export(&provider, xml.to_str().unwrap(), &LocalDirSink::new(&out))
            .await
            .unwrap();
        assert!(report.verified);
        assert_eq!(listing(&out).len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_ova_unwraps_to_the_plain_ova() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let xml = make_vm(tmp.path(), 6 << 20);
    let provider = LocalProvider::new(tmp.path());
    let key = KeySource::Key(zeroize::Zeroizing::new([3u8; 32]));
    // Verified: an OVA written in place has its whole digest from the
    // verify pass.
    let plain = Exporter::new(ExportOptions::new(PackageFormat::Ova).with_verify(true))
        .export(
            &provider,
            xml.to_str().unwrap(),
            &LocalDirSink::new(tmp.path().join("a")),
        )
        .await
        .unwrap();
    let wrapped = Exporter::new(
        ExportOptions::new(PackageFormat::Ova)
            .with_compression(Compression::Gzip { level: 1 })
            .with_encryption(key.clone()),
    )
    .export(
        &provider,
        xml.to_str().unwrap(),
        &LocalDirSink::new(tmp.path().join("b")),
    )
    .await
    .unwrap();
    assert!(wrapped.location.ends_with("pipe.ova.gz.enc"));
    assert_eq!(
        plain.ova.as_ref().unwrap().digest,
        wrapped.ova.as_ref().unwrap().digest
    );
    assert_eq!(plain.manifest, wrapped.manifest);
    let f = std::fs::File::open(&wrapped.location).unwrap();
    let mut r = decompress_reader(DecryptReader::new(f, &key).unwrap()).unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, std::fs::read(&plain.location).unwrap());
}

/// `options` slowed down, so that an export is still running at its first
/// progress event.
fn cut_again(options: &ExportOptions) -> ExportOptions {
    let mut o = options.clone();
    o.bwlimit = Some(hypersdk_core::transforms::ratelimit::RateLimiter::new(
        Some(8 << 20),
        1 << 20,
    ));
    o
}

/// A source whose disk sends 1 MiB and then nothing, ever: a stalled connection.
#[derive(Debug)]
struct Stalled {
    spec: VmSpec,
}

#[async_trait]
impl ExportSource for Stalled {
    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn open_disk(&self, _index: usize, _offset: u64) -> Result<DiskStream> {
        use futures_util::StreamExt;
        let first = futures_util::stream::iter(vec![Ok(Bytes::from(vec![1u8; 1 << 20]))]);
        Ok(Box::pin(first.chain(futures_util::stream::pending())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_is_a_retryable_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = one_disk_spec(tmp.path(), 8 << 20).await;
    let mut options = ExportOptions::new(PackageFormat::Ova);
    options.idle_timeout = Some(std::time::Duration::from_millis(300));
    let out = tmp.path().join("out");
    let err = Exporter::new(options)
        .export_source(&Stalled { spec }, "test", &LocalDirSink::new(&out))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("stalled"), "{text}");
    assert!(published(&out).is_empty());
}

/// Four disks, two at a time, a checkpoint every 64 KiB: the loop that
/// starts disks and appends them to an OVA updates the checkpoint while
/// other disks are suspended mid-save — nothing may wait on a lock one of
/// them holds (this hung before). Every layout gives the same disks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_disks_at_once_with_frequent_checkpoints_finish() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, seed) in [1u8, 2, 3, 4].iter().enumerate() {
        let data: Vec<u8> = mixed_content(6 << 20)
            .into_iter()
            .map(|b| b ^ seed)
            .collect();
        std::fs::write(tmp.path().join(format!("d{i}.raw")), data).unwrap();
    }
    let disks: String = (0..4)
        .map(|i| {
            format!(
                "<disk type='file' device='disk'><driver type='raw'/><source file='d{i}.raw'/>\
                 <target dev='vd{}' bus='virtio'/></disk>",
                (b'a' + i as u8) as char
            )
        })
        .collect();
    let xml = tmp.path().join("four.xml");
    std::fs::write(
        &xml,
        format!(
            "<domain type='kvm'><name>four</name><memory unit='GiB'>1</memory><vcpu>1</vcpu>\
             <devices>{disks}</devices></domain>"
        ),
    )
    .unwrap();
    let provider = LocalProvider::new(tmp.path());
    let mut manifests = Vec::new();
    for (format, parallel) in [
        (PackageFormat::Ova, 2),
        (PackageFormat::Ova, 3),
        (PackageFormat::Ova, 1),
        (PackageFormat::Ovf, 2),
    ] {
        for round in 0..3 {
            let out = tmp
                .path()
                .join(format!("out-{format:?}-{parallel}-{round}"));
            let mut options = ExportOptions::new(format).with_verify(true);
            options.parallel_disks = parallel;
            options.checkpoint_every = 64 << 10;
            let report = tokio::time::timeout(
                std::time::Duration::from_secs(120),
                Exporter::new(options).export(
                    &provider,
                    xml.to_str().unwrap(),
                    &LocalDirSink::new(&out),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{format:?} with {parallel} disks at once hung"))
            .unwrap();
            assert!(report.verified);
            assert!(
                listing(&out).iter().all(|n| !n.starts_with('.')),
                "left {:?}",
                listing(&out)
            );
            manifests.push(
                report
                    .manifest
                    .lines()
                    .filter(|l| l.contains("-disk"))
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert!(manifests.windows(2).all(|w| w[0] == w[1]), "{manifests:?}");
}
