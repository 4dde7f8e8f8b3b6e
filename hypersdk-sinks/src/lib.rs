//! Destinations for hypersdk exports.
//!
//! [`LocalDirSink`] writes into a directory of the local file system. Every
//! export is staged in a hidden directory next to its destination,
//! `.<artifact>.partial-<pid>-<n>/`, and published with a `rename` only when
//! complete, so a crash, an error or a cancellation never leaves a file under
//! the final name. Objects are `fsync`ed before they count as finished.
//!
//! [`MemorySink`] keeps objects in memory, for tests and examples; the sink
//! testkit (`hypersdk-testkit`) runs over both.
//!
//! ```
//! use hypersdk_core::{Artifact, Sink};
//! use hypersdk_sinks::LocalDirSink;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let sink = LocalDirSink::new(dir.path());
//! let mut staging = sink.begin(&Artifact::File("vm.ova".into()), false).await?;
//! let mut w = staging.start("vm.ova").await?;
//! w.put(b"hello").await?;
//! assert_eq!(w.complete().await?, 5);
//! assert!(!dir.path().join("vm.ova").exists()); // not yet published
//! let location = staging.commit().await?;
//! assert_eq!(std::fs::read(&location).unwrap(), b"hello");
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcs")]
pub mod gcs;
#[cfg(feature = "gcs")]
pub mod google_auth;
mod local;
mod memory;
#[cfg(feature = "multipart")]
mod multipart;
#[cfg(feature = "object")]
mod object;
#[cfg(feature = "s3")]
pub mod s3;

pub use local::{dir_mode, LocalDirSink, DEFAULT_FILE_MODE};
pub use memory::MemorySink;
#[cfg(feature = "multipart")]
pub use multipart::MIN_PART;
#[cfg(feature = "object")]
pub use object::{ObjectStoreSink, DEFAULT_PART};

/// Artifact and object names are single path components: no separators,
/// no `.` or `..`, no NUL.
pub(crate) fn check_name(name: &str) -> hypersdk_core::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(hypersdk_core::Error::InvalidArgument(format!(
            "object name {name:?} is not a plain file name"
        )));
    }
    Ok(())
}
