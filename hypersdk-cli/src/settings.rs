//! The export options as flags — one set, mapped onto the library's
//! `ExportSettings`, shared by `hyperctl export` and `hyperctl jobs submit`
//! (where they become the job's fields: the daemon takes the same names).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use hypersdk::{ExportSettings, PackageFormat};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One .ova file (tar: .ovf, .mf, disks).
    Ova,
    /// A directory with .ovf, .mf and disks.
    Ovf,
}

#[derive(Args, Debug, Default)]
pub struct ExportFlags {
    /// Package format [default: ova].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Artifact name (default: the VM name, made file-safe).
    #[arg(long)]
    name: Option<String>,
    /// Replace an existing export of the same name.
    #[arg(long)]
    overwrite: bool,
    /// zlib level of VMDK grains, 0-9 [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    compression_level: Option<u32>,
    /// Compress the stored files: `zstd[:LEVEL]` or `gzip[:LEVEL]` (adds .zst/.gz).
    #[arg(long, value_name = "ALGO[:LEVEL]")]
    compress: Option<String>,
    /// Encrypt the stored files (AES-256-GCM, adds .enc) with the 32-byte key
    /// in this file (raw, hex or base64).
    #[arg(long, value_name = "FILE", conflicts_with = "encrypt_passphrase_file")]
    encrypt_key_file: Option<PathBuf>,
    /// Encrypt the stored files with the passphrase on the first line of this
    /// file (argon2id).
    #[arg(long, value_name = "FILE")]
    encrypt_passphrase_file: Option<PathBuf>,
    /// Bandwidth limit on reading the source: a rate (10M, 512K, off) or an
    /// rclone-style timetable ("Mon-08:00,10M 18:00,off").
    #[arg(long, value_name = "RATE|TIMETABLE")]
    bwlimit: Option<String>,
    /// Manifest digest: sha256, sha512 or sha1 [default: sha256].
    #[arg(long)]
    digest: Option<String>,
    /// Read every stored file back and check it before publishing the export.
    #[arg(long)]
    verify: bool,
    /// Fail (retryably) when a disk source sends nothing for this many
    /// seconds; 0 waits forever [default: 120].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Disks exported at once [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel_disks: Option<u16>,
    /// Decode and re-encode disks the source serves as streamOptimized VMDK
    /// (vSphere) instead of storing them as they arrive.
    #[arg(long)]
    reencode: bool,
    /// Continue the interrupted export of the same VM with the same options
    /// in this output directory, if there is one (else start afresh).
    #[arg(long)]
    resume: bool,
    /// Keep no checkpoint: an interrupted export leaves nothing to resume.
    #[arg(long, conflicts_with = "resume")]
    no_checkpoint: bool,
    /// Checkpoint (sync and record) each disk at least every this many MiB
    /// written, and every 2 seconds [default: 64].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_mib: Option<u64>,
    /// VMware virtual hardware family the descriptor declares, e.g. vmx-13
    /// for ESXi 6.5 [default: the VM's own; else the oldest with every
    /// device it uses, at least vmx-10].
    #[arg(long, value_name = "vmx-N")]
    hardware_version: Option<String>,
    /// Sign the manifest with the RSA private key in this PEM file: a .cert
    /// file as ovftool's --privateKey writes it (needs --sign-cert-file).
    #[arg(long, value_name = "FILE", requires = "sign_cert_file")]
    sign_key_file: Option<PathBuf>,
    /// The X.509 certificate (PEM) of the signing key, put into the .cert.
    #[arg(long, value_name = "FILE", requires = "sign_key_file")]
    sign_cert_file: Option<PathBuf>,
}

impl ExportFlags {
    /// The settings these flags give (unset ones keep the library's defaults).
    pub fn settings(&self) -> ExportSettings {
        ExportSettings {
            format: self.format.map(|f| match f {
                Format::Ova => PackageFormat::Ova,
                Format::Ovf => PackageFormat::Ovf,
            }),
            name: self.name.clone(),
            overwrite: self.overwrite,
            compress: self.compress.clone(),
            compression_level: self.compression_level,
            digest: self.digest.clone(),
            encrypt_key_file: self.encrypt_key_file.clone(),
            encrypt_passphrase_file: self.encrypt_passphrase_file.clone(),
            bwlimit: self.bwlimit.clone(),
            verify: self.verify,
            parallel_disks: self.parallel_disks.map(usize::from),
            idle_timeout_secs: self.idle_timeout,
            reencode: self.reencode,
            resume: self.resume,
            no_checkpoint: self.no_checkpoint,
            checkpoint_mib: self.checkpoint_mib,
            hardware_version: self.hardware_version.clone(),
            sign_key_file: self.sign_key_file.clone(),
            sign_cert_file: self.sign_cert_file.clone(),
        }
    }
}
