//! OVA assembly. An OVA is a tar archive whose first members are the
//! descriptor and the manifest — which name every disk's size and digest,
//! known only once the disks are written.
//!
//! **In place** (a sink that fills reserved regions, the OVA not compressed
//! or encrypted as a whole): the archive is one upload. Its first bytes are
//! reserved for the descriptor and manifest members, sized before any disk
//! is written (the descriptor with every number at its widest, then padded
//! with trailing whitespace to that size; the manifest's length is exact);
//! each disk is written straight into the archive after a reserved tar
//! header, filled in once its size is known; the reserved prefix is filled
//! last. Every disk byte is written once. Disks run in parallel: the one
//! next in archive order is written in place, the others are spooled to the
//! exporter's scratch area and copied in when their turn comes.
//!
//! **Spooled** (otherwise): every disk goes to the scratch area, then the
//! archive is written front to back through the transforms.
//!
//! Both give the same archive bytes.

use super::*;

/// Sizes of the archive's first two members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PrefixLayout {
    /// The descriptor member's size (the descriptor padded to it).
    pub(super) ovf_len: u64,
    /// The manifest member's size.
    pub(super) mf_len: u64,
    /// The certificate member's size, for a signed package.
    pub(super) cert_len: Option<u64>,
}

impl PrefixLayout {
    /// Bytes of the region: the headers, the members, their padding (the
    /// descriptor is padded to whole blocks already).
    pub(super) fn total(&self) -> u64 {
        let member = |len: u64| 512 + len + tar_padding(len) as u64;
        member(self.ovf_len) + member(self.mf_len) + self.cert_len.map_or(0, member)
    }
}

/// A number wider than any size a descriptor will carry (19 digits, as
/// wide as u64 sizes below 10 EB get) that leaves room for arithmetic.
const WIDEST: u64 = 9_999_999_999_999_999_999;

/// The descriptor padded with trailing whitespace to `len` bytes (XML
/// allows whitespace after the root element).
pub(super) fn padded_descriptor(ovf: &str, len: u64) -> Result<Vec<u8>> {
    let mut bytes = ovf.as_bytes().to_vec();
    if bytes.len() as u64 > len {
        return Err(Error::Internal(format!(
            "the descriptor ({} bytes) outgrew the {len} bytes kept for it",
            bytes.len()
        )));
    }
    bytes.resize(len as usize, b' ');
    if let Some(last) = bytes.last_mut() {
        *last = b'\n';
    }
    Ok(bytes)
}

/// The tar header of member `file` of OVA `ova`. Members carry a fixed
/// time (0): the same VM exported twice gives the same bytes.
fn member_header(ova: &str, file: &FileReport) -> Result<[u8; 512]> {
    tar_header(&file.name, file.size, 0).map_err(|source| Error::Format {
        what: format!("cannot write OVA {ova}"),
        source,
    })
}

/// The prefix of OVA `ova`: its descriptor and manifest members.
pub(super) fn prefix_bytes(
    ova: &str,
    layout: PrefixLayout,
    members: &[(&FileReport, &[u8])],
) -> Result<Vec<u8>> {
    let lens: Vec<u64> = members.iter().map(|(_, b)| b.len() as u64).collect();
    let laid: Vec<u64> = [Some(layout.ovf_len), Some(layout.mf_len), layout.cert_len]
        .into_iter()
        .flatten()
        .collect();
    if lens != laid {
        return Err(Error::Internal(format!(
            "members of {lens:?} bytes for a prefix laid out for {laid:?}"
        )));
    }
    let mut out = Vec::with_capacity(layout.total() as usize);
    for (file, bytes) in members {
        out.extend_from_slice(&member_header(ova, file)?);
        out.extend_from_slice(bytes);
        out.extend_from_slice(&[0u8; 512][..tar_padding(file.size)]);
    }
    Ok(out)
}

