//! What a finished export reports.

use serde::{Deserialize, Serialize};

use crate::options::PackageFormat;

/// One file of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// File name inside the package (as the manifest names it).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Digest (the report's `digest_algorithm`), lower-case hex, computed
    /// as the bytes were written.
    pub digest: String,
    /// Name as stored: `name` plus `.zst`/`.gz`/`.enc` when wrapped.
    pub stored_name: String,
    /// Size as stored.
    pub stored_size: u64,
}

/// One disk exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    /// Disk name on the platform.
    pub name: String,
    /// Guest capacity in bytes.
    pub capacity: u64,
    /// File it was written to.
    pub file: String,
    /// Guest bytes in non-zero grains.
    pub populated: u64,
}

/// The result of one export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    /// VM name.
    pub vm: String,
    /// Provider name.
    pub provider: String,
    /// Package layout.
    pub format: PackageFormat,
    /// Where the artifact is (path of the `.ova` or the OVF directory, or a URL).
    pub location: String,
    /// Size of the artifact in bytes as stored (the `.ova`, or the sum of
    /// the OVF directory's files).
    pub size: u64,
    /// Manifest digest algorithm, as a manifest names it (`SHA256`, …).
    pub digest_algorithm: String,
    /// The `.ova` itself (OVA exports only): its size and digest before any
    /// compression or encryption, and as stored. An OVA written in place
    /// (plain, into a local directory) is digested whole only by the verify
    /// pass, which reads it back: without `verify` this is None, and the
    /// manifest inside it holds every member's digest.
    pub ova: Option<FileReport>,
    /// Compression of the stored files (e.g. `zstd:1`), if any.
    pub compression: Option<String>,
    /// Whether the stored files are encrypted.
    pub encrypted: bool,
    /// Whether every stored file was read back and checked before publishing.
    pub verified: bool,
    /// The package's files in package order: `.ovf`, `.mf`, disks.
    pub files: Vec<FileReport>,
    /// The manifest text.
    pub manifest: String,
    /// Per-disk details.
    pub disks: Vec<DiskReport>,
    /// Wall time in seconds.
    pub duration_secs: f64,
    /// Guest bytes read from the source.
    pub bytes_read: u64,
    /// Bytes of staged files a resumed export kept from before (0 for an
    /// export that started afresh).
    pub resumed_bytes: u64,
    /// Guest bytes read per second (MB = 10^6 B).
    pub throughput_mb_s: f64,
}
