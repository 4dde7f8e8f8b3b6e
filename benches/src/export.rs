//! export-bench: the local export pipeline against `qemu-img convert` on the
//! same disk image, measured in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin export-bench -- [SIZE_MIB] [WORK_DIR]
//! ```
//!
//! Makes a raw disk of SIZE_MIB (default 2048) of mixed content (text,
//! pseudo-random, zero and sparse stripes; see hypersdk-testsupport), a qcow2
//! copy of it, and times:
//! - baseline `qemu-img convert -O vmdk -o subformat=streamOptimized` (raw → VMDK),
//! - hypersdk raw → OVF directory (streamOptimized VMDK + SHA-256 manifest),
//! - hypersdk qcow2 → OVF directory and qcow2 → OVA (the same input: the
//!   OVA's cost over the OVF is printed as a ratio),
//! - hypersdk qcow2 → OVA wrapped in zstd -1 and AES-256-GCM, with the
//!   verify pass (every stored byte read back, decrypted and digested again),
//! - baseline `sha256sum` of the raw disk, for scale.
//!
//! Each hypersdk export runs in a child process that reports its peak RSS
//! (VmHWM), so the figure covers the pipeline alone. Results are checked with
//! `qemu-img compare` before they are printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use hypersdk_core::transforms::compress::{decompress_reader, Compression};
use hypersdk_core::transforms::encrypt::{DecryptReader, KeySource};
use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
use hypersdk_local::LocalProvider;
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::{
    assert_same_guest_data, path_str, peak_rss_kib, qemu_img, run_tool, write_mixed_file,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child-export") {
        return child_export(&args[2..]);
    }
    let size_mib: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let work = match args.get(2) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("hypersdk-export-bench"),
    };
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let bytes = size_mib << 20;
    println!(
        "export-bench: {size_mib} MiB mixed disk in {}",
        work.display()
    );

    let raw = work.join("disk.raw");
    write_mixed_file(&raw, bytes)?;
    let qcow2 = work.join("disk.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path_str(&raw),
        path_str(&qcow2),
    ]);
    for (name, disk, fmt) in [
        ("raw-vm", "disk.raw", "raw"),
        ("qcow2-vm", "disk.qcow2", "qcow2"),
    ] {
        std::fs::write(
            work.join(format!("{name}.xml")),
            format!(
                "<domain type='kvm'><name>{name}</name><memory unit='GiB'>1</memory><vcpu>1</vcpu><devices>\
                 <disk type='file' device='disk'><driver type='{fmt}'/><source file='{disk}'/>\
                 <target dev='vda' bus='virtio'/></disk></devices></domain>"
            ),
        )?;
    }

    let mut rows = Vec::new();
    let vmdk = work.join("qemu.vmdk");
    let t = Instant::now();
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        path_str(&raw),
        path_str(&vmdk),
    ]);
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        "qemu-img convert raw → streamOptimized VMDK".to_string(),
        secs,
        size(&vmdk)?,
        None,
    ));

    for (vm, format, label) in [
        (
            "raw-vm",
            "ovf",
            "hypersdk raw → OVF (VMDK + SHA-256 manifest)",
        ),
        (
            "qcow2-vm",
            "ovf",
            "hypersdk qcow2 → OVF (same input as the OVA below)",
        ),
        (
            "qcow2-vm",
            "ova",
            "hypersdk qcow2 → OVA (VMDK + SHA-256 manifest)",
        ),
        (
            "qcow2-vm",
            "ova-wrapped",
            "hypersdk qcow2 → OVA.zst.enc + verify pass",
        ),
    ] {
        let out = work.join(format!("out-{vm}-{format}"));
        let exe = std::env::current_exe()?;
        let t = Instant::now();
        let o = Command::new(exe)
            .args([
                "child-export",
                path_str(&work.join(format!("{vm}.xml"))),
                format,
                path_str(&out),
            ])
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        if !o.status.success() {
            bail!(
                "export of {vm} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let hwm_kib: u64 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .context("child peak RSS")?;
        let produced = if format == "ovf" {
            let v = out.join(vm).join(format!("{vm}-disk1.vmdk"));
            assert_same_guest_data(&raw, Some("raw"), &v, Some("vmdk"));
            size(&v)?
        } else {
            let ova = out.join(format!("{vm}.ova"));
            if format == "ova-wrapped" {
                let stored = out.join(format!("{vm}.ova.zst.enc"));
                let produced = size(&stored)?;
                unwrap_file(&stored, &ova)?;
                run_tool("tar", &["-xf", path_str(&ova), "-C", path_str(&out)]);
                let v = out.join(format!("{vm}-disk1.vmdk"));
                assert_same_guest_data(&raw, Some("raw"), &v, Some("vmdk"));
                rows.push((label.to_string(), secs, produced, Some(hwm_kib)));
                continue;
            }
            run_tool("tar", &["-xf", path_str(&ova), "-C", path_str(&out)]);
            let v = out.join(format!("{vm}-disk1.vmdk"));
            assert_same_guest_data(&raw, Some("raw"), &v, Some("vmdk"));
            size(&ova)?
        };
        rows.push((label.to_string(), secs, produced, Some(hwm_kib)));
    }

    let t = Instant::now();
    run_tool("sha256sum", &[path_str(&raw)]);
    rows.push((
        "sha256sum of the raw disk".to_string(),
        t.elapsed().as_secs_f64(),
        0,
        None,
    ));

    println!(
        "{:<50} {:>8} {:>10} {:>8} {:>10}",
        "run", "secs", "MB/s", "ratio", "peak RSS"
    );
    for (label, secs, out_size, hwm) in &rows {
        let ratio = if *out_size > 0 {
            format!("{:.2}", bytes as f64 / *out_size as f64)
        } else {
            "-".into()
        };
        let rss = hwm
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{label:<50} {secs:>8.2} {:>10.1} {ratio:>8} {rss:>10}",
            bytes as f64 / secs / 1e6
        );
    }
    let secs_of = |prefix: &str| rows.iter().find(|r| r.0.starts_with(prefix)).map(|r| r.1);
    if let (Some(ovf), Some(ova)) = (
        secs_of("hypersdk qcow2 → OVF"),
        secs_of("hypersdk qcow2 → OVA (VMDK"),
    ) {
        println!(
            "OVA throughput as a share of OVF on the same input: {:.0}% (target: at least 95%)",
            100.0 * ovf / ova
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The benchmark's fixed key (not a secret: it protects nothing).
fn bench_key() -> KeySource {
    KeySource::Key(zeroize::Zeroizing::new([0x42; 32]))
}

/// Decrypts and decompresses `stored` into `plain`.
fn unwrap_file(stored: &Path, plain: &Path) -> Result<()> {
    let input = std::io::BufReader::new(std::fs::File::open(stored)?);
    let decrypted = DecryptReader::new(input, &bench_key())?;
    let mut r = decompress_reader(decrypted)?;
    let mut out = std::fs::File::create(plain)?;
    std::io::copy(&mut r, &mut out)?;
    Ok(())
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)?.len())
}

/// In the child: run one export and print the peak RSS in KiB.
fn child_export(args: &[String]) -> Result<()> {
    let [xml, format, out] = args else {
        bail!("usage: child-export XML ova|ovf OUT")
    };
    let mut options = ExportOptions::new(if format.starts_with("ova") {
        PackageFormat::Ova
    } else {
        PackageFormat::Ovf
    });
    if format == "ova-wrapped" {
        options = options
            .with_compression(Compression::ZSTD)
            .with_encryption(bench_key())
            .with_verify(true);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let provider = LocalProvider::new(".");
        Exporter::new(options)
            .export(&provider, xml, &LocalDirSink::new(out))
            .await
    })?;
    println!("{}", peak_rss_kib().context("VmHWM in /proc/self/status")?);
    Ok(())
}