/// The member being written in place, as the disk runner sees it: puts go
/// to the archive; sizes are the member's own.
#[derive(Debug)]
pub(super) struct MemberUpload {
    pub(super) ova: Arc<tokio::sync::Mutex<Box<dyn Upload>>>,
    /// Member bytes so far.
    pub(super) size: u64,
}

#[async_trait::async_trait]
impl Upload for MemberUpload {
    async fn put(&mut self, data: &[u8]) -> Result<()> {
        self.ova.lock().await.put(data).await?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// The archive's state (its whole size, not the member's).
    async fn save(&mut self) -> Result<Option<UploadState>> {
        self.ova.lock().await.save().await
    }

    async fn complete(self: Box<Self>) -> Result<u64> {
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// An OVA being written in place.
pub(super) struct Archive {
    pub(super) name: String,
    pub(super) upload: Arc<tokio::sync::Mutex<Box<dyn Upload>>>,
    pub(super) prefix: Reserved,
    /// Disks appended whole; the next member is disk `next`.
    pub(super) next: usize,
    /// Disk `next` is being written into the archive by its runner.
    pub(super) busy: bool,
    /// The member in progress: its header's region and first byte.
    pub(super) current: Option<(Reserved, u64)>,
    /// A member an interrupted run left in part, ready to continue.
    pub(super) pending: Option<(usize, Recovered, DiskInput)>,
}

impl Exporter {
    /// Whether the OVA is written in place into `staging`.
    pub(super) fn in_place(&self, staging: &dyn Staging) -> bool {
        self.options.format == PackageFormat::Ova
            && !self.transform_spec(true).changes_bytes()
            && staging.fills_reserved()
    }

    /// The sizes of the descriptor and manifest members of `spec`'s OVA.
    pub(super) fn prefix_layout(&self, spec: &VmSpec, base: &str) -> Result<PrefixLayout> {
        let widest: Vec<WrittenDisk> = (0..spec.disks.len())
            .map(|i| WrittenDisk {
                file: disk_file_name(base, i),
                file_size: WIDEST,
                populated: WIDEST,
            })
            .collect();
        let ovf = ovf_descriptor(spec, &widest, self.options.hardware_version.as_deref());
        let ovf_len = (ovf.len() as u64 + 512).next_multiple_of(512);
        let placeholder = digest_hex(self.options.digest, b"");
        let mut entries = vec![manifest_entry(
            self.options.digest,
            &format!("{base}.ovf"),
            &placeholder,
        )?];
        for w in &widest {
            entries.push(manifest_entry(self.options.digest, &w.file, &placeholder)?);
        }
        Ok(PrefixLayout {
            ovf_len,
            mf_len: write_manifest(&entries).len() as u64,
            cert_len: self
                .options
                .signer
                .as_ref()
                .map(|s| s.cert_len(&format!("{base}.mf"))),
        })
    }

    /// Starts the OVA upload, or continues the one an interrupted run left:
    /// whole members are kept, a member left in part is continued where
    /// its durable bytes end (if the source can go on there), anything
    /// after is cut off.
    pub(super) async fn open_archive(
        &self,
        staging: &mut dyn Staging,
        source: &dyn ExportSource,
        base: &str,
        layout: PrefixLayout,
        ck: Option<&Checkpointer>,
    ) -> Result<Archive> {
        let name = format!("{base}.ova");
        let saved = match ck {
            Some(ck) => ck.snapshot().await.archive,
            None => None,
        };
        let mut archive = None;
        if let Some(a) = saved.filter(|a| a.name == name && a.prefix.len == layout.total()) {
            match self.continue_archive(staging, source, &a, ck).await {
                Ok(Some(resumed)) => archive = Some(resumed),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot continue the OVA: writing it again")
                }
            }
        }
        let archive = match archive {
            Some(a) => a,
            None => {
                let mut upload = staging.start(&name).await?;
                let prefix = upload.reserve(layout.total()).await?;
                if let Some(ck) = ck {
                    let state = ArchiveState {
                        name: name.clone(),
                        prefix,
                        members: Vec::new(),
                        upload: None,
                    };
                    ck.update(|c| {
                        for d in c.disks.iter_mut().filter(|d| d.place == Place::Member) {
                            *d = DiskState::default();
                        }
                        c.archive = Some(state);
                    })
                    .await?;
                }
                Archive {
                    name,
                    upload: Arc::new(tokio::sync::Mutex::new(upload)),
                    prefix,
                    next: 0,
                    busy: false,
                    current: None,
                    pending: None,
                }
            }
        };
        Ok(archive)
    }

    /// Continues the archive an interrupted run saved as `a`; None if
    /// nothing of it can be kept.
    async fn continue_archive(
        &self,
        staging: &mut dyn Staging,
        source: &dyn ExportSource,
        a: &ArchiveState,
        ck: Option<&Checkpointer>,
    ) -> Result<Option<Archive>> {
        let (Some(saved), Some(ck)) = (&a.upload, ck) else {
            return Ok(None);
        };
        let state = ck.snapshot().await;
        // Whole members, in disk order from the first, are kept as they are.
        let mut members: Vec<MemberState> = Vec::new();
        let mut done: Vec<DoneDisk> = Vec::new();
        for (i, m) in a.members.iter().enumerate() {
            let d = state.disks.get(m.disk);
            match (m.size, d.and_then(|d| d.done.clone())) {
                (Some(size), Some(dd)) if m.disk == i && dd.file.stored_size == size => {
                    members.push(m.clone());
                    done.push(dd);
                }
                _ => break,
            }
        }
        let end_of_whole = members.last().map_or(a.prefix.offset + a.prefix.len, |m| {
            m.start + m.size.unwrap_or(0) + tar_padding(m.size.unwrap_or(0)) as u64
        });
        // The member after them, if it was being written in place.
        let mut pending = None;
        let mut keep = end_of_whole;
        let mut current = None;
        if let Some(m) = a.members.get(members.len()).filter(|m| {
            m.disk == members.len() && m.size.is_none() && m.header.offset == end_of_whole
        }) {
            let d = state.disks.get(m.disk).cloned().unwrap_or_default();
            let durable = d.durable.min(saved.size.saturating_sub(m.start));
            if let (Some(point), Place::Member) = (&d.resume, d.place) {
                match self
                    .continue_member(source, &a.name, m, &d, point, durable)
                    .await
                {
                    Ok(Some((rec, input))) => {
                        keep = m.start + rec.offset;
                        current = Some((m.header, m.start));
                        pending = Some((m.disk, rec, input));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot continue the disk: writing it again")
                    }
                }
            }
        }
        if keep > saved.size {
            return Ok(None);
        }
        let mut upload = staging.resume(&a.name, saved, keep).await?;
        // Headers of whole members again: a crash may have come between
        // filling one and the save that made it durable.
        for (m, dd) in members.iter().zip(&done) {
            upload
                .fill(m.header, &member_header(&a.name, &dd.file)?)
                .await?;
        }
        let next = members.len();
        if let Some((header, start)) = current {
            members.push(MemberState {
                disk: next,
                header,
                start,
                size: None,
            });
        }
        let kept = members.clone();
        ck.update(|c| {
            if let Some(arch) = c.archive.as_mut() {
                arch.members = kept;
            }
            for (i, d) in c.disks.iter_mut().enumerate() {
                if d.place == Place::Member && i >= next && !(current.is_some() && i == next) {
                    *d = DiskState::default();
                }
            }
        })
        .await?;
        info!(kept = keep, members = next, "continuing the OVA");
        Ok(Some(Archive {
            name: a.name.clone(),
            upload: Arc::new(tokio::sync::Mutex::new(upload)),
            prefix: a.prefix,
            next,
            busy: false,
            current,
            pending,
        }))
    }

    /// Takes up where the member an interrupted run left in part can be
    /// continued (within its `durable` bytes) and opens its source there.
    async fn continue_member(
        &self,
        source: &dyn ExportSource,
        name: &str,
        m: &MemberState,
        d: &DiskState,
        point: &ResumePoint,
        durable: u64,
    ) -> Result<Option<(Recovered, DiskInput)>> {
        if point.offset > durable {
            return Ok(None);
        }
        let rec = Recovered::from_point(point, name, self.options.digest)?;
        self.continue_source(source, m.disk, rec, d.served).await
    }

    /// The writer for disk `index` written in place as the archive's next
    /// member, with its header's region reserved (or the one kept).
    pub(super) async fn start_member(
        &self,
        archive: &mut Archive,
        index: usize,
        kept: u64,
        ck: Option<&Checkpointer>,
    ) -> Result<(MemberUpload, u64)> {
        let start = match archive.current {
            Some((_, start)) => start,
            None => {
                let mut up = archive.upload.lock().await;
                let header = up.reserve(512).await?;
                let start = up.size();
                archive.current = Some((header, start));
                if let Some(ck) = ck {
                    ck.update(|c| {
                        if let Some(a) = c.archive.as_mut() {
                            a.members.push(MemberState {
                                disk: index,
                                header,
                                start,
                                size: None,
                            });
                        }
                    })
                    .await?;
                }
                start
            }
        };
        archive.busy = true;
        let member = MemberUpload {
            ova: archive.upload.clone(),
            size: kept,
        };
        Ok((member, start))
    }

    /// Appends to the archive every finished disk whose turn has come: the
    /// member written in place gets its header and padding, a spooled one
    /// is copied in from the scratch area.
    pub(super) async fn append_ready(
        &self,
        archive: &mut Archive,
        outcomes: &[Option<DiskOutcome>],
        scratch: Option<&Scratch>,
        ck: Option<&Checkpointer>,
    ) -> Result<()> {
        while let Some(Some(o)) = outcomes.get(archive.next) {
            let index = archive.next;
            let header_bytes = member_header(&archive.name, &o.file)?;
            let pad = &[0u8; 512][..tar_padding(o.file.size)];
            let member = match o.place {
                Place::Member => {
                    let Some((header, start)) = archive.current.take() else {
                        return Err(Error::Internal(format!(
                            "disk {index} was written into the OVA, which has no member open"
                        )));
                    };
                    let mut up = archive.upload.lock().await;
                    up.fill(header, &header_bytes).await?;
                    up.put(pad).await?;
                    archive.busy = false;
                    MemberState {
                        disk: index,
                        header,
                        start,
                        size: Some(o.file.size),
                    }
                }
                _ => {
                    let scratch = scratch.ok_or_else(|| {
                        Error::Internal(format!("disk {index} was spooled without a scratch area"))
                    })?;
                    let mut up = archive.upload.lock().await;
                    let header = Reserved {
                        offset: up.size(),
                        len: 512,
                    };
                    up.put(&header_bytes).await?;
                    let start = up.size();
                    self.copy_spool(scratch, &o.file, CopyTo::Upload(&mut **up))
                        .await?;
                    up.put(pad).await?;
                    MemberState {
                        disk: index,
                        header,
                        start,
                        size: Some(o.file.size),
                    }
                }
            };
            let state = archive.upload.lock().await.save().await?;
            if let Some(ck) = ck {
                let archive_name = archive.name.clone();
                ck.update(|c| {
                    if let Some(a) = c.archive.as_mut() {
                        a.members.retain(|m| m.disk != index);
                        a.members.push(member);
                        a.upload = state;
                    }
                    // A spool copied in lives in the archive from now on.
                    if let Some(d) = c.disks.get_mut(index) {
                        d.place = Place::Member;
                        d.stored_name = archive_name;
                    }
                })
                .await?;
            }
            if o.place == Place::Spool {
                if let Some(scratch) = scratch {
                    scratch.remove(&o.file.stored_name).await?;
                }
            }
            archive.next += 1;
        }
        Ok(())
    }

    /// Copies spooled disk `file` from the scratch area into `put`, with
    /// progress.
    async fn copy_spool(
        &self,
        scratch: &Scratch,
        file: &FileReport,
        mut to: CopyTo<'_>,
    ) -> Result<()> {
        let chunk = self.options.chunk_size.max(64 * 1024);
        let mut spool = scratch.open(&file.stored_name, 0).await?;
        let mut tracker = ProgressTracker::new(PROGRESS_INTERVAL);
        let mut buf = vec![0u8; chunk];
        let mut copied: u64 = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let n = read_full(&mut spool, &mut buf)
                .await
                .map_err(|e| Error::sink("cannot read back spooled disk", &file.stored_name, e))?;
            if n == 0 {
                break;
            }
            to.put(&buf[..n]).await?;
            copied += n as u64;
            self.emit(tracker.event(Phase::Packaging, 0, &file.name, copied, file.size, false));
        }
        if copied != file.size {
            return Err(Error::sink(
                "spooled disk changed size",
                &file.stored_name,
                std::io::Error::other(format!("expected {} bytes, read {copied}", file.size)),
            ));
        }
        Ok(())
    }

    /// Fills the archive's prefix, ends it and completes the upload.
    pub(super) async fn finish_archive(&self, archive: Archive, prefix: &[u8]) -> Result<u64> {
        let upload = Arc::try_unwrap(archive.upload)
            .map_err(|_| Error::Internal("the OVA is still being written".into()))?;
        let mut upload = upload.into_inner();
        upload.fill(archive.prefix, prefix).await?;
        upload.put(&END_OF_ARCHIVE).await?;
        upload.complete().await
    }

    /// Writes the OVA front to back through the transforms, from the
    /// descriptor, the manifest and the disks spooled in `scratch`.
    pub(super) async fn write_ova(
        &self,
        staging: &mut dyn Staging,
        scratch: &Scratch,
        base: &str,
        prefix: &[u8],
        disks: &[DiskOutcome],
    ) -> Result<FileReport> {
        let ova_name = format!("{base}.ova");
        let (mut out, object) = self.open_object(staging, &ova_name, true).await?;
        let feed = async {
            let io = |e: std::io::Error| Error::sink("cannot write", ova_name.as_str(), e);
            out.write(prefix).await.map_err(io)?;
            for d in disks {
                out.write(&member_header(&ova_name, &d.file)?)
                    .await
                    .map_err(io)?;
                self.copy_spool(scratch, &d.file, CopyTo::Pipeline(&mut out, &ova_name))
                    .await?;
                out.write(&[0u8; 512][..tar_padding(d.file.size)])
                    .await
                    .map_err(io)?;
            }
            out.write(&END_OF_ARCHIVE).await.map_err(io)?;
            out.close().await.map_err(io)
        };
        let (fed, drained) = tokio::join!(feed, object.drain());
        first_cause(fed, drained).map(|((), report)| report)
    }
}

/// Where a spooled disk is copied to.
enum CopyTo<'a> {
    /// The archive written in place.
    Upload(&'a mut dyn Upload),
    /// The pipeline of an archive written front to back (named for errors).
    Pipeline(&'a mut PipelineInput, &'a str),
}

impl CopyTo<'_> {
    async fn put(&mut self, b: &[u8]) -> Result<()> {
        match self {
            CopyTo::Upload(u) => u.put(b).await,
            CopyTo::Pipeline(p, name) => p
                .write(b)
                .await
                .map_err(|e| Error::sink("cannot write", *name, e)),
        }
    }
}

/// Reads until `buf` is full or the end; how many bytes.
async fn read_full(
    r: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}
