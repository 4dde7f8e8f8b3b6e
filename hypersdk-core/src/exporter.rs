//! The Exporter: drives one VM export from an [`ExportSource`] into a [`Sink`].
//!
//! Per disk, three stages run concurrently, joined by bounded channels:
//!
//! ```text
//! source stream ──chunks──▶ encoder thread ──VMDK bytes──▶ hash + sink write
//!  (async task)   queue      (blocking pool:   queue        (async task)
//!                            zero-grain skip,
//!                            zlib)
//! ```
//!
//! Each queue holds `queue_depth` chunks of about `chunk_size` bytes, so memory
//! per disk is bounded by roughly `chunk_size × (2 × queue_depth + 3)` (≈ 11 MiB
//! with the defaults) plus the VMDK writer's grain buffers, whatever the disk size.
//!
//! An OVA needs every disk's size and digest before its first member (the
//! `.ovf`, then the `.mf`), and a compressed disk's size is known only once it
//! is written. So for OVA output the disks are first written to the sink's
//! staging area (a spool), then the OVA is assembled from them and the spools
//! are removed. OVF directory output writes each disk once, in place.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use hypersdk_formats::manifest::{to_hex, write_manifest, DigestAlgorithm, ManifestEntry};
use hypersdk_formats::ova::{tar_header, tar_padding, END_OF_ARCHIVE};
use hypersdk_formats::ovf::write_envelope;
use hypersdk_formats::vmdk::{StreamOptimizedWriter, VmdkWriterOptions, VmdkWriterStats};

use crate::error::{Error, Result};
use crate::options::{ExportOptions, PackageFormat};
use crate::package::{disk_file_name, ovf_system, safe_name, WrittenDisk};
use crate::progress::{Phase, ProgressEvent, ProgressFn, ProgressTracker};
use crate::provider::{ExportSource, Provider};
use crate::report::{DiskReport, ExportReport, FileReport};
use crate::sink::{Artifact, Sink, SinkWriter, Staging};
use crate::vm::VmSpec;

/// How often progress events are sent per disk, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Runs exports. Cheap to build; one per export or shared.
#[derive(Clone)]
pub struct Exporter {
    options: ExportOptions,
    progress: Option<ProgressFn>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("options", &self.options)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// A disk written to the staging area.
struct DiskOutcome {
    file: FileReport,
    populated: u64,
    bytes_read: u64,
}

impl Exporter {
    /// An exporter with these options.
    pub fn new(options: ExportOptions) -> Self {
        Exporter {
            options,
            progress: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Sends progress events to `f`.
    pub fn on_progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }

    /// Uses `token` for cancellation: cancelling it stops the export, which
    /// then fails with [`Error::Cancelled`] and leaves nothing published.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The cancellation token of this exporter.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    fn emit(&self, event: Option<ProgressEvent>) {
        if let (Some(f), Some(e)) = (&self.progress, event) {
            f(&e);
        }
    }

    /// Exports VM `vm` of `provider` into `sink`.
    pub async fn export(
        &self,
        provider: &dyn Provider,
        vm: &str,
        sink: &dyn Sink,
    ) -> Result<ExportReport> {
        let source = provider.open_export(vm).await?;
        let result = self
            .export_source(source.as_ref(), provider.name(), sink)
            .await;
        let closed = source.close().await;
        let report = result?;
        closed?;
        Ok(report)
    }

