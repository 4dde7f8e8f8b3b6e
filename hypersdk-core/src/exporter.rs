//! The Exporter: drives one VM export from an [`ExportSource`] into a [`Sink`].
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
//! `.ovf`, then the `.mf`), and a compressed disk's size is known only once it
//! is written. So for OVA output the disks are first written to the sink's
//! staging area (a spool), then the OVA is assembled from them — through the
//! transforms, if any — and the spools are removed. OVF directory output
//! writes each disk once, in place, each file through the transforms.
//!
//! With [`ExportOptions::verify`], every stored file is then read back from
//! the staging area, unwrapped (decrypted, decompressed) and digested again,
//! and the export is published only if each digest matches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use hypersdk_formats::manifest::{write_manifest, DigestAlgorithm, Hasher, ManifestEntry};
use hypersdk_formats::ova::{tar_header, tar_padding, END_OF_ARCHIVE};
use hypersdk_formats::ovf::write_envelope;
use hypersdk_formats::vmdk::{
    StreamChecker, StreamOptimizedWriter, VmdkWriterOptions, VmdkWriterStats, WriterResume,
};

use crate::checkpoint::{Checkpoint, Checkpointer, DiskState, DoneDisk, Identity};
use crate::error::{Error, Result};
use crate::layers;
use crate::options::{ExportOptions, PackageFormat};
use crate::package::{disk_file_name, ovf_system, safe_name, WrittenDisk};
use crate::progress::{Phase, ProgressEvent, ProgressFn, ProgressTracker};
use crate::provider::{ExportSource, Provider};
use crate::report::{DiskReport, ExportReport, FileReport};
use crate::sink::{Sink, SinkWriter, Staging};
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
struct DiskOutcome {
    file: FileReport,
    populated: u64,
    bytes_read: u64,
    /// Stored bytes kept from an earlier, interrupted run.
    kept: u64,
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
        let closed = source.close_after(result.is_ok()).await;
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
            let ck = match self.checkpointer(&spec, staging.as_ref()).await {
                Ok(ck) => ck,
                Err(e) => {
                    // A checkpoint of something else: leave it for the user.
                    if let Err(keep_err) = staging.keep().await {
                        tracing::warn!(error = %keep_err, "could not leave the partial export");
                    }
                    return Err(e);
                }
            };
            let mut built = self
                .build(&spec, source, staging.as_mut(), &base, ck.as_ref())
                .await;
            if let (Ok(report), true) = (&mut built, self.options.verify) {
                match self.verify(staging.as_ref(), report).await {
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
                    if ck.is_some() && self.options.keeps_partial_after(&e) {
                        match staging.keep().await {
                            Ok(at) => {
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

    /// The checkpoint of this export, if it keeps one: the saved one when
    /// resuming (refused if it is of another export), else a fresh one.
    async fn checkpointer(
        &self,
        spec: &VmSpec,
        staging: &dyn Staging,
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
        let state = match saved {
            Some(bytes) => {
                let c = Checkpoint::parse(&bytes, &identity, &store.location())?;
                info!(checkpoint = %store.location(), "continuing the partial export");
                c
            }
            None => Checkpoint::new(identity),
        };
        let ck = Checkpointer::new(store, state, self.options.checkpoint_every);
        ck.update(|_| {}).await?;
        Ok(Some(ck))
    }

    /// Writes every file of the package into `staging`; does not commit.
    async fn build(
        &self,
        spec: &VmSpec,
        source: &dyn ExportSource,
        staging: &mut dyn Staging,
        base: &str,
        ck: Option<&Checkpointer>,
    ) -> Result<ExportReport> {
        // Up to `parallel_disks` disks at once. Opening a disk (its source
        // stream and its object in the staging area) needs the staging area,
        // so it happens here, one at a time, when a slot is free; the running
        // disks need nothing shared.
        let n = spec.disks.len();
        let parallel = self.options.parallel_disks.max(1);
        let mut outcomes: Vec<Option<DiskOutcome>> = (0..n).map(|_| None).collect();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut next = 0;
        while next < n || !running.is_empty() {
            while next < n && running.len() < parallel {
                let name = disk_file_name(base, next);
                let index = next;
                next += 1;
                let prepared = match self.prepare_disk(source, index, &name, staging, ck).await? {
                    Prepared::Done(o) => {
                        info!(disk = %spec.disks[index].name, "disk already exported; kept");
                        outcomes[index] = Some(o);
                        continue;
                    }
                    Prepared::Run(p) => p,
                };
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
        let ovf = write_envelope(&ovf_system(spec, &written));
        let ovf_name = format!("{base}.ovf");
        let mf_name = format!("{base}.mf");
        let mut manifest_entries = vec![manifest_entry(
            self.options.digest,
            &ovf_name,
            &digest_hex(self.options.digest, ovf.as_bytes()),
        )?];
        for o in &outcomes {
            manifest_entries.push(manifest_entry(
                self.options.digest,
                &o.file.name,
                &o.file.digest,
            )?);
        }
        let manifest = write_manifest(&manifest_entries);

        let (size, ova_digest, ovf_file, mf_file) = match self.options.format {
            PackageFormat::Ovf => {
                let ovf_file = self.write_small(staging, &ovf_name, ovf.as_bytes()).await?;
                let mf_file = self
                    .write_small(staging, &mf_name, manifest.as_bytes())
                    .await?;
                let total = ovf_file.stored_size
                    + mf_file.stored_size
                    + outcomes.iter().map(|o| o.file.stored_size).sum::<u64>();
                (total, None, ovf_file, mf_file)
            }
            PackageFormat::Ova => {
                let plain = |name: &str, bytes: &[u8]| FileReport {
                    name: name.to_string(),
                    size: bytes.len() as u64,
                    digest: digest_hex(self.options.digest, bytes),
                    stored_name: name.to_string(),
                    stored_size: bytes.len() as u64,
                };
                let ovf_file = plain(&ovf_name, ovf.as_bytes());
                let mf_file = plain(&mf_name, manifest.as_bytes());
                let ova = self
                    .write_ova(
                        staging,
                        base,
                        (&ovf_file, ovf.as_bytes()),
                        (&mf_file, manifest.as_bytes()),
                        &outcomes,
                    )
                    .await?;
                (ova.stored_size, Some(ova), ovf_file, mf_file)
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
                })
                .collect(),
            duration_secs: 0.0,
            bytes_read: outcomes.iter().map(|o| o.bytes_read).sum(),
            resumed_bytes: outcomes.iter().map(|o| o.kept).sum(),
            throughput_mb_s: 0.0,
        })
    }

    /// The transforms for a stored object: the digest always; compression
    /// and encryption when `wrapped` (the stored form, not a spool).
    fn transform_spec(&self, wrapped: bool) -> TransformSpec {
        TransformSpec {
            digest: Some(self.options.digest),
            compression: self.options.compression.filter(|_| wrapped),
            encryption: self.options.encryption.clone().filter(|_| wrapped),
            chunk_size: self.options.chunk_size.max(64 * 1024),
            queue_depth: self.options.queue_depth.max(1),
            workers: self.options.workers.max(1),
        }
    }

    /// Creates object `name` (plus the transforms' suffix when `wrapped`)
    /// and starts its pipeline.
    async fn open_object(
        &self,
        staging: &mut dyn Staging,
        name: &str,
        wrapped: bool,
    ) -> Result<(PipelineInput, ObjectSink)> {
        self.open_object_at(staging, name, wrapped, None, None)
            .await
    }

    /// [`open_object`](Self::open_object), continuing the object after the
    /// bytes `cont` kept, and checkpointing it as disk `slot`'s.
    async fn open_object_at(
        &self,
        staging: &mut dyn Staging,
        name: &str,
        wrapped: bool,
        cont: Option<Continue>,
        slot: Option<(Checkpointer, usize)>,
    ) -> Result<(PipelineInput, ObjectSink)> {
        let spec = self.transform_spec(wrapped);
        let stored_name = format!("{name}{}", spec.extension());
        let base = cont.as_ref().map_or(0, |c| c.offset);
        let writer = match &cont {
            Some(c) => staging.append(&stored_name, c.offset).await?,
            None => staging.create(&stored_name).await?,
        };
        let (input, output) = pipeline::start_at(&spec, cont)?;
        Ok((
            input,
            ObjectSink {
                name: name.to_string(),
                stored_name,
                writer,
                output,
                base,
                slot,
            },
        ))
    }

    /// Writes a small object (descriptor, manifest) through the transforms.
    async fn write_small(
        &self,
        staging: &mut dyn Staging,
        name: &str,
        bytes: &[u8],
    ) -> Result<FileReport> {
        let (mut input, object) = self.open_object(staging, name, true).await?;
        let feed = async move {
            input.write(bytes).await?;
            input.close().await
        };
        let (fed, drained) = tokio::join!(feed, object.drain());
        first_cause(
            fed.map_err(|e| Error::sink("cannot write", name, e)),
            drained,
        )
        .map(|((), report)| report)
    }

    /// Opens disk `index`'s source and staging object — continuing what an
    /// interrupted run left when resuming, or reporting a disk it finished.
    async fn prepare_disk(
        &self,
        source: &dyn ExportSource,
        index: usize,
        name: &str,
        staging: &mut dyn Staging,
        ck: Option<&Checkpointer>,
    ) -> Result<Prepared> {
        // An OVA's disks are spools: the OVA as a whole is wrapped later.
        let wrapped = self.options.format == PackageFormat::Ovf;
        let transforms = self.transform_spec(wrapped);
        let stored_name = format!("{name}{}", transforms.extension());
        let disk_name = source.spec().disks[index].name.clone();
        let prev = match ck {
            Some(ck) => ck.disk(index).await,
            None => DiskState::default(),
        };
        if let Some(done) = &prev.done {
            if staging.size(&done.file.stored_name).await? == Some(done.file.stored_size) {
                return Ok(Prepared::Done(DiskOutcome {
                    file: done.file.clone(),
                    populated: done.populated,
                    bytes_read: 0,
                    kept: done.file.stored_size,
                }));
            }
        }
        let served_wanted = !self.options.reencode;
        let mut resumed: Option<(Recovered, DiskInput)> = None;
        if prev.durable > 0 && prev.stored_name == stored_name {
            if transforms.changes_bytes() {
                tracing::warn!(disk = %disk_name, "a compressed or encrypted disk file cannot be continued mid-way: writing it again");
            } else {
                match self
                    .reopen(source, index, staging, &stored_name, &prev, served_wanted)
                    .await
                {
                    Ok(r) => resumed = r,
                    Err(e) => {
                        tracing::warn!(disk = %disk_name, error = %e, "cannot continue the disk: writing it again")
                    }
                }
            }
        }
        let slot = ck.map(|c| (c.clone(), index));
        let (stream, input, object, resume) = match resumed {
            Some((rec, stream)) => {
                info!(disk = %disk_name, kept = rec.offset, "continuing the disk");
                let cont = Continue {
                    offset: rec.offset,
                    hasher: rec.hasher,
                };
                let (input, object) = self
                    .open_object_at(staging, name, wrapped, Some(cont), slot)
                    .await?;
                let resume = DiskResume {
                    kept: rec.offset,
                    checker: rec.checker,
                    writer: rec.writer,
                };
                (stream, input, object, Some(resume))
            }
            None => {
                let served = if served_wanted {
                    source.open_disk_vmdk(index, 0).await?
                } else {
                    None
                };
                let stream = match served {
                    Some(s) => DiskInput::ServedVmdk(s),
                    None => DiskInput::Guest(source.open_disk(index, 0).await?),
                };
                let (input, object) = self
                    .open_object_at(staging, name, wrapped, None, slot)
                    .await?;
                (stream, input, object, None)
            }
        };
        if let Some(ck) = ck {
            let state = DiskState {
                stored_name: stored_name.clone(),
                durable: resume.as_ref().map_or(0, |r| r.kept),
                served: matches!(stream, DiskInput::ServedVmdk(_)),
                done: None,
            };
            ck.update(|c| c.disks[index] = state).await?;
        }
        Ok(Prepared::Run(Box::new(PreparedDisk {
            index,
            name: name.to_string(),
            stream,
            input,
            object,
            resume,
        })))
    }

    /// Reads back the durable bytes of an interrupted disk's object and
    /// opens the source where they end; None if the source cannot continue
    /// there (the disk is then written again).
    async fn reopen(
        &self,
        source: &dyn ExportSource,
        index: usize,
        staging: &dyn Staging,
        stored_name: &str,
        prev: &DiskState,
        served_wanted: bool,
    ) -> Result<Option<(Recovered, DiskInput)>> {
        let Some(size) = staging.size(stored_name).await? else {
            return Ok(None);
        };
        let rec = recover(
            staging,
            stored_name,
            prev.durable.min(size),
            self.options.digest,
        )
        .await?;
        if prev.served {
            if !served_wanted {
                return Ok(None);
            }
            // Ask for the last kept bytes again: the platform must serve the
            // same VMDK as before for the rest to fit.
            let overlap = rec.tail.len() as u64;
            let Some(mut stream) = source.open_disk_vmdk(index, rec.offset - overlap).await? else {
                return Ok(None);
            };
            let mut got: Vec<u8> = Vec::with_capacity(rec.tail.len());
            let mut rest = Vec::new();
            while got.len() < rec.tail.len() {
                let Some(item) = stream.next().await else {
                    break;
                };
                let b = item?;
                let take = (rec.tail.len() - got.len()).min(b.len());
                got.extend_from_slice(&b[..take]);
                if take < b.len() {
                    rest.push(Ok(b.slice(take..)));
                }
            }
            if got != rec.tail {
                tracing::warn!(
                    "the platform serves this disk's VMDK differently than before: writing it again"
                );
                return Ok(None);
            }
            let stream: crate::provider::DiskStream =
                Box::pin(futures_util::stream::iter(rest).chain(stream));
            return Ok(Some((rec, DiskInput::ServedVmdk(stream))));
        }
        let Some(w) = rec.writer.clone() else {
            return Ok(None);
        };
        let capacity = source.spec().disks[index].capacity;
        let stream = source.open_disk(index, w.received.min(capacity)).await?;
        Ok(Some((rec, DiskInput::Guest(stream))))
    }

    /// Exports one opened disk.
    async fn run_disk(&self, spec: &VmSpec, p: Box<PreparedDisk>) -> Result<DiskOutcome> {
        let p = *p;
        let kept = p.resume.as_ref().map_or(0, |r| r.kept);
        let (checker, writer) = match p.resume {
            Some(r) => (Some(r.checker), r.writer),
            None => (None, None),
        };
        let mut outcome = match p.stream {
            DiskInput::ServedVmdk(s) => {
                let s = self.layered(s, spec, p.index);
                self.store_vmdk(spec, s, p.index, &p.name, (p.input, p.object), checker)
                    .await
            }
            DiskInput::Guest(s) => {
                let s = self.layered(s, spec, p.index);
                self.encode_disk(spec, s, p.index, &p.name, (p.input, p.object), writer)
                    .await
            }
        }?;
        outcome.kept = kept;
        Ok(outcome)
    }

    /// Streams guest bytes through the VMDK encoder into the disk's object.
    async fn encode_disk(
        &self,
        spec: &VmSpec,
        mut stream: crate::provider::DiskStream,
        index: usize,
        name: &str,
        (mut input, object): (PipelineInput, ObjectSink),
        resume: Option<WriterResume>,
    ) -> Result<DiskOutcome> {
        let disk = &spec.disks[index];
        let capacity = disk.capacity;
        let start = resume.as_ref().map_or(0, |r| r.received.min(capacity));
        let fed_before = resume.as_ref().map_or(0, |r| r.received);
        // VMDK capacities are whole sectors; a raw disk of odd size is zero-padded.
        let vmdk_capacity = hypersdk_formats::image::sector_capacity(capacity);
        let depth = self.options.queue_depth.max(1);
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(depth);
        let vmdk_options = VmdkWriterOptions {
            compression_level: self.options.compression_level,
            extent_name: name.to_string(),
            ..Default::default()
        };
        let what = format!("VMDK of disk '{}'", disk.name);
        let encoder_what = format!("cannot write {what}");
        let encoder = tokio::task::spawn_blocking(move || -> Result<VmdkWriterStats> {
            let fmt_err = |source| Error::Format {
                what: encoder_what.clone(),
                source,
            };
            let mut w = match &resume {
                Some(r) => {
                    StreamOptimizedWriter::resume(&mut input, vmdk_capacity, &vmdk_options, r)
                }
                None => StreamOptimizedWriter::new(&mut input, vmdk_capacity, &vmdk_options),
            }
            .map_err(fmt_err)?;
            while let Some(data) = in_rx.blocking_recv() {
                w.write(&data).map_err(fmt_err)?;
            }
            let (_, stats) = w.finish().map_err(fmt_err)?;
            input.close_blocking().map_err(|e| {
                fmt_err(hypersdk_formats::Error::io(
                    "handing VMDK bytes to the sink",
                    e,
                ))
            })?;
            Ok(stats)
        });

        // Stage 1: read the source (within the bandwidth limits), report
        // progress, feed the encoder.
        let reader = async move {
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            let mut done: u64 = start;
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
            let fed = done.max(fed_before);
            if vmdk_capacity > fed {
                let pad = Bytes::from(vec![0u8; (vmdk_capacity - fed) as usize]);
                if in_tx.send(pad).await.is_err() {
                    return Err(None);
                }
            }
            self.emit(tracker.event(Phase::DiskDone, index, &disk.name, done, capacity, true));
            Ok(done - start)
        };

        // Stages 2 and 3 (digest, transforms) run on the pipeline's threads;
        // this drains their output into the sink.
        let (read_result, write_result) = tokio::join!(reader, object.drain());
        let encoded = encoder
            .await
            .map_err(|e| Error::Internal(format!("{what} encoder thread failed: {e}")));
        // Report the root cause: source problems first, then the sink, then
        // the encoder. (A sink failure makes the encoder fail writing; an
        // encoder failure leaves the pipeline's input unclosed, which the
        // drain reports as Cancelled.)
        let encoded = encoded.and_then(|r| r);
        let bytes_read = match read_result {
            Err(Some(e)) => return Err(e),
            Err(None) => {
                return Err(match (write_result, encoded) {
                    (Err(e), _) if !matches!(e, Error::Cancelled) => e,
                    (_, Err(e)) => e,
                    (Err(e), Ok(_)) => e,
                    (Ok(_), Ok(_)) => {
                        Error::Internal(format!("{what} encoder stopped without an error"))
                    }
                })
            }
            Ok(n) => n,
        };
        let (file, stats) = match (write_result, encoded) {
            (Ok(f), Ok(s)) => (f, s),
            (Err(e), _) if !matches!(e, Error::Cancelled) => return Err(e),
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(_)) => return Err(e),
        };
        if file.size != stats.file_size {
            return Err(Error::Internal(format!(
                "{what}: encoder wrote {} bytes, the pipeline passed {}",
                stats.file_size, file.size
            )));
        }
        Ok(DiskOutcome {
            file,
            populated: stats.populated_bytes,
            bytes_read,
            kept: 0,
        })
    }

    /// Disk `index`'s source stream with the export's layers: the bandwidth
    /// limits (its own, then the shared ones) and the idle timeout.
    fn layered(
        &self,
        stream: crate::provider::DiskStream,
        spec: &VmSpec,
        index: usize,
    ) -> crate::provider::DiskStream {
        let limiters: Vec<_> = self
            .options
            .bwlimit
            .iter()
            .chain(&self.options.shared_limiters)
            .cloned()
            .collect();
        let stream = layers::throttled(stream, limiters);
        match self.options.idle_timeout {
            None => stream,
            Some(limit) => {
                let d = &spec.disks[index];
                layers::idle_timeout(stream, limit, (&spec.name, &d.name, &d.location))
            }
        }
    }

    /// Stores a disk the source serves as streamOptimized VMDK as it arrives,
    /// checking its structure on the way ([`StreamChecker`]).
    async fn store_vmdk(
        &self,
        spec: &VmSpec,
        mut stream: crate::provider::DiskStream,
        index: usize,
        name: &str,
        (mut input, object): (PipelineInput, ObjectSink),
        checker: Option<StreamChecker>,
    ) -> Result<DiskOutcome> {
        let disk = &spec.disks[index];
        let start = checker.as_ref().map_or(0, |c| c.guest_position());
        let bad_vmdk = |e: hypersdk_formats::Error| Error::DiskRead {
            vm: spec.name.clone(),
            disk: disk.name.clone(),
            location: disk.location.clone(),
            source: format!("the VMDK the source serves is not a sound streamOptimized VMDK: {e}")
                .into(),
        };
        let feed = async {
            let mut checker = checker.unwrap_or_default();
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return Err(Error::Cancelled),
                    n = stream.next() => n,
                };
                let Some(item) = next else { break };
                let data = item?;
                checker.push(&data).map_err(bad_vmdk)?;
                let pos = checker.guest_position();
                self.emit(tracker.event(Phase::Disk, index, &disk.name, pos, disk.capacity, false));
                input
                    .write(&data)
                    .await
                    .map_err(|e| Error::sink("cannot write", name, e))?;
            }
            let stats = checker.finish().map_err(bad_vmdk)?;
            if stats.capacity != hypersdk_formats::image::sector_capacity(disk.capacity) {
                return Err(Error::DiskLength {
                    vm: spec.name.clone(),
                    disk: disk.name.clone(),
                    expected: disk.capacity,
                    actual: stats.capacity,
                });
            }
            self.emit(tracker.event(
                Phase::DiskDone,
                index,
                &disk.name,
                disk.capacity,
                disk.capacity,
                true,
            ));
            input
                .close()
                .await
                .map_err(|e| Error::sink("cannot write", name, e))?;
            Ok(stats)
        };
        let (fed, drained) = tokio::join!(feed, object.drain());
        let (stats, file) = first_cause(fed, drained)?;
        Ok(DiskOutcome {
            file,
            populated: stats.populated,
            bytes_read: disk.capacity - start.min(disk.capacity),
            kept: 0,
        })
    }

    /// Assembles the OVA from the descriptor, the manifest and the spooled
    /// disks, through the transforms.
    async fn write_ova(
        &self,
        staging: &mut dyn Staging,
        base: &str,
        ovf: (&FileReport, &[u8]),
        mf: (&FileReport, &[u8]),
        disks: &[DiskOutcome],
    ) -> Result<FileReport> {
        let ova_name = format!("{base}.ova");
        // A fixed member time: the same VM exported twice gives the same bytes.
        let mtime = 0;
        let fmt_err = |source| Error::Format {
            what: format!("cannot write OVA {ova_name}"),
            source,
        };
        let (mut out, object) = self.open_object(staging, &ova_name, true).await?;
        let total: u64 = disks.iter().map(|d| d.file.size).sum();
        let chunk = self.options.chunk_size.max(64 * 1024);
        let feed = async {
            let io = |e: std::io::Error| Error::sink("cannot write", ova_name.as_str(), e);
            for (file, bytes) in [ovf, mf] {
                out.write(&tar_header(&file.name, file.size, mtime).map_err(fmt_err)?)
                    .await
                    .map_err(io)?;
                out.write(bytes).await.map_err(io)?;
                out.write(&[0u8; 512][..tar_padding(file.size)])
                    .await
                    .map_err(io)?;
            }
            let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
            let mut copied_all: u64 = 0;
            for d in disks {
                out.write(&tar_header(&d.file.name, d.file.size, mtime).map_err(fmt_err)?)
                    .await
                    .map_err(io)?;
                let mut spool = staging.open(&d.file.stored_name).await?;
                let mut copied: u64 = 0;
                loop {
                    if self.cancel.is_cancelled() {
                        return Err(Error::Cancelled);
                    }
                    let mut buf = Vec::with_capacity(chunk);
                    let n = (&mut spool)
                        .take(chunk as u64)
                        .read_to_end(&mut buf)
                        .await
                        .map_err(|e| {
                            Error::sink("cannot read back spooled disk", &d.file.stored_name, e)
                        })?;
                    if n == 0 {
                        break;
                    }
                    copied += n as u64;
                    out.write_owned(buf).await.map_err(io)?;
                    copied_all += n as u64;
                    self.emit(tracker.event(
                        Phase::Packaging,
                        0,
                        &ova_name,
                        copied_all,
                        total,
                        false,
                    ));
                }
                if copied != d.file.size {
                    return Err(Error::sink(
                        "spooled disk changed size",
                        &d.file.stored_name,
                        std::io::Error::other(format!(
                            "expected {} bytes, read {copied}",
                            d.file.size
                        )),
                    ));
                }
                out.write(&[0u8; 512][..tar_padding(d.file.size)])
                    .await
                    .map_err(io)?;
            }
            out.write(&END_OF_ARCHIVE).await.map_err(io)?;
            out.close().await.map_err(io)
        };
        let (fed, drained) = tokio::join!(feed, object.drain());
        let report = first_cause(fed, drained).map(|((), report)| report)?;
        // The spools go once the OVA is whole: an interrupted assembly is
        // redone from them.
        for d in disks {
            staging.remove(&d.file.stored_name).await?;
        }
        Ok(report)
    }

    /// Reads every stored file back, unwraps it and checks its digest.
    async fn verify(&self, staging: &dyn Staging, report: &ExportReport) -> Result<()> {
        let files: Vec<&FileReport> = match &report.ova {
            Some(ova) => vec![ova],
            None => report.files.iter().collect(),
        };
        let total: u64 = files.iter().map(|f| f.stored_size).sum();
        let mut done: u64 = 0;
        let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
        for f in files {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let reader = staging.open(&f.stored_name).await?;
            let algorithm = self.options.digest;
            let key = self.options.encryption.clone();
            let compressed = self.options.compression.is_some();
            let stored_name = f.stored_name.clone();
            let (size, digest) = tokio::task::spawn_blocking(move || -> Result<(u64, String)> {
                let bad = |detail: String| Error::Integrity {
                    file: stored_name.clone(),
                    detail,
                };
                let raw = tokio_util::io::SyncIoBridge::new(reader);
                let plain: Box<dyn std::io::Read + Send> = match &key {
                    Some(k) => {
                        Box::new(DecryptReader::new(raw, k).map_err(|e| bad(e.to_string()))?)
                    }
                    None => Box::new(raw),
                };
                // The layers are known here: undo exactly those, no guessing.
                let mut plain = if compressed {
                    decompress_reader(plain).map_err(|e| bad(e.to_string()))?
                } else {
                    plain
                };
                let mut hasher = Hasher::new(algorithm);
                let n = std::io::copy(&mut plain, &mut hasher).map_err(|e| bad(e.to_string()))?;
                Ok((n, hasher.finish_hex()))
            })
            .await
            .map_err(|e| Error::Internal(format!("verify thread failed: {e}")))??;
            if size != f.size || digest != f.digest {
                return Err(Error::Integrity {
                    file: f.stored_name.clone(),
                    detail: format!(
                        "read back {size} bytes with {} {digest}, wrote {} bytes with {}",
                        report.digest_algorithm, f.size, f.digest
                    ),
                });
            }
            done += f.stored_size;
            self.emit(tracker.event(Phase::Verify, 0, &f.stored_name, done, total, false));
        }
        Ok(())
    }
}

/// Where a disk's bytes come from.
enum DiskInput {
    /// Guest bytes, to be encoded.
    Guest(crate::provider::DiskStream),
    /// A streamOptimized VMDK as the source serves it, stored as it is.
    ServedVmdk(crate::provider::DiskStream),
}

/// A disk whose source stream and staging object are open.
struct PreparedDisk {
    index: usize,
    name: String,
    stream: DiskInput,
    input: PipelineInput,
    object: ObjectSink,
    resume: Option<DiskResume>,
}

/// A disk to run, or one an interrupted run finished.
enum Prepared {
    Run(Box<PreparedDisk>),
    Done(DiskOutcome),
}

/// Where a continued disk picks up.
struct DiskResume {
    /// Stored bytes kept.
    kept: u64,
    /// The checker having seen them (for a served VMDK).
    checker: StreamChecker,
    /// The VMDK writer's state after them (for guest bytes).
    writer: Option<WriterResume>,
}

/// What the durable bytes of an interrupted disk's VMDK allow.
struct Recovered {
    /// Bytes kept: up to the last whole record.
    offset: u64,
    /// Digest state over them.
    hasher: Hasher,
    /// A checker that has seen them.
    checker: StreamChecker,
    /// The writer state after them, if the VMDK is in our layout.
    writer: Option<WriterResume>,
    /// Their last (up to 64 KiB) bytes.
    tail: Vec<u8>,
}

/// Reads object `name` back up to `durable` bytes: finds the last whole
/// VMDK record, then digests and checks the bytes up to it.
async fn recover(
    staging: &dyn Staging,
    name: &str,
    durable: u64,
    algorithm: DigestAlgorithm,
) -> Result<Recovered> {
    const TAIL: usize = 64 * 1024;
    let bad = |e: hypersdk_formats::Error| Error::Integrity {
        file: name.to_string(),
        detail: format!("the kept part is not a sound VMDK: {e}"),
    };
    // Pass 1: where the last whole record ends.
    let mut first = StreamChecker::new();
    read_back(staging, name, durable, |b| first.push(b).map_err(bad)).await?;
    let offset = first.boundary();
    if offset == 0 {
        return Err(Error::Integrity {
            file: name.to_string(),
            detail: "not even its VMDK header is durable".into(),
        });
    }
    // Pass 2: digest and check exactly that much.
    let mut checker = StreamChecker::new();
    let mut hasher = Hasher::new(algorithm);
    let mut tail: Vec<u8> = Vec::with_capacity(TAIL);
    let got = read_back(staging, name, offset, |b| {
        checker.push(b).map_err(bad)?;
        hasher.update(b);
        let keep = b.len().min(TAIL);
        tail.extend_from_slice(&b[b.len() - keep..]);
        if tail.len() > TAIL {
            tail.drain(..tail.len() - TAIL);
        }
        Ok(())
    })
    .await?;
    if got != offset {
        return Err(Error::Integrity {
            file: name.to_string(),
            detail: format!("read back {got} of its {offset} kept bytes"),
        });
    }
    let writer = checker.writer_resume();
    Ok(Recovered {
        offset,
        hasher,
        checker,
        writer,
        tail,
    })
}

/// Reads the first `limit` bytes of staged object `name` in 1 MiB pieces,
/// handing each to `f`; returns how many there were.
async fn read_back(
    staging: &dyn Staging,
    name: &str,
    limit: u64,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut r = staging.open(name).await?.take(limit);
    let mut total = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| Error::sink("cannot read back", name, e))?;
        if n == 0 {
            return Ok(total);
        }
        f(&buf[..n])?;
        total += n as u64;
    }
}

