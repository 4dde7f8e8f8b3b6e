//! What an export produces and how.

use std::sync::Arc;

use hypersdk_formats::manifest::DigestAlgorithm;
use serde::{Deserialize, Serialize};

use crate::transforms::compress::Compression;
use crate::transforms::encrypt::KeySource;
use crate::transforms::ratelimit::RateLimiter;

/// The package layout of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// This export's own bandwidth limit on reading the source.
    pub bwlimit: Option<Arc<RateLimiter>>,
    /// Limits this export shares with others (a daemon's limit over all
    /// its jobs): the source waits for each of them too, so the lowest wins.
    pub shared_limiters: Vec<Arc<RateLimiter>>,
    /// Disks exported at once (each with its own pipeline and memory).
    pub parallel_disks: usize,
    /// A disk source that sends nothing for this long fails the export with
    /// a retryable error (a stalled connection is noticed, not waited on
    /// forever). None: wait forever.
    pub idle_timeout: Option<std::time::Duration>,
    /// Decode and re-encode disks the source already serves as
    /// streamOptimized VMDK (see
    /// [`ExportSource::open_served`](crate::ExportSource::open_served))
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
    /// Where the exporter keeps what it writes but never publishes: the
    /// disks of an OVA that cannot be written in place (an OVA compressed
    /// or encrypted as a whole, a sink that cannot fill in headers later, or
    /// disks exported in parallel beyond the one being written into the
    /// archive), copied into the archive afterwards. Needs room for those
    /// disks. None: where the sink suggests (a local directory sink: its
    /// staging directory, so spools stay on the destination's file system
    /// and go with a partial export), else the system's temporary directory.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// The VMware virtual hardware family the descriptor declares
    /// (`vmx-13`), instead of the VM's own or, for a VM without one, the
    /// oldest that has every device it uses.
    pub hardware_version: Option<String>,
    /// Signs the manifest: a `.cert` file (an OVA member right after the
    /// manifest) as ovftool's `--privateKey` writes it.
    pub signer: Option<std::sync::Arc<crate::signing::ManifestSigner>>,
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
            shared_limiters: Vec::new(),
            parallel_disks: 2,
            idle_timeout: Some(std::time::Duration::from_secs(120)),
            reencode: false,
            verify: false,
            checkpoint: true,
            resume: false,
            checkpoint_every: 64 << 20,
            scratch_dir: None,
            hardware_version: None,
            signer: None,
        }
    }
}

impl ExportOptions {
    /// These options in the words of the export settings, for a report:
    /// never a key, passphrase or file path.
    pub fn summary(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("format", self.format.to_string());
        if let Some(n) = &self.name {
            put("name", n.clone());
        }
        put("digest", self.digest.manifest_name().to_ascii_lowercase());
        put(
            "compression",
            self.compression
                .map_or_else(|| "none".to_string(), |c| c.to_string()),
        );
        put("vmdk_compression_level", self.compression_level.to_string());
        put(
            "encryption",
            match &self.encryption {
                None => "none",
                Some(crate::transforms::encrypt::KeySource::Key(_)) => "aes-256-gcm (key)",
                Some(crate::transforms::encrypt::KeySource::Passphrase(_)) => {
                    "aes-256-gcm (passphrase)"
                }
            }
            .into(),
        );
        put("verify", self.verify.to_string());
        put("resume", (self.checkpoint && self.resume).to_string());
        put("parallel_disks", self.parallel_disks.to_string());
        put("workers", self.workers.to_string());
        put(
            "bwlimit",
            if self.bwlimit.is_some() || !self.shared_limiters.is_empty() {
                "limited"
            } else {
                "none"
            }
            .into(),
        );
        if let Some(h) = &self.hardware_version {
            put("hardware_version", h.clone());
        }
        put("signed", self.signer.is_some().to_string());
        m
    }

    /// Whether an export with these options that failed with `e` leaves its
    /// partial state for a resume: checkpoints are on, the failure is worth
    /// continuing ([`Error::worth_resuming`](crate::Error::worth_resuming)), and the staged
    /// files are not plain spools of an encrypted OVA (never left behind).
    pub fn keeps_partial_after(&self, e: &crate::Error) -> bool {
        let plain_spools = self.encryption.is_some() && self.format == PackageFormat::Ova;
        self.checkpoint && !plain_spools && e.worth_resuming()
    }

