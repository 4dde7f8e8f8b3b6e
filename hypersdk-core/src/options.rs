//! What an export produces and how.

use serde::{Deserialize, Serialize};

/// The package layout of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    /// One `.ova` file: a tar with the `.ovf` first, the `.mf` next, then the disks.
    Ova,
    /// A directory with the `.ovf`, the `.mf` and the disks side by side.
    Ovf,
}

impl std::fmt::Display for PackageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PackageFormat::Ova => "ova",
            PackageFormat::Ovf => "ovf",
        })
    }
}

/// Options of one export.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Package layout.
    pub format: PackageFormat,
    /// Name of the artifact (files are `<name>.ovf`, `<name>-disk1.vmdk`, …);
    /// defaults to the VM's name made file-safe.
    pub name: Option<String>,
    /// Replace an existing artifact of the same name.
    pub overwrite: bool,
    /// zlib level of VMDK grains, 0–9. 1 is fast and compresses mixed data well.
    pub compression_level: u32,
    /// Size of the chunks passed between pipeline stages, in bytes.
    pub chunk_size: usize,
    /// Chunks each pipeline queue holds. Memory per disk is about
    /// `chunk_size × (2 × queue_depth + 3)`.
    pub queue_depth: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: PackageFormat::Ova,
            name: None,
            overwrite: false,
            compression_level: 1,
            chunk_size: 1 << 20,
            queue_depth: 4,
        }
    }
}

impl ExportOptions {
    /// Options for `format` with every other field at its default.
    pub fn new(format: PackageFormat) -> Self {
        ExportOptions {
            format,
            ..Default::default()
        }
    }

    /// Sets the artifact name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Allows replacing an existing artifact.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}
