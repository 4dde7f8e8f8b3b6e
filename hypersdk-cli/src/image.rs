//! `hyperctl convert` and `hyperctl inspect`: disk images on their own.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use hypersdk_formats::convert::{convert as convert_image, ConvertOptions, TargetFormat};
use hypersdk_formats::package::{is_ova, PackageReport};
use hypersdk_formats::vmdk::VmdkWriterOptions;
use hypersdk_formats::{open_image, Region};

use crate::human_bytes;

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum To {
    /// streamOptimized VMDK (what OVF/OVA packages carry).
    Vmdk,
    /// qcow2 v3, sparse (the KVM target); see --compressed.
    Qcow2,
    /// Raw, sparse where the source is unallocated.
    Raw,
    /// Fixed VHD (Azure, Hyper-V generation 1).
    Vhd,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source image (format detected: qcow2, VMDK sparse/streamOptimized, VHD, VHDX, raw).
    input: PathBuf,
    /// Output file; written under a temporary name and renamed when complete.
    output: PathBuf,
    /// Target format.
    #[arg(long, value_enum)]
    to: To,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// qcow2: store clusters deflate-compressed (like qemu-img convert -c).
    #[arg(long)]
    compressed: bool,
    /// zlib level of VMDK grains, 0-9.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=9))]
    compression_level: u32,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// An .ova, an .ovf, or a directory holding one .ovf; or an OVA wrapped by
    /// `export --compress/--encrypt-*` (.ova.zst, .ova.enc, …), read through
    /// once without unwrapping it to disk; or an OVA published in an object
    /// store (s3://bucket/prefix/vm.ova, az://container/prefix/vm.ova),
    /// read through once.
    path: PathBuf,
    #[command(flatten)]
    store: crate::StoreArgs,
    /// Key file, for an encrypted OVA.
    #[arg(long, conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
    /// Passphrase file, for an encrypted OVA.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Disk image (qcow2, VMDK, raw) or package (.ova, .ovf, OVF directory) to describe.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ConvertReport {
    input: String,
    input_format: &'static str,
    output: String,
    virtual_size: u64,
    data_read: u64,
    zero_skipped: u64,
    output_size: u64,
    duration_secs: f64,
}

pub async fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} already exists (pass --overwrite to replace it)",
            args.output.display()
        );
    }
    let Some(name) = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        bail!("output path {} has no file name", args.output.display());
    };
    let partial = args
        .output
        .with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let input = args.input.clone();
    let output = args.output.clone();
    let to = match args.to {
        To::Vmdk => TargetFormat::VmdkStreamOptimized,
        To::Raw => TargetFormat::Raw,
        To::Qcow2 if args.compressed => TargetFormat::Qcow2Compressed,
        To::Qcow2 => TargetFormat::Qcow2,
        To::Vhd => TargetFormat::VhdFixed,
    };
    let options = ConvertOptions {
        vmdk: VmdkWriterOptions {
            compression_level: args.compression_level,
            extent_name: name.clone(),
            ..Default::default()
        },
        sync: true,
    };
    let terminal = std::io::stderr().is_terminal();
    let partial_in_task = partial.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<ConvertReport> {
        let mut src =
            open_image(&input).with_context(|| format!("cannot read {}", input.display()))?;
        let input_format = src.format_name();
        let out = std::fs::File::create(&partial_in_task)
            .with_context(|| format!("cannot create {}", partial_in_task.display()))?;
        let bar = terminal.then(|| {
            let b = ProgressBar::new(src.virtual_size());
            if let Ok(style) = ProgressStyle::with_template(
                "[{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        let stats = convert_image(src.as_mut(), to, out, &options, &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done);
            }
        })
        .with_context(|| format!("cannot convert {} to {}", input.display(), output.display()))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(ConvertReport {
            input: input.display().to_string(),
            input_format,
            output: output.display().to_string(),
            virtual_size: stats.virtual_size,
            data_read: stats.data_read,
            zero_skipped: stats.zero_skipped,
            output_size: stats.output_size,
            duration_secs: 0.0,
        })
    })
    .await
    .context("conversion task failed")
    .and_then(|r| r);
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&partial, &args.output) {
        let _ = std::fs::remove_file(&partial);
        return Err(e).with_context(|| format!("cannot publish {}", args.output.display()));
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "converted {} ({}, {}) to {} ({}) in {:.2} s: read {} of data, skipped {} of zeros",
            report.input,
            report.input_format,
            human_bytes(report.virtual_size),
            report.output,
            human_bytes(report.output_size),
            report.duration_secs,
            human_bytes(report.data_read),
            human_bytes(report.zero_skipped)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct InspectReport {
    file: String,
    format: &'static str,
    virtual_size: u64,
    /// Guest bytes in allocated (stored) regions.
    allocated: u64,
    file_size: u64,
}

#[derive(Serialize)]
struct PackageJson {
    kind: &'static str,
    path: String,
    verified: bool,
    failures: Vec<String>,
    files: Vec<(String, u64)>,
    manifest: Option<String>,
    signed_by: Option<String>,
    systems: Vec<SystemJson>,
    disks: Vec<(String, u64, String)>,
    networks: Vec<String>,
}

#[derive(Serialize)]
struct SystemJson {
    name: String,
    os: String,
    cpus: u64,
    memory_mib: u64,
    disks: usize,
    nics: usize,
    firmware: Option<String>,
    hardware: Option<String>,
}

fn package_json(r: &PackageReport) -> PackageJson {
    PackageJson {
        kind: r.kind,
        path: r.path.display().to_string(),
        verified: r.verified(),
        failures: r.failures(),
        files: r.files.clone(),
        manifest: r.manifest.clone(),
        signed_by: r.signed_by.clone(),
        systems: r
            .envelope
            .systems
            .iter()
            .map(|s| SystemJson {
                name: s.display_name().to_string(),
                os: s.os().to_string(),
                cpus: s.cpus(),
                memory_mib: s.memory_mib(),
                disks: s.disk_ids().len(),
                nics: s.nics().len(),
                firmware: s.firmware().map(str::to_string),
                hardware: s.system_type().map(str::to_string),
            })
            .collect(),
        disks: r
            .envelope
            .disks
            .iter()
            .map(|d| {
                (
                    d.disk_id().to_string(),
                    d.capacity().unwrap_or_default(),
                    d.format().to_string(),
                )
            })
            .collect(),
        networks: r.envelope.networks.iter().map(|n| n.name.clone()).collect(),
    }
}

fn print_package(r: &PackageReport) {
    println!("package:   {} ({})", r.path.display(), r.kind);
    for s in &r.envelope.systems {
        let os = s.os();
        println!(
            "vm:        {} — {} vCPU, {} MiB, os {}, {} disk(s), {} NIC(s), firmware {}, hardware {}",
            s.display_name(),
            s.cpus(),
            s.memory_mib(),
            if os.is_empty() { "?" } else { os },
            s.disk_ids().len(),
            s.nics().len(),
            s.firmware().unwrap_or("bios"),
            s.system_type().unwrap_or("?")
        );
    }
    for d in &r.envelope.disks {
        println!(
            "disk:      {} {} ({})",
            d.disk_id(),
            human_bytes(d.capacity().unwrap_or_default()),
            d.format().rsplit('#').next().unwrap_or("")
        );
    }
    for (name, size) in &r.files {
        println!("file:      {name} ({size} bytes)");
    }
    if let Some(s) = &r.signed_by {
        println!("signed:    {s}");
    }
    if r.verified() {
        println!(
            "manifest:  {} verified ({} files)",
            r.manifest.as_deref().unwrap_or(""),
            r.checks.len()
        );
    } else {
        for f in r.failures() {
            println!("problem:   {f}");
        }
    }
}

async fn package(path: PathBuf) -> anyhow::Result<PackageReport> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || hypersdk_core::files::verify_package(&path, None))
        .await
        .context("inspect task failed")?
        .with_context(|| format!("cannot read package {shown}"))
}

