//! Sinks: where the bytes of an export land.
//!
//! A sink is dumb and honest. An export opens a [`Staging`] area for one
//! artifact, creates objects in it, and either commits (the artifact appears
//! under its final name, whole) or aborts (nothing is left that looks
//! finished). Readers of the destination never see a half-written artifact.

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::Result;

/// What an export publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// A directory (or prefix) of this name holding every committed object,
    /// e.g. an OVF package `vm/` with `vm.ovf`, `vm.mf`, `vm-disk1.vmdk`.
    Directory(String),
    /// One file of this name; the staging area's other objects are scratch
    /// (spools) and are dropped on commit, e.g. `vm.ova`.
    File(String),
}

impl Artifact {
    /// The published name.
    pub fn name(&self) -> &str {
        match self {
            Artifact::Directory(n) | Artifact::File(n) => n,
        }
    }
}

/// A published object, as [`Sink::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its path below the destination, `/`-separated: `vm.ova`, `vm/vm.ovf`.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A destination for exports.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Human-readable destination, e.g. "local directory /srv/exports".
    fn describe(&self) -> String;

    /// The published objects whose path starts with `prefix`, sorted by
    /// path. Staging areas and partial exports are never listed: what is
    /// listed is whole.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Reads a published object (the verify pass, a user checking an
    /// export); an [`Error::Sink`](crate::Error::Sink) whose cause is
    /// `io::ErrorKind::NotFound` if there is none.
    async fn read(&self, path: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Deletes a published artifact with every object in it; false if
    /// there was none.
    async fn delete(&self, artifact: &Artifact) -> Result<bool>;

    /// Opens a staging area for `artifact`. Fails with
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the artifact
    /// exists and `overwrite` is false.
    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>>;

    /// Opens a staging area for `artifact` that an interrupted export can be
    /// continued from: it has a fixed place, is kept when the export fails
    /// with [`Staging::keep`] (or its process dies), and offers a
    /// [`CheckpointStore`]. With `resume`, an existing one is taken up
    /// again (else one is started); without, an existing one is discarded.
    /// Sinks that cannot do this start an ordinary staging area, whose
    /// [`Staging::checkpoints`] is None.
    async fn begin_resumable(
        &self,
        artifact: &Artifact,
        overwrite: bool,
        resume: bool,
    ) -> Result<Box<dyn Staging>> {
        let _ = resume;
        self.begin(artifact, overwrite).await
    }

    /// The checkpoint an interrupted export of `artifact` kept, if there is
    /// one, read without taking up the partial export: the exporter asks it
    /// for the token that reopens the same source. The default: None.
    async fn kept_checkpoint(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>> {
        let _ = artifact;
        Ok(None)
    }

    /// Removes what an interrupted export of `artifact` left to be
    /// continued, if anything (true then). For a process that died between
    /// publishing an artifact and removing its staging area: the artifact
    /// is whole, the rest is stale. Busy while another export uses it.
    async fn discard_partial(&self, artifact: &Artifact) -> Result<bool> {
        let _ = artifact;
        Ok(false)
    }
}

/// Where an export keeps its checkpoint: one small document, replaced
/// atomically and durably.
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// The checkpoint saved last, if any.
    fn load(&self) -> Result<Option<Vec<u8>>>;
    /// Replaces the checkpoint: after a crash either the old or the new one
    /// is found whole.
    fn save(&self, bytes: &[u8]) -> Result<()>;
    /// Removes the checkpoint.
    fn clear(&self) -> Result<()>;
    /// Where it is, for messages.
    fn location(&self) -> String;
}

/// What an interrupted upload left: how many of its bytes the sink holds
/// durably, and what the sink needs to continue it. Saved in the export's
/// checkpoint ([`Upload::save`]) and handed back to [`Staging::resume`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadState {
    /// Bytes of the object the sink holds durably.
    pub size: u64,
    /// The sink's own record of the upload — an upload id and its finished
    /// parts for an object store; nothing for a local file. Never holds
    /// secrets: it is written into the checkpoint.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub sink: serde_json::Value,
}

/// A region of an upload left to be filled later ([`Upload::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reserved {
    /// Where it starts in the object.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// The objects of one artifact being uploaded: each object is an
/// [`Upload`] that completes whole (or is abandoned); the artifact is
/// published by [`commit`](Self::commit) in one step.
#[async_trait]
pub trait Staging: Send + Sync + std::fmt::Debug {
    /// Starts uploading object `name` (replacing one of that name).
    async fn start(&mut self, name: &str) -> Result<Box<dyn Upload>>;

