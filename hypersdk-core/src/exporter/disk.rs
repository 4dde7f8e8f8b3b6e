//! One disk: opened (continuing what an interrupted run left), then
//! encoded from guest bytes or stored as the platform serves it.

use super::*;

impl Exporter {
    /// Opens disk `index`'s source and the object it is written to —
    /// continuing what an interrupted run left when resuming.
    pub(super) async fn prepare_disk(
        &self,
        source: &dyn ExportSource,
        index: usize,
        name: &str,
        target: Target<'_>,
        ck: Option<&Checkpointer>,
    ) -> Result<Box<PreparedDisk>> {
        let place = target.place();
        // Only an OVF directory's files are wrapped one by one; an OVA is
        // wrapped as a whole.
        let wrapped = self.options.format == PackageFormat::Ovf;
        let transforms = self.transform_spec(wrapped);
        let disk_name = source.spec().disks[index].name.clone();
        let prev = match ck {
            Some(ck) => ck.disk(index).await,
            None => DiskState::default(),
        };
        let served_wanted = !self.options.reencode;
        // The upload state a continued object starts from: what was saved,
        // cut to the bytes kept.
        let mut continued: Option<UploadState> = None;
        let (stored_name, writer, resumed, member) = match target {
            Target::Object(staging, _) => {
                let stored_name = format!("{name}{}", transforms.extension());
                let mut resumed: Option<(Recovered, DiskInput)> = None;
                let mut writer = None;
                if prev.durable > 0 && prev.stored_name == stored_name && prev.place == place {
                    if transforms.changes_bytes() {
                        tracing::warn!(disk = %disk_name, "a compressed or encrypted disk file cannot be continued mid-way: writing it again");
                    } else if let (Some(saved), Some(point)) = (&prev.upload, &prev.resume) {
                        match self
                            .reopen(source, index, &stored_name, &prev, saved, point)
                            .await
                        {
                            Ok(Some((rec, input))) => {
                                match staging.resume(&stored_name, saved, rec.offset).await {
                                    Ok(w) => {
                                        continued = Some(UploadState {
                                            size: rec.offset,
                                            sink: saved.sink.clone(),
                                        });
                                        writer = Some(w);
                                        resumed = Some((rec, input));
                                    }
                                    Err(e) => {
                                        tracing::warn!(disk = %disk_name, error = %e, "cannot continue the disk: writing it again")
                                    }
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(disk = %disk_name, error = %e, "cannot continue the disk: writing it again")
                            }
                        }
                    }
                }
                let writer = match writer {
                    Some(w) => w,
                    None => staging.start(&stored_name).await?,
                };
                (stored_name, writer, resumed, None)
            }
            Target::Member(archive) => {
                let resumed = match archive.pending.take() {
                    Some((i, rec, input)) if i == index => Some((rec, input)),
                    _ => None,
                };
                let kept = resumed.as_ref().map_or(0, |(r, _)| r.offset);
                let (member, start) = self.start_member(archive, index, kept, ck).await?;
                let writer: Box<dyn Upload> = Box::new(member);
                (archive.name.clone(), writer, resumed, Some(start))
            }
        };
        let slot = ck.map(|c| Slot {
            ck: c.clone(),
            index,
            member,
        });
        let (stream, input, object, resume) = match resumed {
            Some((rec, stream)) => {
                info!(disk = %disk_name, kept = rec.offset, "continuing the disk");
                let (input, object) =
                    self.object_sink(name, &stored_name, writer, wrapped, Some(&rec), slot)?;
                let resume = DiskResume {
                    kept: rec.offset,
                    checker: rec.checker,
                    writer: rec.writer,
                    point: rec.point,
                };
                (stream, input, object, Some(resume))
            }
            None => {
                let served = if served_wanted && stores_as_served(source, index) {
                    source.open_served(index, 0).await?
                } else {
                    None
                };
                let stream = match served {
                    Some(s) => DiskInput::ServedVmdk(s),
                    None => DiskInput::Guest(source.open_disk(index, 0).await?),
                };
                let (input, object) =
                    self.object_sink(name, &stored_name, writer, wrapped, None, slot)?;
                (stream, input, object, None)
            }
        };
        if let Some(ck) = ck {
            let state = DiskState {
                stored_name: stored_name.clone(),
                durable: resume.as_ref().map_or(0, |r| r.kept),
                served: matches!(stream, DiskInput::ServedVmdk(_)),
                place,
                // A continued object keeps what continuing it again needs
                // until its next save.
                upload: continued,
                resume: resume.as_ref().map(|r| r.point.clone()),
                done: None,
            };
            ck.update(|c| c.disks[index] = state).await?;
        }
        Ok(Box::new(PreparedDisk {
            index,
            name: name.to_string(),
            place,
            stream,
            input,
            object,
            resume,
        }))
    }

    /// Takes up where an interrupted disk's object can be continued and
    /// opens the source where its kept bytes end; None if the source cannot
    /// continue there (the disk is then written again).
    pub(super) async fn reopen(
        &self,
        source: &dyn ExportSource,
        index: usize,
        stored_name: &str,
        prev: &DiskState,
        saved: &UploadState,
        point: &ResumePoint,
    ) -> Result<Option<(Recovered, DiskInput)>> {
        if point.offset > saved.size {
            return Ok(None);
        }
        let rec = Recovered::from_point(point, stored_name, self.options.digest)?;
        self.continue_source(source, index, rec, prev.served).await
    }

    /// Opens disk `index`'s source where the recovered bytes `rec` end: at
    /// that guest offset, or, for a VMDK stored as the platform served it
    /// (`served`), at that byte of the VMDK once the platform is seen to
    /// serve the same bytes again. None if it cannot go on there.
    pub(super) async fn continue_source(
        &self,
        source: &dyn ExportSource,
        index: usize,
        rec: Recovered,
        served: bool,
    ) -> Result<Option<(Recovered, DiskInput)>> {
        if served {
            if self.options.reencode {
                return Ok(None);
            }
            // Ask for the last kept bytes again: the platform must serve the
            // same VMDK as before for the rest to fit.
            let overlap = rec.point.tail.min(rec.offset);
            if !stores_as_served(source, index) {
                return Ok(None);
            }
            let Some(mut stream) = source.open_served(index, rec.offset - overlap).await? else {
                return Ok(None);
            };
            let want = overlap as usize;
            let mut got: Vec<u8> = Vec::with_capacity(want);
            let mut rest = Vec::new();
            while got.len() < want {
                let Some(item) = stream.next().await else {
                    break;
                };
                let b = item?;
                let take = (want - got.len()).min(b.len());
                got.extend_from_slice(&b[..take]);
                if take < b.len() {
                    rest.push(Ok(b.slice(take..)));
                }
            }
            if got.len() != want || digest_hex(self.options.digest, &got) != rec.point.tail_digest {
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
    pub(super) async fn run_disk(
        &self,
        spec: &VmSpec,
        p: Box<PreparedDisk>,
    ) -> Result<DiskOutcome> {
        let p = *p;
        let began = Instant::now();
        let kept = p.resume.as_ref().map_or(0, |r| r.kept);
        let (checker, writer) = match p.resume {
            Some(r) => (Some(r.checker), r.writer),
            None => (None, None),
        };
        let place = p.place;
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
        outcome.place = place;
        outcome.began = Some(began);
        Ok(outcome)
    }

    /// Streams guest bytes through the VMDK encoder into the disk's object.
    pub(super) async fn encode_disk(
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
            let mut tracker = ProgressTracker::resumed(PROGRESS_INTERVAL, start);
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
            Ok((done - start, tracker))
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
        let (bytes_read, tracker) = match read_result {
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
            place: Place::Object,
            began: None,
            secs: tracker.elapsed(),
            timeline: tracker.timeline().clone(),
        })
    }

    /// Disk `index`'s source stream with the export's layers: the bandwidth
    /// limits (its own, then the shared ones) and the idle timeout.
    pub(super) fn layered(
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
    pub(super) async fn store_vmdk(
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
        let mut tracker = ProgressTracker::resumed(PROGRESS_INTERVAL, start);
        let feed = async {
            let mut checker = checker.unwrap_or_default();
            let tracker = &mut tracker;
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
            place: Place::Object,
            began: None,
            secs: tracker.elapsed(),
            timeline: tracker.timeline().clone(),
        })
    }
}

/// Whether disk `index` is stored as the source serves it: a
/// streamOptimized VMDK is already the package's disk format.
fn stores_as_served(source: &dyn ExportSource, index: usize) -> bool {
    source.served_format(index) == Some(crate::served::ServedFormat::StreamOptimizedVmdk)
}

/// Where a disk's bytes come from.
pub(super) enum DiskInput {
    /// Guest bytes, to be encoded.
    Guest(crate::provider::DiskStream),
    /// A streamOptimized VMDK as the source serves it, stored as it is.
    ServedVmdk(crate::provider::DiskStream),
}

/// Where a disk is written.
pub(super) enum Target<'a> {
    /// Its own object in a staging area: the sink's (a file of an OVF
    /// directory) or the scratch area's (a spool).
    Object(&'a mut dyn Staging, Place),
    /// The OVA written in place, as its next member.
    Member(&'a mut Archive),
}

impl Target<'_> {
    fn place(&self) -> Place {
        match self {
            Target::Object(_, p) => *p,
            Target::Member(_) => Place::Member,
        }
    }
}

/// A disk whose source stream and object are open.
pub(super) struct PreparedDisk {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) place: Place,
    pub(super) stream: DiskInput,
    pub(super) input: PipelineInput,
    pub(super) object: ObjectSink,
    pub(super) resume: Option<DiskResume>,
}

/// Where a continued disk picks up.
pub(super) struct DiskResume {
    /// Stored bytes kept.
    pub(super) kept: u64,
    /// The checker having seen them (for a served VMDK).
    pub(super) checker: StreamChecker,
    /// The VMDK writer's state after them (for guest bytes).
    pub(super) writer: Option<WriterResume>,
    /// Where they end, as recorded.
    pub(super) point: ResumePoint,
}
