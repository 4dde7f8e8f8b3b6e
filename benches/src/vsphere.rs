//! vsphere-bench: exporting a VM from the govmomi vCenter simulator against
//! curl downloading the same NFC device URLs, in the same run.
//!
//! ```sh
//! cargo run --release -p hypersdk-bench --bin vsphere-bench -- [DISK_MIB]
//! ```
//!
//! A VM with two disks of DISK_MIB (default 1024) of mixed content, served by
//! the simulator launcher (tests/peers/vcsim) as ESXi serves NFC downloads:
//! streamOptimized VMDK built on the fly (zlib level 1, one goroutine per
//! download). Baselines: `curl` fetching both device URLs into files, one
//! after the other and both at once (the figure hypersdk is held to), and
//! into /dev/null for scale. hypersdk: the library export to an OVF directory (disks
//! stored as served, SHA-256 manifest, two disks at once), to an OVA (two
//! disks at once: the second is spooled and copied in; and one after the
//! other: both written in place), and with `reencode` (decode and
//! re-encode). MB/s are guest bytes (2 × DISK_MIB
//! MiB) per second, so every row moves the same data.

use std::process::Command;
use std::time::Instant;

use hypersdk_core::{ExportOptions, Exporter, PackageFormat};
use hypersdk_sinks::LocalDirSink;
use hypersdk_testsupport::vcsim::Vcsim;
use hypersdk_testsupport::{path_str, write_mixed_file};
use hypersdk_vsphere::{ConnectOptions, TlsMode, VsphereProvider};

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let sim = Vcsim::start(&[("bench", &[mib, mib])]);
    for i in 0..2 {
        write_mixed_file(&sim.flat_file("bench", i), mib << 20)?;
    }
    let guest = ((2 * mib) << 20) as f64;
    let base = sim.url.trim_end_matches("/sdk").to_string();
    let urls: Vec<String> = (1..=2)
        .map(|i| format!("{base}/nfc/bench/bench-disk{i}.vmdk"))
        .collect();
    println!(
        "vsphere-bench: VM with 2 × {mib} MiB disks in the simulator (MB = 10^6 B of guest data)"
    );
    let mut rows: Vec<(String, f64)> = Vec::new();

    // curl into files (as an export must store them), one disk after the
    // other, then both at once; and both at once into /dev/null for scale.
    let work = tempfile::tempdir()?;
    let files: Vec<String> = (1..=2)
        .map(|i| path_str(&work.path().join(format!("curl-disk{i}.vmdk"))).to_string())
        .collect();
    let t = Instant::now();
    for (u, f) in urls.iter().zip(&files) {
        let s = Command::new("curl").args(["-sSk", "-o", f, u]).status()?;
        anyhow::ensure!(s.success(), "curl {u} failed");
    }
    rows.push((
        "curl → files, disks one after the other".into(),
        t.elapsed().as_secs_f64(),
    ));
    let curl_both = |outs: &[&str]| -> anyhow::Result<f64> {
        let t = Instant::now();
        let children: Vec<_> = urls
            .iter()
            .zip(outs)
            .map(|(u, o)| Command::new("curl").args(["-sSk", "-o", o, u]).spawn())
            .collect::<Result<_, _>>()?;
        for mut c in children {
            anyhow::ensure!(c.wait()?.success(), "curl failed");
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let curl_parallel = curl_both(&[&files[0], &files[1]])?;
    rows.push(("curl → files, both disks at once".into(), curl_parallel));
    let devnull = curl_both(&["/dev/null", "/dev/null"])?;
    rows.push(("curl → /dev/null, both disks at once".into(), devnull));
    for f in &files {
        std::fs::remove_file(f)?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for (label, format, reencode, parallel) in [
        (
            "hypersdk → OVF (as served, SHA-256 manifest)",
            PackageFormat::Ovf,
            false,
            2,
        ),
        (
            "hypersdk → OVA (as served, SHA-256 manifest)",
            PackageFormat::Ova,
            false,
            2,
        ),
        (
            "hypersdk → OVA, disks one after the other",
            PackageFormat::Ova,
            false,
            1,
        ),
        (
            "hypersdk → OVF, decoded and re-encoded",
            PackageFormat::Ovf,
            true,
            2,
        ),
    ] {
        let out = work.path().join(format!("{format}-{reencode}-{parallel}"));
        let secs = rt.block_on(async {
            let vc = VsphereProvider::connect(
                &ConnectOptions::new(&sim.url)
                    .with_login(&sim.user, &sim.password)
                    .with_tls(TlsMode::Insecure),
            )
            .await?;
            let mut options = ExportOptions::new(format);
            options.reencode = reencode;
            options.parallel_disks = parallel;
            let t = Instant::now();
            let report = Exporter::new(options)
                .export(&vc, "bench", &LocalDirSink::new(&out))
                .await?;
            let secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(report.bytes_read == (2 * mib) << 20, "short export");
            vc.logout().await?;
            anyhow::Ok(secs)
        })?;
        rows.push((label.to_string(), secs));
        std::fs::remove_dir_all(&out)?;
    }
    println!(
        "{:<48} {:>8} {:>10} {:>16}",
        "run", "secs", "MB/s", "vs curl → files ×2"
    );
    for (label, secs) in &rows {
        println!(
            "{label:<48} {secs:>8.2} {:>10.1} {:>11.0}%",
            guest / secs / 1e6,
            curl_parallel / secs * 100.0
        );
    }
    let secs_of = |prefix: &str| rows.iter().find(|r| r.0.starts_with(prefix)).map(|r| r.1);
    if let (Some(ovf), Some(ova), Some(ova_seq)) = (
        secs_of("hypersdk → OVF (as served"),
        secs_of("hypersdk → OVA (as served"),
        secs_of("hypersdk → OVA, disks one"),
    ) {
        println!(
            "OVA throughput as a share of OVF: {:.0}% (disks at once), {:.0}% (one after the other); target: at least 95%",
            100.0 * ovf / ova,
            100.0 * ovf / ova_seq
        );
    }
    Ok(())
}