    /// What an export of the VM named `vm` with these options publishes:
    /// `NAME.ova[.zst|.gz][.enc]`, or the OVF directory `NAME`, where NAME
    /// is the artifact name (else the VM's) made file-system safe.
    pub fn artifact(&self, vm: &str) -> crate::Artifact {
        let base = crate::package::safe_name(self.name.as_deref().unwrap_or(vm));
        match self.format {
            PackageFormat::Ova => {
                crate::Artifact::File(format!("{base}.ova{}", self.stored_extension()))
            }
            PackageFormat::Ovf => crate::Artifact::Directory(base),
        }
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

    /// Shares `limiter` with other exports (see [`shared_limiters`](Self::shared_limiters)).
    pub fn with_shared_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.shared_limiters.push(limiter);
        self
    }

    /// Verifies the stored files before publishing.
    pub fn with_verify(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Keeps spools under `dir` ([`scratch_dir`](Self::scratch_dir)).
    pub fn with_scratch_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.scratch_dir = Some(dir.into());
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

/// [`ExportOptions`] as plain data (strings, numbers, file paths): what a
/// configuration file, a job definition or a language binding hands over.
/// Unknown fields are refused; [`ExportSettings::to_options`] checks every
/// value and reads the key files.
///
/// ```
/// let s: hypersdk_core::ExportSettings =
///     serde_json::from_str(r#"{"format": "ovf", "compress": "zstd:3", "verify": true}"#).unwrap();
/// let o = s.to_options().unwrap();
/// assert_eq!(o.format, hypersdk_core::PackageFormat::Ovf);
/// assert!(o.verify && o.compression.is_some());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    /// `ova` (default) or `ovf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<PackageFormat>,
    /// Artifact name (default: the VM's, made file-system safe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Replace an existing artifact.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overwrite: bool,
    /// `zstd`, `zstd:LEVEL`, `gzip`, `gzip:LEVEL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compress: Option<String>,
    /// Deflate level of the VMDK grains (0–9).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<u32>,
    /// `sha256` (default), `sha512` or `sha1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Encrypt with the 32-byte key in this file (raw, hex or base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub encrypt_key_file: Option<std::path::PathBuf>,
    /// Encrypt with the passphrase on this file's first line.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub encrypt_passphrase_file: Option<std::path::PathBuf>,
    /// Bandwidth limit: `100M`, or a timetable like `08:00,10M 18:00,off`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<String>,
    /// Read every stored file back and check it against the manifest.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    /// Disks exported at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_disks: Option<usize>,
    /// Seconds without a byte from the source before the read fails (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Re-encode disks a platform serves already encoded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reencode: bool,
    /// Continue an interrupted export of the same VM and options.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    /// Keep no checkpoint (an interrupted export starts over).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_checkpoint: bool,
    /// MiB between checkpoints of a disk being written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_mib: Option<u64>,
    /// VMware virtual hardware family the descriptor declares, `vmx-N`
    /// (default: the VM's own; for a VM without one, the oldest that has
    /// every device it uses, at least `vmx-10`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_version: Option<String>,
    /// Sign the manifest with the RSA private key in this PEM file (a
    /// `.cert` file, as ovftool's `--privateKey` writes); needs
    /// `sign_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub sign_key_file: Option<std::path::PathBuf>,
    /// The X.509 certificate (PEM) of `sign_key_file`'s key, put into the
    /// `.cert` file.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub sign_cert_file: Option<std::path::PathBuf>,
}

impl ExportSettings {
    /// Checks every value without reading the key files (what a service
    /// does when a job is submitted); the message names the field.
    pub fn validate(&self) -> crate::Result<()> {
        let mut plain = self.clone();
        plain.encrypt_key_file = None;
        plain.encrypt_passphrase_file = None;
        if self.sign_key_file.is_some() != self.sign_cert_file.is_some() {
            return Err(crate::Error::InvalidArgument(
                "give sign_key_file and sign_cert_file together".into(),
            ));
        }
        plain.sign_key_file = None;
        plain.sign_cert_file = None;
        if self.encrypt_key_file.is_some() && self.encrypt_passphrase_file.is_some() {
            return Err(crate::Error::InvalidArgument(
                "give encrypt_key_file or encrypt_passphrase_file, not both".into(),
            ));
        }
        plain.to_options().map(|_| ())
    }

