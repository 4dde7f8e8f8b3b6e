//! What an export produces and how.

use std::sync::Arc;

use hypersdk_formats::manifest::DigestAlgorithm;
use serde::{Deserialize, Serialize};

use crate::transforms::compress::Compression;
use crate::transforms::encrypt::KeySource;
use crate::transforms::ratelimit::RateLimiter;

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
///
/// With `compression` or `encryption` set, every stored file is wrapped:
/// `vm.ova` becomes `vm.ova.zst.enc` (compressed, then encrypted); in an OVF
/// directory each file is wrapped on its own (`vm.ovf.enc`,
/// `vm-disk1.vmdk.zst.enc`, …). The manifest inside names the plain files and
/// their plain digests, so the package is a standard one once unwrapped
/// (`hyperctl decrypt`, `zstd -d`).
#[derive(Debug, Clone)]
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
    /// Chunks each pipeline queue holds. Memory per disk is bounded by
    /// about `chunk_size × (4 × queue_depth + 4 × workers + 6)` (see
    /// [`Exporter`](crate::Exporter)).
    pub queue_depth: usize,
    /// Digest algorithm of the manifest.
    pub digest: DigestAlgorithm,
    /// Compression of the stored files (`.zst`/`.gz`), or None.
    pub compression: Option<Compression>,
    /// Encryption of the stored files (`.enc`), or None.
    pub encryption: Option<KeySource>,
    /// Compression threads per file (default: the number of cores).
    pub workers: usize,
    /// This export's own bandwidth limit on reading the source (the
    /// process-wide [`RateLimiter::global`] applies too; the lower wins).
    pub bwlimit: Option<Arc<RateLimiter>>,
    /// Disks exported at once (each with its own pipeline and memory).
    pub parallel_disks: usize,
    /// A disk source that sends nothing for this long fails the export with
    /// a retryable error (a stalled connection is noticed, not waited on
    /// forever). None: wait forever.
    pub idle_timeout: Option<std::time::Duration>,
    /// Decode and re-encode disks the source already serves as
    /// streamOptimized VMDK (see
    /// [`ExportSource::open_disk_vmdk`](crate::ExportSource::open_disk_vmdk))
    /// instead of storing them as they arrive.
    pub reencode: bool,
    /// After writing, read every stored file back from the sink (decrypting
    /// and decompressing as needed) and check it against the digests
    /// computed while writing, before the export is published.
    pub verify: bool,
    /// Keep a checkpoint while exporting, and on interruption (cancel, a
    /// broken connection, a full disk) leave the partial export in place
    /// to be continued with `resume` (see [`crate::checkpoint`]). Needs a
    /// sink that supports it ([`Sink::begin_resumable`](crate::Sink::begin_resumable)).
    pub checkpoint: bool,
    /// Continue the partial export of the same VM with the same options if
    /// there is one (else start afresh).
    pub resume: bool,
    /// Checkpoint a disk being written at least every this many stored bytes
    /// (and every 2 seconds).
    pub checkpoint_every: u64,
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
            digest: DigestAlgorithm::Sha256,
            compression: None,
            encryption: None,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            bwlimit: None,
            parallel_disks: 2,
            idle_timeout: Some(std::time::Duration::from_secs(120)),
            reencode: false,
            verify: false,
            checkpoint: true,
            resume: false,
            checkpoint_every: 64 << 20,
        }
    }
}

impl ExportOptions {
    /// Whether an export with these options that failed with `e` leaves its
    /// partial state for a resume: checkpoints are on, the failure is worth
    /// continuing ([`crate::checkpoint::keeps_partial`]), and the staged
    /// files are not plain spools of an encrypted OVA (never left behind).
    pub fn keeps_partial_after(&self, e: &crate::Error) -> bool {
        let plain_spools = self.encryption.is_some() && self.format == PackageFormat::Ova;
        self.checkpoint && !plain_spools && crate::checkpoint::keeps_partial(e)
    }

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

    /// Compresses the stored files.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// Encrypts the stored files.
    pub fn with_encryption(mut self, key: KeySource) -> Self {
        self.encryption = Some(key);
        self
    }

    /// Limits this export's source reads.
    pub fn with_bwlimit(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.bwlimit = Some(limiter);
        self
    }

    /// Verifies the stored files before publishing.
    pub fn with_verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// The suffix stored files get: `.zst`, `.gz`, `.enc`, `.zst.enc`, or "".
    pub fn stored_extension(&self) -> String {
        crate::transforms::wrapped_extension(self.compression.as_ref(), self.encryption.is_some())
    }

    /// Allows replacing an existing artifact.
    pub fn with_overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}
