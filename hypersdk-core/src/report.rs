//! What a finished export reports.

use serde::Serialize;

use crate::options::PackageFormat;

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    /// File name inside the package.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex, computed as the bytes were written.
    pub sha256: String,
}

/// One disk exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportReport {
    /// VM name.
    pub vm: String,
    /// Provider name.
    pub provider: String,
    /// Package layout.
    pub format: PackageFormat,
    /// Where the artifact is (path of the `.ova` or the OVF directory, or a URL).
    pub location: String,
    /// Size of the artifact in bytes (the `.ova`, or the sum of the OVF files).
    pub size: u64,
    /// SHA-256 of the `.ova` itself (OVA exports only).
    pub ova_sha256: Option<String>,
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
    /// Guest bytes read per second (MB = 10^6 B).
    pub throughput_mb_s: f64,
}
