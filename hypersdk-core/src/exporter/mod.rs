//! The Exporter: drives one VM export from an [`ExportSource`] into a [`Sink`].
//!
//! Its parts, one file each: this one orchestrates (staging area,
//! checkpoint, disks in parallel, descriptor and manifest, publish or keep);
//! `disk.rs` opens and runs one disk (encoded from guest bytes, or stored as
//! the platform serves it); `object.rs` writes one stored object through
//! the transform pipeline; `ova.rs` writes an OVA (in place, or from spools);
//! `scratch.rs` is the local scratch area for spools; `verify.rs` reads the
//! stored files back; `resume.rs` takes up an interrupted disk.
//!
//! Per disk, the stages run concurrently, joined by bounded queues:
//!
//! ```text
//! source stream ─▶ encoder thread ─▶ transform pipeline ──────────▶ sink write
//!  (async task,     (blocking pool:   (threads: digest, then         (async task)
//!   rate limit)      zero-grain skip,  compression ×N and
//!                    deflate)          encryption when asked)
//! ```
//!
//! The transform pipeline is [`transforms::pipeline`](crate::transforms::pipeline):
//! the digest for the manifest is computed as the bytes pass, never by
//! re-reading. Memory per disk is bounded by the source→encoder queue
//! (`queue_depth` chunks), the encoder's grain buffers, and the pipeline's
//! bound (`chunk_size × (2 × queue_depth + 4 × workers + 2)`, see
//! [`TransformSpec::memory_bound`]); with the defaults (1 MiB chunks, depth 4,
//! 2 cores) about 30 MiB, whatever the disk size. Up to
//! [`ExportOptions::parallel_disks`] disks (default 2) run at once, each with
//! its own stages and memory.
//!
//! A disk the source already serves as a streamOptimized VMDK (vSphere NFC)
//! skips the encoder: its bytes are checked for structure
//! ([`StreamChecker`]) and stored as they arrive.
//!
//! An OVA needs every disk's size and digest before its first member (the
//! `.ovf`, then the `.mf`), and a disk's size is known only once it is
//! written. Where the sink can fill a region of an upload later
//! ([`Staging::fills_reserved`]) and the OVA is not compressed or encrypted
//! as a whole, the OVA is written **in place**: a region for the descriptor
//! and manifest is reserved first (sized from the descriptor with every
//! number at its widest), each disk goes straight into the archive after a
//! reserved tar header, and the headers and the prefix are filled in at the
//! end — every disk byte written once. Disks that run beside the one being
//! written into the archive, and every disk of a wrapped OVA, are spooled to
//! the exporter's scratch area (`scratch.rs`, a private local directory, not
//! the sink) and copied in when their turn comes (see `ova.rs`). OVF
//! directory output writes each disk once, in place, each file through the
//! transforms.
//!
//! With [`ExportOptions::verify`], every stored file is then read back from
//! the staging area, unwrapped (decrypted, decompressed) and digested again,
//! and the export is published only if each digest matches; an OVA written
//! in place is walked member by member and digested whole (its only whole
//! digest: see [`ExportReport::ova`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use hypersdk_formats::manifest::{write_manifest, DigestAlgorithm, Hasher, ManifestEntry};
use hypersdk_formats::ova::{tar_header, tar_padding, END_OF_ARCHIVE};
use hypersdk_formats::vmdk::{
    StreamChecker, StreamOptimizedWriter, VmdkWriterOptions, VmdkWriterStats, WriterResume,
};

use crate::checkpoint::{
    ArchiveState, Checkpoint, Checkpointer, DiskState, DoneDisk, Identity, MemberState, Place,
    ResumePoint,
};
use crate::error::{Error, Result};
use crate::layers;
use crate::options::{ExportOptions, PackageFormat};
use crate::package::{disk_file_name, ovf_descriptor, safe_name, WrittenDisk};
use crate::progress::{Phase, ProgressEvent, ProgressFn, ProgressTracker};
use crate::provider::{ExportSource, Provider};
use crate::report::{DiskReport, ExportReport, FileReport};
use crate::sink::{Reserved, Sink, Staging, Upload, UploadState};
use crate::transforms::compress::decompress_reader;
use crate::transforms::encrypt::DecryptReader;
use crate::transforms::pipeline::{self, Continue, PipelineInput, PipelineOutput, TransformSpec};
use crate::vm::VmSpec;