    /// Exports an already opened source into `sink`. The caller closes the source.
    pub async fn export_source(
        &self,
        source: &dyn ExportSource,
        provider: &str,
        sink: &dyn Sink,
    ) -> Result<ExportReport> {
        let spec = source.spec().clone();
        let base = safe_name(self.options.name.as_deref().unwrap_or(&spec.name));
        let artifact = match self.options.format {
            PackageFormat::Ova => Artifact::File(format!("{base}.ova")),
            PackageFormat::Ovf => Artifact::Directory(base.clone()),
        };
        let span = info_span!("export", vm = %spec.name, provider, artifact = artifact.name());
        async {
            let start = Instant::now();
            let mut staging = sink.begin(&artifact, self.options.overwrite).await?;
            let built = self.build(&spec, source, staging.as_mut(), &base).await;
            let mut report = match built {
                Ok(r) => r,
                Err(e) => {
                    if let Err(abort_err) = staging.abort().await {
                        tracing::warn!(error = %abort_err, "could not clean up the staging area");
                    }
                    return Err(e);
                }
            };
            report.location = staging.commit().await?;
            report.provider = provider.to_string();
            report.duration_secs = start.elapsed().as_secs_f64();
            report.throughput_mb_s = if report.duration_secs > 0.0 {
                report.bytes_read as f64 / report.duration_secs / 1e6
            } else {
                0.0
            };
            self.emit(Some(ProgressEvent {
                phase: Phase::Done,
                disk_index: 0,
                disk: String::new(),
                bytes_done: report.bytes_read,
                bytes_total: report.bytes_read,
                rate_bps: report.throughput_mb_s * 1e6,
                eta_secs: Some(0.0),
            }));
            info!(location = %report.location, size = report.size, secs = report.duration_secs, "export complete");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Writes every file of the package into `staging`; does not commit.
    async fn build(
        &self,
        spec: &VmSpec,
        source: &dyn ExportSource,
        staging: &mut dyn Staging,
        base: &str,
    ) -> Result<ExportReport> {
        let mut outcomes = Vec::with_capacity(spec.disks.len());
        for index in 0..spec.disks.len() {
            let name = disk_file_name(base, index);
            let span = info_span!("disk", index, disk = %spec.disks[index].name);
            outcomes.push(
                self.export_disk(spec, source, index, &name, staging)
                    .instrument(span)
                    .await?,
            );
        }
        let written: Vec<WrittenDisk> = outcomes
            .iter()
            .map(|o| WrittenDisk {
                file: o.file.name.clone(),
                file_size: o.file.size,
                populated: o.populated,
            })
            .collect();
        let ovf = write_envelope(&ovf_system(spec, &written));
        let ovf_file = FileReport {
            name: format!("{base}.ovf"),
            size: ovf.len() as u64,
            sha256: to_hex(&Sha256::digest(ovf.as_bytes())),
        };
        let mut manifest_entries = vec![manifest_entry(&ovf_file)?];
        for o in &outcomes {
            manifest_entries.push(manifest_entry(&o.file)?);
        }
        let manifest = write_manifest(&manifest_entries);
        let mf_file = FileReport {
            name: format!("{base}.mf"),
            size: manifest.len() as u64,
            sha256: to_hex(&Sha256::digest(manifest.as_bytes())),
        };

        let (size, ova_sha256) = match self.options.format {
            PackageFormat::Ovf => {
                write_object(staging, &ovf_file.name, ovf.as_bytes()).await?;
                write_object(staging, &mf_file.name, manifest.as_bytes()).await?;
                let total = ovf_file.size
                    + mf_file.size
                    + outcomes.iter().map(|o| o.file.size).sum::<u64>();
                (total, None)
            }
            PackageFormat::Ova => {
                let (size, digest) = self
                    .write_ova(
                        staging,
                        base,
                        (&ovf_file, ovf.as_bytes()),
                        (&mf_file, manifest.as_bytes()),
                        &outcomes,
                    )
                    .await?;
                (size, Some(digest))
            }
        };
        let mut files = vec![ovf_file, mf_file];
        files.extend(outcomes.iter().map(|o| o.file.clone()));
        Ok(ExportReport {
            vm: spec.name.clone(),
            provider: String::new(),
            format: self.options.format,
            location: String::new(),
            size,
            ova_sha256,
            files,
            manifest,
            disks: spec
                .disks
                .iter()
                .zip(&outcomes)
                .map(|(d, o)| DiskReport {
                    name: d.name.clone(),
                    capacity: d.capacity,
                    file: o.file.name.clone(),
                    populated: o.populated,
                })
                .collect(),
            duration_secs: 0.0,
            bytes_read: outcomes.iter().map(|o| o.bytes_read).sum(),
            throughput_mb_s: 0.0,
        })
    }

    /// Streams disk `index` through the VMDK encoder into object `name`.
    async fn export_disk(
        &self,
        spec: &VmSpec,
        source: &dyn ExportSource,
        index: usize,
        name: &str,
        staging: &mut dyn Staging,
    ) -> Result<DiskOutcome> {
        let disk = &spec.disks[index];
        let capacity = disk.capacity;
        // VMDK capacities are whole sectors; a raw disk of odd size is zero-padded.
        let vmdk_capacity = hypersdk_formats::image::sector_capacity(capacity);
        let mut stream = source.open_disk(index, 0).await?;
        let mut writer = staging.create(name).await?;
        let depth = self.options.queue_depth.max(1);
        let chunk = self.options.chunk_size.max(64 * 1024);
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(depth);
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(depth);
        let vmdk_options = VmdkWriterOptions {
            compression_level: self.options.compression_level,
            extent_name: name.to_string(),
            ..Default::default()
        };
        let what = format!("VMDK of disk '{}'", disk.name);
        let encoder_what = what.clone();
        let encoder = tokio::task::spawn_blocking(move || -> Result<VmdkWriterStats> {
            let fmt_err = |source| Error::Format {
                what: encoder_what.clone(),
                source,
            };
            let out = ChannelWriter::new(out_tx, chunk);
            let mut w =
                StreamOptimizedWriter::new(out, vmdk_capacity, &vmdk_options).map_err(fmt_err)?;
            while let Some(data) = in_rx.blocking_recv() {
                w.write(&data).map_err(fmt_err)?;
            }
            let (out, stats) = w.finish().map_err(fmt_err)?;
            out.close().map_err(|e| {
                fmt_err(hypersdk_formats::Error::io(
                    "handing VMDK bytes to the sink",
                    e,
                ))
            })?;
            Ok(stats)
        });

        // Stage 1: read the source, report progress, feed the encoder.
        let reader = async move {
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            let mut done: u64 = 0;
            loop {
                let next = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Err(Some(Error::Cancelled)),
                    n = stream.next() => n,
                };
                let Some(item) = next else { break };
                let data = item.map_err(Some)?;
                done += data.len() as u64;
                if done > capacity {
                    return Err(Some(Error::DiskLength {
                        vm: spec.name.clone(),
                        disk: disk.name.clone(),
                        expected: capacity,
                        actual: done,
                    }));
                }
                self.emit(tracker.event(Phase::Disk, index, &disk.name, done, capacity, false));
                if in_tx.send(data).await.is_err() {
                    return Err(None); // the encoder stopped; its error tells why
                }
            }
            if done != capacity {
                return Err(Some(Error::DiskLength {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    expected: capacity,
                    actual: done,
                }));
            }
            if vmdk_capacity > capacity {
                let pad = Bytes::from(vec![0u8; (vmdk_capacity - capacity) as usize]);
                if in_tx.send(pad).await.is_err() {
                    return Err(None);
                }
            }
            self.emit(tracker.event(Phase::DiskDone, index, &disk.name, done, capacity, true));
            Ok(done)
        };

        // Stage 3: hash and write the encoded bytes.
        let sink_stage = async {
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            while let Some(buf) = out_rx.recv().await {
                hasher.update(&buf);
                writer.write(&buf).await?;
                size += buf.len() as u64;
            }
            Ok::<_, Error>((hasher, size))
        };

        let (read_result, write_result) = tokio::join!(reader, sink_stage);
        let encoded = encoder
            .await
            .map_err(|e| Error::Internal(format!("{what} encoder thread failed: {e}")));
        // Report the root cause: source problems first, then the sink, then the encoder.
        let bytes_read = match read_result {
            Err(Some(e)) => return Err(e),
            Err(None) => {
                write_result?;
                encoded??;
                return Err(Error::Internal(format!(
                    "{what} encoder stopped without an error"
                )));
            }
            Ok(n) => n,
        };
        let (hasher, size) = write_result?;
        let stats = encoded??;
        let finished = writer.finish().await?;
        if finished != size || size != stats.file_size {
            return Err(Error::Internal(format!(
                "{what}: encoder wrote {} bytes, sink received {size}, stored {finished}",
                stats.file_size
            )));
        }
        Ok(DiskOutcome {
            file: FileReport {
                name: name.to_string(),
                size,
                sha256: to_hex(&hasher.finalize()),
            },
            populated: stats.populated_bytes,
            bytes_read,
        })
    }

    /// Assembles the OVA from the descriptor, the manifest and the spooled disks.
    async fn write_ova(
        &self,
        staging: &mut dyn Staging,
        base: &str,
        ovf: (&FileReport, &[u8]),
        mf: (&FileReport, &[u8]),
        disks: &[DiskOutcome],
    ) -> Result<(u64, String)> {
        let ova_name = format!("{base}.ova");
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let fmt_err = |source| Error::Format {
            what: format!("OVA {ova_name}"),
            source,
        };
        let mut out = HashingWriter::new(staging.create(&ova_name).await?);
        for (file, bytes) in [ovf, mf] {
            out.write(&tar_header(&file.name, file.size, mtime).map_err(fmt_err)?)
                .await?;
            out.write(bytes).await?;
            out.write(&[0u8; 512][..tar_padding(file.size)]).await?;
        }
        let total: u64 = disks.iter().map(|d| d.file.size).sum();
        let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
        let mut copied_all: u64 = 0;
        let mut buf = vec![0u8; self.options.chunk_size.max(64 * 1024)];
        for d in disks {
            out.write(&tar_header(&d.file.name, d.file.size, mtime).map_err(fmt_err)?)
                .await?;
            let mut spool = staging.open(&d.file.name).await?;
            let mut copied: u64 = 0;
            loop {
                if self.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let n = spool
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::sink("cannot read back spooled disk", &d.file.name, e))?;
                if n == 0 {
                    break;
                }
                copied += n as u64;
                out.write(&buf[..n]).await?;
                copied_all += n as u64;
                self.emit(tracker.event(Phase::Packaging, 0, &ova_name, copied_all, total, false));
            }
            if copied != d.file.size {
                return Err(Error::sink(
                    "spooled disk changed size",
                    &d.file.name,
                    std::io::Error::other(format!("expected {} bytes, read {copied}", d.file.size)),
                ));
            }
            out.write(&[0u8; 512][..tar_padding(d.file.size)]).await?;
            drop(spool);
            staging.remove(&d.file.name).await?;
        }
        out.write(&END_OF_ARCHIVE).await?;
        let (size, digest) = out.finish().await?;
        Ok((size, digest))
    }
}

fn manifest_entry(f: &FileReport) -> Result<ManifestEntry> {
    let digest = (0..f.sha256.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&f.sha256[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| Error::Internal(format!("bad digest of {}: {e}", f.name)))?;
    Ok(ManifestEntry {
        algorithm: DigestAlgorithm::Sha256,
        name: f.name.clone(),
        digest,
    })
}

async fn write_object(staging: &mut dyn Staging, name: &str, bytes: &[u8]) -> Result<u64> {
    let mut w = staging.create(name).await?;
    w.write(bytes).await?;
    w.finish().await
}

/// A sink writer that hashes what passes through it.
struct HashingWriter {
    inner: Box<dyn SinkWriter>,
    hasher: Sha256,
    size: u64,
}

impl HashingWriter {
    fn new(inner: Box<dyn SinkWriter>) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.inner.write(data).await
    }

    async fn finish(self) -> Result<(u64, String)> {
        let stored = self.inner.finish().await?;
        if stored != self.size {
            return Err(Error::Internal(format!(
                "wrote {} bytes but the sink stored {stored}",
                self.size
            )));
        }
        Ok((self.size, to_hex(&self.hasher.finalize())))
    }
}

/// A blocking [`std::io::Write`] that batches bytes into chunks and sends them
/// over a bounded channel to the async side.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx.blocking_send(full).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the sink stage stopped")
        })
    }

    /// Sends what is buffered and closes the channel.
    fn close(mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
