//! convert-bench: hypersdk's format conversions against `qemu-img convert`
//! on the same image, in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin convert-bench -- [SIZE_MIB] [WORK_DIR]
//! ```
//!
//! Input: SIZE_MIB (default 2048) of mixed content (text, pseudo-random,
//! zero and sparse stripes). Pairs measured, each output checked with
//! `qemu-img compare` against the raw source:
//! - raw → streamOptimized VMDK
//! - streamOptimized VMDK → qcow2
//! - qcow2 → raw
//!
//! Each hypersdk conversion runs in a child process that reports its peak RSS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use hypersdk_formats::convert::{convert, TargetFormat};
use hypersdk_formats::open_image;
use hypersdk_testsupport::{assert_same_guest_data, path_str, qemu_img, write_mixed_file};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]);
    }
    let size_mib: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let work = match args.get(2) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("hypersdk-convert-bench"),
    };
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let bytes = size_mib << 20;
    println!("convert-bench: {size_mib} MiB mixed disk in {}", work.display());
    let raw = work.join("src.raw");
    write_mixed_file(&raw, bytes)?;
    // Inputs of the later pairs, made by qemu-img so both tools read the same file.
    let vmdk_in = work.join("in.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", path_str(&raw), path_str(&vmdk_in)]);
    let qcow2_in = work.join("in.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", path_str(&raw), path_str(&qcow2_in)]);

    println!("{:<34} {:>14} {:>14} {:>8} {:>10}", "pair", "qemu-img MB/s", "hypersdk MB/s", "speedup", "peak RSS");
    for (label, input, qemu_args, ours, ext) in [
        ("raw → streamOptimized VMDK", &raw, vec!["-O", "vmdk", "-o", "subformat=streamOptimized"], "vmdk", "vmdk"),
        ("streamOptimized VMDK → qcow2", &vmdk_in, vec!["-O", "qcow2"], "qcow2", "qcow2"),
        ("qcow2 → raw", &qcow2_in, vec!["-O", "raw"], "raw", "raw"),
    ] {
        let q_out = work.join(format!("qemu.{ext}"));
        let t = Instant::now();
        let mut a = vec!["convert"];
        a.extend(qemu_args.iter().copied());
        a.extend([path_str(input), path_str(&q_out)]);
        qemu_img(&a);
        let q_secs = t.elapsed().as_secs_f64();

        let h_out = work.join(format!("ours.{ext}"));
        let t = Instant::now();
        let o = Command::new(std::env::current_exe()?)
            .args(["child", path_str(input), ours, path_str(&h_out)])
            .output()?;
        let h_secs = t.elapsed().as_secs_f64();
        if !o.status.success() {
            bail!("{label} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let hwm: u64 = String::from_utf8_lossy(&o.stdout).trim().parse().context("child peak RSS")?;
        assert_same_guest_data(&raw, Some("raw"), &h_out, Some(ext));
        let _ = std::fs::remove_file(&q_out);
        let _ = std::fs::remove_file(&h_out);
        let mb = |s: f64| bytes as f64 / s / 1e6;
        println!(
            "{label:<34} {:>14.1} {:>14.1} {:>7.2}x {:>7.1} MiB",
            mb(q_secs),
            mb(h_secs),
            q_secs / h_secs,
            hwm as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// In the child: one conversion, then print the peak RSS in KiB.
fn child(args: &[String]) -> Result<()> {
    let [input, to, output] = args else { bail!("usage: child IN vmdk|qcow2|raw OUT") };
    let to = match to.as_str() {
        "vmdk" => TargetFormat::VmdkStreamOptimized,
        "qcow2" => TargetFormat::Qcow2,
        _ => TargetFormat::Raw,
    };
    let mut src = open_image(Path::new(input))?;
    convert(src.as_mut(), to, std::fs::File::create(output)?, &Default::default(), &mut |_, _| {})?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmHWM")?;
    println!("{hwm}");
    Ok(())
}
