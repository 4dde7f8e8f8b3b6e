//! The error type of the SDK's traits and pipeline.

use std::io;

/// A boxed error from a lower layer (a format reader, an HTTP client, …).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything an export can fail with. Each variant names what was being done
/// and to what; [`Error::is_retryable`] tells transient failures from permanent ones.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The provider has no VM by that name or id.
    #[error("VM '{vm}' not found: {detail}")]
    VmNotFound {
        /// Provider name, e.g. "local".
        provider: String,
        /// The name or id that was asked for.
        vm: String,
        /// Where it was looked for, e.g. "no domain named so in /etc/libvirt/qemu".
        detail: String,
    },
    /// The provider could not describe or reach a VM.
    #[error("provider {provider}: {message}")]
    Provider {
        /// Provider name.
        provider: String,
        /// What failed.
        message: String,
        /// Whether trying again may succeed.
        retryable: bool,
        /// The cause, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Reading a disk of a VM failed (open, read, or decode).
    #[error("cannot read disk '{disk}' of VM '{vm}' ({location})")]
    DiskRead {
        /// VM name.
        vm: String,
        /// Disk name, e.g. "vda".
        disk: String,
        /// Where the disk lives (file path or URL without credentials).
        location: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A disk's stream delivered a different number of bytes than its capacity.
    #[error("disk '{disk}' of VM '{vm}' delivered {actual} bytes, expected {expected}")]
    DiskLength {
        /// VM name.
        vm: String,
        /// Disk name.
        disk: String,
        /// Declared capacity.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Encoding an output format, or reading an input one, failed.
    #[error("{what}")]
    Format {
        /// What was being done, e.g. "cannot write VMDK of disk 'vda'" or
        /// "cannot read package out/vm.ova".
        what: String,
        /// The cause.
        #[source]
        source: hypersdk_formats::Error,
    },
    /// Writing to, reading back from, or publishing in the sink failed.
    #[error("{action} {target}")]
    Sink {
        /// What was being done, e.g. "cannot write".
        action: String,
        /// The object, file or directory.
        target: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The export's destination already exists and overwriting was not asked for.
    #[error("{target} already exists (pass --overwrite / ExportOptions::overwrite to replace it)")]
    AlreadyExists {
        /// The existing destination.
        target: String,
    },
    /// An argument or option is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Encryption or decryption failed: wrong key, damaged or altered data,
    /// unsupported format version.
    #[error("{0}")]
    Crypto(String),
    /// The platform refused the credentials.
    #[error("{provider}: login to {target} as '{user}' failed: {message}")]
    Auth {
        /// Provider name.
        provider: String,
        /// What was logged in to (host or URL, never with credentials).
        target: String,
        /// The user name tried.
        user: String,
        /// What the platform said.
        message: String,
    },
    /// Bytes read back do not match what was written or what a manifest
    /// says: a digest mismatch, or an encrypted/compressed layer that fails
    /// its checks.
    #[error("verification of {file} failed: {detail}")]
    Integrity {
        /// The file (as stored) that failed.
        file: String,
        /// What did not match.
        detail: String,
    },
    /// A change-tracking token of an earlier export is no longer valid on
    /// the platform (its bitmap or change id is gone, tracking was reset):
    /// read the whole disk and start again.
    #[error("change tracking of disk '{disk}' of VM '{vm}' cannot continue from the earlier export: {why}")]
    TrackingLost {
        /// VM name.
        vm: String,
        /// Disk name.
        disk: String,
        /// What the platform said.
        why: String,
    },
    /// A repository or other shared store is in use by another operation
    /// that excludes this one (a garbage collection, a backup).
    #[error("{target} is in use: {holder}")]
    Locked {
        /// What is locked, e.g. "repository /srv/repo".
        target: String,
        /// Who holds it: what, host, pid, since when.
        holder: String,
    },
    /// The export was cancelled.
    #[error("export cancelled")]
    Cancelled,
    /// A bug: an internal invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether an export that failed with this is worth continuing later:
    /// it was cancelled or interrupted, or the sink failed (e.g. a full
    /// disk) — not bad input, which would fail the same way again.
    pub fn worth_resuming(&self) -> bool {
        matches!(self, Error::Cancelled | Error::Sink { .. }) || self.is_retryable()
    }

    /// Whether the operation may succeed if tried again (network hiccups,
    /// timeouts, busy resources). Missing VMs, bad input, corrupt data and
    /// cancellation are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Provider { retryable, .. } => *retryable,
            // The I/O error may sit under a format reader's own error
            // (a qcow2 table read over a connection that dropped).
            Error::DiskRead { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(c) = cause {
                    if let Some(e) = c.downcast_ref::<io::Error>() {
                        return io_is_transient(e);
                    }
                    cause = c.source();
                }
                false
            }
            Error::Sink { source, .. } => io_is_transient(source),
            _ => false,
        }
    }

    /// A stable, short name of the kind of error, for programs (the
    /// bindings' error codes, JSON output): `vm_not_found`, `provider`,
    /// `disk_read`, `disk_length`, `format`, `sink`, `already_exists`,
    /// `invalid_argument`, `crypto`, `auth`, `integrity`, `tracking_lost`,
    /// `locked`, `cancelled`, `internal`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::VmNotFound { .. } => "vm_not_found",
            Error::Provider { .. } => "provider",
            Error::DiskRead { .. } => "disk_read",
            Error::DiskLength { .. } => "disk_length",
            Error::Format { .. } => "format",
            Error::Sink { .. } => "sink",
            Error::AlreadyExists { .. } => "already_exists",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Crypto(_) => "crypto",
            Error::Auth { .. } => "auth",
            Error::Integrity { .. } => "integrity",
            Error::TrackingLost { .. } => "tracking_lost",
            Error::Locked { .. } => "locked",
            Error::Cancelled => "cancelled",
            Error::Internal(_) => "internal",
        }
    }

    /// Shorthand for a [`Error::Sink`] error.
    pub fn sink(action: impl Into<String>, target: impl Into<String>, source: io::Error) -> Self {
        Error::Sink {
            action: action.into(),
            target: target.into(),
            source: with_os_text(source),
        }
    }
}