fn looks_like_package(p: &std::path::Path) -> bool {
    p.is_dir() || p.extension().is_some_and(|e| e == "ovf" || e == "ova") || is_ova(p)
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let key = hypersdk_core::files::optional_key(
        args.key_file.as_deref(),
        args.passphrase_file.as_deref(),
    )?;
    let path = args.path.clone();
    let shown = path.to_string_lossy().into_owned();
    let report = if hypersdk::output_scheme(&shown).is_some() {
        // A published object: its store, then the object read through once.
        hypersdk::verify_published(&shown, &args.store.options(), key)
            .await
            .with_context(|| format!("cannot verify {shown}"))?
    } else {
        tokio::task::spawn_blocking(move || {
            hypersdk_core::files::verify_package(&path, key.as_ref())
        })
        .await
        .context("verify task failed")?
        .with_context(|| format!("cannot read package {}", args.path.display()))?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&package_json(&report))?);
    }
    if !report.verified() {
        bail!(
            "verification of {} failed: {}",
            args.path.display(),
            report.failures().join("; ")
        );
    }
    if !args.json {
        println!(
            "{}: verified — {} files match {}{}",
            args.path.display(),
            report.checks.len(),
            report.manifest.as_deref().unwrap_or(""),
            report
                .signed_by
                .as_deref()
                .map(|s| format!("; {s}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    if looks_like_package(&args.file) {
        let report = package(args.file.clone()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&package_json(&report))?);
        } else {
            print_package(&report);
        }
        return Ok(());
    }
    let file = args.file.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<InspectReport> {
        let mut img =
            open_image(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let size = img.virtual_size();
        let mut allocated = 0;
        let mut pos = 0;
        while pos < size {
            match img
                .region(pos)
                .with_context(|| format!("cannot read {}", file.display()))?
            {
                Region::Data(n) => {
                    allocated += n;
                    pos += n;
                }
                Region::Zero(n) => pos += n,
            }
        }
        Ok(InspectReport {
            file: file.display().to_string(),
            format: img.format_name(),
            virtual_size: size,
            allocated,
            file_size: std::fs::metadata(&file)?.len(),
        })
    })
    .await
    .context("inspect task failed")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("file:          {}", report.file);
        println!("format:        {}", report.format);
        println!(
            "virtual size:  {} ({} bytes)",
            human_bytes(report.virtual_size),
            report.virtual_size
        );
        println!(
            "allocated:     {} ({} bytes)",
            human_bytes(report.allocated),
            report.allocated
        );
        println!(
            "file size:     {} ({} bytes)",
            human_bytes(report.file_size),
            report.file_size
        );
    }
    Ok(())
}
