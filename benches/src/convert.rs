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
//! Each pair is measured twice: as both tools behave by default for
//! durability (qemu-img does not flush its output; hypersdk's library
//! `convert` is run with `sync: false`), and with the output made durable
//! (`qemu-img convert` then `sync FILE`; hypersdk with `sync: true`, as
//! `hyperctl convert` runs). `sync` runs between measurements so writeback of
//! one run does not slow the next. Each hypersdk conversion runs in a child
//! process that reports its peak RSS. Every figure is the median of three runs:
//! this machine's disk writeback makes single runs vary by 2–3x.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use hypersdk_formats::convert::{convert, ConvertOptions, TargetFormat};
use hypersdk_formats::open_image;
use hypersdk_testsupport::{
    assert_same_guest_data, path_str, peak_rss_kib, qemu_img, run_tool, write_mixed_file,
};

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
    println!(
        "convert-bench: {size_mib} MiB mixed disk in {}",
        work.display()
    );
    let raw = work.join("src.raw");
    write_mixed_file(&raw, bytes)?;
    // Inputs of the later pairs, made by qemu-img so both tools read the same file.
    let vmdk_in = work.join("in.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        path_str(&raw),
        path_str(&vmdk_in),
    ]);
    let qcow2_in = work.join("in.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        path_str(&raw),
        path_str(&qcow2_in),
    ]);

    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "pair (MB/s of guest data)", "qemu-img", "hypersdk", "qemu+sync", "ours+sync", "peak RSS"
    );
    for (label, input, qemu_args, ours, ext) in [
        (
            "raw → streamOptimized VMDK",
            &raw,
            vec!["-O", "vmdk", "-o", "subformat=streamOptimized"],
            "vmdk",
            "vmdk",
        ),
        (
            "streamOptimized VMDK → qcow2",
            &vmdk_in,
            vec!["-O", "qcow2"],
            "qcow2",
            "qcow2",
        ),
        ("qcow2 → raw", &qcow2_in, vec!["-O", "raw"], "raw", "raw"),
    ] {
        let mut figures = Vec::new();
        let mut peak = 0;
        for sync in [false, true] {
            // qemu-img: its default cache mode does not flush; "+sync" adds `sync FILE`.
            let q_out = work.join(format!("qemu.{ext}"));
            let mut q_times = Vec::new();
            for _ in 0..RUNS {
                settle();
                let t = Instant::now();
                let mut a = vec!["convert"];
                a.extend(qemu_args.iter().copied());
                a.extend([path_str(input), path_str(&q_out)]);
                qemu_img(&a);
                if sync {
                    run_tool("sync", &[path_str(&q_out)]);
                }
                q_times.push(t.elapsed().as_secs_f64());
                let _ = std::fs::remove_file(&q_out);
            }
            figures.push(median(q_times));

            let h_out = work.join(format!("ours.{ext}"));
            let mut h_times = Vec::new();
            for _ in 0..RUNS {
                settle();
                let t = Instant::now();
                let o = Command::new(std::env::current_exe()?)
                    .args([
                        "child",
                        path_str(input),
                        ours,
                        path_str(&h_out),
                        if sync { "sync" } else { "nosync" },
                    ])
                    .output()?;
                h_times.push(t.elapsed().as_secs_f64());
                if !o.status.success() {
                    bail!("{label} failed: {}", String::from_utf8_lossy(&o.stderr));
                }
                peak = peak.max(
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<u64>()
                        .context("child peak RSS")?,
                );
                assert_same_guest_data(&raw, Some("raw"), &h_out, Some(ext));
                let _ = std::fs::remove_file(&h_out);
            }
            figures.push(median(h_times));
        }
        let mb = |i: usize| bytes as f64 / figures[i] / 1e6;
        println!(
            "{label:<30} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>6.1} MiB",
            mb(0),
            mb(1),
            mb(2),
            mb(3),
            peak as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// In the child: one conversion, then print the peak RSS in KiB.
fn child(args: &[String]) -> Result<()> {
    let [input, to, output, sync] = args else {
        bail!("usage: child IN vmdk|qcow2|raw OUT sync|nosync")
    };
    let options = ConvertOptions {
        sync: sync == "sync",
        ..Default::default()
    };
    let to = match to.as_str() {
        "vmdk" => TargetFormat::VmdkStreamOptimized,
        "qcow2" => TargetFormat::Qcow2,
        _ => TargetFormat::Raw,
    };
    let mut src = open_image(Path::new(input))?;
    convert(
        src.as_mut(),
        to,
        std::fs::File::create(output)?,
        &options,
        &mut |_, _| {},
    )?;
    println!("{}", peak_rss_kib().context("VmHWM in /proc/self/status")?);
    Ok(())
}

/// Runs of each measurement; the median is reported.
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Writes back dirty pages left by the previous run so it does not slow the next.
fn settle() {
    let _ = Command::new("sync").status();
}
