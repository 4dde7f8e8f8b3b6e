//! Stored objects: each goes through the transform pipeline (digest,
//! compression, encryption) into a sink writer.

use super::*;

impl Exporter {
    /// The transforms for a stored object: the digest always; compression
    /// and encryption when `wrapped` (the stored form, not a spool).
    pub(super) fn transform_spec(&self, wrapped: bool) -> TransformSpec {
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
    pub(super) async fn open_object(
        &self,
        staging: &mut dyn Staging,
        name: &str,
        wrapped: bool,
    ) -> Result<(PipelineInput, ObjectSink)> {
        let spec = self.transform_spec(wrapped);
        let stored_name = format!("{name}{}", spec.extension());
        let writer = staging.start(&stored_name).await?;
        self.object_sink(name, &stored_name, writer, wrapped, None, None)
    }

    /// Starts the pipeline of object `name` stored as `stored_name` into
    /// `writer`, continuing after the bytes `from` kept, and checkpointing
    /// it in `slot`.
    pub(super) fn object_sink(
        &self,
        name: &str,
        stored_name: &str,
        writer: Box<dyn Upload>,
        wrapped: bool,
        from: Option<&Recovered>,
        slot: Option<Slot>,
    ) -> Result<(PipelineInput, ObjectSink)> {
        let spec = self.transform_spec(wrapped);
        let base = from.map_or(0, |r| r.offset);
        let cont = from.map(|r| Continue {
            offset: r.offset,
            hasher: r.hasher.clone(),
        });
        let (input, output) = pipeline::start_at(&spec, cont)?;
        // A disk stored unchanged is followed, so that saves can record
        // where to continue it.
        let tracker = match (&slot, spec.changes_bytes()) {
            (Some(_), false) => Some(Tracker::new(from)),
            _ => None,
        };
        Ok((
            input,
            ObjectSink {
                name: name.to_string(),
                stored_name: stored_name.to_string(),
                writer,
                output,
                base,
                slot,
                tracker,
            },
        ))
    }

    /// Writes a small object (descriptor, manifest) through the transforms.
    pub(super) async fn write_small(
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
}

/// The drain of one object's pipeline into its sink writer.
pub(super) struct ObjectSink {
    pub(super) name: String,
    pub(super) stored_name: String,
    pub(super) writer: Box<dyn Upload>,
    pub(super) output: PipelineOutput,
    /// Bytes the object already holds (continued).
    pub(super) base: u64,
    /// The checkpoint and disk this object's progress is recorded as.
    pub(super) slot: Option<Slot>,
    /// Follows a disk's VMDK for its resume points.
    pub(super) tracker: Option<Tracker>,
}

/// Where an object's progress is recorded: disk `index`'s state in the
/// checkpoint; for an OVA member, the archive's upload too.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) ck: Checkpointer,
    pub(super) index: usize,
    /// Where the member starts in the archive (an OVA written in place).
    pub(super) member: Option<u64>,
}

impl Slot {
    /// Records the upload's saved state, and where the disk can be
    /// continued.
    async fn saved(&self, state: UploadState, point: Option<ResumePoint>) -> Result<()> {
        let (index, member) = (self.index, self.member);
        self.ck
            .update(|c| {
                c.disks[index].resume = point;
                match (member, c.archive.as_mut()) {
                    (Some(start), Some(a)) => {
                        c.disks[index].durable = state.size.saturating_sub(start);
                        a.upload = Some(state);
                    }
                    _ => {
                        c.disks[index].durable = state.size;
                        c.disks[index].upload = Some(state);
                    }
                }
            })
            .await
    }
}

impl ObjectSink {
    /// Writes the pipeline's output to the sink until it ends, then makes
    /// the object durable and reports it. With a checkpoint slot, saves the
    /// upload and records its state every `checkpoint_every` bytes or
    /// [`checkpoint::INTERVAL`](crate::checkpoint::INTERVAL) — for a
    /// tracked disk, with the resume point of a record boundary in the
    /// chunk just put (a save waits for a chunk that has one).
    pub(super) async fn drain(mut self) -> Result<FileReport> {
        let mut stored: u64 = self.base;
        let mut synced = (stored, Instant::now());
        let mut due = false;
        while let Some(buf) = self.output.recv().await {
            let len = buf.len() as u64;
            if let Some(slot) = &self.slot {
                due = due
                    || stored + len - synced.0 >= slot.ck.every
                    || synced.1.elapsed() >= crate::checkpoint::INTERVAL;
            }
            let point = match self.tracker.as_mut() {
                Some(t) => match t.push(&buf, stored, self.output.mark().filter(|_| due)) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(object = %self.stored_name, error = %e, "cannot follow the disk's VMDK: an interrupted export will write it again");
                        self.tracker = None;
                        None
                    }
                },
                None => None,
            };
            self.writer.put(&buf).await?;
            stored += len;
            self.output.recycle(buf);
            if let (true, Some(slot)) = (due, &self.slot) {
                if self.tracker.is_none() || point.is_some() {
                    let state = match &point {
                        Some(p) => self.writer.save_to(p.offset).await?,
                        None => self.writer.save().await?,
                    };
                    if let Some(state) = state {
                        slot.saved(state, point).await?;
                    }
                    synced = (stored, Instant::now());
                    due = false;
                }
            }
        }
        let summary = self.output.finish().await?;
        let finished = self.writer.complete().await?;
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
pub(super) fn first_cause<A, B>(fed: Result<A>, drained: Result<B>) -> Result<(A, B)> {
    match (fed, drained) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(e), Err(Error::Cancelled)) => Err(e),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The digest of `bytes`, lower-case hex.
pub(super) fn digest_hex(algorithm: DigestAlgorithm, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finish_hex()
}

pub(super) fn manifest_entry(
    algorithm: DigestAlgorithm,
    name: &str,
    hex: &str,
) -> Result<ManifestEntry> {
    let digest = hypersdk_formats::manifest::from_hex(hex)
        .ok_or_else(|| Error::Internal(format!("bad digest of {name}: {hex:?} is not hex")))?;
    Ok(ManifestEntry {
        algorithm,
        name: name.to_string(),
        digest,
    })
}