/// The operating system's own words for an error that lost them on the
/// way: tokio's `File` keeps only the `ErrorKind` of a failed background
/// write, which prints as "no storage space" where the user expects the
/// system's "No space left on device (os error 28)".
fn with_os_text(e: io::Error) -> io::Error {
    if e.raw_os_error().is_some() || e.get_ref().is_some() {
        return e;
    }
    let errno = match e.kind() {
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::FileTooLarge => libc::EFBIG,
        io::ErrorKind::QuotaExceeded => libc::EDQUOT,
        io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::BrokenPipe => libc::EPIPE,
        _ => return e,
    };
    io::Error::from_raw_os_error(errno)
}

/// An error and its causes, joined by ": " (a cause already in the text
/// is not repeated): the one-line message tools print.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | TimedOut
            | Interrupted
            | BrokenPipe
            | WouldBlock
    )
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_io_error_under_a_format_error_is_retryable() {
        let read = |kind| Error::DiskRead {
            vm: "vm".into(),
            disk: "d".into(),
            location: "node:/x".into(),
            source: Box::new(hypersdk_formats::Error::io(
                "reading qcow2 L2 table at offset 0x30000",
                io::Error::new(kind, "lost"),
            )),
        };
        assert!(read(io::ErrorKind::ConnectionAborted).is_retryable());
        assert!(!read(io::ErrorKind::PermissionDenied).is_retryable());
    }

    #[test]
    fn classifies_retryable() {
        let reset = Error::sink(
            "cannot write",
            "x",
            io::Error::from(io::ErrorKind::ConnectionReset),
        );
        assert!(reset.is_retryable());
        let bare = Error::sink(
            "cannot write",
            "x",
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert!(
            chain(&bare).contains("No space left on device"),
            "{}",
            chain(&bare)
        );
        let full = Error::sink("cannot write", "x", io::Error::other("disk full"));
        assert!(!full.is_retryable());
        assert!(!Error::Cancelled.is_retryable());
        let nf = Error::VmNotFound {
            provider: "local".into(),
            vm: "x".into(),
            detail: "gone".into(),
        };
        assert!(!nf.is_retryable());
    }
}
