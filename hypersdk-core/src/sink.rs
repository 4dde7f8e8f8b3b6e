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

/// The objects of one artifact being written.
#[async_trait]
pub trait Staging: Send + Sync + std::fmt::Debug {
    /// Creates (or truncates) object `name`.
    async fn create(&mut self, name: &str) -> Result<Box<dyn SinkWriter>>;

    /// Reads back a finished object (for packaging from a spool, or verifying).
    async fn open(&self, name: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Deletes a finished object.
    async fn remove(&mut self, name: &str) -> Result<()>;

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

    /// The size of object `name`, None if there is none.
    async fn size(&self, name: &str) -> Result<Option<u64>> {
        let _ = name;
        Ok(None)
    }

    /// Opens existing object `name` for appending, after cutting it to
    /// `len` bytes; the writer's [`finish`](SinkWriter::finish) counts the
    /// kept bytes too.
    async fn append(&mut self, name: &str, len: u64) -> Result<Box<dyn SinkWriter>> {
        let _ = len;
        Err(crate::Error::InvalidArgument(format!(
            "this sink cannot continue object {name}"
        )))
    }
}

/// One object being written.
#[async_trait]
pub trait SinkWriter: Send + std::fmt::Debug {
    /// Appends bytes.
    async fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Makes the object durable (flushed and synced) and returns its size.
    async fn finish(self: Box<Self>) -> Result<u64>;

    /// Makes what was written so far durable and returns its size, for a
    /// checkpoint; None if this sink cannot tell.
    async fn sync(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}