/// How often progress events are sent per disk, at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Runs exports. Cheap to build; one per export or shared.
#[derive(Clone)]
pub struct Exporter {
    options: ExportOptions,
    progress: Option<ProgressFn>,
    cancel: CancellationToken,
    before_publish: Option<PublishFn>,
    on_partial_kept: Option<PartialKeptFn>,
}

/// Called with the location of the partial export a failed or cancelled
/// export leaves for a later resume.
pub type PartialKeptFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with the finished report (its `location` the destination) right
/// before the artifact is published; an error stops the publication.
pub type PublishFn = Arc<
    dyn Fn(&ExportReport) -> futures_util::future::BoxFuture<'static, Result<()>> + Send + Sync,
>;

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("options", &self.options)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// A disk written to the staging area.
pub(super) struct DiskOutcome {
    pub(super) file: FileReport,
    pub(super) populated: u64,
    pub(super) bytes_read: u64,
    /// Stored bytes kept from an earlier, interrupted run.
    pub(super) kept: u64,
    /// Where it was written.
    pub(super) place: Place,
    /// When this run started it (None: an interrupted run finished it).
    pub(super) began: Option<Instant>,
    /// Seconds it took in this run.
    pub(super) secs: f64,
    /// Its guest position over this run.
    pub(super) timeline: crate::progress::Timeline,
}

impl Exporter {
    /// An exporter with these options.
    pub fn new(options: ExportOptions) -> Self {
        Exporter {
            options,
            progress: None,
            cancel: CancellationToken::new(),
            before_publish: None,
            on_partial_kept: None,
        }
    }

    /// Calls `f` with the location of the partial export when a failed or
    /// cancelled export keeps one for a resume (nothing is called when
    /// nothing was kept).
    pub fn on_partial_kept(mut self, f: PartialKeptFn) -> Self {
        self.on_partial_kept = Some(f);
        self
    }

    /// Calls `f` with the finished report right before publishing, e.g. to
    /// record durably what is about to appear (a job daemon then knows, after
    /// a crash between the two, that the artifact there is this export's).
    pub fn before_publish(mut self, f: PublishFn) -> Self {
        self.before_publish = Some(f);
        self
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

    /// The options of this exporter.
    pub fn options(&self) -> &ExportOptions {
        &self.options
    }

    /// The cancellation token of this exporter.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub(super) fn emit(&self, event: Option<ProgressEvent>) {
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
        let source = match self.kept_source_token(provider, vm, sink).await {
            Some(token) => {
                info!(vm, "reopening the snapshots of the interrupted export");
                provider.resume_export(vm, &token).await?
            }
            None => provider.open_export(vm).await?,
        };
        let kept = std::sync::atomic::AtomicBool::new(false);
        let result = self
            .export_source_noting(source.as_ref(), provider.name(), sink, &kept)
            .await;
        // A partial export kept for a resume keeps what reopening its
        // source needs (the snapshots its resume token names).
        let closed = if result.is_err()
            && kept.load(std::sync::atomic::Ordering::SeqCst)
            && source.resume_token().is_some()
        {
            source.close_kept().await
        } else {
            source.close_after(result.is_ok()).await
        };
        let report = result?;
        closed?;
        Ok(report)
    }