    /// The options these settings describe; an invalid value or an
    /// unreadable key file is an [`Error::InvalidArgument`](crate::Error)
    /// or [`Error::Crypto`](crate::Error) naming it.
    pub fn to_options(&self) -> crate::Result<ExportOptions> {
        let mut o = ExportOptions::new(self.format.unwrap_or(PackageFormat::Ova))
            .with_overwrite(self.overwrite)
            .with_verify(self.verify);
        o.name = self.name.clone();
        if let Some(l) = self.compression_level {
            if l > 9 {
                return Err(crate::Error::InvalidArgument(format!(
                    "compression_level {l}: must be 0 to 9"
                )));
            }
            o.compression_level = l;
        }
        if let Some(c) = &self.compress {
            o.compression = Some(c.parse().map_err(|e| in_field("compress", e))?);
        }
        if let Some(d) = &self.digest {
            o.digest = d
                .parse()
                .map_err(|e: String| crate::Error::InvalidArgument(format!("digest: {e}")))?;
        }
        match (&self.encrypt_key_file, &self.encrypt_passphrase_file) {
            (Some(_), Some(_)) => {
                return Err(crate::Error::InvalidArgument(
                    "give encrypt_key_file or encrypt_passphrase_file, not both".into(),
                ))
            }
            (Some(k), None) => o.encryption = Some(KeySource::from_key_file(k)?),
            (None, Some(p)) => o.encryption = Some(KeySource::from_passphrase_file(p)?),
            (None, None) => {}
        }
        if let Some(b) = &self.bwlimit {
            o.bwlimit = Some(RateLimiter::from_spec(b).map_err(|e| in_field("bwlimit", e))?);
        }
        if let Some(n) = self.parallel_disks {
            if n == 0 {
                return Err(crate::Error::InvalidArgument(
                    "parallel_disks must be at least 1".into(),
                ));
            }
            o.parallel_disks = n;
        }
        if let Some(s) = self.idle_timeout_secs {
            o.idle_timeout = (s > 0).then(|| std::time::Duration::from_secs(s));
        }
        match (&self.sign_key_file, &self.sign_cert_file) {
            (Some(k), Some(c)) => {
                o.signer = Some(std::sync::Arc::new(
                    crate::signing::ManifestSigner::from_files(k, c)?,
                ))
            }
            (None, None) => {}
            _ => {
                return Err(crate::Error::InvalidArgument(
                    "give sign_key_file and sign_cert_file together".into(),
                ))
            }
        }
        if let Some(v) = &self.hardware_version {
            let n = v
                .strip_prefix("vmx-")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (4..=99).contains(n));
            if n.is_none() {
                return Err(crate::Error::InvalidArgument(format!(
                    "hardware_version {v:?}: must be vmx-N, e.g. vmx-13 (ESXi 6.5) or vmx-19 (ESXi 7.0 U2)"
                )));
            }
            o.hardware_version = Some(v.clone());
        }
        o.reencode = self.reencode;
        o.resume = self.resume;
        o.checkpoint = !self.no_checkpoint;
        if let Some(m) = self.checkpoint_mib {
            // A job hands this over: no shift that overflows.
            o.checkpoint_every = m.checked_mul(1 << 20).filter(|_| m > 0).ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "checkpoint_mib {m}: must be at least 1 and at most {}",
                    u64::MAX >> 20
                ))
            })?;
        }
        Ok(o)
    }
}

/// An invalid-argument error's message prefixed with the field it is about.
fn in_field(field: &str, e: crate::Error) -> crate::Error {
    match e {
        crate::Error::InvalidArgument(m) => crate::Error::InvalidArgument(format!("{field}: {m}")),
        e => e,
    }
}
