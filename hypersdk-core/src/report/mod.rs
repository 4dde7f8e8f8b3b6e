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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskReport {
    /// Disk name on the platform.
    pub name: String,
    /// Guest capacity in bytes.
    pub capacity: u64,
    /// File it was written to.
    pub file: String,
    /// Guest bytes in non-zero grains.
    pub populated: u64,
    /// Where it came from on the platform (path or URL, no credentials).
    #[serde(default)]
    pub source: String,
    /// Its storage format on the platform.
    #[serde(default)]
    pub source_format: Option<crate::vm::DiskFormat>,
    /// Guest bytes read from the source in this run.
    #[serde(default)]
    pub bytes_read: u64,
    /// Stored bytes of it an interrupted run had written and this one kept.
    #[serde(default)]
    pub resumed_bytes: u64,
    /// Seconds from the export's start to this disk's, in this run (None
    /// for a disk an interrupted run had finished).
    #[serde(default)]
    pub started_secs: Option<f64>,
    /// Seconds this disk took in this run.
    #[serde(default)]
    pub secs: f64,
    /// Guest position over this run: `[seconds since the disk started,
    /// guest bytes done]`, at most 257 points evenly thinned (from
    /// `resumed` guest bytes on, for a resumed disk).
    #[serde(default)]
    pub timeline: Vec<(f64, u64)>,
}

/// The VM an export is of, as the platform described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    /// Its id on the platform.
    pub id: String,
    /// Power state when exported.
    pub power_state: crate::vm::PowerState,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Boot firmware.
    pub firmware: crate::vm::Firmware,
    /// Whether UEFI secure boot is on.
    pub secure_boot: bool,
    /// Guest OS.
    pub guest_os: crate::vm::GuestOs,
    /// Network adapters.
    pub nics: Vec<crate::vm::NicSpec>,
    /// The platform's hardware version or machine type, if known.
    pub hardware_version: Option<String>,
}

impl VmSummary {
    /// The summary of `spec`.
    pub fn of(spec: &crate::vm::VmSpec) -> Self {
        VmSummary {
            id: spec.id.clone(),
            power_state: spec.power_state,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            firmware: spec.firmware,
            secure_boot: spec.hardware.secure_boot,
            guest_os: spec.guest_os.clone(),
            nics: spec.nics.clone(),
            hardware_version: spec.hardware.version.clone(),
        }
    }
}

/// One run of an export: the first, and each resume of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// Stored bytes an earlier run had written and it kept.
    pub kept_bytes: u64,
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
    /// When this run started (RFC 3339, UTC).
    #[serde(default)]
    pub started_at: Option<String>,
    /// The options that shaped the package, in the words of the export
    /// settings (`format`, `compression`, `digest`, `encryption`, …);
    /// never a key or passphrase.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// Every run of this export, oldest first: one, or more after resumes.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// The VM as the platform described it.
    #[serde(default)]
    pub machine: Option<VmSummary>,
}

mod html;

/// Bytes in binary units with one decimal (`512 B`, `1.5 GiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A rate in binary units per second (`12.3 MiB/s`).
pub fn human_rate(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() || bytes_per_sec <= 0.0 {
        return "0 B/s".into();
    }
    format!("{}/s", human_bytes(bytes_per_sec.round() as u64))
}

impl ExportReport {
    /// This report as one self-contained HTML page: no scripts, no
    /// external resources (styles inline, charts as inline SVG), every
    /// value escaped.
    pub fn to_html(&self) -> String {
        html::render(self)
    }

    /// The stored size of `file` (a name in the package), if listed.
    pub fn stored_size_of(&self, file: &str) -> Option<u64> {
        self.files
            .iter()
            .find(|f| f.name == file)
            .map(|f| f.stored_size)
    }
}