/// The drain of one object's pipeline into its sink writer.
struct ObjectSink {
    name: String,
    stored_name: String,
    writer: Box<dyn SinkWriter>,
    output: PipelineOutput,
    /// Bytes the object already holds (continued).
    base: u64,
    /// The checkpoint and disk this object's progress is recorded as.
    slot: Option<(Checkpointer, usize)>,
}

impl ObjectSink {
    /// Writes the pipeline's output to the sink until it ends, then makes
    /// the object durable and reports it. With a checkpoint slot, syncs the
    /// object and records its durable size every `checkpoint_every` bytes
    /// or [`checkpoint::INTERVAL`](crate::checkpoint::INTERVAL).
    async fn drain(mut self) -> Result<FileReport> {
        let mut stored: u64 = self.base;
        let mut synced = (stored, Instant::now());
        while let Some(buf) = self.output.recv().await {
            self.writer.write(&buf).await?;
            stored += buf.len() as u64;
            self.output.recycle(buf);
            if let Some((ck, index)) = &self.slot {
                if stored - synced.0 >= ck.every
                    || synced.1.elapsed() >= crate::checkpoint::INTERVAL
                {
                    if let Some(durable) = self.writer.sync().await? {
                        let index = *index;
                        ck.update(|c| c.disks[index].durable = durable).await?;
                    }
                    synced = (stored, Instant::now());
                }
            }
        }
        let summary = self.output.finish().await?;
        let finished = self.writer.finish().await?;
        if finished != stored || stored - self.base != summary.output_bytes {
            return Err(Error::Internal(format!(
                "{}: the pipeline passed {} bytes, the sink received {stored} and stored {finished}",
                self.stored_name, summary.output_bytes
            )));
        }
        Ok(FileReport {
            name: self.name,
            size: summary.input_bytes,
            digest: summary
                .digest
                .ok_or_else(|| Error::Internal("the pipeline computed no digest".into()))?,
            stored_name: self.stored_name,
            stored_size: stored,
        })
    }
}

/// The error that caused the others, when a feeder and a drain ran together:
/// a sink failure makes the feeder fail too (report the sink's); a feeder
/// failure leaves the pipeline's input unclosed, which the drain reports as
/// Cancelled (report the feeder's).
fn first_cause<A, B>(fed: Result<A>, drained: Result<B>) -> Result<(A, B)> {
    match (fed, drained) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Err(Error::Cancelled)) => Err(e),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The digest of `bytes`, lower-case hex.
fn digest_hex(algorithm: DigestAlgorithm, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish_hex()
}

fn manifest_entry(algorithm: DigestAlgorithm, name: &str, hex: &str) -> Result<ManifestEntry> {
    let digest = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| Error::Internal(format!("bad digest of {name}: {e}")))?;
    Ok(ManifestEntry {
        algorithm,
        name: name.to_string(),
        digest,
    })
}
