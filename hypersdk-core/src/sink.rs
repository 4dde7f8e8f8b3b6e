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

/// A destination for exports.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Human-readable destination, e.g. "local directory /srv/exports".
    fn describe(&self) -> String;

    /// Opens a staging area for `artifact`. Fails with
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) if the artifact
    /// exists and `overwrite` is false.
    async fn begin(&self, artifact: &Artifact, overwrite: bool) -> Result<Box<dyn Staging>>;
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
}

/// One object being written.
#[async_trait]
pub trait SinkWriter: Send + std::fmt::Debug {
    /// Appends bytes.
    async fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Makes the object durable (flushed and synced) and returns its size.
    async fn finish(self: Box<Self>) -> Result<u64>;
}