    /// Continues the upload of object `name` that an interrupted export
    /// saved as `saved`, keeping its first `keep` bytes (at most
    /// `saved.size`). A sink that cannot keep exactly `keep` bytes fails,
    /// and the object is uploaded again from its start.
    async fn resume(
        &mut self,
        name: &str,
        saved: &UploadState,
        keep: u64,
    ) -> Result<Box<dyn Upload>> {
        let _ = (saved, keep);
        Err(crate::Error::InvalidArgument(format!(
            "this sink cannot continue object {name}"
        )))
    }

    /// Whether this sink's uploads can leave regions to fill later
    /// ([`Upload::reserve`]): an OVA is then written in place, every disk
    /// byte once, instead of being assembled from spools.
    fn fills_reserved(&self) -> bool {
        false
    }

    /// Whether [`open`](Self::open) reads objects before the commit. An
    /// object store cannot serve an upload before it completes, which is
    /// its publication: the verify pass then reads the published objects
    /// right after the commit (and deletes them if they do not match).
    fn reads_before_commit(&self) -> bool {
        true
    }

    /// Reads back an uploaded object from byte `offset` on, for the verify
    /// pass only: continuing an interrupted upload never reads back (the
    /// checkpoint carries what it needs).
    async fn open(&self, name: &str, offset: u64) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Publishes the artifact whole and returns where it is (path or URL).
    async fn commit(self: Box<Self>) -> Result<String>;

    /// Drops everything staged.
    async fn abort(self: Box<Self>) -> Result<()>;

    /// Leaves everything staged in place for a later resume (a resumable
    /// staging area; others abort) and returns where it is.
    async fn keep(self: Box<Self>) -> Result<String> {
        self.abort().await?;
        Ok(String::new())
    }

    /// Where the artifact will be once committed (path or URL).
    fn destination(&self) -> String {
        String::new()
    }

    /// The checkpoint store of a resumable staging area.
    fn checkpoints(&self) -> Option<std::sync::Arc<dyn CheckpointStore>> {
        None
    }

    /// A local directory on the same file system as the destination, where
    /// the exporter may keep its scratch area (spools) when not told where;
    /// None for destinations that are not local.
    fn scratch_hint(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// The size of object `name` as the sink holds it (a completed upload,
    /// or what an interrupted one left), None if there is none.
    async fn size(&self, name: &str) -> Result<Option<u64>> {
        let _ = name;
        Ok(None)
    }
}

/// One object being uploaded: bytes are put in order; it appears (as part
/// of the staged artifact) only when [`complete`](Self::complete)d.
#[async_trait]
pub trait Upload: Send + Sync + std::fmt::Debug {
    /// Appends bytes.
    async fn put(&mut self, data: &[u8]) -> Result<()>;

    /// Bytes of the object so far (what was put and reserved, plus what a
    /// continued upload kept).
    fn size(&self) -> u64;

    /// Leaves `len` bytes here to be [`fill`](Self::fill)ed before the
    /// upload completes — a header whose content is known only later.
    /// Only where [`Staging::fills_reserved`] says so.
    async fn reserve(&mut self, len: u64) -> Result<Reserved> {
        let _ = len;
        Err(crate::Error::InvalidArgument(
            "this sink cannot leave a region of an object to fill later".into(),
        ))
    }

    /// Fills a region left by [`reserve`](Self::reserve); `data` is exactly
    /// as long as the region.
    async fn fill(&mut self, at: Reserved, data: &[u8]) -> Result<()> {
        let _ = (at, data);
        Err(crate::Error::InvalidArgument(
            "this sink cannot fill a region of an object later".into(),
        ))
    }

    /// Makes what was put so far durable and returns what continuing the
    /// upload needs ([`Staging::resume`]); None if this sink cannot
    /// continue uploads.
    async fn save(&mut self) -> Result<Option<UploadState>> {
        Ok(None)
    }

    /// Like [`save`](Self::save), for continuing from byte `end` (at most
    /// [`size`](Self::size)): the state returned covers at least `end`
    /// bytes, and a sink that keeps only whole parts cuts one at `end`.
    /// None if it cannot now (the next save may).
    async fn save_to(&mut self, end: u64) -> Result<Option<UploadState>> {
        Ok(self.save().await?.filter(|s| s.size >= end))
    }

    /// Makes the object durable and whole and returns its size.
    async fn complete(self: Box<Self>) -> Result<u64>;

    /// Abandons the object: nothing of it stays.
    async fn abort(self: Box<Self>) -> Result<()>;
}