    /// The resume token the kept partial export of `vm` in `sink` saved, if
    /// this export resumes one and it saved one.
    async fn kept_source_token(
        &self,
        provider: &dyn Provider,
        vm: &str,
        sink: &dyn Sink,
    ) -> Option<String> {
        if !(self.options.checkpoint && self.options.resume) {
            return None;
        }
        let spec = provider.vm_spec(vm).await.ok()?;
        let artifact = self.options.artifact(&spec.name);
        match sink.kept_checkpoint(&artifact).await {
            Ok(Some(bytes)) => Checkpoint::source_token(&bytes),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kept checkpoint");
                None
            }
        }
    }

    /// Exports an already opened source into `sink`. The caller closes the source.
    pub async fn export_source(
        &self,
        source: &dyn ExportSource,
        provider: &str,
        sink: &dyn Sink,
    ) -> Result<ExportReport> {
        let kept = std::sync::atomic::AtomicBool::new(false);
        self.export_source_noting(source, provider, sink, &kept)
            .await
    }

    /// [`export_source`](Self::export_source), setting `kept` when it
    /// fails and its partial export is kept for a resume.
    async fn export_source_noting(
        &self,
        source: &dyn ExportSource,
        provider: &str,
        sink: &dyn Sink,
        kept: &std::sync::atomic::AtomicBool,
    ) -> Result<ExportReport> {
        let spec = source.spec().clone();
        let artifact = self.options.artifact(&spec.name);
        let base = safe_name(self.options.name.as_deref().unwrap_or(&spec.name));
        let span = info_span!("export", vm = %spec.name, provider, artifact = artifact.name());
        async {
            let start = Instant::now();
            let mut staging = if self.options.checkpoint {
                sink.begin_resumable(&artifact, self.options.overwrite, self.options.resume)
                    .await?
            } else {
                sink.begin(&artifact, self.options.overwrite).await?
            };
            let started_at = now_rfc3339();
            let ck = match self
                .checkpointer(&spec, source.resume_token(), staging.as_ref(), &started_at)
                .await
            {
                Ok(ck) => ck,
                Err(e) => {
                    // A checkpoint of something else: leave it for the user.
                    if let Err(keep_err) = staging.keep().await {
                        tracing::warn!(error = %keep_err, "could not leave the partial export");
                    }
                    return Err(e);
                }
            };
            let mut scratch: Option<Scratch> = None;
            let mut built = self
                .build(&spec, source, staging.as_mut(), &base, ck.as_ref(), &mut scratch)
                .await;
            if let Ok(report) = &mut built {
                // With a checkpoint, its runs (this one last); else this one.
                report.attempts = match &ck {
                    Some(ck) => ck.snapshot().await.attempts,
                    None => vec![crate::report::Attempt {
                        started_at: started_at.clone(),
                        kept_bytes: 0,
                    }],
                };
                report.started_at = Some(started_at);
            }
            // Spools are copied into the archive by now, unless it failed.
            if built.is_ok() {
                if let Some(s) = scratch.take() {
                    s.discard().await;
                }
            }
            let verify_after = !staging.reads_before_commit();
            if let (Ok(report), true, false) = (&mut built, self.options.verify, verify_after) {
                match self
                    .verify(verify::ReadBack::Staged(staging.as_ref()), &base, report)
                    .await
                {
                    Ok(()) => report.verified = true,
                    Err(e) => built = Err(e),
                }
            }
            if let (Ok(_), Some(ck)) = (&built, &ck) {
                if let Err(e) = ck.clear().await {
                    built = Err(e);
                }
            }
            if let (Ok(report), Some(hook)) = (&mut built, &self.before_publish) {
                report.location = staging.destination();
                report.provider = provider.to_string();
                if let Err(e) = hook(report).await {
                    built = Err(e);
                }
            }
            let mut report = match built {
                Ok(r) => r,
                Err(e) => {
                    let keep = ck.is_some() && self.options.keeps_partial_after(&e);
                    if let Some(s) = scratch {
                        if keep {
                            s.keep().await;
                        } else {
                            s.discard().await;
                        }
                    }
                    if keep {
                        match staging.keep().await {
                            Ok(at) => {
                                kept.store(true, std::sync::atomic::Ordering::SeqCst);
                                tracing::warn!(
                                    partial = %at,
                                    "the partial export is kept: the same export with resume continues it"
                                );
                                if let Some(f) = &self.on_partial_kept {
                                    f(&at);
                                }
                            }
                            Err(keep_err) => tracing::warn!(error = %keep_err, "could not keep the partial export"),
                        }
                    } else if let Err(abort_err) = staging.abort().await {
                        tracing::warn!(error = %abort_err, "could not clean up the staging area");
                    }
                    return Err(e);
                }
            };
            report.location = staging.commit().await?;
            if self.options.verify && verify_after {
                // Read back as published; what does not match goes.
                let dir = match &artifact {
                    crate::Artifact::Directory(d) => Some(d.as_str()),
                    crate::Artifact::File(_) => None,
                };
                if let Err(e) = self
                    .verify(verify::ReadBack::Published(sink, dir), &base, &mut report)
                    .await
                {
                    tracing::error!(location = %report.location, error = %e, "the published export does not read back as written: deleting it");
                    if let Err(d) = sink.delete(&artifact).await {
                        tracing::warn!(error = %d, "could not delete the export that failed verification");
                    }
                    return Err(e);
                }
                report.verified = true;
            }
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
                bytes_resumed: 0,
                rate_bps: report.throughput_mb_s * 1e6,
                eta_secs: Some(0.0),
            }));
            info!(location = %report.location, size = report.size, secs = report.duration_secs, "export complete");
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// The checkpoint of this export, if it keeps one: the saved one when
    /// resuming (refused if it is of another export), else a fresh one;
    /// this run, started at `started_at`, is added to its runs.
    async fn checkpointer(
        &self,
        spec: &VmSpec,
        token: Option<String>,
        staging: &dyn Staging,
        started_at: &str,
    ) -> Result<Option<Checkpointer>> {
        let Some(store) = staging.checkpoints().filter(|_| self.options.checkpoint) else {
            return Ok(None);
        };
        let identity = Identity::of(spec, &self.options);
        let saved = if self.options.resume {
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.load())
                .await
                .map_err(|e| Error::Internal(format!("checkpoint thread failed: {e}")))??
        } else {
            None
        };
        let mut state = match saved {
            Some(bytes) => {
                let c = Checkpoint::parse(&bytes, &identity, &store.location())?;
                if c.source.is_some() && c.source != token {
                    // The bytes kept came from snapshots this run does not
                    // read: mixing them would give disks of two moments.
                    warn!(checkpoint = %store.location(), "the interrupted export read other snapshots: its disks start over");
                    Checkpoint::new(identity)
                } else {
                    info!(checkpoint = %store.location(), "continuing the partial export");
                    c
                }
            }
            None => Checkpoint::new(identity),
        };
        state.source = token;
        state.attempts.push(crate::report::Attempt {
            started_at: started_at.to_string(),
            kept_bytes: state.disks.iter().map(|d| d.durable).sum(),
        });
        let ck = Checkpointer::new(store, state, self.options.checkpoint_every);
        ck.update(|_| {}).await?;
        Ok(Some(ck))
    }

    /// The scratch area, opened on first use.
    async fn scratch<'s>(
        &self,
        scratch: &'s mut Option<Scratch>,
        staging: &dyn Staging,
        resumable: bool,
    ) -> Result<&'s mut Scratch> {
        if scratch.is_none() {
            let root = self
                .options
                .scratch_dir
                .clone()
                .or_else(|| staging.scratch_hint())
                .unwrap_or_else(std::env::temp_dir);
            let s = Scratch::open(
                &root,
                &staging.destination(),
                resumable,
                self.options.resume,
            )
            .await?;
            *scratch = Some(s);
        }
        scratch
            .as_mut()
            .ok_or_else(|| Error::Internal("no scratch area".into()))
    }

    /// Disk `index` as an interrupted run finished it, if what it wrote is
    /// still whole where it was written (`appended`: disks whole in the OVA
    /// written in place).
    async fn kept_disk(
        &self,
        index: usize,
        staging: &dyn Staging,
        scratch: Option<&Scratch>,
        appended: Option<usize>,
        ck: Option<&Checkpointer>,
    ) -> Result<Option<DiskOutcome>> {
        let Some(ck) = ck else {
            return Ok(None);
        };
        let prev = ck.disk(index).await;
        let Some(done) = prev.done else {
            return Ok(None);
        };
        let stored = &done.file.stored_name;
        let whole = match prev.place {
            Place::Object => staging.size(stored).await? == Some(done.file.stored_size),
            Place::Spool => match scratch {
                Some(s) => s.size(stored).await? == Some(done.file.stored_size),
                None => false,
            },
            Place::Member => appended.is_some_and(|n| index < n),
        };
        Ok(whole.then_some(DiskOutcome {
            kept: done.file.stored_size,
            file: done.file,
            populated: done.populated,
            bytes_read: 0,
            place: prev.place,
            began: None,
            secs: 0.0,
            timeline: Default::default(),
        }))
    }

    /// Writes every file of the package into `staging`; does not commit.
    async fn build(
        &self,
        spec: &VmSpec,
        source: &dyn ExportSource,
        staging: &mut dyn Staging,
        base: &str,
        ck: Option<&Checkpointer>,
        scratch: &mut Option<Scratch>,
    ) -> Result<ExportReport> {
        let start = Instant::now();
        let n = spec.disks.len();
        let ova = self.options.format == PackageFormat::Ova;
        let layout = if ova {
            Some(self.prefix_layout(spec, base)?)
        } else {
            None
        };
        let resumable = ck.is_some();
        if let Some(ck) = ck {
            if ck
                .snapshot()
                .await
                .disks
                .iter()
                .any(|d| d.place == Place::Spool)
            {
                self.scratch(scratch, staging, resumable).await?;
            }
        }
        let mut archive = match layout {
            Some(l) if self.in_place(staging) => {
                Some(self.open_archive(staging, source, base, l, ck).await?)
            }
            _ => None,
        };
        // Up to `parallel_disks` disks at once. Opening a disk (its source
        // stream and its object) needs the staging area, so it happens here,
        // one at a time, when a slot is free; the running disks need
        // nothing shared but the archive they may be written into.
        let parallel = self.options.parallel_disks.max(1);
        let mut outcomes: Vec<Option<DiskOutcome>> = (0..n).map(|_| None).collect();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut next = 0;
        while next < n || !running.is_empty() {
            while next < n && running.len() < parallel {
                let name = disk_file_name(base, next);
                let index = next;
                next += 1;
                if let Some(o) = self
                    .kept_disk(
                        index,
                        staging,
                        scratch.as_ref(),
                        archive.as_ref().map(|a| a.next),
                        ck,
                    )
                    .await?
                {
                    info!(disk = %spec.disks[index].name, "disk already exported; kept");
                    outcomes[index] = Some(o);
                    continue;
                }
                let target = if !ova {
                    Target::Object(&mut *staging, Place::Object)
                } else if let Some(a) = archive.as_mut().filter(|a| a.next == index && !a.busy) {
                    Target::Member(a)
                } else {
                    Target::Object(
                        self.scratch(scratch, staging, resumable).await?,
                        Place::Spool,
                    )
                };
                let prepared = self.prepare_disk(source, index, &name, target, ck).await?;
                let span = info_span!("disk", index, disk = %spec.disks[index].name);
                running.push(async move {
                    let outcome = self.run_disk(spec, prepared).instrument(span).await;
                    if let (Ok(o), Some(ck)) = (&outcome, ck) {
                        let done = DoneDisk {
                            file: o.file.clone(),
                            populated: o.populated,
                            bytes_read: o.bytes_read,
                        };
                        ck.update(|c| {
                            c.disks[index].durable = done.file.stored_size;
                            c.disks[index].done = Some(done);
                        })
                        .await?;
                    }
                    Ok::<_, Error>((index, outcome?))
                });
            }
            if let Some(finished) = running.next().await {
                let (index, outcome) = finished?;
                outcomes[index] = Some(outcome);
            }
            if let Some(a) = archive.as_mut() {
                self.append_ready(a, &outcomes, scratch.as_ref(), ck)
                    .await?;
            }
        }
        let outcomes: Vec<DiskOutcome> = outcomes.into_iter().flatten().collect();
        let written: Vec<WrittenDisk> = outcomes
            .iter()
            .map(|o| WrittenDisk {
                file: o.file.name.clone(),
                file_size: o.file.size,
                populated: o.populated,
            })
            .collect();
        let ovf = ovf_descriptor(spec, &written, self.options.hardware_version.as_deref());
        let ovf_bytes = match layout {
            Some(l) => padded_descriptor(&ovf, l.ovf_len)?,
            None => ovf.into_bytes(),
        };
        let ovf_name = format!("{base}.ovf");
        let mf_name = format!("{base}.mf");
        let mut manifest_entries = vec![manifest_entry(
            self.options.digest,
            &ovf_name,
            &digest_hex(self.options.digest, &ovf_bytes),
        )?];
        for o in &outcomes {
            manifest_entries.push(manifest_entry(
                self.options.digest,
                &o.file.name,
                &o.file.digest,
            )?);
        }
        let manifest = write_manifest(&manifest_entries);
        let cert_name = format!("{base}.cert");
        let cert = match &self.options.signer {
            Some(s) => Some(s.sign(&mf_name, manifest.as_bytes(), self.options.digest)?),
            None => None,
        };
        let plain = |name: &str, bytes: &[u8]| FileReport {
            name: name.to_string(),
            size: bytes.len() as u64,
            digest: digest_hex(self.options.digest, bytes),
            stored_name: name.to_string(),
            stored_size: bytes.len() as u64,
        };

        // An OVA's descriptor, manifest and certificate are plain members
        // of its prefix.
        let prefix = match layout {
            None => None,
            Some(layout) => {
                let mut members = vec![
                    (plain(&ovf_name, &ovf_bytes), ovf_bytes.as_slice()),
                    (plain(&mf_name, manifest.as_bytes()), manifest.as_bytes()),
                ];
                if let Some(c) = &cert {
                    members.push((plain(&cert_name, c.as_bytes()), c.as_bytes()));
                }
                let refs: Vec<(&FileReport, &[u8])> =
                    members.iter().map(|(f, b)| (f, *b)).collect();
                let bytes = prefix_bytes(&format!("{base}.ova"), layout, &refs)?;
                Some((
                    bytes,
                    members.into_iter().map(|(f, _)| f).collect::<Vec<_>>(),
                ))
            }
        };
        let (size, ova_digest, front) = match (prefix, archive) {
            (None, _) => {
                let mut front = vec![
                    self.write_small(staging, &ovf_name, &ovf_bytes).await?,
                    self.write_small(staging, &mf_name, manifest.as_bytes())
                        .await?,
                ];
                if let Some(c) = &cert {
                    front.push(self.write_small(staging, &cert_name, c.as_bytes()).await?);
                }
                let total = front.iter().map(|f| f.stored_size).sum::<u64>()
                    + outcomes.iter().map(|o| o.file.stored_size).sum::<u64>();
                (total, None, front)
            }
            (Some((prefix, front)), Some(archive)) => {
                if archive.next != n {
                    return Err(Error::Internal(format!(
                        "{} of {n} disks are in the OVA",
                        archive.next
                    )));
                }
                let size = self.finish_archive(archive, &prefix).await?;
                // The archive's own digest needs it read whole: the verify
                // pass does that.
                (size, None, front)
            }
            (Some((prefix, front)), None) => {
                let sc = self.scratch(scratch, staging, resumable).await?;
                let ova = self
                    .write_ova(staging, sc, base, &prefix, &outcomes)
                    .await?;
                (ova.stored_size, Some(ova), front)
            }
        };
        let mut files = front;
        files.extend(outcomes.iter().map(|o| o.file.clone()));
        Ok(ExportReport {
            vm: spec.name.clone(),
            provider: String::new(),
            format: self.options.format,
            location: String::new(),
            size,
            digest_algorithm: self.options.digest.manifest_name().to_string(),
            ova: ova_digest,
            compression: self.options.compression.map(|c| c.to_string()),
            encrypted: self.options.encryption.is_some(),
            verified: false,
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
                    source: d.location.clone(),
                    source_format: Some(d.format),
                    bytes_read: o.bytes_read,
                    resumed_bytes: o.kept,
                    started_secs: o
                        .began
                        .map(|b| b.saturating_duration_since(start).as_secs_f64()),
                    secs: o.secs,
                    timeline: o.timeline.points().to_vec(),
                })
                .collect(),
            duration_secs: 0.0,
            bytes_read: outcomes.iter().map(|o| o.bytes_read).sum(),
            resumed_bytes: outcomes.iter().map(|o| o.kept).sum(),
            throughput_mb_s: 0.0,
            started_at: None,
            options: self.options.summary(),
            attempts: Vec::new(),
            machine: Some(crate::report::VmSummary::of(spec)),
        })
    }
}

mod disk;
mod object;
mod ova;
mod resume;
mod scratch;
mod verify;

use disk::{DiskInput, Target};
use object::{digest_hex, first_cause, manifest_entry, ObjectSink, Slot};
use ova::{padded_descriptor, prefix_bytes, Archive};
use resume::{Recovered, Tracker};
use scratch::Scratch;

/// Now, RFC 3339 in UTC to the second.
fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
